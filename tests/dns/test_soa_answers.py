"""The zone's SOA: in negative answers (RFC 2308), for `mesh.` itself, and its serial; every
response read back by dnspython, an independent parser."""

from __future__ import annotations

import ipaddress

from dns import flags as dflags
from dns import message, name, rcode, rdataclass, rdatatype
from dns.rdtypes.ANY.SOA import SOA
from hypothesis import given, settings
from hypothesis import strategies as st

from meshguard.dns.resolver import NEGATIVE_TTL, HostAddresses, Resolver, build_table
from meshguard.wire import dns as wire

V4 = ipaddress.IPv4Address("10.99.1.2")
V6 = ipaddress.IPv6Address("fd99:6d67::1:2:3:4")
APEX = name.from_text("mesh.")


def resolver() -> Resolver:
    return Resolver(build_table([
        ("node-2.abc123.mesh", HostAddresses((V4,), (V6,))),
        ("laptop.mesh", HostAddresses((), (V6,))),
    ]))


def ask(r: Resolver, qname: str, qtype: str, **kw: object) -> message.Message:
    q = message.make_query(qname, qtype, **kw)  # type: ignore[arg-type]
    out = r.handle(q.to_wire())
    assert out is not None
    resp = message.from_wire(out)
    assert resp.id == q.id and resp.flags & dflags.QR
    return resp


def negative_soa(resp: message.Message) -> SOA:
    assert resp.answer == []
    assert len(resp.authority) == 1
    rrset = resp.authority[0]
    assert (rrset.name, rrset.rdtype, rrset.rdclass) == (APEX, rdatatype.SOA, rdataclass.IN)
    assert rrset.ttl == NEGATIVE_TTL  # min(SOA TTL, MINIMUM), RFC 2308 3
    (soa,) = list(rrset)
    assert isinstance(soa, SOA)
    assert soa.minimum == NEGATIVE_TTL
    return soa


def test_nxdomain_carries_the_zone_soa() -> None:
    r = resolver()
    for qname in ("node-3.abc123.mesh.", "x.node-2.abc123.mesh.", "nobody.mesh.",
                  "NODE-3.fff000.MESH."):
        resp = ask(r, qname, "A", use_edns=0)
        assert resp.rcode() == rcode.NXDOMAIN and resp.flags & dflags.AA
        soa = negative_soa(resp)
        assert soa.mname == name.from_text("ns.mesh.")
        assert soa.rname == name.from_text("hostmaster.mesh.")
        assert (soa.refresh, soa.retry, soa.expire) == (3600, 600, 86400)
        assert soa.serial == r.serial
    assert r.counters["dns_nxdomain"] == 4


def test_nodata_carries_the_zone_soa() -> None:
    r = resolver()
    for qname, qtype in (("laptop.mesh.", "A"),  # exists, IPv6 only
                         ("node-2.abc123.mesh.", "TXT"),
                         ("abc123.mesh.", "A"),  # interior name (an org domain)
                         ("mesh.", "A"), ("abc123.mesh.", "SOA"), ("mesh.", "MX")):
        resp = ask(r, qname, qtype)
        assert resp.rcode() == rcode.NOERROR and resp.flags & dflags.AA, (qname, qtype)
        negative_soa(resp)
    assert r.counters["dns_nodata"] == 6


def test_positive_and_refused_answers_carry_no_authority() -> None:
    r = resolver()
    ok = ask(r, "node-2.abc123.mesh.", "AAAA")
    assert ok.authority == [] and [str(x) for x in ok.answer[0]] == [str(V6)]
    refused = ask(r, "example.com.", "A")
    assert refused.rcode() == rcode.REFUSED and refused.authority == []
    assert not refused.flags & dflags.AA


