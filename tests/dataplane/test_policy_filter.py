"""The policy filter (dataplane/policy_filter.py and its C twin): classification, rules,
connection tracking, counters. Every behaviour test runs against both implementations."""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest

from meshguard.dataplane import fastpath
from meshguard.dataplane.conntrack import Conntrack, flow_key
from meshguard.dataplane.policy_enforcer import PolicyEnforcer
from meshguard.dataplane.policy_filter import (
    ALLOW,
    DENY,
    ICMP,
    REASONS,
    REPLY,
    UNPARSED,
    PolicyFilterLike,
    PyPolicyFilter,
    classify,
    table_args,
)
from meshguard.policy.table import (
    PROTO_ANY,
    PROTO_TCP,
    PROTO_UDP,
    Chain,
    FlatRule,
    PolicyTable,
    RuleInfo,
)
from meshguard.testing.rng import SeededRng

from .helpers import ip_header

L4, R4 = bytes([10, 7, 0, 1]), bytes([10, 7, 0, 2])  # this node, the peer
L6, R6 = bytes.fromhex("fd07" + "00" * 13 + "01"), bytes.fromhex("fd07" + "00" * 13 + "02")
PEER, OTHER = b"\x01" * 32, b"\x02" * 32

IMPLS: list[Callable[[], PolicyFilterLike]] = [PyPolicyFilter]
if fastpath.C_POLICY_FILTER is not None:
    IMPLS.append(fastpath.C_POLICY_FILTER)


def tcp(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes = b"",
        flags: int = 0x02) -> bytes:
    l4 = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 65535, 0, 0) + payload
    return ip_header(src, dst, PROTO_TCP, len(l4)) + l4


def udp(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes = b"x") -> bytes:
    l4 = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    return ip_header(src, dst, PROTO_UDP, len(l4)) + l4


def icmp(src: bytes, dst: bytes) -> bytes:
    proto = 1 if len(src) == 4 else 58
    return ip_header(src, dst, proto, 8) + bytes([8, 0]) + bytes(6)


def v6_with_ext(exts: list[tuple[int, bytes]], final: int, l4: bytes) -> bytes:
    """An IPv6 packet whose extension headers are `exts` ((type, body of 6 + 8k bytes))."""
    chain = b""
    types = [t for t, _ in exts] + [final]
    for i, (_, body) in enumerate(exts):
        hl = (len(body) + 2) // 8 - 1
        chain += bytes([types[i + 1], hl if types[i] != 44 else 0]) + body
    payload = chain + l4
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload), types[0], 64, R6, L6) + payload


def table(rules: list[tuple[bool, int, int, int]], default_allow: bool = False,
          peer_rules: list[tuple[bool, int, int, int]] | None = None) -> PolicyTable:
    """The fallback chain `rules`; PEER gets `peer_rules` when given."""
    n = 0

    def chain(rs: list[tuple[bool, int, int, int]]) -> Chain:
        nonlocal n
        flat = []
        for allow, proto, lo, hi in rs:
            n += 1
            flat.append(FlatRule(allow, proto, lo, hi, n))
        n += 1
        return Chain(tuple(flat), default_allow, n)

    chains = [chain(rules)]
    by_peer = {}
    if peer_rules is not None:
        chains.append(chain(peer_rules))
        by_peer[PEER] = 1
    infos = tuple(RuleInfo("test", i, f"rule {i}") for i in range(n + 1))
    return PolicyTable(True, tuple(chains), by_peer, 0, infos)


def make(impl: Callable[[], PolicyFilterLike], t: PolicyTable) -> PolicyFilterLike:
    pf = impl()
    pf.set_table(*table_args(t))
    return pf


@pytest.fixture(params=IMPLS, ids=lambda c: "py" if c is PyPolicyFilter else "c")
def impl(request: pytest.FixtureRequest) -> Callable[[], PolicyFilterLike]:
    cls: Callable[[], PolicyFilterLike] = request.param
    return cls


