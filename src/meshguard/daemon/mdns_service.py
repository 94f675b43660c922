"""`up --mdns`: this node's `_meshguard._udp.local.` service on the LAN, and a browser for
the others' (python-zeroconf; what is advertised and kept: discovery/mdns_info.py,
docs/seeds.md).

zeroconf runs on the daemon's event loop, on the underlay's IPv4 addresses only (never the
mesh interface). A name another host already holds is a warning, and zeroconf registers the
service under a renamed instance (`<name>-2`). Every advertisement seen is resolved (at most
MAX_PENDING at a time) and handed to MdnsPeers, which bounds what is kept; `on_change` gets the
kept endpoints whenever they change. The original Zig meshguard's own query (a TXT question for
`_meshguard._udp.local`, which zeroconf does not answer) gets its answer from LegacyAnswerer.
After an underlay change (`moved`, the underlay watch's hook) the service is withdrawn from the
old addresses (zeroconf's goodbye) and advertised on the new ones; what was found is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable

from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from meshguard.clock import Clock
from meshguard.discovery.mdns_info import (
    SERVICE_TYPE,
    MdnsPeers,
    instance_name,
    parse_service,
    service_properties,
)
from meshguard.discovery.mdns_legacy import MAX_QUERY, MDNS_GROUP, MDNS_PORT, LegacyResponder
from meshguard.discovery.txt_records import format_meshguard_txt
from meshguard.sansio import Endpoint

log = logging.getLogger("meshguard.mdns")

MAX_PENDING = 8  # advertisements being resolved at once
IP_MULTICAST_ALL = 49  # linux/in.h; 0: only the groups this socket joined, where it joined
RESOLVE_TIMEOUT_MS = 3000


class LegacyAnswerer:
    """The original's `--mdns` query, answered (discovery/mdns_legacy.py). Its socket is
    bound to the group address 224.0.0.251:5353 itself, so it sees only what is sent to the
    group (zeroconf, bound to the wildcard address, keeps every unicast datagram), and only
    on the interfaces it joined on (IP_MULTICAST_ALL off: Linux otherwise hands it the group's
    datagrams from every interface any program joined, a system responder's on the mesh
    interface or another LAN included); answers go out from a second, unbound socket to the
    querier's port."""

    def __init__(self, clock: Clock, hosts: list[str], strings: list[str]) -> None:
        self.clock = clock
        self.responder = LegacyResponder(strings)
        self._rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self._rx.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._rx.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_ALL, 0)
            self._rx.bind((MDNS_GROUP, MDNS_PORT))
            for h in hosts:
                with contextlib.suppress(OSError):
                    self._rx.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                                        socket.inet_aton(MDNS_GROUP) + socket.inet_aton(h))
            self._rx.setblocking(False)
            self._tx.setblocking(False)
        except OSError:
            self.close()
            raise
        asyncio.get_running_loop().add_reader(self._rx.fileno(), self._readable)

    def _readable(self) -> None:
        for _ in range(64):
            try:
                data, src = self._rx.recvfrom(MAX_QUERY + 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            out = self.responder.answer(self.clock.monotonic(), data, (src[0], src[1]), True)
            if out is not None:
                with contextlib.suppress(OSError):
                    self._tx.sendto(out, src)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self._rx.fileno())
        self._rx.close()
        self._tx.close()