def test_the_apex_answers_soa_and_ns() -> None:
    r = resolver()
    soa = ask(r, "MESH.", "SOA")
    assert soa.rcode() == rcode.NOERROR and soa.flags & dflags.AA and soa.authority == []
    (rrset,) = soa.answer
    assert rrset.rdtype == rdatatype.SOA and rrset.ttl == 30
    (rec,) = list(rrset)
    assert isinstance(rec, SOA) and rec.minimum == NEGATIVE_TTL and rec.serial == r.serial
    ns = ask(r, "mesh.", "NS")
    assert [(x.name, x.rdtype) for x in ns.answer] == [(APEX, rdatatype.NS)]
    assert [str(x) for x in ns.answer[0]] == ["ns.mesh."]
    both = ask(r, "mesh.", "ANY")
    assert sorted(x.rdtype for x in both.answer) == [rdatatype.NS, rdatatype.SOA]


def test_ns_mesh_is_this_server_unless_a_member_holds_the_name() -> None:
    r = resolver()
    assert ask(r, "ns.mesh.", "A").rcode() == rcode.NXDOMAIN  # own addresses not known yet
    r.server = HostAddresses((ipaddress.IPv4Address("10.99.0.1"),), ())
    assert [str(x) for x in ask(r, "ns.mesh.", "A").answer[0]] == ["10.99.0.1"]
    r.set_table(build_table([("ns.mesh", HostAddresses((V4,), ()))]))
    assert [str(x) for x in ask(r, "ns.mesh.", "A").answer[0]] == [str(V4)]


def test_serial_moves_forward_exactly_when_the_table_changes() -> None:
    r = resolver()
    start = r.serial
    same = build_table([("node-2.abc123.mesh", HostAddresses((V4,), (V6,))),
                        ("laptop.mesh", HostAddresses((), (V6,)))])
    r.set_table(same, 1_800_000_000.5)
    assert r.serial == start  # an equal table is no change
    r.set_table(build_table([("a.mesh", HostAddresses((V4,), ()))]), 1_800_000_000.5)
    assert r.serial == 1_800_000_000  # the unix time of the change
    r.set_table(build_table([("b.mesh", HostAddresses((V4,), ()))]), 1_800_000_000.9)
    assert r.serial == 1_800_000_001  # a second change within that second still moves it
    r.set_table(build_table([("c.mesh", HostAddresses((V4,), ()))]), 1_700_000_000)
    assert r.serial == 1_800_000_002  # a clock stepped back does not move it backwards
    assert negative_soa(ask(r, "zz.mesh.", "A")).serial == 1_800_000_002
    (rec,) = list(ask(r, "mesh.", "SOA").answer[0])
    assert isinstance(rec, SOA) and rec.serial == 1_800_000_002


def test_a_negative_answer_fits_a_plain_udp_reply_for_the_longest_name() -> None:
    r = resolver()
    longest = ".".join(["a" * 63] * 3 + ["b" * 56]) + ".mesh."
    assert len(name.from_text(longest).to_wire()) == 255
    q = message.make_query(longest, "A")
    out = r.handle(q.to_wire()) or b""
    assert len(out) <= 512 and not wire.parse_header(out).flags & wire.TC
    negative_soa(message.from_wire(out))


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=12, max_size=300))
def test_every_reply_is_a_well_formed_message(data: bytes) -> None:
    """Whatever arrives, what goes back parses with an independent DNS implementation."""
    for q in (data, wire.build_query(1, "x.mesh", 1)[:12] + data[12:]):
        out = resolver().handle(q)
        if out is not None:
            resp = message.from_wire(out, question_only=False)
            assert resp.id == wire.parse_header(q).id and len(out) <= 512


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["mesh", "abc123", "node-2", "laptop", "ns", "x", "MESH"]),
                min_size=0, max_size=4),
       st.sampled_from(["A", "AAAA", "SOA", "NS", "ANY", "TXT", "MX"]))
def test_every_answer_under_mesh_is_authoritative_and_negative_ones_name_the_soa(
        labels: list[str], qtype: str) -> None:
    qname = ".".join([*labels, "mesh"]) + "."
    resp = ask(resolver(), qname, qtype)
    assert resp.flags & dflags.AA
    if not resp.answer:
        negative_soa(resp)
