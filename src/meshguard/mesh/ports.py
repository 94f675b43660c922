"""The ports of the mesh node (mesh/node.py): what it needs from the membership core, the
trust store, the WireGuard device, the peer backend and the STUN client. Each is a Protocol that
the real component satisfies (named in its docstring) and a test may fake.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from meshguard.identity.trust import Admission
from meshguard.mesh.actions import Action, MemberView, PeerConfig
from meshguard.nat.stun_client import StunAction
from meshguard.sansio import Endpoint, SendDatagram
from meshguard.swim.events import Action as SwimAction
from meshguard.wireguard.actions import Action as DeviceAction


class Admitter(Protocol):
    """The trust store's answer for one member (identity.trust.TrustStore fits)."""

    def admit(self, node_key: bytes, certificate: bytes | None, now_wall: float
              ) -> Admission: ...


class MembershipPort(Protocol):
    """What the node needs from the SWIM core (see mesh/swim_port.py). The core's actions
    (swim/events.py) are opaque to the node: it hands them back to `absorb`."""

    def receive(self, now: float, wall: float, data: bytes, src: Endpoint
                ) -> Sequence[SwimAction]: ...

    def tick(self, now: float, wall: float) -> Sequence[SwimAction]: ...

    def next_deadline(self) -> float | None: ...

    def leave(self, now: float, wall: float) -> Sequence[SwimAction]: ...

    def members(self) -> Iterable[MemberView]: ...

    def absorb(self, actions: Sequence[SwimAction]) -> tuple[Sequence[Action], bool]:
        """The core's actions -> (actions for the shell: SendDatagram and notable events such
        as Joined; whether membership changed, so peers must be reconciled)."""
        ...


class DevicePort(Protocol):
    """The subset of wireguard.device.Device that the node drives."""

    def receive(self, now: float, wall: float, data: bytes, src: Endpoint
                         ) -> Sequence[DeviceAction]: ...

    def send_packet(self, now: float, wall: float, ip_packet: bytes
                    ) -> Sequence[DeviceAction]: ...

    def tick(self, now: float, wall: float) -> Sequence[DeviceAction]: ...

    def next_deadline(self) -> float | None: ...

    def new_path(self, peer_key: bytes, now: float, wall: float,
                 endpoint: Endpoint | None = None, initiate: bool = True
                 ) -> Sequence[DeviceAction]:
        """A hole punch or relay found a new path: move the peer to `endpoint` (if given)
        and, with `initiate`, start a handshake now despite the initiation rate limit."""
        ...


    def keepalive_to(self, peer_key: bytes, now: float, wall: float
                     ) -> Sequence[DeviceAction]:
        """A keepalive (or handshake) to the peer now: our underlay address changed."""
        ...


class PeerBackend(Protocol):
    """Applies peer changes to a WireGuard implementation (userspace Device here)."""

    def upsert(self, peer: PeerConfig) -> None: ...

    def remove(self, wg_key: bytes) -> None: ...

    def stats(self, wg_key: bytes) -> tuple[float, int, int, Endpoint | None]:
        """(last handshake wall time or 0, rx bytes, tx bytes, current endpoint)."""
        ...


class StunPort(Protocol):
    """nat.stun_client.StunClient."""

    def start(self, now: float) -> Sequence[SendDatagram]: ...

    def receive(self, now: float, wall: float, data: bytes, src: Endpoint
                ) -> Sequence[StunAction]: ...

    def tick(self, now: float, wall: float) -> Sequence[StunAction]: ...

    def next_deadline(self) -> float | None: ...

    @property
    def done(self) -> bool: ...

    @property
    def mapped(self) -> Endpoint | None: ...
