"""The daemon's seeds (docs/seeds.md): looks up host names and `--dns` domains when
discovery/seed_schedule.py says so, takes mDNS discoveries, and calls `join` with every
address whenever they change, and again while the node has no live member.

Nothing here is fatal: a name that does not resolve, an empty TXT answer or a malformed
record is a warning naming it, and the lookup is retried with backoff forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from meshguard.clock import Clock
from meshguard.discovery.seed_schedule import (
    ADDRESS,
    DNS,
    HOST,
    MDNS,
    SeedSchedule,
    SeedSource,
)
from meshguard.sansio import Endpoint
from meshguard.wire.seed_status import SeedsStatus

if TYPE_CHECKING:
    import dns.asyncresolver

    from meshguard.daemon.mdns_service import MdnsService

log = logging.getLogger("meshguard.seeds")

POLL = 1.0  # seconds between two looks at the node's liveness
FIRST_LOOKUP = 6.0  # seconds start-up waits for the first answers


def seed_sources(seeds: list[Endpoint], domains: list[str], mdns: bool) -> list[SeedSource]:
    out: list[SeedSource] = []
    for host, port in seeds:
        try:
            ipaddress.ip_address(host)
            kind = ADDRESS
        except ValueError:
            kind = HOST
        name = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        out.append(SeedSource(kind, name, host, port))
    out.extend(SeedSource(DNS, d.rstrip(".")) for d in domains)
    if mdns:
        out.append(SeedSource(MDNS, "_meshguard._udp.local"))
    return out


class SeedRunner:
    def __init__(self, sources: list[SeedSource], clock: Clock, env: Mapping[str, str],
                 connected: Callable[[], bool]) -> None:
        self.clock = clock
        self.schedule = SeedSchedule(sources, clock.monotonic(), clock.wall())
        self._env = env
        self._resolver: dns.asyncresolver.Resolver | None = None
        self._resolver_made = False
        self._connected = connected
        self._join: Callable[[list[Endpoint]], None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._warned: dict[SeedSource, str] = {}
        self.mdns: MdnsService | None = None

    def counters(self) -> dict[str, int]:
        return self.mdns.counters if self.mdns is not None else {}

    @property
    def addresses(self) -> list[Endpoint]:
        return self.schedule.addresses()

    async def first_lookup(self) -> list[Endpoint]:
        """Look every name up once (start-up); the addresses found so far."""
        due = self.schedule.due(self.clock.monotonic())
        if due:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*(self._lookup(s) for s in due)),
                                       FIRST_LOOKUP)
        return self.addresses

    def start(self, join: Callable[[list[Endpoint]], None]) -> None:
        """From now on, `join(addresses)` is called with every address when they change."""
        self._join = join
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def set_sources(self, sources: list[SeedSource]) -> None:
        """Reload: these sources from now on; new addresses are joined through at once, new
        names looked up within a second (the loop below)."""
        c = self.clock
        if self.schedule.set_sources(sources, c.monotonic(), c.wall()):
            self._changed()

    def discovered(self, addresses: list[Endpoint]) -> None:
        """mDNS found these (daemon/mdns_service.py)."""
        src = next((s for s in self.schedule.sources if s.kind == MDNS), None)
        if src is not None and self.schedule.discovered(self.clock.wall(), src, addresses):
            self._changed()

    def status(self) -> SeedsStatus:
        return self.schedule.status(self.clock.monotonic(), self.clock.wall())

    def _changed(self) -> None:
        addrs = self.addresses
        if addrs and self._join is not None:
            log.info("seeds: joining through %s",
                     ", ".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in addrs))
            self._join(addrs)

    async def _lookup(self, src: SeedSource) -> bool:
        """One lookup; True if the source's addresses changed."""
        # imported here, not at the top: dnspython costs ~0.14 s of start-up, which a node
        # with literal seeds only (or none) never needs
        from meshguard.daemon.seed_lookup import (
            LookupFailed,
            lookup_host,
            lookup_txt,
            make_resolver,
        )

        if not self._resolver_made:
            self._resolver = make_resolver(self._env)
            self._resolver_made = True
        c = self.clock
        try:
            if src.kind == HOST:
                addrs, ttl = await lookup_host(self._resolver, src.host, src.port)
                warnings: list[str] = []
            else:
                addrs, ttl_f, warnings = await lookup_txt(self._resolver, src.name)
                ttl = ttl_f
        except LookupFailed as exc:
            msg = str(exc)
            if self._warned.get(src) != msg:
                log.warning("%s; retrying", msg)
                self._warned[src] = msg
            self.schedule.failed(c.monotonic(), c.wall(), src, msg)
            return False
        except asyncio.CancelledError:
            self.schedule.failed(c.monotonic(), c.wall(), src, "cancelled")
            raise
        self._warned.pop(src, None)
        for w in warnings:
            log.warning("%s", w)
        changed = self.schedule.resolved(c.monotonic(), c.wall(), src, addrs, ttl, warnings)
        if changed:
            log.info("seed %s: %s", src.name, ", ".join(f"{h}:{p}" for h, p in addrs))
        return changed

    async def _run(self) -> None:
        sched = self.schedule
        while True:
            now = self.clock.monotonic()
            sched.note_connected(now, self._connected())
            stalled = not sched.connected
            due = sched.due(now)
            if due:
                results = await asyncio.gather(*(self._lookup(s) for s in due))
                if any(results) or stalled:
                    # new addresses, or a node alone: (re)join through every seed
                    self._changed()
            await asyncio.sleep(min(max(sched.next_deadline() - self.clock.monotonic(), 0.05),
                                    POLL))


async def open_mdns(runner: SeedRunner, stack: contextlib.AsyncExitStack, identity_key: bytes,
                    name: str | None, endpoints: list[Endpoint]) -> None:
    """`--mdns`: advertise this node and feed what the LAN advertises to `runner`."""
    # imported here, not at the top: zeroconf costs start-up time a node without --mdns skips
    from meshguard.daemon.mdns_service import MdnsService

    service = MdnsService(runner.clock, identity_key, name, endpoints, runner.discovered)
    stack.push_async_callback(service.close)
    await service.start()
    runner.mdns = service
