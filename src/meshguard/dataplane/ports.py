"""The engine's three seams: what it needs from the protocol layers above it.

    Engine(fast, tun_fd, clock, slow=slow, router=router)

- `FastPathPort`: transport data in batches (route and keypair once per peer and batch, the
  receive policy of wireguard/transport.py per packet, bookkeeping once per batch) and the
  handshake guard the engine runs in C as datagrams are read, and the tables (with their
  generation) the engine's data-path thread moves transport data by. `wireguard.device.Device`
  implements it; so does the mesh (mesh/engine_ports.py), which sends a relayed peer's
  packets through the slow path.
- `SlowPathPort`: everything else, one datagram or packet at a time (handshakes, cookies,
  gossip, STUN, packets for peers without a session) and the timers. The standalone Device
  is its own slow path; the mesh's is the MeshNode, which demultiplexes the port.
- `SendRouter`: which datagrams leave from the engine's socket. Without one, all of them do;
  a split-port node sends WireGuard from the engine's socket and the rest (gossip, STUN)
  from its gossip socket.

Actions returned through the ports: the engine carries out `SendDatagram` and `WriteTun`
and hands every other action, in order, to its owner (`on_actions`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol, runtime_checkable

from meshguard.sansio import Endpoint
from meshguard.wireguard.actions import Action
from meshguard.wireguard.cookie import Guard
from meshguard.wireguard.keypair import Keypair
from meshguard.wireguard.peer import DataPathTables, Peer, SendBatch

__all__ = ["Datagram", "FastPathPort", "SendRouter", "SlowPathPort"]

Datagram = tuple[bytes, Endpoint]


class FastPathPort(Protocol):
    """Batched transport data, and the handshake guard (see wireguard/device.py)."""

    def route(self, dst: bytes) -> Peer | None: ...

    def prepare_send_peer(self, now: float, peer: Peer) -> SendBatch | None: ...

    def note_sent(self, now: float, peer: Peer, n_packets: int, n_bytes: int,
                  n_keepalive: int = 0, wall: float | None = None) -> list[Action]: ...

    def keypair_for_receive(self, index: int, now: float | None = None) -> Keypair | None: ...

    def source_allowed(self, peer: Peer, src: bytes) -> bool: ...

    def note_received(self, now: float, keypair: Keypair, n_packets: int, n_bytes: int,
                      src: Endpoint | None = None, n_keepalive: int = 0,
                      wall: float | None = None) -> list[Action]: ...

    def note_dropped(self, reason: str, n: int = 1) -> None: ...

    @property
    def guard(self) -> Guard: ...

    def use_guard(self, guard: Guard) -> None: ...

    def count_verdicts(self, counts: Iterable[int]) -> None: ...

    @property
    def receiver_indices(self) -> Mapping[int, object]: ...

    @property
    def generation(self) -> int:
        """Moves on whenever datapath_tables would answer differently."""
        ...

    def datapath_tables(self) -> DataPathTables: ...

    def watch_changes(self, callback: Callable[[], None] | None) -> None:
        """Call `callback` whenever `generation` moves (None: stop)."""
        ...


@runtime_checkable
class SlowPathPort(Protocol):
    """One datagram or packet at a time, and the timers (a sans-IO core)."""

    def receive(self, now: float, wall: float, data: bytes, src: Endpoint
                         ) -> Sequence[object]: ...

    def send_packet(self, now: float, wall: float, ip_packet: bytes) -> Sequence[object]: ...

    def tick(self, now: float, wall: float) -> Sequence[object]: ...

    def next_deadline(self) -> float | None: ...


class SendRouter(Protocol):
    """Sends the datagrams that do not leave from the engine's socket."""

    def route(self, grams: list[Datagram]) -> list[Datagram]:
        """Send those that leave elsewhere; return the rest, for the engine's socket."""
        ...