def test_classify_ipv4_ipv6_and_what_cannot_be_parsed() -> None:
    assert classify(tcp(R4, L4, 999, 22)) == (PROTO_TCP, R4, L4, 999, 22)
    assert classify(udp(R6, L6, 53, 5353)) == (PROTO_UDP, R6, L6, 53, 5353)
    assert classify(icmp(R4, L4)) == (1, R4, L4, -1, -1)
    gre = ip_header(R4, L4, 47, 4) + bytes(4)
    assert classify(gre) == (47, R4, L4, -1, -1)
    assert classify(tcp(R4, L4, 1, 2)[:39]) is None  # TCP header cut short
    assert classify(b"\x45" + bytes(10)) is None
    assert classify(b"\x25" + bytes(40)) is None  # neither IPv4 nor IPv6
    bad_ihl = bytearray(tcp(R4, L4, 1, 2))
    bad_ihl[0] = 0x44  # IHL 16 bytes
    assert classify(bytes(bad_ihl)) is None
    bad_ihl[0] = 0x4F  # IHL 60 bytes: past the end of the header and ports
    assert classify(bytes(bad_ihl)) is None
    # fragments: the first one has the ports, the others none
    first = bytearray(udp(R4, L4, 1, 2))
    first[6] = 0x20  # MF
    assert classify(bytes(first)) == (PROTO_UDP, R4, L4, 1, 2)
    later = bytearray(first)
    later[7] = 0x10  # offset 16*8
    assert classify(bytes(later)) is None


def test_ipv6_extension_headers_are_walked_and_bounded() -> None:
    ports = struct.pack("!HHHH", 4000, 53, 8, 0)
    hop, dest, rt = (0, bytes(6)), (60, bytes(14)), (43, bytes([0, 0]) + bytes(4))
    frag_first = (44, bytes([0, 0]) + bytes(4))  # offset 0, MF clear
    pkt = v6_with_ext([hop, rt, dest, frag_first], PROTO_UDP, ports)
    assert classify(pkt) == (PROTO_UDP, R6, L6, 4000, 53)
    frag_later = (44, bytes([0x00, 0x08]) + bytes(4))  # offset 1 (x8 bytes)
    assert classify(v6_with_ext([hop, frag_later], PROTO_UDP, ports)) is None
    assert classify(v6_with_ext([dest] * 8, PROTO_UDP, ports)) is not None
    assert classify(v6_with_ext([dest] * 9, PROTO_UDP, ports)) is None  # too long a chain
    cut = v6_with_ext([dest], PROTO_UDP, ports)
    assert classify(cut[:40 + 12]) is None  # the header is there, the UDP header is not
    longer = v6_with_ext([(60, bytes(6))], PROTO_UDP, ports)
    claims = bytearray(longer)
    claims[41] = 5  # the destination options say 48 bytes: past the end
    assert classify(bytes(claims)) is None
    assert classify(v6_with_ext([hop], 58, bytes(8)))[0] == 58  # type: ignore[index]


def test_rules_first_match_then_default(impl: Callable[[], PolicyFilterLike]) -> None:
    t = table([(False, PROTO_TCP, 23, 23), (True, PROTO_TCP, 20, 30), (True, PROTO_UDP, 53, 53),
               (True, PROTO_ANY, 8000, 8999)])
    pf = make(impl, t)
    assert pf.check(PEER, tcp(R4, L4, 1000, 22, b"data"), 0.0) == (ALLOW, 2)
    assert pf.check(PEER, tcp(R4, L4, 1000, 23), 0.0) == (DENY, 1)
    assert pf.check(PEER, udp(R6, L6, 1000, 53), 0.0) == (ALLOW, 3)
    assert pf.check(PEER, udp(R6, L6, 1000, 22), 0.0) == (DENY, 5)  # the default
    assert pf.check(PEER, udp(R4, L4, 1, 8080), 0.0) == (ALLOW, 4)
    gre = ip_header(R4, L4, 47, 4) + bytes(4)
    # a protocol without ports matches only "any protocol, all ports"
    assert pf.check(PEER, gre, 0.0) == (DENY, 5)
    pf2 = make(impl, table([(True, PROTO_ANY, 0, 65535)]))
    assert pf2.check(PEER, gre, 0.0) == (ALLOW, 1)
    assert pf.check(PEER, icmp(R4, L4), 0.0) == (ICMP, -1)
    assert pf.check(PEER, icmp(R6, L6), 0.0) == (ICMP, -1)
    assert pf.check(PEER, b"\x60" + bytes(20), 0.0) == (UNPARSED, -1)
    rules, reasons, _ = pf.take_counts()
    assert rules == (0, 1, 1, 1, 1, 2)
    assert dict(zip(REASONS, reasons, strict=True)) == {
        "allowed": 3, "policy": 3, "unparsed": 1, "reply": 0, "icmp": 2}
    assert pf.take_counts()[:2] == ((0,) * 6, (0,) * 5)  # taken: zero again


