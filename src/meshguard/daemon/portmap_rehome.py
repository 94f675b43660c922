"""The router's port mapping after an underlay change (docs/nat-testbed.md#port-mapping).

    holder = PortmapHolder(lambda: start_portmap(...), gone=advertise)
    await holder.open()                 # the first request, at start-up
    holder.moved()                      # the underlay watch's hook: ask again where needed
    await holder.close()                # delete the mapping at shutdown

A mapping belongs to one gateway and one client address. After a change the holder looks up
the default gateway and the source address towards it again: the same pair keeps the mapping;
any other pair needs a new one. The old mapping is then deleted when its gateway can still be
reached from its client address (the old link is still up, only the default route moved),
and forgotten otherwise (a request could not get there; the router lets it expire).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from enum import Enum

from meshguard.daemon.host_probe import default_gateway, route_source
from meshguard.daemon.portmap_task import PortmapTask

log = logging.getLogger("meshguard.portmap")


class OldMapping(Enum):
    KEEP = "keep"  # the same gateway and client address: the mapping holds
    DELETE = "delete"  # another pair, the old gateway still reachable from the old address
    FORGET = "forget"  # another pair, the old gateway out of reach


def old_mapping(old: tuple[str, str], new: tuple[str | None, str | None],
                source_now: str | None) -> OldMapping:
    """What becomes of the mapping made at `old` (gateway, client) when the underlay now has
    `new`; `source_now` is the local source address towards the old gateway now."""
    if new == old:
        return OldMapping.KEEP
    return OldMapping.DELETE if source_now == old[1] else OldMapping.FORGET


class PortmapHolder:
    def __init__(self, start: Callable[[], Awaitable[PortmapTask | None]],
                 gateway_of: Callable[[], str | None] = default_gateway,
                 source_of: Callable[[str], str | None] = route_source,
                 gone: Callable[[], object] = lambda: None) -> None:
        self._start = start
        self._gone = gone  # the old mapping is no more: the record drops it
        self.gateway_of = gateway_of
        self.source_of = source_of
        self.task: PortmapTask | None = None
        self._lock = asyncio.Lock()
        self._jobs: set[asyncio.Task[OldMapping | None]] = set()

    async def open(self) -> None:
        async with self._lock:
            self.task = await self._start()

    def moved(self, old: tuple[str, ...] = (), new: tuple[str, ...] = ()) -> None:
        """The underlay changed (UnderlayWatch.on_moved): follow it in the background."""
        job = asyncio.get_running_loop().create_task(self.follow())
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)

    async def follow(self) -> OldMapping | None:
        """Ask again if the gateway or our address towards it changed; None when nothing
        was mapped before (then a gateway that has appeared is asked)."""
        async with self._lock:
            cur = self.task
            gateway = await asyncio.to_thread(self.gateway_of)
            client = await asyncio.to_thread(self.source_of, gateway) if gateway else None
            if cur is None:
                self.task = await self._start()
                return None
            was = (cur.mapper.gateway, cur.mapper.client_ip)
            source = await asyncio.to_thread(self.source_of, was[0])
            fate = old_mapping(was, (gateway, client), source)
            if fate is OldMapping.KEEP:
                return fate
            log.info("port mapping: the underlay moved (gateway %s, address %s); asking again",
                     gateway or "none", client or "none")
            # the new request first (the peers wait for it), then the old mapping goes
            self.task = await self._start()
            if fate is OldMapping.DELETE:
                await cur.close()
            else:
                cur.forget()
            self._gone()
            return fate

    async def close(self) -> None:
        jobs = list(self._jobs)
        for job in jobs:
            job.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
        async with self._lock:
            if self.task is not None:
                await self.task.close()
