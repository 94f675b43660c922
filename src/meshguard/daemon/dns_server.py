"""Serve the mesh resolver (dns/resolver.py) on UDP and TCP port 53 of the mesh addresses.

The sockets bind to this node's mesh IPv4 and IPv6 addresses only (never the underlay). Linux
still delivers a datagram for a mesh address that arrives on an underlay interface (the weak
host model), so every query's source is checked too: only loopback and mesh addresses
(10.99.0.0/16, fd99:6d67::/64, also IPv4-mapped) are answered; any other source is counted
(`counters["dns_foreign_source"]`) and dropped without an answer, and a TCP connection from
one is closed unread. A mesh source can be forged from the underlay too, so UDP answers are
budgeted per source and in all (UDP_SOURCE_RATE, UDP_GLOBAL_RATE; `dns_rate_limited`).
IP_FREEBIND lets the IPv6 socket bind while the address is still tentative (duplicate address
detection). TCP (RFC 7766:
two-byte length prefix, several queries per connection) serves clients retrying a truncated
UDP answer; connections are capped and idle ones closed.

With a `link` (daemon/resolved_link.py), every start and rebind registers the bound addresses
and the routing domains `domains()` with systemd-resolved on the mesh interface, `relink()`
re-sends the domains (trust changed), and `stop()` reverts them. Without systemd-resolved:
`dig @10.99.x.y node-2.abc123.mesh` from any member.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import cast

from meshguard.daemon.resolved_link import ResolvedLink
from meshguard.dns.resolver import Resolver
from meshguard.identity.addressing import MESH_IPV4_NETWORK, MESH_IPV6_NETWORK
from meshguard.nat.budget import SourceBudget

log = logging.getLogger(__name__)

DEFAULT_DNS_PORT = 53
TCP_IDLE = 10.0  # seconds an idle TCP connection is kept (RFC 7766 6.2.3 suggests seconds)
TCP_MAX_CONNECTIONS = 64
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)
IPV6_FREEBIND = 78  # linux/in6.h


def _socket(address: str, port: int, kind: socket.SocketKind) -> socket.socket:
    v6 = ipaddress.ip_address(address).version == 6
    sock = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with contextlib.suppress(OSError):
            if v6:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
        sock.bind((address, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def mesh_or_loopback(host: str) -> bool:
    """Whether a query from `host` may be answered: a loopback or mesh address."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return True
    if isinstance(ip, ipaddress.IPv4Address):
        return ip in MESH_IPV4_NETWORK
    return ip in MESH_IPV6_NETWORK


# Answers over UDP, per source address and in all (token buckets, nat/budget.py): a query
# from a mesh address may have come from the underlay with a forged source, and an answer
# is up to ~5 times its query; this node's own addresses (systemd-resolved's) are exempt.
UDP_SOURCE_RATE, UDP_SOURCE_BURST = 100, 200
UDP_GLOBAL_RATE, UDP_GLOBAL_BURST = 1000, 2000


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        server = self.server
        if not server.allowed(addr[0]):
            server.counters["dns_foreign_source"] += 1
            return
        if addr[0] not in server.bound and server.budget.take(server.clock(), addr[0]):
            server.counters["dns_rate_limited"] += 1
            return
        out = server.resolver().handle(data)
        if out is not None and self.transport is not None:
            server.counters["dns_answered"] += 1
            self.transport.sendto(out, addr)
        else:
            server.counters["dns_unanswered"] += 1


class DnsServer:
    """UDP and TCP listeners on each address; `resolver()` returns an up-to-date Resolver;
    `allowed(source address)` says whom to answer (default: loopback and mesh addresses)."""

    def __init__(self, resolver: Callable[[], Resolver], port: int = DEFAULT_DNS_PORT,
                 allowed: Callable[[str], bool] = mesh_or_loopback, *,
                 link: ResolvedLink | None = None,
                 domains: Callable[[], Sequence[str]] = lambda: ["~mesh"],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.resolver = resolver
        self.clock = clock
        self.budget = SourceBudget(UDP_SOURCE_RATE, UDP_SOURCE_BURST, UDP_GLOBAL_RATE,
                                   UDP_GLOBAL_BURST)
        self.allowed = allowed
        self.link = link
        self.domains = domains
        self._link_tasks: set[asyncio.Task[bool]] = set()
        self.counters: Counter[str] = Counter()
        self.port = port
        self._transports: list[asyncio.BaseTransport] = []
        self._servers: list[asyncio.Server] = []
        self._connections = 0
        self.bound: list[str] = []

    async def start(self, addresses: list[str]) -> None:
        loop = asyncio.get_running_loop()
        for addr in addresses:
            try:
                usock = _socket(addr, self.port, socket.SOCK_DGRAM)
            except OSError as exc:
                log.warning("DNS: cannot listen on %s port %d (%s)", addr, self.port,
                            exc.strerror)
                continue
            transport, _ = await loop.create_datagram_endpoint(self.udp_protocol, sock=usock)
            self._transports.append(transport)
            try:
                tsock = _socket(addr, self.port, socket.SOCK_STREAM)
                tsock.listen(16)
                self._servers.append(await asyncio.start_server(self._tcp, sock=tsock))
            except OSError as exc:
                log.warning("DNS: no TCP on %s port %d (%s)", addr, self.port, exc.strerror)
            self.bound.append(addr)
        if self.bound:
            log.info("DNS: serving *.mesh on %s port %d", ", ".join(self.bound), self.port)
            self.relink()

    def relink(self) -> None:
        """Send the bound addresses and routing domains to systemd-resolved, in the background
        (a slow resolvectl never delays start-up); the link runs one call at a time."""
        if self.link is not None and self.bound:
            task = asyncio.get_running_loop().create_task(
                self.link.apply(list(self.bound), self.port, list(self.domains())))
            self._link_tasks.add(task)
            task.add_done_callback(self._link_tasks.discard)

    async def stop(self) -> None:
        """Close the listeners and take the registration back (the daemon stops)."""
        await self.close()
        for task in list(self._link_tasks):
            with contextlib.suppress(Exception):
                await task
        if self.link is not None:
            await self.link.revert()

    def udp_protocol(self) -> _Udp:
        return _Udp(self)

    async def _tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer: object = writer.get_extra_info("peername")
        if not (isinstance(peer, tuple) and peer and self.allowed(str(peer[0]))):
            self.counters["dns_foreign_source"] += 1
            writer.close()
            return
        if self._connections >= TCP_MAX_CONNECTIONS:
            self.counters["dns_tcp_refused"] += 1
            writer.close()
            return
        self._connections += 1
        try:
            while True:
                head = await asyncio.wait_for(reader.readexactly(2), TCP_IDLE)
                (n,) = struct.unpack("!H", head)
                msg = await asyncio.wait_for(reader.readexactly(n), TCP_IDLE)
                out = self.resolver().handle(msg, tcp=True)
                if out is None:
                    break
                writer.write(struct.pack("!H", len(out)) + out)
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            self._connections -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def rebind(self, addresses: list[str]) -> None:
        """Listen on new addresses (our mesh IPv4 moved after an address collision)."""
        await self.close()
        self.bound = []
        await self.start(addresses)

    async def close(self) -> None:
        for t in self._transports:
            t.close()
        for s in self._servers:
            s.close()
            with contextlib.suppress(Exception):
                await s.wait_closed()
        self._transports.clear()
        self._servers.clear()