def test_each_peer_is_judged_by_its_own_chain(impl: Callable[[], PolicyFilterLike]) -> None:
    pf = make(impl, table([(True, PROTO_TCP, 80, 80)], peer_rules=[(True, PROTO_TCP, 22, 22)]))
    assert pf.check(PEER, tcp(R4, L4, 1, 22), 0.0)[0] == ALLOW
    assert pf.check(PEER, tcp(R4, L4, 1, 80), 0.0)[0] == DENY
    assert pf.check(OTHER, tcp(R4, L4, 1, 22), 0.0)[0] == DENY  # the fallback chain
    assert pf.check(OTHER, tcp(R4, L4, 1, 80), 0.0)[0] == ALLOW
    assert pf.check(None, tcp(R4, L4, 1, 80), 0.0)[0] == ALLOW


def test_replies_to_flows_this_node_opened_pass_and_nothing_else(
        impl: Callable[[], PolicyFilterLike]) -> None:
    pf = make(impl, table([]))  # deny everything
    out_tcp = tcp(L4, R4, 40000, 443)
    out_udp = udp(L6, R6, 5353, 53)
    pf.track([out_tcp, out_udp], 0, 10.0)
    assert pf.check(PEER, tcp(R4, L4, 443, 40000), 11.0) == (REPLY, -1)
    assert pf.check(PEER, udp(R6, L6, 53, 5353), 11.0) == (REPLY, -1)
    # the same ports the other way round, another remote port, another remote address, the
    # other protocol: none of them is the flow
    assert pf.check(PEER, tcp(R4, L4, 40000, 443), 11.0)[0] == DENY
    assert pf.check(PEER, tcp(R4, L4, 444, 40000), 11.0)[0] == DENY
    assert pf.check(PEER, tcp(bytes([10, 7, 0, 3]), L4, 443, 40000), 11.0)[0] == DENY
    assert pf.check(PEER, udp(R4, L4, 443, 40000), 11.0)[0] == DENY


def test_unsolicited_packets_teach_conntrack_nothing(impl: Callable[[], PolicyFilterLike]) -> None:
    """The attack: a peer sends what would be the first packet of a flow, then the "reply" to
    it. Only what this node sends is tracked, so both are dropped."""
    pf = make(impl, table([]))
    for _ in range(3):
        assert pf.check(PEER, udp(R4, L4, 53, 5353), 1.0)[0] == DENY
        assert pf.check(PEER, udp(L4, R4, 5353, 53), 1.0)[0] == DENY  # spoofed "outbound"
    assert pf.check(PEER, udp(R4, L4, 53, 5353), 2.0)[0] == DENY


def test_flows_expire_after_their_idle_timeout(impl: Callable[[], PolicyFilterLike]) -> None:
    pf = make(impl, table([]))
    pf.track([udp(L4, R4, 5353, 53), tcp(L4, R4, 40000, 443)], 0, 100.0)
    assert pf.check(PEER, udp(R4, L4, 53, 5353), 279.9)[0] == REPLY  # refreshes: 459.9
    assert pf.check(PEER, udp(R4, L4, 53, 5353), 459.9)[0] == DENY  # 180 s idle: gone
    assert pf.check(PEER, udp(R4, L4, 53, 5353), 400.0)[0] == DENY  # gone for good
    assert pf.check(PEER, tcp(R4, L4, 443, 40000), 699.9)[0] == REPLY  # TCP: 600 s
    assert pf.check(PEER, tcp(R4, L4, 443, 40000), 1299.9)[0] == DENY
    pf.track([udp(L4, R4, 5353, 53)], 0, 2000.0)  # a new packet out: tracked again
    assert pf.check(PEER, udp(R4, L4, 53, 5353), 2001.0)[0] == REPLY


def test_track_reads_past_a_virtio_header_and_skips_garbage(
        impl: Callable[[], PolicyFilterLike]) -> None:
    pf = make(impl, table([]))
    pf.track([bytes(10) + udp(L4, R4, 7, 8), b"", bytes(10), bytes(10) + b"\x45\x00"], 10, 0.0)
    assert pf.check(PEER, udp(R4, L4, 8, 7), 1.0)[0] == REPLY


