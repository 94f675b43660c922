"""The asyncio shell around the port mapping client (nat/portmap.py): its UDP socket to the
gateway's port 5351, its timer, UPnP calls in a thread, and the deletion at shutdown.

The socket is connected to the gateway, so the kernel passes on only the gateway's datagrams
and reports its ICMP port unreachable (a router without PCP/NAT-PMP is passed over at once).
Events go to the daemon's callback (which advertises a mapping or stops advertising it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable

from meshguard.clock import Clock
from meshguard.daemon.host_probe import default_gateway, route_source
from meshguard.daemon.upnp_igd import IgdClient
from meshguard.nat.portmap import (
    SERVER_PORT,
    Method,
    PortmapAction,
    PortMapper,
    UpnpCall,
    UpnpResult,
)
from meshguard.rng import Rng
from meshguard.sansio import Endpoint, SendDatagram

log = logging.getLogger("meshguard.portmap")

REMOVE_TIMEOUT = 2.0  # seconds `down` waits for the router to confirm the deletion


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, task: PortmapTask) -> None:
        self.task = task

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.task.received(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        if isinstance(exc, ConnectionRefusedError):
            self.task.feed(self.task.mapper.unreachable(self.task.clock.monotonic()))


def _settle(fut: asyncio.Future[UpnpResult], res: UpnpResult) -> None:
    if not fut.done():
        fut.set_result(res)


class PortmapTask:
    def __init__(self, mapper: PortMapper, clock: Clock,
                 on_events: Callable[[list[PortmapAction]], None], igd: IgdClient) -> None:
        self.mapper = mapper
        self.clock = clock
        self.on_events = on_events
        self.igd = igd
        self._transport: asyncio.DatagramTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._calls: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if any(m is not Method.UPNP for m in self.mapper.methods):
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _Datagrams(self), remote_addr=(self.mapper.gateway, SERVER_PORT))
            self._transport = transport
        self.feed(self.mapper.start(self.clock.monotonic()))

    def received(self, data: bytes, src: Endpoint) -> None:
        c = self.clock
        self.feed(self.mapper.receive(c.monotonic(), c.wall(), data, src))

    def feed(self, actions: list[PortmapAction]) -> None:
        events: list[PortmapAction] = []
        for a in actions:
            if isinstance(a, SendDatagram):
                if self._transport is not None:
                    self._transport.sendto(a.data)
            elif isinstance(a, UpnpCall):
                t = asyncio.get_running_loop().create_task(self._upnp(a))
                self._calls.add(t)
                t.add_done_callback(self._calls.discard)
            else:
                events.append(a)
        if events:
            self.on_events(events)
        self._arm()

    async def _upnp(self, call: UpnpCall) -> None:
        # a daemon thread, not the loop's executor: a router that never answers must not
        # hold up the daemon's exit (asyncio.run waits for the executor's threads)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[UpnpResult] = loop.create_future()

        def run() -> None:
            res = self.igd.call(call)
            with contextlib.suppress(RuntimeError):  # the loop is gone
                loop.call_soon_threadsafe(_settle, fut, res)

        threading.Thread(target=run, name="meshguard-upnp", daemon=True).start()
        try:
            res = await asyncio.wait_for(fut, self.mapper.upnp_timeout)
        except TimeoutError:
            res = UpnpResult(False, error="the UPnP gateway did not answer in time")
        self.feed(self.mapper.upnp_done(self.clock.monotonic(), res))

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        d = self.mapper.next_deadline()
        if d is not None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(max(0.0, d - self.clock.monotonic()), self._tick)

    def _tick(self) -> None:
        self._timer = None
        c = self.clock
        self.feed(self.mapper.tick(c.monotonic(), c.wall()))

    def status(self) -> dict[str, object] | None:
        m = self.mapper.mapping
        if m is None:
            return None
        return {"protocol": m.method.value, "external": f"{m.external[0]}:{m.external[1]}",
                "internal_port": m.internal_port,
                "expires_in": max(0, round(m.expires - self.clock.monotonic()))}

    def forget(self) -> None:
        """Stop without deleting the mapping: its gateway is out of reach (it expires there)."""
        if self.mapper.mapping is not None:
            self.mapper.counters["portmap_forgotten"] += 1
            log.info("port mapping at %s forgotten (the gateway is out of reach)",
                     self.mapper.gateway)
        self.mapper.mapping = None
        self.mapper.removed = True
        self._shut()

    def _shut(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for t in list(self._calls):
            t.cancel()
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    async def close(self, timeout: float = REMOVE_TIMEOUT) -> None:
        """Delete the mapping (waiting at most `timeout` for the router), then stop."""
        try:
            had = self.mapper.mapping is not None
            self.feed(self.mapper.stop(self.clock.monotonic()))
            deadline = time.monotonic() + timeout
            while not self.mapper.removed and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            if had and self.mapper.removed:
                log.info("port mapping removed")
            elif had:
                log.warning("the router did not confirm the removal of the port mapping")
        finally:
            self._shut()


async def start_portmap(port: int, methods: tuple[Method, ...], rng: Rng, clock: Clock,
                        on_events: Callable[[list[PortmapAction]], None],
                        gateway_of: Callable[[], str | None] = default_gateway,
                        source_of: Callable[[str], str | None] = route_source
                        ) -> PortmapTask | None:
    """Map UDP `port` at the default gateway; None when there is no gateway (a public host
    or a LAN without a router)."""
    gateway = await asyncio.to_thread(gateway_of)
    client = await asyncio.to_thread(source_of, gateway) if gateway else None
    if gateway is None or client is None:
        log.info("port mapping: no IPv4 default gateway, not asking for one")
        return None
    mapper = PortMapper(rng, gateway=gateway, client_ip=client, internal_port=port,
                        methods=methods)
    task = PortmapTask(mapper, clock, on_events, IgdClient(gateway))
    try:
        await task.start()
    except OSError as exc:
        log.warning("port mapping: cannot reach the gateway %s: %s", gateway, exc)
        with contextlib.suppress(Exception):
            await task.close(0)
        return None
    return task
