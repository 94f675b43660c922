"""Kernel-mode NAT traversal: the mesh node's hole puncher and relay, with the kernel's
WireGuard device carrying the tunnels (sans-IO; the shell is daemon/kernel_paths.py).

The node runs its hole puncher in kernel mode (`HolePuncher(probe=False)`) and its relay core as
in userspace mode. `KernelTraversal` sits between the node and the shell:

* `handle` takes the node's actions. A `PunchRendezvous` (a verified, signed stage 0) starts a
  kernel punch (nat/kernel_punch.py) toward the member's WireGuard candidates, which becomes a
  `KernelPeerSet`: the peer's configuration with the punch's endpoint and short keepalive. A
  `PeerUp` for a peer being punched keeps the punch's endpoint and keepalive. When the hole
  puncher's session ends without proof (`PunchFailed`, which the node turns into relaying), or
  a relayed peer's punch window closes, the peer gets the node's configuration back (a
  `KernelPeerSet`, unless a `PeerUp` in the same batch already gives it).
* `observe` takes the kernel's peer statistics (polled by the shell); a proven punch ends the
  hole puncher's session with the endpoint the kernel reports, so the node records the direct
  path and stops relaying the peer; the peer's normal keepalive comes back.
* As the node's `PeerBackend` it reports those statistics, so the hole puncher's `connected`
  question is answered from the kernel. A handshake through the relay proxy proves no direct
  path, so it is reported as none: a relayed pair keeps trying to go direct, with the hole
  puncher's backoff.

Relayed peers keep the relay core's placeholder endpoint in the node's configuration; the shell
maps it to the peer's loopback proxy (daemon/relay_proxy.py) when it configures the kernel.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from meshguard.mesh.actions import Action, MemberView, PeerConfig, PeerDown, PeerUp
from meshguard.mesh.node import MeshNode
from meshguard.nat.holepunch import PunchRendezvous
from meshguard.nat.kernel_punch import (
    KernelPeerState,
    KernelPunch,
    KernelPunchAction,
    PunchEnded,
    PunchEndpoint,
    PunchProven,
    wireguard_candidates,
)
from meshguard.nat.relay import Relay
from meshguard.sansio import Endpoint

POLL_PUNCHING = 1.0  # seconds between kernel statistics polls while a punch runs
# ... otherwise (for the hole puncher's `connected`: below its stall time, so a tunnel that
# works is seen before the hole puncher would call the peer stalled)
POLL_IDLE = 2.0


@dataclass(frozen=True)
class KernelPeerSet:
    """Configure this kernel peer now: a punch's endpoint and keepalive, or the node's own
    configuration of the peer when the punch is over. Not a tunnel change."""

    peer: PeerConfig


TraversalAction = Action | KernelPeerSet


def port_offset(m: MemberView) -> int:
    """How far below its gossip port a member's WireGuard port is (1 for a kernel-mode
    member, 0 for a userspace member)."""
    g, w = m.gossip_endpoint, m.wg_endpoint
    if g is None or w is None or g[0] != w[0]:
        return 0
    return g[1] - w[1]


@dataclass
class KernelTraversal:
    node: MeshNode
    punch: KernelPunch = field(default_factory=KernelPunch)
    latest: dict[bytes, KernelPeerState] = field(default_factory=dict)  # the latest poll

    # PeerBackend: the shell applies the changes; the statistics come from the kernel -------

    def upsert(self, peer: PeerConfig) -> None:
        return None

    def remove(self, wg_key: bytes) -> None:
        self.latest.pop(wg_key, None)

    def stats(self, wg_key: bytes) -> tuple[float, int, int, Endpoint | None]:
        """(last direct handshake or 0, rx bytes, 0, endpoint) from the latest poll."""
        st = self.latest.get(wg_key)
        if st is None:
            return (0.0, 0, 0, None)
        direct = st.endpoint is not None and not self.punch.is_proxy(st.endpoint)
        return (st.last_handshake_wall if direct else 0.0, st.rx_bytes, 0, st.endpoint)

    def poll_interval(self) -> float:
        return POLL_PUNCHING if self.punch.active() else POLL_IDLE

    def next_deadline(self) -> float | None:
        return self.punch.next_deadline()

    # the node's actions ---------------------------------------------------------------------

    def handle(self, now: float, wall: float, actions: Sequence[TraversalAction]
               ) -> list[TraversalAction]:
        # punches whose session ended with the call that made these actions (a PunchFailed
        # among them has the node relay the peer: its PeerUp must not be a punch's)
        ended = self._ended()
        out: list[TraversalAction] = []
        for a in actions:
            if isinstance(a, PunchRendezvous):
                out += self._begin(now, wall, a)
            elif isinstance(a, PeerUp) and self.punch.punching(a.peer.wg_key):
                ep = self.punch.endpoint_of(a.peer.wg_key)
                out.append(PeerUp(dataclasses.replace(a.peer, endpoint=ep,
                                                      keepalive=self.punch.keepalive)))
            elif isinstance(a, PeerDown):
                self.punch.end(a.wg_key)
                out.append(a)
            else:
                out.append(a)
        out += self._convert(self.punch.tick(now, wall), now, wall, out)
        for wg in ended:
            out += self._restore(wg, out)
        return out

    def observe(self, now: float, wall: float, stats: Mapping[bytes, KernelPeerState]
                ) -> list[TraversalAction]:
        """The kernel's per-peer statistics (by WireGuard key): what the proven punches do."""
        self.latest = dict(stats)
        return self._convert(self.punch.observe(now, wall, stats), now, wall, [])

    # helpers -------------------------------------------------------------------------------

    def _member(self, identity_key: bytes) -> MemberView | None:
        return next((m for m in self.node.membership.members()
                     if m.identity_key == identity_key), None)

    def _begin(self, now: float, wall: float, a: PunchRendezvous) -> list[TraversalAction]:
        m = self._member(a.identity_key)
        cfg = self.node.peers.get(m.wg_key) if m is not None and m.wg_key else None
        if m is None or cfg is None:
            self.punch.counters["kernel_punch_no_peer"] += 1
            return []
        relayed = Relay.is_placeholder(cfg.endpoint)
        cands = wireguard_candidates(a.endpoints, port_offset(m))
        return self._convert(self.punch.start(now, wall, a.identity_key, cfg.wg_key, cands,
                                              relayed), now, wall, [])

    def _convert(self, actions: Sequence[KernelPunchAction], now: float, wall: float,
                 batch: Sequence[TraversalAction]) -> list[TraversalAction]:
        out: list[TraversalAction] = []
        hp = self.node.holepunch
        for a in actions:
            if isinstance(a, PunchEndpoint):
                cfg = self.node.peers.get(a.wg_key)
                if cfg is not None:
                    out.append(KernelPeerSet(dataclasses.replace(
                        cfg, endpoint=a.endpoint, keepalive=a.keepalive)))
            elif isinstance(a, PunchProven) and hp is not None:
                got = self.node.punch_events(hp.proven(now, a.identity_key, a.endpoint),
                                             now, wall)
                out += got
                out += self._restore(a.wg_key, [*batch, *got])
            elif isinstance(a, PunchEnded):
                out += self._restore(a.wg_key, batch)
        return out

    def _ended(self) -> list[bytes]:
        """End the punches whose hole-punch session is over without proof (timed out, or
        the member is gone): their WireGuard keys, to restore."""
        hp = self.node.holepunch
        out: list[bytes] = []
        for identity, wg in self.punch.active():
            if hp is None or not hp.running(identity):
                self.punch.end(wg)
                self.punch.counters["kernel_punch_failed"] += 1
                out.append(wg)
        return out

    def _restore(self, wg_key: bytes, batch: Sequence[TraversalAction]
                 ) -> list[TraversalAction]:
        if any(isinstance(x, PeerUp) and x.peer.wg_key == wg_key for x in batch):
            return []  # the node's own change already configures it
        cfg = self.node.peers.get(wg_key)
        return [] if cfg is None else [KernelPeerSet(cfg)]