class MdnsService:
    def __init__(self, clock: Clock, identity_key: bytes, name: str | None,
                 endpoints: list[Endpoint], on_change: Callable[[list[Endpoint]], None]) -> None:
        self.clock = clock
        self.identity_key = identity_key
        self.instance = instance_name(name, identity_key)
        self.port = endpoints[0][1] if endpoints else 0  # the gossip port
        self.endpoints = [e for e in endpoints if ":" not in e[0]]
        self.peers = MdnsPeers(identity_key, self.endpoints)
        self.registered_as: str | None = None
        self._on_change = on_change
        self._azc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._legacy: LegacyAnswerer | None = None
        self._lock = asyncio.Lock()
        self._moves: set[asyncio.Task[None]] = set()

    @property
    def counters(self) -> dict[str, int]:
        out = dict(self.peers.counters)
        if self._legacy is not None:
            out.update(self._legacy.responder.counters)
        return out

    async def start(self) -> None:
        hosts = [h for h, _ in self.endpoints]
        if not hosts:
            log.warning("mDNS: no IPv4 underlay address to advertise on; not starting")
            return
        try:
            self._azc = AsyncZeroconf(interfaces=hosts, ip_version=IPVersion.V4Only)
        except Exception as exc:  # port 5353 held by a responder that shares it with no one
            log.warning("mDNS: cannot start on %s: %s; no LAN discovery", ", ".join(hosts), exc)
            return
        port = self.endpoints[0][1]
        info = AsyncServiceInfo(
            SERVICE_TYPE, f"{self.instance}.{SERVICE_TYPE}", port=port,
            properties=service_properties(self.identity_key, self.endpoints),
            addresses=[socket.inet_aton(h) for h in hosts],
            server=f"{self.instance}.local.")
        self._browser = AsyncServiceBrowser(self._azc.zeroconf, SERVICE_TYPE,
                                            handlers=[self._on_service])
        self._spawn(self._register(info))
        try:
            self._legacy = LegacyAnswerer(self.clock, hosts,
                                          [format_meshguard_txt(self.endpoints[0])])
        except OSError as exc:
            log.warning("mDNS: cannot answer the original meshguard's seed query "
                        "(%s:%d: %s)", MDNS_GROUP, MDNS_PORT, exc.strerror)

    async def _register(self, info: AsyncServiceInfo) -> None:
        assert self._azc is not None
        wanted = info.name
        try:
            await self._azc.async_register_service(info, allow_name_change=True)
        except Exception as exc:  # a LAN problem must not stop the daemon
            log.warning("mDNS: cannot register %s: %s", wanted, exc)
            return
        self.registered_as = info.name
        if info.name != wanted:
            log.warning("mDNS: the name %s is taken on this LAN; registered as %s",
                        wanted, info.name)
        else:
            log.info("mDNS: registered %s", info.name)

    def _spawn(self, coro: object) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_service(self, zeroconf: Zeroconf, service_type: str, name: str,
                    state_change: ServiceStateChange) -> None:
        if state_change is ServiceStateChange.Removed:
            if self.peers.remove(name):
                self._on_change(self.peers.endpoints())
            return
        if len(self._tasks) >= MAX_PENDING:
            self.peers.counters["mdns_dropped"] += 1
            return
        self._spawn(self._resolve(service_type, name))

    async def _resolve(self, service_type: str, name: str) -> None:
        if self._azc is None:
            return
        info = AsyncServiceInfo(service_type, name)
        try:
            ok = await info.async_request(self._azc.zeroconf, RESOLVE_TIMEOUT_MS)
        except Exception:  # hostile or broken answers are dropped
            ok = False
        if not ok:
            self.peers.counters["mdns_dropped"] += 1
            return
        peer = parse_service(name, info.properties, info.parsed_addresses(IPVersion.V4Only),
                             info.port)
        if isinstance(peer, str):
            log.debug("mDNS: %s dropped: %s", name, peer)
        if self.peers.add(peer, name):
            log.info("mDNS: found %s at %s", name,
                     ", ".join(f"{h}:{p}" for h, p in self.peers.endpoints()))
            self._on_change(self.peers.endpoints())

    def moved(self, old: tuple[str, ...], new: tuple[str, ...]) -> None:
        """The underlay changed (UnderlayWatch.on_moved): advertise `new` in the background."""
        task = asyncio.get_running_loop().create_task(self.readvertise(new))
        self._moves.add(task)
        task.add_done_callback(self._moves.discard)

    async def readvertise(self, hosts: tuple[str, ...]) -> None:
        """Withdraw the service from the old addresses and advertise it on `hosts` (IPv4)."""
        async with self._lock:
            new = [(h, self.port) for h in hosts if ":" not in h]
            if new == self.endpoints:
                return
            old = self.endpoints
            await self._stop()
            self.endpoints = new
            self.peers.set_own(new)
            log.info("mDNS: the underlay moved: advertising %s instead of %s",
                     ", ".join(h for h, _ in new) or "nothing",
                     ", ".join(h for h, _ in old) or "nothing")
            await self.start()

    async def _stop(self) -> None:
        if self._legacy is not None:
            self._legacy.close()
            self._legacy = None
        for t in list(self._tasks):
            t.cancel()
        if self._browser is not None:
            with contextlib.suppress(Exception):
                await self._browser.async_cancel()
            self._browser = None
        if self._azc is not None:
            with contextlib.suppress(Exception):
                await self._azc.async_unregister_all_services()  # the goodbye
            with contextlib.suppress(Exception):
                await self._azc.async_close()
            self._azc = None
        self.registered_as = None

    async def close(self) -> None:
        for t in list(self._moves):
            t.cancel()
        await self._stop()
