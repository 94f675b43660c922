"""mac1/mac2, cookie replies, secret rotation and the load meter."""

from __future__ import annotations

from meshguard.testing.rng import SeededRng
from meshguard.wire import wireguard as w
from meshguard.wireguard.constants import COOKIE_REFRESH_TIME
from meshguard.wireguard.cookie import CookieChecker, CookieGenerator, LoadMeter, endpoint_bytes

from .sim import make_key

SRC = ("198.51.100.7", 40000)


def _initiation() -> bytes:
    return w.Initiation(7, bytes(range(32)), bytes(48), bytes(28)).encode()


def test_mac1_binds_receiver_key_and_content() -> None:
    r = make_key(1).public_key.raw
    gen = CookieGenerator(r)
    msg = gen.add_macs(0.0, _initiation(), w.INITIATION_MAC1_OFFSET)
    assert msg[132:] == bytes(16)  # no cookie yet: mac2 zero
    checker = CookieChecker(SeededRng(1), r)
    assert checker.check_mac1(msg, w.INITIATION_MAC1_OFFSET)
    other = CookieChecker(SeededRng(1), make_key(2).public_key.raw)
    assert not other.check_mac1(msg, w.INITIATION_MAC1_OFFSET)
    tampered = msg[:10] + bytes([msg[10] ^ 1]) + msg[11:]
    assert not checker.check_mac1(tampered, w.INITIATION_MAC1_OFFSET)
    assert not CookieChecker(SeededRng(1), None).check_mac1(msg, w.INITIATION_MAC1_OFFSET)


def test_cookie_reply_then_mac2() -> None:
    r = make_key(1).public_key.raw
    gen = CookieGenerator(r)
    checker = CookieChecker(SeededRng(2), r)
    msg = gen.add_macs(10.0, _initiation(), w.INITIATION_MAC1_OFFSET)
    assert not checker.check_mac2(10.0, msg, w.INITIATION_MAC2_OFFSET, SRC)
    reply = checker.make_reply(10.0, msg, w.INITIATION_MAC1_OFFSET, 7, SRC)
    assert reply.receiver == 7 and len(reply.encode()) == 64
    assert gen.consume_reply(10.1, w.CookieReply.decode(reply.encode()))
    assert gen.has_cookie(10.1)
    msg2 = gen.add_macs(11.0, _initiation(), w.INITIATION_MAC1_OFFSET)
    assert msg2[132:] != bytes(16)
    assert checker.check_mac1(msg2, w.INITIATION_MAC1_OFFSET)
    assert checker.check_mac2(11.0, msg2, w.INITIATION_MAC2_OFFSET, SRC)
    # the cookie is bound to the source address and port
    assert not checker.check_mac2(11.0, msg2, w.INITIATION_MAC2_OFFSET, ("198.51.100.7", 40001))
    # ... and to the responder's current secret, which rotates
    later = 10.0 + COOKIE_REFRESH_TIME + 1
    assert not checker.check_mac2(later, msg2, w.INITIATION_MAC2_OFFSET, SRC)
    # and the initiator stops using an old cookie
    assert not gen.has_cookie(later)


def test_cookie_reply_for_another_message_rejected() -> None:
    r = make_key(1).public_key.raw
    gen = CookieGenerator(r)
    checker = CookieChecker(SeededRng(2), r)
    msg = gen.add_macs(0.0, _initiation(), w.INITIATION_MAC1_OFFSET)
    reply = checker.make_reply(0.0, msg, w.INITIATION_MAC1_OFFSET, 7, SRC)
    # a newer message has a different mac1, so the reply (bound to the old mac1) fails
    gen.add_macs(0.0, w.Initiation(8, bytes(32), bytes(48), bytes(28)).encode(), 116)
    assert not gen.consume_reply(0.0, reply)
    assert not CookieGenerator(r).consume_reply(0.0, reply)  # nothing sent yet


def test_endpoint_bytes() -> None:
    assert endpoint_bytes(("1.2.3.4", 258)) == b"\x01\x02\x03\x04\x01\x02"
    assert len(endpoint_bytes(("::1", 1))) == 18


def test_load_meter() -> None:
    m = LoadMeter(threshold=10, hold=1.0)
    for i in range(10):
        m.record(100.0 + i * 0.01)
    assert not m.under_load(100.1)
    m.record(100.11)
    assert m.under_load(100.11)
    assert m.under_load(101.0)
    assert not m.under_load(101.2)
    # 10 per second spread out never trips it
    m2 = LoadMeter(threshold=10, hold=1.0)
    for i in range(100):
        m2.record(200.0 + i * 0.11)
        assert not m2.under_load(200.0 + i * 0.11)


def test_source_rate_limiter() -> None:
    from meshguard.wireguard.cookie import SourceRateLimiter

    lim = SourceRateLimiter(rate=20.0, burst=5)
    assert [lim.allow(0.0, "1.1.1.1") for _ in range(7)] == [True] * 5 + [False] * 2
    assert lim.allow(0.0, "2.2.2.2")  # per address
    assert not lim.allow(0.01, "1.1.1.1")
    assert lim.allow(0.06, "1.1.1.1")  # one token per 50 ms
    allowed = sum(lim.allow(1.0 + i / 1000, "1.1.1.1") for i in range(1000))
    assert 20 <= allowed <= 26  # about `rate` per second plus the burst
    lim.allow(100.0, "3.3.3.3")
    assert len(lim) == 1  # idle buckets are forgotten
