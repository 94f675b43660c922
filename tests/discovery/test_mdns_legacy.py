"""The answer to the original Zig meshguard's mDNS seed query (discovery/mdns_legacy.py):
what it sends is answered with `meshguard=IP:PORT`; what it does not send, a query that did
not reach the group, a flood and garbage draw nothing."""

from __future__ import annotations

import struct

from meshguard.discovery.mdns_legacy import LegacyResponder, txt_rdata
from meshguard.discovery.txt_records import parse_meshguard_txt
from meshguard.wire.dns import QR, build_query, parse_response

SRC = ("10.210.0.7", 40123)
RECORD = "meshguard=10.210.0.1:51821"


def _zig_query(name: str = "_meshguard._udp.local", qtype: int = 16) -> bytes:
    # the original sends ID 0, RD set, one question, class IN (its buildQuery)
    return build_query(0, name, qtype)


def _txt_strings(rdata: bytes) -> list[bytes]:
    out, i = [], 0
    while i < len(rdata):
        n = rdata[i]
        out.append(rdata[i + 1:i + 1 + n])
        i += 1 + n
    return out


def test_the_originals_query_gets_the_seed_record() -> None:
    r = LegacyResponder([RECORD])
    q = _zig_query()
    ans = r.answer(0.0, q, SRC, to_group=True)
    assert ans is not None
    resp = parse_response(ans)
    assert resp.header.flags & QR and resp.rcode == 0
    assert resp.question == q[12:]  # the question is echoed, as the original's parser skips it
    (rtype, rdata), = resp.answers
    assert rtype == 16
    (s,) = _txt_strings(rdata)
    assert parse_meshguard_txt(s).endpoint == ("10.210.0.1", 51821)
    # case-insensitive name, ANY, and the QU bit in the class are answered too
    assert r.answer(0.0, _zig_query("_MeshGuard._UDP.local"), SRC, True) is not None
    assert r.answer(0.0, _zig_query(qtype=255), ("10.210.0.8", 1), True) is not None
    qu = bytearray(q)
    qu[-2:] = struct.pack("!H", 0x8001)
    assert r.answer(0.0, bytes(qu), ("10.210.0.9", 1), True) is not None
    assert r.counters["mdns_legacy_answered"] == 4


def test_what_is_not_that_query_is_not_answered() -> None:
    r = LegacyResponder([RECORD])
    q = _zig_query()
    assert r.answer(0.0, q, SRC, to_group=False) is None  # unicast, maybe off-link, forged
    assert r.answer(0.0, q, ("10.210.0.7", 5353), True) is None  # zeroconf's to answer
    assert r.answer(0.0, _zig_query("_other._udp.local"), SRC, True) is None
    assert r.answer(0.0, _zig_query(qtype=1), SRC, True) is None
    resp = bytearray(q)
    resp[2] |= 0x80  # a response, not a query
    assert r.answer(0.0, bytes(resp), SRC, True) is None
    for junk in [b"", b"\x00" * 11, q[:-3], b"\xff" * 600, q + b"\x00" * 600]:
        assert r.answer(0.0, junk, SRC, True) is None
    assert r.counters["mdns_legacy_answered"] == 0
    assert r.counters["mdns_legacy_malformed"] >= 4
    assert LegacyResponder([]).answer(0.0, q, SRC, True) is None  # nothing to advertise


def test_answers_are_rate_limited_and_amplify_nothing() -> None:
    r = LegacyResponder([RECORD])
    q = _zig_query()
    got = [r.answer(0.0, q, SRC, True) for _ in range(50)]
    answered = [a for a in got if a is not None]
    assert len(answered) == 4  # one source's burst
    assert r.counters["mdns_legacy_limited"] == 46
    many = [r.answer(0.0, q, (f"10.1.{i // 250}.{i % 250}", 4000), True) for i in range(500)]
    assert sum(a is not None for a in many) <= 40  # the global budget
    assert len(answered[0]) <= len(q) + 12 + len(txt_rdata([RECORD])) + 1
