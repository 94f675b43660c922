"""The nftables form of a compiled table (policy/nft_rules.py): rules in order with a counter
each, defaults last, ports and ranges, replies, the longest-prefix source lookup, the one
transaction that replaces the table, and the counters read back. The namespace test
(tests/daemon/test_kernel_policy_netns.py) loads these rules into a real kernel."""

from __future__ import annotations

import ipaddress
import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshguard.dataplane.policy_filter import REASONS as FILTER_REASONS
from meshguard.policy.nft_rules import (
    REASONS,
    chain_lines,
    match_expr,
    read_counts,
    removal_script,
    render_ruleset,
    source_lookup,
    table_name,
)
from meshguard.policy.table import (
    ALLOW_ALL,
    PROTO_ANY,
    PROTO_TCP,
    PROTO_UDP,
    Chain,
    FlatRule,
    PolicyTable,
    RuleInfo,
)
from meshguard.policy.verdict import decide

A, B, C = b"a" * 32, b"b" * 32, b"c" * 32
net = ipaddress.ip_network


def infos(n: int) -> tuple[RuleInfo, ...]:
    return tuple(RuleInfo("services/global.policy", i + 1, f"rule {i}") for i in range(n))


def two_chains() -> PolicyTable:
    ops = Chain((FlatRule(True, PROTO_TCP, 22, 22, 0),
                 FlatRule(False, PROTO_ANY, 1000, 2000, 1),
                 FlatRule(True, PROTO_UDP, 0, 65535, 2)), False, 3)
    everyone = Chain((FlatRule(False, PROTO_TCP, 23, 23, 4),), True, 5)
    return PolicyTable(True, (everyone, ops), {A: 1}, 0, infos(6))


def test_rules_in_order_with_counters_and_the_default_last() -> None:
    t = two_chains()
    assert chain_lines(t.chains[1]) == [
        'tcp dport 22 counter accept comment "allow 0"',
        "meta l4proto { tcp, udp } th dport 1000-2000 ct direction reply goto reply",
        'meta l4proto { tcp, udp } th dport 1000-2000 counter goto deny comment "deny 1"',
        'meta l4proto udp counter accept comment "allow 2"',
        "meta l4proto { tcp, udp } ct direction reply goto reply",
        'counter goto deny comment "deny 3"',
    ]
    assert chain_lines(t.chains[0]) == [
        "tcp dport 23 ct direction reply goto reply",
        'tcp dport 23 counter goto deny comment "deny 4"',
        'counter accept comment "allow 5"',
    ]


@pytest.mark.parametrize(("proto", "lo", "hi", "expr"), [
    (PROTO_TCP, 443, 443, "tcp dport 443"),
    (PROTO_UDP, 60000, 61000, "udp dport 60000-61000"),
    (PROTO_TCP, 0, 65535, "meta l4proto tcp"),
    (PROTO_ANY, 53, 53, "meta l4proto { tcp, udp } th dport 53"),
    (PROTO_ANY, 0, 65535, ""),  # `all all` matches every packet, ICMP and GRE included
    (47, 0, 65535, "meta l4proto 47"),
])
def test_match_expressions(proto: int, lo: int, hi: int, expr: str) -> None:
    assert match_expr(proto, lo, hi) == expr


def test_a_denied_rule_of_another_protocol_lets_no_reply_through() -> None:
    lines = chain_lines(Chain((FlatRule(False, 47, 0, 65535, 0),), True, 1))
    # the userspace filter tracks TCP and UDP flows only
    assert lines[0] == ("meta l4proto 47 meta l4proto { tcp, udp } "
                        "ct direction reply goto reply")


def test_the_whole_table_is_replaced_in_one_script() -> None:
    script = render_ruleset("mg-0", two_chains(), {A: [net("10.1.0.2/32")]})
    head = script.splitlines()[:3]
    assert head == ["table inet meshguard_policy_mg_0", "delete table inet meshguard_policy_mg_0",
                    "table inet meshguard_policy_mg_0 {"]
    assert [x for x in script.splitlines() if x.startswith("table")] == head[::2]
    assert script.rstrip().endswith("}")
    for hook in ("input", "forward"):
        assert (f"chain {hook} {{ type filter hook {hook} priority filter; policy accept; "
                f'iifname "mg-0" goto judge; }}') in script
    judge = _chain(script, "judge")
    assert judge[:3] == ['ip frag-off & 0x1fff != 0 counter drop comment "unparsed"',
                         'meta nfproto ipv6 exthdr frag exists counter drop comment "unparsed"',
                         'meta l4proto { icmp, ipv6-icmp } counter accept comment "icmp"']
    assert judge[-1] == "goto c0"  # the fallback chain
    assert _chain(script, "reply") == ['counter accept comment "reply"']
    assert _chain(script, "deny") == ['counter drop comment "policy"']
    assert _chain(script, "c1") == chain_lines(two_chains().chains[1])


def test_an_inactive_table_only_removes_ours() -> None:
    assert render_ruleset("mg0", ALLOW_ALL, {A: [net("10.1.0.2/32")]}) == removal_script("mg0")
    assert removal_script("mg0") == ("table inet meshguard_policy_mg0\n"
                                     "delete table inet meshguard_policy_mg0\n")


