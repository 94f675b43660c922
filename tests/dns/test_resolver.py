"""The mesh resolver and its DNS codec: answers, negative answers, flags, truncation, garbage."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshguard.dns.resolver import HostAddresses, Resolver, build_table
from meshguard.errors import WireFormatError
from meshguard.wire import dns

V4 = ipaddress.IPv4Address("10.99.1.2")
V6 = ipaddress.IPv6Address("fd99:6d67::1:2:3:4")


def resolver() -> Resolver:
    table = build_table([
        ("node-2.abc123.mesh", HostAddresses((V4,), (V6,))),
        ("Laptop.mesh", HostAddresses((), (V6,))),  # IPv6 only (lost an IPv4 collision)
    ])
    return Resolver(table)


def ask(r: Resolver, name: str, qtype: int, qid: int = 0x1234, **kw: object) -> dns.ParsedResponse:
    out = r.handle(dns.build_query(qid, name, qtype, **kw))  # type: ignore[arg-type]
    assert out is not None
    return dns.parse_response(out)


def test_a_and_aaaa_answers_echo_id_question_and_flags() -> None:
    r = resolver()
    q = dns.build_query(0xBEEF, "Node-2.ABC123.mesh.", dns.TYPE_A)
    resp = dns.parse_response(r.handle(q) or b"")
    assert resp.header.id == 0xBEEF
    assert resp.rcode == dns.RCODE_NOERROR
    f = resp.header.flags
    assert f & dns.QR and f & dns.AA and f & dns.RD and not f & dns.RA and not f & dns.TC
    assert resp.question == q[12:]  # echoed byte for byte (case preserved)
    assert resp.answers == ((dns.TYPE_A, V4.packed),)
    resp6 = ask(r, "node-2.abc123.mesh", dns.TYPE_AAAA)
    assert resp6.answers == ((dns.TYPE_AAAA, V6.packed),)
    both = ask(r, "node-2.abc123.mesh", dns.TYPE_ANY)
    assert sorted(both.answers) == sorted([(dns.TYPE_A, V4.packed), (dns.TYPE_AAAA, V6.packed)])


def test_ttl_is_set() -> None:
    out = resolver().handle(dns.build_query(1, "node-2.abc123.mesh", dns.TYPE_A)) or b""
    qlen = len(dns.build_query(1, "node-2.abc123.mesh", dns.TYPE_A)) - 12
    (ttl,) = struct.unpack_from("!I", out, 12 + qlen + 2 + 4)
    assert ttl == 30


def test_nodata_nxdomain_refused() -> None:
    r = resolver()
    nodata = ask(r, "laptop.mesh", dns.TYPE_A)  # exists, IPv6 only
    assert nodata.rcode == dns.RCODE_NOERROR and nodata.answers == ()
    assert ask(r, "laptop.mesh", dns.TYPE_AAAA).answers == ((dns.TYPE_AAAA, V6.packed),)
    assert ask(r, "node-2.abc123.mesh", 16).answers == ()  # TXT: NODATA
    interior = ask(r, "abc123.mesh", dns.TYPE_A)
    assert interior.rcode == dns.RCODE_NOERROR and interior.answers == ()
    assert ask(r, "mesh", dns.TYPE_A).rcode == dns.RCODE_NOERROR
    nx = ask(r, "node-3.abc123.mesh", dns.TYPE_A)
    assert nx.rcode == dns.RCODE_NXDOMAIN and nx.header.flags & dns.AA
    assert ask(r, "x.node-2.abc123.mesh", dns.TYPE_A).rcode == dns.RCODE_NXDOMAIN
    refused = ask(r, "example.com", dns.TYPE_A)
    assert refused.rcode == dns.RCODE_REFUSED and not refused.header.flags & dns.AA
    assert ask(r, "notmesh", dns.TYPE_A).rcode == dns.RCODE_REFUSED
    assert r.counters["dns_nxdomain"] == 2 and r.counters["dns_refused"] == 2


def test_table_replacement_is_seen() -> None:
    r = resolver()
    r.set_table(build_table([("new.fff000.mesh", HostAddresses((V4,), ()))]))
    assert ask(r, "node-2.abc123.mesh", dns.TYPE_A).rcode == dns.RCODE_NXDOMAIN
    assert ask(r, "fff000.mesh", dns.TYPE_A).rcode == dns.RCODE_NOERROR
    assert ask(r, "new.fff000.mesh", dns.TYPE_A).answers == ((dns.TYPE_A, V4.packed),)


def test_duplicate_names_merge() -> None:
    t = build_table([("a.mesh", HostAddresses((V4,), ())), ("A.mesh.", HostAddresses((), (V6,)))])
    assert t == {"a.mesh": HostAddresses((V4,), (V6,))}


def test_truncation_over_udp_and_full_answer_over_tcp() -> None:
    many = tuple(ipaddress.IPv6Address(int(V6) + i) for i in range(40))  # 40 * 40 > 512 bytes
    r = Resolver(build_table([("big.mesh", HostAddresses((), many))]))
    q = dns.build_query(7, "big.mesh", dns.TYPE_AAAA)
    udp = dns.parse_response(r.handle(q) or b"")
    assert udp.header.flags & dns.TC and udp.answers == () and udp.question == q[12:]
    assert len(r.handle(q) or b"") <= 512
    tcp = dns.parse_response(r.handle(q, tcp=True) or b"")
    assert not tcp.header.flags & dns.TC and len(tcp.answers) == 40
    # EDNS0 raises the UDP limit (to at most 1232) and the response carries an OPT record
    ed = r.handle(dns.build_query(7, "big.mesh", dns.TYPE_AAAA, edns_payload=4096)) or b""
    assert 512 < len(ed) <= 1232 and not dns.parse_header(ed).flags & dns.TC
    assert len(dns.parse_response(ed).answers) == 40 and dns.parse_header(ed).arcount == 1
    huge = tuple(ipaddress.IPv6Address(int(V6) + i) for i in range(60))  # > 1232 bytes
    r.set_table(build_table([("big.mesh", HostAddresses((), huge))]))
    ed = r.handle(dns.build_query(7, "big.mesh", dns.TYPE_AAAA, edns_payload=4096)) or b""
    assert dns.parse_header(ed).flags & dns.TC and len(ed) <= 1232


def test_edns_small_answer_fits() -> None:
    r = resolver()
    out = r.handle(dns.build_query(9, "node-2.abc123.mesh", dns.TYPE_A, edns_payload=1232))
    assert out is not None and out.endswith(dns.opt_record())
    assert dns.parse_header(out).arcount == 1


def test_opcode_formerr_and_silence() -> None:
    r = resolver()
    q = bytearray(dns.build_query(5, "node-2.abc123.mesh", dns.TYPE_A))
    q[2] |= 2 << 3  # opcode 2 (STATUS)
    resp = dns.parse_response(r.handle(bytes(q)) or b"")
    assert resp.rcode == dns.RCODE_NOTIMP and resp.header.id == 5
    two = bytearray(dns.build_query(6, "a.mesh", dns.TYPE_A))
    two[5] = 2  # qdcount 2
    assert dns.parse_header(r.handle(bytes(two)) or b"").flags & 0xF == dns.RCODE_FORMERR
    ptr = dns.build_query(6, "a.mesh", dns.TYPE_A)[:12] + b"\xc0\x0c\x00\x01\x00\x01"
    assert dns.parse_header(r.handle(ptr) or b"").flags & 0xF == dns.RCODE_FORMERR
    assert r.handle(b"") is None and r.handle(b"\x00" * 11) is None
    response = bytearray(dns.build_query(8, "a.mesh", dns.TYPE_A))
    response[2] |= 0x80  # QR set: a response is never answered (no reflection loops)
    assert r.handle(bytes(response)) is None


def test_chaos_class_is_refused() -> None:
    q = bytearray(dns.build_query(3, "node-2.abc123.mesh", dns.TYPE_A))
    q[-1] = 3  # class CH
    assert dns.parse_header(resolver().handle(bytes(q)) or b"").flags & 0xF == dns.RCODE_REFUSED


def test_codec_rejects_bad_names() -> None:
    with pytest.raises(WireFormatError):
        dns.parse_query(b"\x00\x01\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05ab")
    long_name = b"".join(b"\x3f" + b"a" * 63 for _ in range(5)) + b"\x00\x00\x01\x00\x01"
    with pytest.raises(WireFormatError):
        dns.parse_query(dns.HEADER.pack(1, 0, 1, 0, 0, 0) + long_name)
    with pytest.raises(WireFormatError):
        dns.build_query(1, "a" * 64 + ".mesh", dns.TYPE_A)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_garbage_never_raises(data: bytes) -> None:
    r = resolver()
    out = r.handle(data)
    if out is not None:
        h = dns.parse_header(out)
        assert h.flags & dns.QR and h.id == dns.parse_header(data).id
        assert len(out) <= 512


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.lists(
    st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20),
    min_size=0, max_size=5), st.integers(0, 0xFFFF), st.binary(max_size=40))
def test_mutated_queries_never_raise(qid: int, flags: int, labels: list[str], qtype: int,
                                     tail: bytes) -> None:
    q = bytearray(dns.build_query(qid, ".".join(labels), qtype))
    q[2:4] = struct.pack("!H", flags)
    out = resolver().handle(bytes(q) + tail)
    if out is not None:
        assert dns.parse_header(out).id == qid