def test_filter_keeps_the_packets_that_pass_in_order(impl: Callable[[], PolicyFilterLike]) -> None:
    pf = make(impl, table([(True, PROTO_UDP, 53, 53)]))
    before = [b"already judged"]
    pkts = [udp(R4, L4, 1, p, bytes([i])) for i, p in enumerate((53, 54, 53, 1, 53, 2, 3))]
    lst = before + pkts
    pf.filter(PEER, lst, 1, 0.0)
    assert lst == [*before, pkts[0], pkts[2], pkts[4]]
    lst2 = list(pkts[1:2])
    pf.filter(PEER, lst2, 0, 0.0)
    assert lst2 == []


def test_a_new_table_keeps_the_flows(impl: Callable[[], PolicyFilterLike]) -> None:
    pf = make(impl, table([]))
    pf.track([tcp(L4, R4, 40000, 443)], 0, 0.0)
    pf.set_table(*table_args(table([(False, PROTO_ANY, 0, 65535)])))
    assert pf.check(PEER, tcp(R4, L4, 443, 40000), 1.0)[0] == REPLY
    pf.clear()
    assert pf.check(PEER, tcp(R4, L4, 443, 40000), 1.0)[0] == DENY


def test_bad_tables_are_refused(impl: Callable[[], PolicyFilterLike]) -> None:
    pf = impl()
    ok = ([(True, 0, [(True, 6, 1, 2, 1)])], {}, 0, 2)
    pf.set_table(*ok)
    bad = [
        ([], {}, 0, 1),  # no chains
        ([(True, 0, [])], {}, 1, 1),  # fallback out of range
        ([(True, 0, [(True, 6, 1, 2, 5)])], {}, 0, 2),  # rule counter out of range
        ([(True, 3, [])], {}, 0, 2),  # default counter out of range
        ([(True, 0, [])], {PEER: 1}, 0, 1),  # a peer's chain out of range
        ([(True, 0, [])], {b"short": 0}, 0, 1),
    ]
    for args in bad:
        with pytest.raises(ValueError):
            pf.set_table(*args)  # type: ignore[arg-type]
    # the table in force is the last good one
    assert pf.check(PEER, tcp(R4, L4, 1, 2), 0.0) == (ALLOW, 1)


def test_conntrack_is_bounded_and_evicts_the_idlest() -> None:
    ct = Conntrack(capacity=3)
    keys = [flow_key(PROTO_UDP, L4, p, R4, 53) for p in range(5)]
    for i, k in enumerate(keys[:3]):
        ct.note(k, PROTO_UDP, float(i))
    assert ct.seen(keys[0], 5.0)  # keys[0] is now the freshest
    ct.note(keys[3], PROTO_UDP, 6.0)  # evicts keys[1]
    assert len(ct) == 3 and ct.evicted == 1
    assert not ct.seen(keys[1], 7.0)
    assert ct.seen(keys[0], 7.0) and ct.seen(keys[2], 7.0) and ct.seen(keys[3], 7.0)


@pytest.mark.skipif(fastpath.C_POLICY_FILTER is None, reason="the C module is not built")
def test_c_conntrack_stays_bounded_under_a_flood_of_flows() -> None:
    assert fastpath.C_POLICY_FILTER is not None
    pf = fastpath.C_POLICY_FILTER(capacity=64, seed=7)
    pf.set_table(*table_args(table([])))
    pf.track([udp(L4, R4, 1000 + i, 53) for i in range(1000)], 0, 0.0)
    *_, evicted = pf.take_counts()
    assert evicted >= 1000 - 64
    live = sum(pf.check(PEER, udp(R4, L4, 53, 1000 + i), 1.0)[0] == REPLY for i in range(1000))
    assert 0 < live <= 64
    assert pf.check(PEER, udp(R4, L4, 53, 1999), 1.0)[0] == REPLY  # the newest is kept


def test_enforcer_counters_survive_a_recompile_with_the_same_rules() -> None:
    enf = PolicyEnforcer(SeededRng(3))
    t = table([(True, PROTO_TCP, 22, 22)])
    pf = enf.set_table(t)
    assert pf is not None
    pf.check(PEER, tcp(R4, L4, 1, 22), 0.0)
    enf.set_table(PolicyTable(True, t.chains, {OTHER: 0}, 0, t.rules))  # same rules
    assert enf.filter is not None
    enf.filter.check(PEER, tcp(R4, L4, 1, 22), 0.0)
    c = enf.counters()
    assert c.rule_packets == (0, 2, 0) and c.reasons["allowed"] == 2
    enf.set_table(table([(True, PROTO_TCP, 22, 22), (True, PROTO_UDP, 1, 1)]))
    assert enf.counters().rule_packets == (0, 0, 0, 0)
    assert enf.counters().reasons["allowed"] == 2  # reasons are kept
    assert enf.set_table(PolicyTable()) is None and enf.filter is None