def test_sources_are_looked_up_longest_prefix_first() -> None:
    t = two_chains()
    sources = {
        A: [net("10.1.0.2/32"), net("fd00::2/128"), net("10.20.0.0/24")],
        B: [net("10.1.0.3/32"), net("0.0.0.0/0"), net("::/0")],  # an exit node, on the fallback
        C: [net("10.1.0.4/32"), net("10.1.0.2/32")],  # a prefix A holds already: A's chain
    }
    maps, judge = source_lookup(t, sources)
    assert maps == [
        "map src4_32 { type ipv4_addr : verdict; elements = "
        "{ 10.1.0.2 : goto c1, 10.1.0.3 : goto c0, 10.1.0.4 : goto c0 } }",
        "map src4_24 { type ipv4_addr : verdict; elements = { 10.20.0.0 : goto c1 } }",
        "map src6_128 { type ipv6_addr : verdict; elements = { fd00::2 : goto c1 } }",
    ]
    assert judge == ["ip saddr vmap @src4_32", "ip saddr & 255.255.255.0 vmap @src4_24",
                     "meta nfproto ipv4 goto c0", "ip6 saddr vmap @src6_128",
                     "meta nfproto ipv6 goto c0"]


def test_a_v6_prefix_is_masked() -> None:
    _, judge = source_lookup(two_chains(), {A: [net("fd00:1::/64")]})
    assert judge == ["ip6 saddr & ffff:ffff:ffff:ffff:: vmap @src6_64"]


@pytest.mark.parametrize("bad", ["", "a" * 16, 'mg"0', "mg 0", "mg;0", "mg\n0"])
def test_interface_names_nft_cannot_take_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        table_name(bad)


def _listing(rules: list[tuple[str | None, int | None]]) -> str:
    items: list[object] = [{"metainfo": {"version": "1.0.6"}},
                           {"table": {"family": "inet", "name": "meshguard_policy_mg0"}}]
    for comment, packets in rules:
        expr: list[object] = [{"match": {"op": "==", "left": {}, "right": 22}}]
        if packets is not None:
            expr.append({"counter": {"packets": packets, "bytes": packets * 60}})
        expr.append({"accept": None})
        rule: dict[str, object] = {"family": "inet", "chain": "c0", "expr": expr}
        if comment is not None:
            rule["comment"] = comment
        items.append({"rule": rule})
    return json.dumps({"nftables": items})


def test_the_reasons_are_the_userspace_filters() -> None:
    assert REASONS == FILTER_REASONS


def test_counters_are_read_back_by_rule_and_by_reason() -> None:
    c = read_counts(_listing([("allow 0", 5), ("deny 1", 2), ("deny 1", 3), ("allow 2", 1),
                              ("reply", 7), ("policy", 5), ("icmp", 4), ("unparsed", 1),
                              ("unparsed", 1), (None, 99), ("allow 9", 8), ("deny x", 6),
                              ("allow 0", None)]), 3)
    assert c.rule_packets == [5, 5, 1]
    assert c.reasons == {"allowed": 14, "policy": 5, "unparsed": 2, "reply": 7, "icmp": 4}


# a differential check: the generated chain, read as nft reads it, decides what the table does

_RULE = re.compile(r"^(?P<m>.*?) ?(?:counter (?P<v>accept|goto deny) comment \"\w+ (?P<n>\d+)\""
                   r"|ct direction reply goto reply)$")


def _nft_matches(m: str, proto: int, port: int | None) -> bool:
    m = m.replace("meta l4proto { tcp, udp } ct direction reply goto reply", "")
    if not m:
        return True
    if m.startswith("meta l4proto { tcp, udp }"):
        if proto not in (PROTO_TCP, PROTO_UDP):
            return False
        m = m[len("meta l4proto { tcp, udp }"):].strip()
        if not m:
            return True
        assert m.startswith("th dport ")
        return _in_range(m[len("th dport "):], port)
    name = {PROTO_TCP: "tcp", PROTO_UDP: "udp"}
    for p, s in name.items():
        if m == f"meta l4proto {s}":
            return proto == p
        if m.startswith(f"{s} dport "):
            return proto == p and _in_range(m[len(f"{s} dport "):], port)
    raise AssertionError(m)


def _in_range(spec: str, port: int | None) -> bool:
    lo, _, hi = spec.partition("-")
    return port is not None and int(lo) <= port <= int(hi or lo)


def _nft_decide(lines: list[str], proto: int, port: int | None) -> tuple[bool, int]:
    for line in lines:
        r = _RULE.match(line)
        assert r is not None, line
        if r["v"] is None:
            continue  # a reply check: this packet belongs to no flow
        if _nft_matches(r["m"], proto, port):
            return r["v"] == "accept", int(r["n"])
    raise AssertionError("no default")


rules_st = st.builds(
    FlatRule, st.booleans(), st.sampled_from([PROTO_ANY, PROTO_TCP, PROTO_UDP]),
    st.integers(0, 65535), st.integers(0, 65535), st.integers(0, 50),
).map(lambda r: FlatRule(r.allow, r.proto, min(r.port_lo, r.port_hi),
                         max(r.port_lo, r.port_hi), r.counter))


@settings(max_examples=200, deadline=None)
@given(st.lists(rules_st, max_size=8), st.booleans(),
       st.lists(st.tuples(st.sampled_from([PROTO_TCP, PROTO_UDP, 1, 47]),
                          st.integers(0, 65535)), min_size=1, max_size=10))
def test_the_generated_chain_decides_as_the_table_does(
        rules: list[FlatRule], default_allow: bool, packets: list[tuple[int, int]]) -> None:
    chain = Chain(tuple(rules), default_allow, 51)
    lines = chain_lines(chain)
    for proto, port in packets:
        p = port if proto in (PROTO_TCP, PROTO_UDP) else None
        if proto == 1:  # ICMP passes before any chain (judge)
            continue
        assert _nft_decide(lines, proto, p) == decide(chain, proto, p)


def _chain(script: str, name: str) -> list[str]:
    m = re.search(rf"\tchain {name} {{\n(.*?)\n\t}}", script, re.S)
    assert m is not None, name
    return [line.strip() for line in m.group(1).splitlines()]
