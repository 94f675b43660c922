"""The daemon's DNS listener on loopback: UDP and TCP (length-prefixed, several queries per
connection), the resolver's table read at query time, garbage answered by silence."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct

from dns import asyncquery, message, rcode, rdatatype

from meshguard.daemon.dns_server import (
    UDP_GLOBAL_BURST,
    UDP_SOURCE_BURST,
    UDP_SOURCE_RATE,
    DnsServer,
)
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


def test_dnspython_client_gets_soa_in_negative_answers_over_udp_and_tcp() -> None:
    async def run() -> None:
        resolver = Resolver(build_table([("a.mesh", HostAddresses((V4,), ()))]))
        port = free_port()
        server = DnsServer(lambda: resolver, port)
        await server.start(["127.0.0.1"])
        try:
            nx = await asyncquery.udp(message.make_query("gone.mesh.", "A", use_edns=0),
                                      "127.0.0.1", timeout=5, port=port)
            assert nx.rcode() == rcode.NXDOMAIN and nx.answer == []
            assert [(str(x.name), x.rdtype, x.ttl) for x in nx.authority] == [
                ("mesh.", rdatatype.SOA, 10)]
            nodata = await asyncquery.tcp(message.make_query("a.mesh.", "AAAA"), "127.0.0.1",
                                          timeout=5, port=port)
            assert nodata.rcode() == rcode.NOERROR and nodata.answer == []
            assert [x.rdtype for x in nodata.authority] == [rdatatype.SOA]
            soa = await asyncquery.tcp(message.make_query("mesh.", "SOA"), "127.0.0.1",
                                       timeout=5, port=port)
            assert [x.rdtype for x in soa.answer] == [rdatatype.SOA] and soa.authority == []
            ok = await asyncquery.udp(message.make_query("a.mesh.", "A"), "127.0.0.1",
                                      timeout=5, port=port)
            assert [str(r) for r in ok.answer[0]] == [str(V4)]
        finally:
            await server.close()

    asyncio.run(run())


class _Transport:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sent.append((data, addr))


def test_udp_queries_from_outside_the_mesh_are_counted_and_dropped() -> None:
    """The sockets listen on the mesh addresses, but the host accepts a datagram for its mesh
    address from the underlay too (weak host model): such a query must draw no answer."""
    resolver = Resolver(build_table([("a.mesh", HostAddresses((V4,), ()))]))
    server = DnsServer(lambda: resolver, free_port())
    udp = server.udp_protocol()
    t = _Transport()
    udp.connection_made(t)  # type: ignore[arg-type]
    q = dns.build_query(7, "a.mesh", dns.TYPE_A)
    for src in (("192.0.2.7", 5353), ("203.0.113.1", 53), ("::ffff:198.51.100.2", 1),
                ("2001:db8::1", 53), ("10.98.1.1", 53)):
        udp.datagram_received(q, src)
    assert t.sent == []
    assert server.counters["dns_foreign_source"] == 5
    for src in (("127.0.0.1", 5353), ("::1", 53), ("10.99.3.4", 40000), ("fd99:6d67::7", 1),
                ("::ffff:10.99.1.2", 9)):
        udp.datagram_received(q, src)
    assert [a for _, a in t.sent] == [("127.0.0.1", 5353), ("::1", 53), ("10.99.3.4", 40000),
                                      ("fd99:6d67::7", 1), ("::ffff:10.99.1.2", 9)]
    assert server.counters["dns_answered"] == 5


def test_a_flood_from_one_mesh_source_draws_a_bounded_number_of_answers() -> None:
    """A mesh source can be spoofed from the underlay (weak host model, a loose rp_filter),
    and a negative answer is ~3.6 times its query: answers to one source are budgeted
    (UDP_SOURCE_BURST at once, then UDP_SOURCE_RATE a second), and so are all sources
    together; this node's own addresses (systemd-resolved asks from them) are not."""
    resolver = Resolver(build_table([("a.mesh", HostAddresses((V4,), ()))]))
    clock = [100.0]
    server = DnsServer(lambda: resolver, free_port(), clock=lambda: clock[0])
    server.bound = ["10.99.3.4"]
    udp = server.udp_protocol()
    t = _Transport()
    udp.connection_made(t)  # type: ignore[arg-type]
    q = dns.build_query(7, "no-such-node.mesh", dns.TYPE_A)
    for _ in range(3 * UDP_SOURCE_BURST):
        udp.datagram_received(q, ("10.99.7.7", 53))
    assert len(t.sent) == UDP_SOURCE_BURST
    assert server.counters["dns_rate_limited"] == 2 * UDP_SOURCE_BURST
    for _ in range(3 * UDP_SOURCE_BURST):
        udp.datagram_received(q, ("10.99.3.4", 40000))  # this node itself
    assert len(t.sent) == 4 * UDP_SOURCE_BURST
    clock[0] += 1.0
    for _ in range(3 * UDP_SOURCE_BURST):
        udp.datagram_received(q, ("10.99.7.7", 53))
    assert len(t.sent) == 4 * UDP_SOURCE_BURST + UDP_SOURCE_RATE
    for i in range(20 * UDP_SOURCE_BURST):  # many spoofed sources: the global budget
        udp.datagram_received(q, (f"10.99.{10 + i // 250}.{1 + i % 250}", 53))
    assert len(t.sent) <= 4 * UDP_SOURCE_BURST + UDP_SOURCE_RATE + UDP_GLOBAL_BURST


def test_tcp_connections_from_outside_the_mesh_are_closed_unanswered() -> None:
    async def run() -> None:
        resolver = Resolver(build_table([("a.mesh", HostAddresses((V4,), ()))]))
        server = DnsServer(lambda: resolver, free_port())
        q = dns.build_query(1, "a.mesh", dns.TYPE_A)
        reader = asyncio.StreamReader()
        reader.feed_data(struct.pack("!H", len(q)) + q)
        reader.feed_eof()

        class Writer:
            written = b""
            closed = False

            def get_extra_info(self, name: str) -> object:
                return ("192.0.2.9", 40000) if name == "peername" else None

            def write(self, data: bytes) -> None:
                self.written += data

            async def drain(self) -> None:
                pass

            def close(self) -> None:
                self.closed = True

            async def wait_closed(self) -> None:
                pass

        w = Writer()
        await server._tcp(reader, w)  # type: ignore[arg-type]
        assert w.written == b"" and w.closed
        assert server.counters["dns_foreign_source"] == 1

    asyncio.run(run())
