from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from meshguard.nat.stun_client import NatType, StunAnswered, StunClient, StunFinished
from meshguard.sansio import SendDatagram
from meshguard.testing.rng import SeededRng
from meshguard.wire import stun

S1 = ("198.51.100.1", 3478)
S2 = ("203.0.113.9", 3478)
WALL = 1.7e9


def answer(send: SendDatagram, mapped: tuple[str, int]) -> bytes:
    txid = stun.decode(send.data).transaction_id
    return stun.encode_binding_success(txid, mapped)


def test_cone_mapping_and_public_endpoint() -> None:
    c = StunClient(SeededRng(1), [S1, S2])
    sends = c.start(0.0)
    assert [s.endpoint for s in sends] == [S1, S2]
    assert not c.done and c.mapped is None and c.nat_type is NatType.UNKNOWN
    mapped = ("192.0.2.50", 40000)
    assert c.receive(0.1, WALL, answer(sends[0], mapped), S1) == [StunAnswered(S1, mapped)]
    assert c.mapped == ("192.0.2.50", 40000) and c.nat_type is NatType.UNKNOWN
    assert c.receive(0.1, WALL, answer(sends[1], mapped), S2) == [
        StunAnswered(S2, mapped), StunFinished(mapped, NatType.CONE)]
    assert c.done and c.nat_type is NatType.CONE and c.next_deadline() is None


def test_symmetric_and_public() -> None:
    c = StunClient(SeededRng(2), [S1, S2])
    a, b = c.start(0.0)
    c.receive(0.1, WALL, answer(a, ("192.0.2.50", 40000)), S1)
    c.receive(0.1, WALL, answer(b, ("192.0.2.50", 40123)), S2)
    assert c.nat_type is NatType.SYMMETRIC
    p = StunClient(SeededRng(3), [S1], local=[("192.0.2.7", 51821)])
    (q,) = p.start(0.0)
    p.receive(0.1, WALL, answer(q, ("192.0.2.7", 51821)), S1)
    assert p.nat_type is NatType.PUBLIC


def test_retransmission_schedule_and_give_up() -> None:
    c = StunClient(SeededRng(4), [S1])
    (first,) = c.start(0.0)
    times = []
    now = 0.0
    while (d := c.next_deadline()) is not None:
        now = d
        acts = c.tick(now, WALL)
        sends = [a for a in acts if isinstance(a, SendDatagram)]
        if sends:
            assert sends[0].data == first.data  # same transaction, RFC 5389 7.2.1
            times.append(now)
    assert times == [0.5, 1.5, 3.5]
    assert acts == [StunFinished(None, NatType.UNKNOWN)]  # the last tick gave up
    assert now == 7.5 and c.done and c.mapped is None
    assert c.counters["requests_sent"] == 4 and c.counters["server_timeouts"] == 1


def test_spoofed_and_garbage_responses_are_dropped() -> None:
    c = StunClient(SeededRng(5), [S1])
    (q,) = c.start(0.0)
    wrong_source = ("192.0.2.66", 3478)
    assert not c.receive(0.1, WALL, answer(q, ("6.6.6.6", 1)), wrong_source)
    assert not c.receive(0.1, WALL, stun.encode_binding_success(b"x" * 12, ("6.6.6.6", 1)), S1)
    assert not c.receive(0.1, WALL, b"\x00\x01garbage", S1)
    assert c.mapped is None and c.counters["malformed"] == 1 and c.counters["unmatched"] == 2
    assert c.receive(0.2, WALL, answer(q, ("192.0.2.1", 2)), S1) == [
        StunAnswered(S1, ("192.0.2.1", 2)), StunFinished(("192.0.2.1", 2), NatType.UNKNOWN)]
    assert not c.receive(0.3, WALL, answer(q, ("6.6.6.6", 1)), S1)  # a duplicate changes nothing
    assert c.mapped == ("192.0.2.1", 2)


def test_an_error_response_answers_the_query_without_a_mapping() -> None:
    c = StunClient(SeededRng(7), [S1, S2])
    q, r = c.start(0.0)
    txid = stun.decode(q.data).transaction_id
    error = stun.encode_binding_success(txid, ("192.0.2.1", 2))
    error = stun.BINDING_ERROR.to_bytes(2, "big") + error[2:]
    assert c.receive(0.1, WALL, error, S1) == [StunAnswered(S1, None)]
    assert c.counters["error_responses"] == 1 and not c.done
    mapped = ("192.0.2.9", 9)
    assert c.receive(0.2, WALL, answer(r, mapped), S2) == [
        StunAnswered(S2, mapped), StunFinished(mapped, NatType.UNKNOWN)]


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def coturn() -> Iterator[tuple[str, int]]:
    if shutil.which("turnserver") is None:
        pytest.skip("coturn (turnserver) is not installed")
    port = _free_udp_port()
    proc = subprocess.Popen(
        ["turnserver", "-n", "--listening-ip", "127.0.0.1", "--listening-port", str(port),
         "--stun-only", "--no-tls", "--no-dtls", "--no-cli", "--no-tcp",
         "--log-file", "stdout"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield ("127.0.0.1", port)
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_against_coturn_on_loopback(coturn: tuple[str, int]) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    local = ("127.0.0.1", sock.getsockname()[1])
    c = StunClient(SeededRng(6), [coturn], local=[local])
    deadline = time.monotonic() + 15  # coturn may need a moment to bind
    try:
        t0 = time.monotonic()
        for s in c.start(0.0):
            sock.sendto(s.data, s.endpoint)
        while not c.done and time.monotonic() < deadline:
            try:
                data, src = sock.recvfrom(2048)
            except TimeoutError:
                now = time.monotonic() - t0
                if (d := c.next_deadline()) is not None and now >= d:
                    for a in c.tick(now, WALL):
                        if isinstance(a, SendDatagram):
                            sock.sendto(a.data, a.endpoint)
                continue
            c.receive(time.monotonic() - t0, WALL, data, (src[0], src[1]))
    finally:
        sock.close()
    assert c.mapped == local
    assert c.nat_type is NatType.PUBLIC
