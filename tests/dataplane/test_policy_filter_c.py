"""The C policy filter against the Python reference: random tables, random packets (IPv4 and
IPv6, extension headers, fragments, truncation, garbage), random interleavings of tracking and
judging; both must give the same verdict, counter and counts for every packet."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshguard.dataplane import fastpath
from meshguard.dataplane.policy_filter import PyPolicyFilter, table_args
from meshguard.policy.table import Chain, FlatRule, PolicyTable, RuleInfo
from meshguard.testing.fuzz_policy import reverse

pytestmark = pytest.mark.skipif(fastpath.C_POLICY_FILTER is None,
                                reason="the C module is not built")

ADDRS4 = [bytes([10, 0, 0, i]) for i in (1, 2, 3)]
ADDRS6 = [bytes.fromhex("fd00" + "00" * 13) + bytes([i]) for i in (1, 2, 3)]
PEERS = [bytes([i]) * 32 for i in (1, 2, 3)]
PROTOS = [0, 1, 6, 17, 47, 58, 132]
PORTS = [0, 1, 22, 53, 80, 443, 5353, 40000, 65535]

ports = st.sampled_from(PORTS) | st.integers(0, 65535)


@st.composite
def tables(draw: st.DrawFn) -> PolicyTable:
    n = 0
    chains = []
    for _ in range(draw(st.integers(1, 4))):
        rules = []
        for _ in range(draw(st.integers(0, 6))):
            lo = draw(ports)
            hi = draw(st.sampled_from([lo, 65535]) | ports)
            lo, hi = min(lo, hi), max(lo, hi)
            if draw(st.booleans()):
                lo, hi = 0, 65535
            n += 1
            rules.append(FlatRule(draw(st.booleans()), draw(st.sampled_from([0, 6, 17, 47])),
                                  lo, hi, n))
        n += 1
        chains.append(Chain(tuple(rules), draw(st.booleans()), n))
    by_peer = {p: draw(st.integers(0, len(chains) - 1)) for p in PEERS
               if draw(st.booleans())}
    infos = tuple(RuleInfo("t", i, "r") for i in range(n + 1))
    return PolicyTable(True, tuple(chains), by_peer, draw(st.integers(0, len(chains) - 1)),
                       infos)


@st.composite
def packets(draw: st.DrawFn) -> bytes:
    v6 = draw(st.booleans())
    proto = draw(st.sampled_from(PROTOS))
    sport, dport = draw(ports), draw(ports)
    if proto == 6:
        l4 = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 0x50, 0x10, 1000, 0, 0)
    elif proto == 17:
        l4 = struct.pack("!HHHH", sport, dport, 8, 0)
    else:
        l4 = struct.pack("!HH", sport, dport) + bytes(4)
    l4 += draw(st.binary(max_size=24))
    src, dst = draw(st.sampled_from(ADDRS6 if v6 else ADDRS4)), draw(
        st.sampled_from(ADDRS6 if v6 else ADDRS4))
    if v6:
        exts = draw(st.lists(st.sampled_from([0, 43, 60, 44]), max_size=10))
        body = b""
        types = [*exts, proto]
        for i, t in enumerate(exts):
            if t == 44:
                off = draw(st.sampled_from([0, 0, 1, 0x1FFF]))
                mf = draw(st.integers(0, 1))
                body += bytes([types[i + 1], 0]) + struct.pack("!H", (off << 3) | mf) + bytes(4)
            else:
                k = draw(st.integers(0, 2))
                body += bytes([types[i + 1], k]) + bytes(6 + 8 * k)
        payload = body + l4
        pkt = struct.pack("!IHBB16s16s", 6 << 28, len(payload), types[0], 64, src, dst) + payload
    else:
        opts = bytes(4 * draw(st.integers(0, 10)))
        ihl = 5 + len(opts) // 4
        frag = draw(st.sampled_from([0, 0x4000, 0x2000, 0x2001, 0x0001, 0x1FFF]))
        total = 4 * ihl + len(l4)
        pkt = struct.pack("!BBHHHBBH4s4s", 0x40 | (ihl & 0xF), 0, total, 1, frag, 64, proto, 0,
                          src, dst) + opts + l4
    mutate = draw(st.integers(0, 3))
    if mutate == 1:
        pkt = pkt[: draw(st.integers(0, len(pkt)))]
    elif mutate == 2:
        b = bytearray(pkt)
        b[draw(st.integers(0, len(b) - 1))] = draw(st.integers(0, 255))
        pkt = bytes(b)
    elif mutate == 3 and draw(st.booleans()):
        pkt = draw(st.binary(max_size=80))
    return pkt


op = st.tuples(st.sampled_from(["track", "check", "reply", "filter"]), packets(),
               st.sampled_from([*PEERS, b"\x09" * 32, b"x"]),
               st.floats(0, 700, allow_nan=False))


@settings(max_examples=300, deadline=None)
@given(tables(), st.lists(op, min_size=1, max_size=40))
def test_c_and_python_agree(t: PolicyTable, ops: list[tuple[str, bytes, bytes, float]]) -> None:
    assert fastpath.C_POLICY_FILTER is not None
    c = fastpath.C_POLICY_FILTER(seed=11)
    py = PyPolicyFilter()
    for f in (c, py):
        f.set_table(*table_args(t))
    now = 0.0
    for kind, pkt, key, dt in ops:
        now += dt
        if kind == "track":
            c.track([pkt], 0, now, key)
            py.track([pkt], 0, now, key)
        elif kind == "filter":
            lc, lp = [b"head", pkt, reverse(pkt), pkt], [b"head", pkt, reverse(pkt), pkt]
            c.filter(key, lc, 1, now)
            py.filter(key, lp, 1, now)
            assert lc == lp
        else:
            p = reverse(pkt) if kind == "reply" else pkt
            assert c.check(key, p, now) == py.check(key, p, now), p.hex()
    assert c.take_counts() == py.take_counts()


def test_classification_of_c_and_python_agree_on_every_short_prefix() -> None:
    """Every truncation of packets with long extension chains gives the same verdict."""
    assert fastpath.C_POLICY_FILTER is not None
    t = PolicyTable(True, (Chain((FlatRule(True, 17, 53, 53, 1),), False, 2),), {}, 0,
                    tuple(RuleInfo("t", i, "r") for i in range(3)))
    c = fastpath.C_POLICY_FILTER()
    py = PyPolicyFilter()
    for f in (c, py):
        f.set_table(*table_args(t))
    ext = bytes([60, 1]) + bytes(14)
    body = ext * 3 + bytes([17, 0]) + bytes(6) + struct.pack("!HHHH", 9, 53, 8, 0)
    pkt6 = struct.pack("!IHBB16s16s", 6 << 28, len(body), 60, 64, ADDRS6[0], ADDRS6[1]) + body
    for n in range(len(pkt6) + 1):
        assert c.check(PEERS[0], pkt6[:n], 0.0) == py.check(PEERS[0], pkt6[:n], 0.0), n
    assert c.check(PEERS[0], pkt6, 0.0)[0] == 0  # whole: allowed
