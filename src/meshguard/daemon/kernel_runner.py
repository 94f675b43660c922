"""Kernel mode: the Linux WireGuard device carries the tunnels, configured over netlink
(kernel_wg.py); the daemon reads gossip on its own socket (port + 1) and runs the node's timers
on the event loop, since no data-plane engine is there to do it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

from pyroute2 import IPRoute

from meshguard.clock import Clock
from meshguard.crypto.keys import X25519PrivateKey
from meshguard.daemon.daemon_config import DaemonConfig, StartupError
from meshguard.daemon.gossip_socket import ErrorThrottle, GossipSocket
from meshguard.daemon.kernel_paths import KernelPaths
from meshguard.daemon.kernel_policy import KernelPolicy
from meshguard.daemon.kernel_wg import KernelPeer, KernelWireGuard, build_set_device
from meshguard.daemon.status import PeerStats
from meshguard.dataplane.policy_filter import PolicyCounters
from meshguard.errors import MeshguardError
from meshguard.identity.addressing import mesh_ipv4, mesh_ipv6
from meshguard.mesh.actions import IPNetwork
from meshguard.mesh.kernel_traversal import KernelPeerSet, TraversalAction
from meshguard.mesh.node import Action, MeshNode, PeerDown, PeerUp
from meshguard.nat.relay import RelayDelivered
from meshguard.policy.table import ALLOW_ALL, PolicyTable
from meshguard.rng import Rng
from meshguard.wireguard.actions import SendDatagram

log = logging.getLogger("meshguard.daemon")

MAX_TIMER_DELAY = 1.0  # seconds: the node is ticked at least this often
POLICY_DELAY = 0.05  # seconds: allowed-IP changes that come together reach nft once


class KernelRunner:
    mode = "kernel"

    def __init__(self, cfg: DaemonConfig, clock: Clock,
                 on_actions: Callable[[list[Action]], None]) -> None:
        self.cfg = cfg
        self.clock = clock
        self._on_actions = on_actions
        self.kernel: KernelWireGuard | None = None
        self.gossip: GossipSocket | None = None
        self.node: MeshNode | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.paths: KernelPaths | None = None  # punching and relaying (kernel_paths.py)
        # one warning budget for the gossip reader and the timer, as they share the log
        self._throttle = ErrorThrottle()
        self.policy = KernelPolicy(cfg.interface)  # nftables on the link (kernel_policy.py)
        self._policy_pending: asyncio.TimerHandle | None = None
        self._policy_table = ALLOW_ALL  # the table asked for; in force once nft took it

    async def open(self, stack: contextlib.AsyncExitStack, identity_key: bytes,
                   wg_private: X25519PrivateKey, rng: Rng, gossip_port: int) -> None:
        """Bind the gossip socket, then create and configure the kernel link. There is no
        userspace Device: the kernel holds the keys and the tunnels."""
        cfg = self.cfg
        gossip = GossipSocket.bind(gossip_port, self.clock, self.execute,
                                   drop_wireguard=cfg.split_port, throttle=self._throttle)
        stack.callback(gossip.close)
        self.gossip = gossip
        kwg = KernelWireGuard(cfg.interface)
        await asyncio.to_thread(kwg.create_link)
        stack.push_async_callback(asyncio.to_thread, kwg.delete_link)
        self.kernel = kwg
        await asyncio.to_thread(self._policy_close, "a stale policy table")
        stack.callback(self._policy_close, "the policy table")  # before the link goes

        def configure() -> None:
            kwg.configure(wg_private.raw, cfg.port)
            with IPRoute() as ipr:
                idx = ipr.link_lookup(ifname=cfg.interface)[0]
                ipr.addr("add", index=idx, address=str(mesh_ipv4(identity_key)), prefixlen=16)
                ipr.addr("add", index=idx, address=str(mesh_ipv6(identity_key)), prefixlen=64)
                ipr.link("set", index=idx, state="up")

        try:
            await asyncio.to_thread(configure)
        except OSError as exc:
            raise StartupError(f"UDP port {cfg.port} could not be given to the kernel "
                               f"device: {exc}") from None

    def attach(self, node: MeshNode, loop: asyncio.AbstractEventLoop,
               stack: contextlib.AsyncExitStack) -> None:
        """Start the node's timers and the gossip reader."""
        self.node = node
        if node.holepunch is not None or node.relay is not None:
            self.paths = KernelPaths(node, self.cfg.port, self.clock, self._apply_peers,
                                     self._send, loop)
            stack.callback(self.paths.close)
            if self.kernel is not None:
                task = loop.create_task(self.paths.poll(self.kernel.peer_stats, self.execute))
                stack.callback(task.cancel)
        self._arm_timer()
        gossip = self.gossip
        if gossip is not None:
            gossip.node = node
            loop.add_reader(gossip.fileno(), gossip.readable)
            stack.callback(loop.remove_reader, gossip.fileno())

    def execute(self, actions: Sequence[TraversalAction]) -> None:
        if not actions:
            return
        self._dispatch(actions)
        self._arm_timer()

    def _dispatch(self, actions: Sequence[TraversalAction]) -> None:
        """Datagrams leave from the gossip socket; everything else is an event for the daemon
        (punch and relay actions are the paths' first, kernel_paths.py)."""
        paths = self.paths
        delivered: list[RelayDelivered] = []
        if paths is not None:
            todo, delivered = paths.take(actions)
        else:
            todo = [a for a in actions if not isinstance(a, KernelPeerSet)]
        if self.gossip is not None:
            other = self.gossip.send(todo)
        else:
            other = [a for a in todo if not isinstance(a, SendDatagram)]
        self._on_actions(other)
        if paths is not None:
            paths.deliver(delivered)

    def _send(self, datagrams: list[SendDatagram]) -> None:
        if self.gossip is not None:
            self.gossip.send(list(datagrams))

    def peers_changed(self, changes: list[PeerUp | PeerDown]) -> None:
        """The node's tunnels go to the kernel device in one WG_CMD_SET_DEVICE."""
        kwg = self.kernel
        if not changes or kwg is None:
            return
        peers: list[KernelPeer] = []
        paths = self.paths
        for a in changes:
            if isinstance(a, PeerUp):
                p = a.peer
                peers.append(paths.kernel_peer(p) if paths is not None else
                             KernelPeer(p.wg_key, p.endpoint, p.keepalive, p.allowed_ips))
            else:
                if paths is not None:
                    paths.removed(a.wg_key)
                peers.append(KernelPeer(a.wg_key, remove=True))
        self._apply_peers(peers)

    def device_peer(self, key: bytes, psk: bytes | None, nets: Sequence[IPNetwork],
                    remove: bool) -> None:
        """A plain WireGuard device (daemon/wg_device_peers.py) as a kernel peer."""
        self._apply_peers([KernelPeer(key, remove=True) if remove else
                           KernelPeer(key, None, 0, tuple(nets), preshared_key=psk)])

    def _apply_peers(self, peers: list[KernelPeer]) -> None:
        kwg = self.kernel
        if not peers or kwg is None:
            return
        try:
            kwg.apply(build_set_device(kwg.ifname, peers=peers))
        except MeshguardError as exc:
            log.error("kernel WireGuard: %s", exc)
        changed = self.policy.track(peers)
        if self._policy_table.active and (changed or not self.policy_enforced):
            self._policy_soon()

    # ---- policy (nftables, kernel_policy.py) ---------------------------------------------

    def set_policy(self, table: PolicyTable) -> None:
        """What Engine.set_policy is in userspace mode: enforce `table` on the link (one nft
        transaction). On an error the rules in force stay, it is logged, and the next change
        of the peers tries again."""
        self._policy_table = table
        if self._policy_pending is not None:
            self._policy_pending.cancel()
            self._policy_pending = None
        try:
            self.policy.apply(table, self.policy.sources)
        except MeshguardError as exc:
            log.error("kernel policy not applied: %s", exc)

    def _policy_soon(self) -> None:
        """The peers' allowed IPs changed: the rules follow once for a burst of changes."""
        if self._policy_pending is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._policy_flush()
            return
        self._policy_pending = loop.call_later(POLICY_DELAY, self._policy_flush)

    def _policy_flush(self) -> None:
        self._policy_pending = None
        self.set_policy(self._policy_table)

    @property
    def policy_enforced(self) -> bool:
        return self.policy.table is self._policy_table

    def policy_counters(self) -> PolicyCounters | None:
        """nft's counts, None while the table asked for is not in force (nft refused it):
        `meshguard policy` then says it is not enforced."""
        return self.policy.counters() if self.policy_enforced else None

    def _policy_close(self, what: str) -> None:
        if self._policy_pending is not None:
            self._policy_pending.cancel()
            self._policy_pending = None
        try:
            self.policy.close()
        except MeshguardError as exc:
            log.log(logging.ERROR if self.policy.installed else logging.DEBUG,
                    "removing %s: %s", what, exc)

    async def peer_stats(self) -> PeerStats | None:
        return await asyncio.to_thread(self._kernel_stats)

    def _kernel_stats(self) -> PeerStats:
        assert self.kernel is not None
        try:
            return {s.public_key: (s.last_handshake_wall, s.rx_bytes, s.tx_bytes, s.endpoint)
                    for s in self.kernel.peer_stats()}
        except Exception as exc:
            log.warning("kernel peer stats: %s", exc)
            return {}

    def counters(self) -> dict[str, int]:
        return {} if self.paths is None else self.paths.counters()

    # ---- timers ------------------------------------------------------------------------

    def _arm_timer(self) -> None:
        if self.node is None:
            return
        loop = asyncio.get_running_loop()
        if self._timer is not None:
            self._timer.cancel()
        deadline = self.node.next_deadline()
        delay = MAX_TIMER_DELAY if deadline is None else max(0.0,
                                                             deadline - self.clock.monotonic())
        self._timer = loop.call_later(min(delay, MAX_TIMER_DELAY), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.node is None:
            return
        c = self.clock
        try:
            self._dispatch(self.node.tick(c.monotonic(), c.wall()))
        except Exception:
            # a bug must not stop the timers for good: count it, warn now and then, go on
            self.node.counters["timer_errors"] += 1
            if self._throttle.due(c.monotonic()):
                log.exception("timer: node tick raised (%d so far)",
                              self.node.counters["timer_errors"])
        finally:
            self._arm_timer()
