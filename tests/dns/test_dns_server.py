"""The daemon's DNS listener on loopback: UDP and TCP (length-prefixed, several queries per
connection), the resolver's table read at query time, garbage answered by silence."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct

from meshguard.daemon.dns_server import DnsServer
from meshguard.dns.resolver import HostAddresses, Resolver, build_table
from meshguard.wire import dns

V4 = ipaddress.IPv4Address("10.99.3.4")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _exercise() -> None:
    resolver = Resolver(build_table([("a.mesh", HostAddresses((V4,), ()))]))
    port = free_port()
    server = DnsServer(lambda: resolver, port)
    await server.start(["127.0.0.1"])
    assert server.bound == ["127.0.0.1"]
    loop = asyncio.get_running_loop()
    try:
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.setblocking(False)
        await loop.sock_connect(udp, ("127.0.0.1", port))
        await loop.sock_sendall(udp, b"\x00garbage")  # no reply to a non-query
        await loop.sock_sendall(udp, dns.build_query(11, "a.mesh", dns.TYPE_A))
        resp = dns.parse_response(await asyncio.wait_for(loop.sock_recv(udp, 2048), 5))
        assert resp.header.id == 11 and resp.answers == ((dns.TYPE_A, V4.packed),)
        udp.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for qid, name, rcode in ((1, "a.mesh", 0), (2, "b.mesh", 3), (3, "a.example", 5)):
            q = dns.build_query(qid, name, dns.TYPE_A)
            writer.write(struct.pack("!H", len(q)) + q)
            await writer.drain()
            (n,) = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 5))
            r = dns.parse_response(await reader.readexactly(n))
            assert (r.header.id, r.rcode) == (qid, rcode)
        writer.close()
        # the table is read per query: a replaced table is served at once
        resolver.set_table(build_table([("c.mesh", HostAddresses((V4,), ()))]))
        await server.rebind(["127.0.0.1"])
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.setblocking(False)
        await loop.sock_connect(udp, ("127.0.0.1", port))
        await loop.sock_sendall(udp, dns.build_query(12, "c.mesh", dns.TYPE_A))
        resp = dns.parse_response(await asyncio.wait_for(loop.sock_recv(udp, 2048), 5))
        assert resp.answers == ((dns.TYPE_A, V4.packed),)
        udp.close()
    finally:
        await server.close()


def test_udp_and_tcp_on_loopback() -> None:
    asyncio.run(_exercise())
