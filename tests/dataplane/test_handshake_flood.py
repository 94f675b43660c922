"""Initiation floods against the engine, and the C handshake guard against its Python twin.

A stranger who knows the responder's public key can send initiations with a valid mac1 as
fast as it likes. The responder must stay cheap: under load a source over its token bucket
costs a dictionary look-up (no MAC, no cookie reply), and a legitimate peer from another
address still gets its cookie and then completes its handshake with mac2.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
from collections.abc import Callable
from typing import Any

import pytest

from meshguard.clock import Clock, SystemClock
from meshguard.crypto.keys import X25519PrivateKey
from meshguard.dataplane import datapath_thread, fastpath
from meshguard.dataplane.engine import Engine, endpoint_of_sockaddr
from meshguard.testing.clock import ManualClock
from meshguard.testing.flood import initiations
from meshguard.testing.rng import SeededRng
from meshguard.wire import wireguard as w
from meshguard.wireguard import cookie
from meshguard.wireguard.cookie import CookieGenerator, HandshakeGuard, source_keys
from meshguard.wireguard.device import Device

from .helpers import FakeTun, ipv4_udp

C_GUARD = fastpath.c_impl()
needs_c = pytest.mark.skipif(C_GUARD is None, reason="C fast path not built")
LEGIT, ATTACKER = "127.0.0.1", "127.0.0.2"
FLOOD = 3000


# --- the guard twins ----------------------------------------------------------------------


def _guards(**kw: Any) -> tuple[Any, Any, bytes]:
    py = HandshakeGuard(SeededRng(3), **kw)
    assert C_GUARD is not None
    c = C_GUARD.HandshakeGuard(**py.params())
    key = X25519PrivateKey.generate(SeededRng(4).bytes(32)).public_key.raw
    for g in (py, c):
        g.set_keys(cookie.mac1_key(key), cookie.cookie_key(key))
    return py, c, key


def _body(r: random.Random, kind: int) -> bytes:
    if kind == 1:
        return w.Initiation(r.getrandbits(32), r.randbytes(32), r.randbytes(48),
                            r.randbytes(28)).encode()
    return w.Response(r.getrandbits(32), r.getrandbits(32), r.randbytes(32),
                      r.randbytes(16)).encode()


@needs_c
def test_c_guard_matches_python_guard_verdict_for_verdict() -> None:
    """The same messages at the same times give the same verdicts, in C and in Python: valid
    and bad mac1, missing and valid mac2 (from each guard's own cookies), many sources, load
    coming and going, buckets refilling, the source table overflowing."""
    py, c, key = _guards(threshold=20, hold=0.5, source_rate=5, source_burst=3, dh_rate=2,
                         dh_burst=2, cookie_rate=2, cookie_burst=3, reply_rate=0.2, reply_burst=2,
                         max_sources=8)
    r = random.Random(7)
    sources = [(f"192.0.2.{i}", 1000 + i) for i in range(12)] + [
        (f"2001:db8:0:{i}::{j}", 2000 + j) for i in range(3) for j in range(2)]
    gens = {id(g): {s: CookieGenerator(key) for s in sources} for g in (py, c)}
    now = 100.0
    verdicts: dict[int, list[int]] = {id(py): [], id(c): []}
    for step in range(6000):
        now += r.choice((0.0, 0.0, 0.001, 0.01, 0.05, 0.3)) if step % 500 else 2.5
        src = r.choice(sources)
        if r.random() < 0.15:  # a received cookie reply from that source
            reply_msg = b"\x03\x00\x00\x00" + r.randbytes(60)
            ok = [g.cookie_reply(now, reply_msg, source_keys(src)[0]) for g in (py, c)]
            assert ok[0] == ok[1]
            verdicts[id(py)].append(10 + ok[0])
            verdicts[id(c)].append(10 + ok[1])
            continue
        kind = r.choice((1, 1, 2))
        body = _body(r, kind)
        bad_mac1 = r.random() < 0.1
        skey, binding = source_keys(src)
        for g in (py, c):
            gen = gens[id(g)][src]
            off = w.INITIATION_MAC1_OFFSET if kind == 1 else w.RESPONSE_MAC1_OFFSET
            msg = gen.add_macs(now, body, off)
            if bad_mac1:
                msg = msg[:off] + bytes(16) + msg[off + 16:]
            v, reply = g.precheck(now, msg, skey, binding)
            verdicts[id(g)].append(v)
            if v == cookie.COOKIE:
                assert reply is not None and len(reply) == w.COOKIE_REPLY_SIZE
                assert reply[4:8] == msg[4:8]
                assert gen.consume_reply(now, w.CookieReply.decode(reply))
            else:
                assert reply is None
    vp, vc = verdicts[id(py)], verdicts[id(c)]
    assert vp == vc
    for v in [*range(len(cookie.VERDICTS)), 10, 11]:
        if v != cookie.NO_KEY:
            assert vp.count(v) > 20, v


@needs_c
def test_c_guard_ticket_no_key_and_overflow_like_python() -> None:
    py, c, key = _guards(threshold=0, max_sources=2)
    msg = initiations(key, 1)[0]
    for g in (py, c):
        g.set_ticket(msg[116:132])
        assert g.precheck(1.0, msg, b"\x01\x02\x03\x04", b"x" * 6) == (cookie.PASS, None)
        assert g.precheck(1.0, msg, b"\x01\x02\x03\x04", b"x" * 6)[0] == cookie.COOKIE
        g.set_keys(b"", b"")
        assert g.precheck(1.0, msg, b"\x01\x02\x03\x04", b"x" * 6) == (cookie.NO_KEY, None)
        assert g.load.threshold == 0 and g.under_load(1.0)


def test_source_keys_are_the_address_and_bind_cookies_to_the_port() -> None:
    k1, b1 = source_keys(("2001:db8:1:2::1", 5))
    k2, b2 = source_keys(("2001:db8:1:2:ffff::9", 5))
    assert k1 != k2 and k1[:8] == k2[:8] and len(k1) == 16 and len(b1) == 18 and b1 != b2
    k3, b3 = source_keys(("192.0.2.1", 7))
    assert k3 == bytes([192, 0, 2, 1]) and b3 == k3 + b"\x00\x07"
    assert b3 == cookie.endpoint_bytes(("192.0.2.1", 7))


def test_endpoint_of_sockaddr_matches_the_socket_module() -> None:
    import struct

    raw4 = struct.pack("=H", socket.AF_INET) + b"\x1f\x90" + bytes([10, 0, 0, 7]) + bytes(8)
    assert endpoint_of_sockaddr(raw4) == ("10.0.0.7", 8080)
    raw6 = (struct.pack("=H", socket.AF_INET6) + b"\x00\x35" + bytes(4)
            + socket.inet_pton(socket.AF_INET6, "::ffff:1.2.3.4") + bytes(4))
    assert endpoint_of_sockaddr(raw6) == ("1.2.3.4", 53)


# --- the engine under an initiation flood ---------------------------------------------------


class Bed:
    """B (the responder) and A (a legitimate peer) on engines with a shared manual clock; the
    attacker is a plain UDP socket on another loopback address."""

    def __init__(self, loop: asyncio.AbstractEventLoop, c_recv: bool,
                 clock: Clock | None = None) -> None:
        rng = SeededRng(5)
        # a manual clock keeps the engines on the loop's path; the system clock lets them run
        # the data-path thread (when built)
        self.clock: Clock = clock or ManualClock()
        self.ka = X25519PrivateKey.generate(rng.bytes(32))
        self.kb = X25519PrivateKey.generate(rng.bytes(32))
        self.da = Device(SeededRng(1), self.ka)
        self.db = Device(SeededRng(2), self.kb)
        self.ta, self.tb = FakeTun(), FakeTun()
        self.ea = Engine(self.da, self.ta.engine_fd, self.clock)
        self.eb = Engine(self.db, self.tb.engine_fd, self.clock)
        for e in (self.ea, self.eb):
            e.c_recv = c_recv and e.c_recv
        self.ea.bind(0)
        self.eb.bind(0)
        self.pb = self.da.add_peer(self.kb.public_key)
        self.pa = self.db.add_peer(self.ka.public_key)
        self.pb.endpoint = (LEGIT, self.eb.port)
        self.da.set_allowed_ips(self.pb, ["10.0.0.2/32"])
        self.db.set_allowed_ips(self.pa, ["10.0.0.1/32"])
        for t in (self.ta, self.tb):
            loop.add_reader(t.peer.fileno(), t.drain)
        self.ea.start(loop)
        self.eb.start(loop)
        self.attacker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.attacker.bind((ATTACKER, 0))
        self.attacker.setblocking(False)
        self.attacker.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.replies = 0
        loop.add_reader(self.attacker.fileno(), self._drain_attacker)
        self.loop = loop

    def _drain_attacker(self) -> None:
        while True:
            try:
                self.attacker.recv(2048)
            except BlockingIOError:
                return
            self.replies += 1

    async def flood(self, n: int) -> None:
        pkts = initiations(self.kb.public_key.raw, 64)
        dst = (LEGIT, self.eb.port)
        for i in range(n):
            while True:
                try:
                    self.attacker.sendto(pkts[i % 64], dst)
                    break
                except BlockingIOError:
                    await asyncio.sleep(0)
            if i % 256 == 255:
                await asyncio.sleep(0)  # let the engine read (its socket holds thousands)

    def close(self) -> None:
        self.loop.remove_reader(self.attacker.fileno())
        self.attacker.close()
        for t in (self.ta, self.tb):
            self.loop.remove_reader(t.peer.fileno())
        self.ea.close()
        self.eb.close()
        self.ta.close()
        self.tb.close()


async def settle(pred: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)


def _flood_run(c_recv: bool) -> dict[str, int]:
    result: dict[str, int] = {}

    async def main() -> None:
        bed = Bed(asyncio.get_running_loop(), c_recv)
        try:
            db = bed.db
            await bed.flood(FLOOD)
            await settle(lambda: db.counters.bad_handshake + db.counters.bad_mac2
                         + db.counters.rate_limited >= FLOOD, "the flood to be read")
            c = db.counters
            assert db.load.under_load(bed.clock.now)
            # the responder did DH work only until it noticed the load (the threshold) and
            # answered only a source's burst with cookies; the rest cost a bucket look-up
            assert c.bad_handshake <= db.load.threshold + 1
            assert c.cookie_replies_sent <= cookie.UNDER_LOAD_SOURCE_BURST + 1
            assert c.rate_limited >= FLOOD - db.load.threshold - cookie.UNDER_LOAD_SOURCE_BURST - 1
            await settle(lambda: bed.replies >= c.cookie_replies_sent, "the cookie replies")
            assert bed.replies == c.cookie_replies_sent
            # the legitimate peer, from its own address, gets a cookie during the flood ...
            bed.ta.peer.send(ipv4_udp("10.0.0.1", "10.0.0.2", b"legit"))
            await settle(lambda: bed.da.counters.cookies_received == 1, "A's cookie")
            assert bed.da.counters.handshakes_completed == 0
            # ... and its retransmission (with mac2) completes while the flood goes on
            bed.clock.advance(5.5)
            await bed.flood(500)
            await settle(lambda: db.counters.rate_limited + db.counters.bad_handshake
                         + db.counters.bad_mac2 >= FLOOD + 500 + 1, "the second flood")
            bed.ea.kick()
            await settle(lambda: bed.da.counters.handshakes_completed == 1, "A's handshake")
            await settle(lambda: any(p[20:].endswith(b"legit") for p in bed.tb.received),
                         "A's packet at B")
            assert db.load.under_load(bed.clock.now)
            result.update(db.counters.as_dict())
            result["attacker_replies"] = bed.replies
        finally:
            bed.close()

    asyncio.run(main())
    return result


@pytest.mark.parametrize("c_recv", [True, False], ids=["c-reader", "python-reader"])
def test_initiation_flood_from_one_source_is_cheap_and_legit_peer_handshakes(
        c_recv: bool) -> None:
    if c_recv and C_GUARD is None:
        pytest.skip("C fast path not built")
    _flood_run(c_recv)


@needs_c
@pytest.mark.skipif(os.environ.get("MESHGUARD_PURE_PYTHON", "") not in ("", "0"),
                    reason="compares the C reader with the Python one")
def test_c_reader_and_python_reader_count_the_same() -> None:
    """The same flood at the same (manual) times: identical device counters either way."""
    assert _flood_run(True) == _flood_run(False)


@pytest.mark.parametrize("impl", ["python", "c"])
def test_spoofed_source_flood_costs_at_most_the_global_cookie_budget(impl: str) -> None:
    """Initiations from 20,000 made-up addresses in one second: per-source buckets cannot
    help, so cookie replies stop at the global budget and the bucket tables stay bounded."""
    if impl == "c" and C_GUARD is None:
        pytest.skip("C fast path not built")
    py = HandshakeGuard(SeededRng(3), max_sources=1000)
    g: Any = py if impl == "python" else C_GUARD.HandshakeGuard(**py.params())  # type: ignore[union-attr]
    key = X25519PrivateKey.generate(SeededRng(4).bytes(32)).public_key.raw
    g.set_keys(cookie.mac1_key(key), cookie.cookie_key(key))
    pkts = initiations(key, 64)
    r = random.Random(9)
    counts = [0] * len(cookie.VERDICTS)
    n = 20_000
    for i in range(n):
        src = (f"10.{r.randrange(256)}.{r.randrange(256)}.{r.randrange(256)}", 1024 + i % 999)
        v, _ = g.precheck(50.0 + i / n, pkts[i % 64], *source_keys(src))
        counts[v] += 1
    budget = cookie.COOKIE_REPLY_BURST + cookie.COOKIE_REPLIES_PER_SECOND * 1.0
    assert counts[cookie.COOKIE] <= budget
    assert counts[cookie.COOKIE_LIMITED] >= n - budget - cookie.UNDER_LOAD_HANDSHAKES_PER_SECOND
    assert counts[cookie.PASS] <= cookie.UNDER_LOAD_HANDSHAKES_PER_SECOND + 1  # DH before load
    assert g.sources <= 2 * 1000 + 1


def test_gro_train_of_handshake_messages_is_checked_message_by_message() -> None:
    """A GSO train from the stranger (received as one GRO buffer): each initiation in it is
    checked on its own, and the other datagrams in it still reach the slow path."""
    async def main() -> None:
        bed = Bed(asyncio.get_running_loop(), True)
        try:
            db = bed.db
            db.load.threshold = 0  # under load from the first message on
            inits = initiations(bed.kb.public_key.raw, 10)
            junk = [b"\x09" + bytes(147)] * 10  # same size, not WireGuard
            train = b"".join(x for pair in zip(inits, junk, strict=True) for x in pair)
            try:
                bed.attacker.sendmsg([train], [(socket.SOL_UDP, 103, (148).to_bytes(2, "little"))],
                                     0, (LEGIT, bed.eb.port))
            except OSError:
                pytest.skip("no UDP GSO here")
            await settle(lambda: db.counters.bad_mac2 + db.counters.bad_type >= 20, "the train")
            assert db.counters.bad_mac2 == 10 and db.counters.cookie_replies_sent == 10
            assert db.counters.bad_type == 10
            await settle(lambda: bed.replies == 10, "ten cookie replies")
            assert bed.eb.stats.udp_gro_reads == 1  # it came as one train
        finally:
            bed.close()

    asyncio.run(main())


@pytest.mark.parametrize("impl", ["python", "c"])
def test_ipv6_neighbour_of_a_flooder_gets_its_cookie_and_a_rotating_flooder_is_bounded(
        impl: str) -> None:
    """IPv6: a flood from one address does not starve a peer on the same /64; a flooder
    cycling through the addresses of its /64 gets at most its network's cookie share."""
    if impl == "c" and C_GUARD is None:
        pytest.skip("C fast path not built")
    py = HandshakeGuard(SeededRng(3), threshold=0)
    g: Any = py if impl == "python" else C_GUARD.HandshakeGuard(**py.params())  # type: ignore[union-attr]
    key = X25519PrivateKey.generate(SeededRng(4).bytes(32)).public_key.raw
    g.set_keys(cookie.mac1_key(key), cookie.cookie_key(key))
    pkts = initiations(key, 64)
    now = 10.0
    for i in range(5000):  # one address, one second
        g.precheck(now + i / 5000, pkts[i % 64], *source_keys(("2001:db8:7:7::1", 4000)))
    v, reply = g.precheck(now + 1.0, pkts[0], *source_keys(("2001:db8:7:7::2", 4000)))
    assert v == cookie.COOKIE and reply is not None
    cookies = 0
    for i in range(5000):  # every message from another address of the same /64
        v, _ = g.precheck(now + 2 + i / 5000, pkts[i % 64],
                          *source_keys((f"2001:db8:7:7::{i + 16:x}", 4000)))
        cookies += v == cookie.COOKIE
    assert cookies <= cookie.UNDER_LOAD_NET_COOKIE_BURST + cookie.UNDER_LOAD_NET_COOKIE_RATE + 1
    assert cookies < 5000 // 2


@pytest.mark.parametrize("c_recv", [True, False], ids=["c-reader", "python-reader"])
def test_cookie_reply_flood_from_one_source_costs_a_bucket_look_up(c_recv: bool) -> None:
    """Junk cookie replies (type 3, 64 bytes) at the engine: beyond a small per-source burst
    they are dropped before any index look-up or decryption."""
    if c_recv and C_GUARD is None:
        pytest.skip("C fast path not built")

    async def main() -> None:
        bed = Bed(asyncio.get_running_loop(), c_recv)
        try:
            db = bed.db
            r = random.Random(4)
            for _ in range(FLOOD):
                bed.attacker.sendto(b"\x03\x00\x00\x00" + r.randbytes(60), (LEGIT, bed.eb.port))
                if _ % 256 == 255:
                    await asyncio.sleep(0)
            await settle(lambda: db.counters.rate_limited + db.counters.bad_cookie_reply
                         >= FLOOD, "the flood to be read")
            assert db.counters.bad_cookie_reply <= cookie.RECEIVED_COOKIE_REPLY_BURST + 1
            assert db.counters.rate_limited >= FLOOD - cookie.RECEIVED_COOKIE_REPLY_BURST - 1
        finally:
            bed.close()

    asyncio.run(main())


READERS = ["c-reader", "python-reader"] + (["thread"] if datapath_thread.available() else [])


@pytest.mark.parametrize("reader", READERS)
def test_transport_junk_naming_no_index_is_counted_and_dropped(reader: str) -> None:
    """Transport messages for receiver indices we never handed out: unknown_index, whichever
    reader (the C ones drop them before building any Python object for them)."""
    if reader == "c-reader" and C_GUARD is None:
        pytest.skip("C fast path not built")

    async def main() -> None:
        bed = Bed(asyncio.get_running_loop(), reader != "python-reader",
                  SystemClock() if reader == "thread" else None)
        if reader == "thread":
            assert "datapath=thread" in bed.eb.describe_offloads()
        try:
            db = bed.db
            r = random.Random(6)
            for i in range(FLOOD):
                junk = b"\x04\x00\x00\x00" + r.randbytes(28 + i % 200)
                bed.attacker.sendto(junk, (LEGIT, bed.eb.port))
                if i % 256 == 255:
                    await asyncio.sleep(0)
            await settle(lambda: db.counters.unknown_index >= FLOOD, "the flood to be read")
            assert db.counters.unknown_index == FLOOD and db.counters.dropped() == FLOOD
            # the tunnel still works
            bed.ta.peer.send(ipv4_udp("10.0.0.1", "10.0.0.2", b"after"))
            await settle(lambda: any(p[20:].endswith(b"after") for p in bed.tb.received),
                         "A's packet at B")
        finally:
            bed.close()

    asyncio.run(main())


@pytest.mark.skipif(not datapath_thread.available(), reason="no data-path thread")
def test_initiation_flood_against_the_data_path_thread_is_cheap() -> None:
    """The thread runs the C guard on the flood as it reads it (under the guard's lock): DH
    work only until the load is noticed, cookie replies within the source's burst (plus what
    its bucket refills in real time), every message counted once, and the tunnel still
    carries data afterwards."""

    async def main() -> None:
        bed = Bed(asyncio.get_running_loop(), True, SystemClock())
        try:
            db = bed.db
            assert "datapath=thread" in bed.eb.describe_offloads()
            t0 = bed.clock.monotonic()
            await bed.flood(FLOOD)
            c = db.counters
            await settle(lambda: c.bad_handshake + c.bad_mac2 + c.rate_limited >= FLOOD,
                         "the flood to be read")
            elapsed = bed.clock.monotonic() - t0
            assert c.bad_handshake + c.bad_mac2 + c.rate_limited == FLOOD
            assert db.load.under_load(bed.clock.monotonic())
            assert c.bad_handshake <= db.load.threshold + 1
            refill = cookie.UNDER_LOAD_SOURCE_RATE * (elapsed + 1)
            assert c.cookie_replies_sent <= cookie.UNDER_LOAD_SOURCE_BURST + 1 + refill
            await settle(lambda: bed.replies >= c.cookie_replies_sent, "the cookie replies")
            assert bed.replies == c.cookie_replies_sent
        finally:
            bed.close()

    asyncio.run(main())


@pytest.mark.parametrize("impl", ["python", "c"])
def test_made_up_sources_filling_the_tables_do_not_crowd_out_a_newcomer(impl: str) -> None:
    """Once the bucket tables are full, new sources are not tracked (nor share one bucket):
    a real newcomer still gets its cookie while the global budget lasts."""
    if impl == "c" and C_GUARD is None:
        pytest.skip("C fast path not built")
    py = HandshakeGuard(SeededRng(3), threshold=0, max_sources=4)
    g: Any = py if impl == "python" else C_GUARD.HandshakeGuard(**py.params())  # type: ignore[union-attr]
    key = X25519PrivateKey.generate(SeededRng(4).bytes(32)).public_key.raw
    g.set_keys(cookie.mac1_key(key), cookie.cookie_key(key))
    pkts = initiations(key, 64)
    for i in range(300):  # made-up addresses, one message each, within a few ms
        v, _ = g.precheck(20.0 + i * 1e-5, pkts[i % 64], *source_keys((f"203.0.113.{i % 250}",
                                                                        1000 + i)))
        assert v == cookie.COOKIE
    v, reply = g.precheck(20.01, pkts[5], *source_keys(("198.51.100.7", 51820)))
    assert v == cookie.COOKIE and reply is not None
    assert g.sources <= 3 * 4 + 3
