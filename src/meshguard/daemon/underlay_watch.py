"""The asyncio side of roaming (mesh/roaming.py): netlink events and the periodic look at the
underlay, STUN re-runs, and the re-announcement through the node.

    watch = UnderlayWatch(roaming, node, membership, probe, clock, rng, stun_servers, execute)
    watch.start(loop, stack)            # netlink reader + timer task, undone by the stack
    watch.stun_result(mapped, nat)      # the daemon's StunResult events
    watch.on_moved.append(hook)         # hook(old, new) after every underlay change

`probe` returns the local underlay addresses (daemon/host_probe.py `underlay_hosts`, towards
the seeds as they are now: `seed_probe`); it runs in a thread, since it may dump the host's
addresses over netlink. Netlink events only make the next look come sooner
(netlink_events.py); where netlink cannot be opened the periodic look alone finds a change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

from meshguard.clock import Clock
from meshguard.daemon.host_probe import underlay_hosts
from meshguard.daemon.netlink_events import NetlinkEvents
from meshguard.mesh.node import Action, MeshNode
from meshguard.mesh.roaming import (
    ProbeUnderlay,
    ReachOut,
    Reannounce,
    RestartStun,
    RoamAction,
    Roaming,
    UnderlayChanged,
    apply_reannounce,
    reach_out,
)
from meshguard.mesh.swim_port import SwimPort
from meshguard.nat.stun_client import NatType, StunClient
from meshguard.rng import Rng
from meshguard.sansio import Endpoint
from meshguard.wire.control import format_endpoint

log = logging.getLogger("meshguard.daemon")


def _hosts(hosts: Sequence[str]) -> str:
    return ", ".join(hosts) if hosts else "none"


def seed_probe(seeds: Callable[[], Sequence[Endpoint]], exclude_ifname: str,
               hosts: Callable[[Sequence[Endpoint], str], list[str]] = underlay_hosts
               ) -> Callable[[], list[str]]:
    """The watch's look: the source addresses towards the seeds the seed runner holds at the
    time of the look (a name may resolve elsewhere later, mDNS may find others), not the ones
    start-up had."""
    return lambda: hosts(list(seeds()), exclude_ifname)


class UnderlayWatch:
    def __init__(self, roaming: Roaming, node: MeshNode, membership: SwimPort,
                 probe: Callable[[], list[str]] | None, clock: Clock, rng: Rng,
                 stun_servers: Sequence[Endpoint],
                 execute: Callable[[list[Action]], None],
                 events: NetlinkEvents | None = None,
                 compose: Callable[[Reannounce], tuple[Reannounce, int | None]] | None = None
                 ) -> None:
        self.roaming = roaming
        self.node = node
        self.membership = membership
        self.probe = probe  # None: the addresses are pinned (--announce), no look needed
        self.clock = clock
        self.rng = rng
        self.stun_servers = list(stun_servers)
        self.execute = execute
        self.events = events
        # the shell's own endpoints in front (a router's port mapping) and the record's NAT type
        self.compose = compose
        # what else follows a change (the port mapping, mDNS): called with (old, new) hosts
        self.on_moved: list[Callable[[tuple[str, ...], tuple[str, ...]], None]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self, loop: asyncio.AbstractEventLoop, stack: contextlib.AsyncExitStack) -> None:
        ev = self.events
        if ev is not None:
            loop.add_reader(ev.fileno(), self._readable)
            stack.callback(ev.close)
            stack.callback(loop.remove_reader, ev.fileno())
        self._task = loop.create_task(self._run())
        stack.callback(self._task.cancel)

    def _readable(self) -> None:
        ev = self.events
        if ev is not None and ev.drain():
            self.roaming.note_event(self.clock.monotonic())
            self._wake.set()

    async def _run(self) -> None:
        while True:
            delay = self.roaming.next_deadline() - self.clock.monotonic()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
            self._wake.clear()
            try:
                await self.handle(self.roaming.tick(self.clock.monotonic()))
            except Exception:  # one failed look must not end roaming
                log.exception("underlay watch")

    async def handle(self, actions: list[RoamAction]) -> None:
        for a in actions:
            if isinstance(a, ProbeUnderlay):
                if self.probe is None:
                    continue
                hosts = await asyncio.to_thread(self.probe)
                await self.handle(self.roaming.observed(self.clock.monotonic(), hosts))
            else:
                self.apply(a)

    def apply(self, a: RoamAction) -> None:
        """Carry out one reaction (all but ProbeUnderlay, which needs the thread)."""
        c = self.clock
        node = self.node
        if isinstance(a, UnderlayChanged):
            log.info("underlay address changed: %s -> %s; re-announcing", _hosts(a.old),
                     _hosts(a.new))
            for hook in self.on_moved:
                try:
                    hook(a.old, a.new)
                except Exception:  # one hook's failure must not stop the re-announcement
                    log.exception("underlay change hook")
        elif isinstance(a, ReachOut):
            self.execute(reach_out(node, c.monotonic(), c.wall()))
        elif isinstance(a, RestartStun):
            client = StunClient(self.rng, self.stun_servers, local=a.local)
            self.execute(node.start_stun(client, c.monotonic()))
        elif isinstance(a, Reannounce):
            if a.mapping_changed and a.endpoints:
                log.info("NAT mapping changed: now %s; re-announcing",
                         format_endpoint(a.endpoints[0]))
            record, nat = self.compose(a) if self.compose is not None else (a, a.nat_type)
            self.execute(apply_reannounce(node, self.membership, record, c.monotonic(),
                                          c.wall(), record_nat=nat))

    def stun_result(self, mapped: Endpoint | None, nat_type: int) -> None:
        """A STUN run finished (the node's StunResult)."""
        r = self.roaming
        first = r.nat_type is None
        if mapped is None:
            if first or r.mapped is None:
                log.warning("STUN: no server answered; advertising local endpoints only")
        elif first or (mapped, nat_type) != (r.mapped, r.nat_type):
            log.info("STUN: public endpoint %s, NAT %s", format_endpoint(mapped),
                     NatType(nat_type).name.lower())
        for a in r.stun_finished(self.clock.monotonic(), mapped, nat_type):
            self.apply(a)
