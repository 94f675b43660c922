"""Kernel mode's paths in the shell: hole punching with the kernel's handshakes and relaying
through a loopback proxy (the decisions are mesh/kernel_traversal.py and nat/kernel_punch.py;
docs/nat-testbed.md#kernel-mode describes the whole).

`KernelPaths` sits in the kernel runner's dispatch of the node's actions: it lets the traversal
see them first, applies its `KernelPeerSet`s to the kernel, hands relayed datagrams to the
proxy, turns relay placeholders into proxy endpoints when peers are configured, polls the
kernel's peer statistics (every second while a punch runs, else every `POLL_IDLE` seconds,
and not at all while the node is not behind a NAT) and feeds them back.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Sequence

from meshguard.clock import Clock
from meshguard.daemon.kernel_wg import KernelPeer, KernelPeerStats
from meshguard.daemon.relay_proxy import RelayProxy
from meshguard.mesh.actions import Action, PeerConfig
from meshguard.mesh.kernel_traversal import KernelPeerSet, KernelTraversal, TraversalAction
from meshguard.mesh.node import MeshNode
from meshguard.nat.kernel_punch import KernelPeerState
from meshguard.nat.relay import Relay, RelayDelivered
from meshguard.sansio import Endpoint, SendDatagram

log = logging.getLogger("meshguard.daemon")


class KernelPaths:
    """`apply` configures kernel peers (one WG_CMD_SET_DEVICE); `send` sends datagrams from
    the gossip socket; `loop`, if given, reads the proxy sockets."""

    def __init__(self, node: MeshNode, wg_port: int, clock: Clock,
                 apply: Callable[[list[KernelPeer]], None],
                 send: Callable[[list[SendDatagram]], None],
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.node = node
        self.clock = clock
        self.apply = apply
        self.traversal = KernelTraversal(node)
        if node.backend is None:
            node.backend = self.traversal  # the hole puncher's `connected` reads the kernel
        self.proxy = RelayProxy(wg_port, self._wrap, send, self.traversal.punch.punching, loop)
        self.poll_errors = 0
        self._last_poll = float("-inf")

    def _wrap(self, placeholder: Endpoint, data: bytes) -> SendDatagram | None:
        rl = self.node.relay
        return None if rl is None else rl.wrap(placeholder, data)

    def counters(self) -> dict[str, int]:
        c: Counter[str] = Counter(self.proxy.counters)
        c.update(self.traversal.punch.counters)
        if self.poll_errors:
            c["kernel_stats_errors"] = self.poll_errors
        return {k: int(v) for k, v in c.items()}

    # the node's actions ---------------------------------------------------------------------

    def take(self, actions: Sequence[TraversalAction]
             ) -> tuple[list[Action], list[RelayDelivered]]:
        """The node's actions -> (what the runner executes as before, the relayed datagrams
        to hand the kernel once the peers are configured: `deliver`)."""
        c = self.clock
        rest: list[Action] = []
        delivered: list[RelayDelivered] = []
        sets: list[KernelPeer] = []
        for a in self.traversal.handle(c.monotonic(), c.wall(), actions):
            if isinstance(a, KernelPeerSet):
                sets.append(self.kernel_peer(a.peer, keep_proxy=True))
            elif isinstance(a, RelayDelivered):
                delivered.append(a)
            else:
                rest.append(a)
        if sets:
            self.apply(sets)
        return rest, delivered

    def deliver(self, delivered: list[RelayDelivered]) -> None:
        if delivered:
            self.proxy.deliver(delivered)

    def kernel_peer(self, p: PeerConfig, keep_proxy: bool = False) -> KernelPeer:
        """The kernel's configuration of a peer: a relay placeholder becomes the peer's proxy
        endpoint; any other endpoint closes the proxy (unless `keep_proxy`: a punch)."""
        ep = p.endpoint
        if Relay.is_placeholder(ep):
            assert ep is not None
            ep = self.proxy.ensure(p.wg_key, ep)
        elif not keep_proxy and not self.traversal.punch.punching(p.wg_key):
            self.proxy.remove(p.wg_key)
        return KernelPeer(p.wg_key, ep, p.keepalive, p.allowed_ips)

    def removed(self, wg_key: bytes) -> None:
        self.proxy.remove(wg_key)
        self.traversal.remove(wg_key)

    # the kernel's statistics ----------------------------------------------------------------

    def poll_due(self, now: float) -> bool:
        hp = self.node.holepunch
        if not self.traversal.punch.active() and (hp is None or not hp.behind_nat):
            return False  # nothing to punch: nobody asks whether a path is direct
        return now - self._last_poll >= self.traversal.poll_interval()

    def observe(self, stats: Sequence[KernelPeerStats]) -> list[TraversalAction]:
        c = self.clock
        self._last_poll = c.monotonic()
        seen = {s.public_key: KernelPeerState(s.last_handshake_wall, s.rx_bytes, s.endpoint)
                for s in stats}
        return self.traversal.observe(c.monotonic(), c.wall(), seen)

    async def poll(self, read: Callable[[], list[KernelPeerStats]],
                   execute: Callable[[list[TraversalAction]], None]) -> None:
        """Poll the kernel's peer statistics for ever (cancel to stop)."""
        while True:
            await asyncio.sleep(1.0)
            if not self.poll_due(self.clock.monotonic()):
                continue
            try:
                stats = await asyncio.to_thread(read)
            except Exception as exc:
                self.poll_errors += 1
                if self.poll_errors == 1:
                    log.warning("kernel peer statistics: %s", exc)
                continue
            execute(self.observe(stats))

    def close(self) -> None:
        self.proxy.close()