def test_a_tracked_flow_to_an_allowed_port_counts_on_its_rule(
        impl: Callable[[], PolicyFilterLike]) -> None:
    """The rules come first: a service's packets count on the rule that allows them even once
    the node's answers made their flow a tracked one; only what the rules deny can be a reply."""
    pf = make(impl, table([(True, PROTO_TCP, 443, 443)]))
    pf.track([tcp(L4, R4, 443, 40000)], 0, 0.0)  # the node's answer to a client
    assert pf.check(PEER, tcp(R4, L4, 40000, 443), 1.0) == (ALLOW, 1)
    pf.track([tcp(L4, R4, 40001, 80)], 0, 0.0)  # a flow the node opened
    assert pf.check(PEER, tcp(R4, L4, 80, 40001), 1.0) == (REPLY, -1)
    rules, reasons, _ = pf.take_counts()
    assert rules == (0, 1, 0)
    assert reasons[REPLY] == 1 and reasons[ALLOW] == 1


def test_a_peer_cannot_fill_conntrack_with_the_answers_of_a_service_it_may_reach(
        impl: Callable[[], PolicyFilterLike]) -> None:
    """The attack: PEER may reach this node's TCP 80, and sends SYNs from port after port; the
    node answers every one (SYN-ACK or RST). Were the answers tracked, they would push out of
    the table the flow this node opened to OTHER, whose replies the rules deny: OTHER's
    replies would break. The answers need no entry (PEER's chain lets the replies in), so
    nothing is tracked and nothing evicted."""
    pf: PolicyFilterLike = impl(capacity=64)  # type: ignore[call-arg]
    pf.set_table(*table_args(table([], peer_rules=[(True, PROTO_TCP, 80, 80)])))
    other = bytes([10, 7, 0, 3])
    pf.track([tcp(L4, other, 40000, 22)], 0, 0.0, OTHER)  # this node's own connection
    for i in range(0, 4000, 50):  # SYN-ACKs (0x12) and RSTs (0x14)
        pf.track([tcp(L4, R4, 80, 1024 + j, flags=0x12 if j % 2 else 0x14)
                  for j in range(i, i + 50)], 0, 1.0 + i / 100, PEER)
    *_, evicted = pf.take_counts()
    assert evicted == 0
    assert pf.check(OTHER, tcp(other, L4, 22, 40000), 100.0)[0] == REPLY
    # a flow this node opens to PEER on a port PEER's chain denies the replies of is tracked
    pf.track([udp(L4, R4, 5353, 53)], 0, 100.0, PEER)
    assert pf.check(PEER, udp(R4, L4, 53, 5353), 101.0)[0] == REPLY
    # and what the node sends with no peer named is judged by the fallback chain (deny)
    pf.track([udp(L4, R4, 5354, 53)], 0, 100.0)
    assert pf.check(PEER, udp(R4, L4, 53, 5354), 101.0)[0] == REPLY


def test_a_connection_this_node_opened_survives_a_policy_that_denies_the_peer(
        impl: Callable[[], PolicyFilterLike]) -> None:
    """This node's SYN is tracked even while PEER's chain allows everything, so when a new
    table denies PEER the replies on that connection still pass; the node's UDP packets and
    TCP answers to PEER are not tracked while the rules let their replies in."""
    pf = make(impl, table([], peer_rules=[(True, 0, 0, 65535)]))
    pf.track([tcp(L4, R4, 40000, 443), udp(L4, R4, 5353, 53),
              tcp(L4, R4, 22, 40001, flags=0x12)], 0, 0.0, PEER)
    pf.set_table(*table_args(table([], peer_rules=[])))
    assert pf.check(PEER, tcp(R4, L4, 443, 40000, flags=0x12), 1.0)[0] == REPLY
    assert pf.check(PEER, udp(R4, L4, 53, 5353), 1.0)[0] == DENY
    assert pf.check(PEER, tcp(R4, L4, 40001, 22, flags=0x10), 1.0)[0] == DENY


def test_filter_from_past_the_end_changes_nothing(impl: Callable[[], PolicyFilterLike]) -> None:
    pf = make(impl, table([]))
    lst = [udp(R4, L4, 1, 2)]
    pf.filter(PEER, lst, 5, 0.0)
    assert len(lst) == 1
    pf.filter(PEER, lst, -3, 0.0)  # a negative start is the start of the list
    assert lst == []
