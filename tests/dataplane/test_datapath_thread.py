"""The data-path thread (DataPath) and the keys it shares with the Device (KeyState).

The C thread and Python use one keypair at once: sends from both sides never share a counter
and lose none, each received counter is accepted once whichever side sees it first, and the
thread's wire bytes and TUN writes are those of the pure Python path for the same keys,
counters and packets. Loopback only, no root: a SOCK_SEQPACKET pair stands in for the TUN.
"""

from __future__ import annotations

import fcntl
import os
import pathlib
import random
import select
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator

import pytest

from meshguard.dataplane import datapath_thread, fastpath
from meshguard.dataplane.offload import split_tun_read
from meshguard.dataplane.udp_io import raw_sockaddr
from meshguard.dataplane.vnet import VNET_HDR_LEN
from meshguard.wireguard.keypair import Keypair, ReplayWindow
from meshguard.wireguard.transport import HEADER, seal_batch

from .helpers import A_IN, B_IN, gso_super, ipv4_udp

if not datapath_thread.available():
    pytest.skip("the C data-path thread is not built", allow_module_level=True)

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from meshguard.crypto.aead import TransportCipher
from meshguard.dataplane._fastpath import DataPath, KeyState

SEND_KEY = bytes(range(32))
RECV_KEY = bytes(range(32, 64))
LOCAL, REMOTE = 0x11223344, 0x55667788
DEADLINE = 10.0


def keystate(counter: int = 0) -> KeyState:
    return KeyState(SEND_KEY, RECV_KEY, LOCAL, REMOTE, time.monotonic(), counter)


class Rig:
    """A DataPath on a socketpair TUN and a loopback UDP socket, with one peer (slot 0) at
    `remote` whose keys are `ks`, routed 10.0.0.2/32 (B_IN), its source A_IN/32."""

    def __init__(self, ks: KeyState, vnet: bool = False, tso: bool = False,
                 start: bool = True) -> None:
        self.tun, self.tun_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        try:  # room for a burst of thousands while the thread is not scheduled (root)
            self.udp.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE
        except OSError:
            self.udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.remote = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.remote.bind(("127.0.0.1", 0))
        self.remote.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.tun_peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        ep = self.remote.getsockname()
        self.dp = DataPath(self.tun.fileno(), self.udp.fileno(), vnet, tso, False)
        self.dp.set_tables(
            [(raw_sockaddr(socket.AF_INET, ep), ks)],
            [(LOCAL, ks, 0, False)],
            [(socket.inet_aton(B_IN), 32, 0), (socket.inet_aton(A_IN), 32, 0)])
        self.dp.set_clock(0.0)
        if start:
            self.dp.start()

    def close(self) -> None:
        self.dp.stop()
        for s in (self.tun, self.tun_peer, self.udp, self.remote):
            s.close()

    def wire(self, n: int) -> list[bytes]:
        """n datagrams the thread sent to the remote."""
        out: list[bytes] = []
        end = time.monotonic() + DEADLINE
        while len(out) < n:
            assert select.select([self.remote], [], [], end - time.monotonic())[0], len(out)
            out.append(self.remote.recv(65536))
        return out

    def tun_writes(self, n: int) -> list[bytes]:
        out: list[bytes] = []
        end = time.monotonic() + DEADLINE
        while len(out) < n:
            assert select.select([self.tun_peer], [], [], end - time.monotonic())[0], len(out)
            out.append(self.tun_peer.recv(65536 + VNET_HDR_LEN))
        return out


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = Rig(keystate())
    yield r
    r.close()


# --- the shared replay window and counter --------------------------------------------------


def test_keystate_replay_window_is_the_python_window() -> None:
    """The same accept/check verdicts as wireguard/keypair.py's ReplayWindow, on a random
    walk with jumps, duplicates and counters far behind."""
    py, ks = ReplayWindow(), keystate()
    r = random.Random(4)
    c = 0
    for _ in range(20_000):
        step = r.choice([1, 1, 1, 2, -1, -5, -100, -4031, -4032, -4100, 64, 5000, 0])
        c = max(0, c + step)
        assert ks.check(c) == py.check(c), c
        assert ks.accept(c) == py.accept(c), c
        assert ks.last == py.last
    for bad in (-1, 2**64 - 2**13 - 1, 2**64, 2**70):
        assert ks.check(bad) is py.check(bad) is False
        assert ks.accept(bad) is py.accept(bad) is False


def test_share_carries_the_counter_and_the_window_over() -> None:
    tc_s, tc_r = TransportCipher(SEND_KEY), TransportCipher(RECV_KEY)
    kp = Keypair(tc_s, tc_r, LOCAL, REMOTE, True, time.monotonic(), peer=None)  # type: ignore[arg-type]
    assert kp.reserve(5) == 0
    for c in (0, 1, 7):
        assert kp.replay.accept(c)
    last, blocks = kp.replay_state()
    ks = KeyState(SEND_KEY, RECV_KEY, LOCAL, REMOTE, kp.created, kp.send_counter, last, blocks)
    kp.share(ks)
    assert kp.reserve(3) == 5 and ks.sent == kp.sent == 8
    assert not kp.replay.accept(7) and not ks.check(1) and ks.check(2)  # seen before sharing
    assert kp.replay.accept(2) and not ks.accept(2)
    with pytest.raises(TypeError):
        kp.replay_state()  # shared now: the window lives in the KeyState


def test_reserve_stops_at_reject_after_messages() -> None:
    limit = 2**64 - 2**13 - 1
    ks = keystate(limit - 3)
    assert ks.reserve(4) is None and ks.sent == limit - 3
    assert ks.reserve(3) == limit - 3 and ks.sent == limit
    assert ks.reserve(1) is None


def test_counters_reserved_from_python_and_the_thread_at_once_never_repeat(rig: Rig) -> None:
    """A Python thread reserves counters while the C thread seals TUN reads: every counter
    below the total is used exactly once (none twice, none lost)."""
    keys = keystate()
    rig.dp.set_tables(
        [(raw_sockaddr(socket.AF_INET, rig.remote.getsockname()), keys)], [],
        [(socket.inet_aton(B_IN), 32, 0)])
    n_tun, n_py = 3000, 30_000
    python_got: list[int] = []

    def reserve() -> None:
        for i in range(n_py // 3):
            first = keys.reserve(1 + i % 5)
            assert first is not None
            python_got.extend(range(first, first + 1 + i % 5))

    t = threading.Thread(target=reserve)
    t.start()
    pkt = ipv4_udp(A_IN, B_IN, b"x" * 40)
    sent = 0
    while sent < n_tun:
        try:
            rig.tun_peer.send(pkt)
            sent += 1
        except BlockingIOError:
            time.sleep(0.0005)
    wire = rig.wire(n_tun)
    t.join()
    thread_got = [HEADER.unpack_from(d)[2] for d in wire]
    used = python_got + thread_got
    assert len(used) == len(set(used))  # none twice
    assert sorted(used) == list(range(keys.sent))  # none lost


def test_each_counter_is_accepted_once_by_python_and_the_thread_together(rig: Rig) -> None:
    """Datagrams with counters 0..n-1 reach the thread while Python accepts the same
    counters in the same KeyState: each counter is accepted exactly once in all; the other
    side refuses it (the thread counts it as a replay)."""
    keys = keystate()
    rig.dp.set_tables(
        [(raw_sockaddr(socket.AF_INET, rig.remote.getsockname()), keys)],
        [(LOCAL, keys, 0, False)],
        [(socket.inet_aton(A_IN), 32, 0)])
    n = 3000  # within the window: no counter is too old for the side that comes late
    aead = ChaCha20Poly1305(RECV_KEY)
    msgs = seal_batch(aead, LOCAL, 0, [ipv4_udp(A_IN, B_IN, b"%05d" % i) for i in range(n)])
    python_ok = 0

    def accept() -> None:
        nonlocal python_ok
        for c in range(n):
            python_ok += keys.accept(c)

    t = threading.Thread(target=accept)
    t.start()
    dst = rig.udp.getsockname()
    for i, m in enumerate(msgs):
        rig.remote.sendto(m, dst)
        if i % 200 == 199:
            time.sleep(0.001)  # keep within the socket buffer
    t.join()
    replays = 0
    written = 0
    end = time.monotonic() + DEADLINE
    while written + replays < n:
        assert time.monotonic() < end, (written, replays, python_ok)
        if select.select([rig.tun_peer], [], [], 0.05)[0]:
            rig.tun_peer.recv(65536)
            written += 1
        _, _, _, counts, _ = rig.dp.drain()
        replays += counts.get("replay", 0)
        assert counts.get("bad_auth", 0) == counts.get("bad_source", 0) == 0
    assert written + python_ok == n  # each counter accepted once, by one side
    assert replays == n - written  # and refused by the thread when Python had it first
    for c in range(n):
        assert not keys.check(c)


# --- the same bytes as the pure Python path ------------------------------------------------


def test_thread_wire_bytes_and_tun_writes_are_the_python_path_s(rig: Rig) -> None:
    """Plain reads of many sizes: the thread's datagrams are seal_batch's bytes for the same
    counters; datagrams sealed by Python come out of the thread's TUN as the packets."""
    r = random.Random(7)
    pkts = [ipv4_udp(A_IN, B_IN, bytes(r.randrange(256) for _ in range(r.randrange(0, 1300))))
            for _ in range(200)]
    for p in pkts:
        rig.tun_peer.send(p)
    wire = rig.wire(len(pkts))
    expect = seal_batch(ChaCha20Poly1305(SEND_KEY), REMOTE, 0, pkts)
    assert wire == expect
    back = [ipv4_udp(A_IN, B_IN, b"back %d" % i + bytes(i)) for i in range(200)]
    for m in seal_batch(ChaCha20Poly1305(RECV_KEY), LOCAL, 0, back):
        rig.remote.sendto(m, rig.udp.getsockname())
    assert rig.tun_writes(len(back)) == back


def test_thread_segments_and_coalesces_like_the_python_fast_path() -> None:
    """With virtio-net headers: TSO super-packet reads are cut and sealed into the bytes of
    the pure Python seal_segments (same counters); their segments, sealed by Python and
    received, reach the TUN in coalesced super-packets holding the same packets."""
    rig = Rig(keystate(), vnet=True, tso=True)
    try:
        py = fastpath.python_impl()
        src, dst = socket.inet_aton(A_IN), socket.inet_aton(B_IN)
        reads = []
        for i in range(5):
            hdr, pkt = gso_super(src, dst, i * 100_000, bytes([i]) * (9000 + 7 * i), 1400)
            reads.append(hdr.pack() + pkt)
        first = 0
        expect: list[bytes] = []
        for rd in reads:
            data, seg, k = py.seal_segments(py.Cipher(SEND_KEY), REMOTE, first, rd, True)
            expect += [data[i : i + seg] for i in range(0, len(data), seg)]
            first += k
            rig.tun_peer.send(rd)
        assert rig.wire(len(expect)) == expect
    finally:
        rig.close()
    # the datagrams wait in the socket before the thread starts: one receive batch
    rig = Rig(keystate(), vnet=True, tso=True, start=False)
    try:
        segs = [p for rd in reads for p in split_tun_read(rd)]
        for m in seal_batch(ChaCha20Poly1305(RECV_KEY), LOCAL, 0, segs):
            rig.remote.sendto(m, rig.udp.getsockname())
        rig.dp.start()
        got: list[bytes] = []
        while sum(len(split_tun_read(b)) for b in got) < len(segs):
            got += rig.tun_writes(1)
        assert got == py.coalesce(segs)
        assert [p for b in got for p in split_tun_read(b)] == segs
    finally:
        rig.close()


def test_first_message_on_a_next_keypair_promotes_it_in_the_thread(rig: Rig) -> None:
    """A responder's `next` keys become its send keys on their first authenticated message,
    in the thread, before Python has drained anything: the reply leaves sealed at once. Until
    then a TUN read for the peer goes up to Python."""
    keys = keystate()
    ep = raw_sockaddr(socket.AF_INET, rig.remote.getsockname())
    rig.dp.set_tables([(ep, None)], [(LOCAL, keys, 0, True)],
                      [(socket.inet_aton(B_IN), 32, 0), (socket.inet_aton(A_IN), 32, 0)])
    rig.tun_peer.send(ipv4_udp(A_IN, B_IN, b"before"))
    end = time.monotonic() + DEADLINE
    up: list[bytes] = []
    while not up:
        assert time.monotonic() < end
        select.select([rig.dp.wake_fd], [], [], 0.05)
        up = rig.dp.drain()[0]
    assert up == [ipv4_udp(A_IN, B_IN, b"before")]  # no send keys: Python's
    first = seal_batch(ChaCha20Poly1305(RECV_KEY), LOCAL, 0, [ipv4_udp(A_IN, B_IN, b"hi")])
    rig.remote.sendto(first[0], rig.udp.getsockname())
    assert rig.tun_writes(1) == [ipv4_udp(A_IN, B_IN, b"hi")]
    reply = ipv4_udp(A_IN, B_IN, b"reply")
    rig.tun_peer.send(reply)
    assert rig.wire(1) == seal_batch(ChaCha20Poly1305(SEND_KEY), REMOTE, 0, [reply])
    _, _, notes, _, _ = rig.dp.drain()
    assert [(n[0], n[1], n[3]) for n in notes] == [(keys, 1, 1)]  # sent 1, received 1
    assert notes[0][6] == raw_sockaddr(socket.AF_INET, rig.remote.getsockname())


def test_a_stopped_thread_starts_again(rig: Rig) -> None:
    rig.dp.stop()
    assert not rig.dp.running
    rig.dp.start()
    assert rig.dp.running
    time.sleep(0.05)  # the thread is waiting (not reading a packet sent before it looked)
    pkt = ipv4_udp(A_IN, B_IN, b"again")
    rig.tun_peer.send(pkt)
    assert len(rig.wire(1)) == 1


def _ipv6_udp(src: bytes, dst: bytes, payload: bytes) -> bytes:
    return (bytes([0x60, 0, 0, 0]) + (8 + len(payload)).to_bytes(2, "big") + bytes([17, 64])
            + src + dst + bytes(8) + payload)


def test_routes_take_the_longest_prefix_host_routes_included(rig: Rig) -> None:
    """Host routes (a hash table in the thread) and prefixes (a scan) together: the longest
    match wins, IPv4 and IPv6; no match is a no_route drop."""
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind(("127.0.0.1", 0))
    try:
        k0, k1 = keystate(), keystate()
        peers = [(raw_sockaddr(socket.AF_INET, rig.remote.getsockname()), k0),
                 (raw_sockaddr(socket.AF_INET, other.getsockname()), k1)]
        v6 = bytes.fromhex("fd00" + "00" * 13 + "02")
        hosts = [socket.inet_aton(f"10.1.0.{i}") for i in range(1, 60)]  # many mesh peers
        rig.dp.set_tables(peers, [], [
            (socket.inet_aton("10.0.0.0"), 8, 1), *[(h, 32, 1) for h in hosts],
            (socket.inet_aton(B_IN), 32, 0), (socket.inet_aton("10.0.0.0"), 24, 0),
            (bytes.fromhex("fd00" + "00" * 14), 16, 1), (v6, 128, 0)])
        cases = [("10.0.0.2", 0), ("10.0.0.77", 0), ("10.0.1.1", 1), ("10.1.0.33", 1),
                 ("10.200.0.1", 1)]
        for dst, _ in cases:
            rig.tun_peer.send(ipv4_udp(A_IN, dst, b"to " + dst.encode()))
        rig.tun_peer.send(_ipv6_udp(v6, v6, b"six-host"))
        rig.tun_peer.send(_ipv6_udp(v6, bytes.fromhex("fd00" + "00" * 13 + "09"), b"six-net"))
        rig.tun_peer.send(ipv4_udp(A_IN, "192.0.2.1", b"nowhere"))
        want0 = sum(1 for _, s in cases if s == 0) + 1
        want1 = sum(1 for _, s in cases if s == 1) + 1
        assert len(rig.wire(want0)) == want0
        end = time.monotonic() + DEADLINE
        got1 = 0
        while got1 < want1:
            assert select.select([other], [], [], end - time.monotonic())[0]
            other.recv(65536)
            got1 += 1
        drops = 0
        while not drops:
            assert time.monotonic() < end
            select.select([rig.dp.wake_fd], [], [], 0.05)
            drops = rig.dp.drain()[3].get("no_route", 0)
        assert drops == 1
        assert not select.select([rig.remote, other], [], [], 0.05)[0]  # nothing more
    finally:
        other.close()


# --- hostile input -------------------------------------------------------------------------


def _wait_stat(rig: Rig, name: str) -> int:
    end = time.monotonic() + DEADLINE
    got = 0
    while not got:
        assert time.monotonic() < end, name
        time.sleep(0.01)
        got = rig.dp.take_stats().get(name, 0)
    return got


def test_a_tso_read_that_would_seal_past_the_send_buffer_is_dropped() -> None:
    """A virtio-net TSO read whose segments, sealed, need more than the thread's send buffer
    (gso_size 1 behind a 30000-byte header: csum_start says where TCP starts) is a bad read,
    not a write past the buffer; the thread goes on sealing what follows."""
    rig = Rig(keystate(), vnet=True, tso=True)
    try:
        l4, n = 30000, 65535
        pkt = bytearray(n)
        pkt[0:20] = bytes(ipv4_udp(A_IN, B_IN, b"")[:20])
        pkt[2:4] = n.to_bytes(2, "big")
        pkt[9] = 6
        pkt[l4 + 12] = 0x50  # TCP header: 20 bytes
        pkt[l4 + 13] = 0x10
        hdr = struct.pack("<BBHHHH", 1, 1, l4 + 20, 1, l4, 16)  # NEEDS_CSUM, TCPV4, gso_size 1
        rig.tun_peer.send(hdr + bytes(pkt))
        assert _wait_stat(rig, "tun_bad_reads") == 1
        ok = ipv4_udp(A_IN, B_IN, b"after")
        rig.tun_peer.send(bytes(VNET_HDR_LEN) + ok)
        assert rig.wire(1) == seal_batch(ChaCha20Poly1305(SEND_KEY), REMOTE, 0, [ok])
    finally:
        rig.close()


_GUARD_GC = """
import socket, sys, time
from meshguard.dataplane._fastpath import DataPath, HandshakeGuard
from meshguard.testing.rng import SeededRng
from meshguard.wireguard.cookie import HandshakeGuard as PyGuard
tun, tun_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("127.0.0.1", 0))
out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
dp = DataPath(tun.fileno(), udp.fileno(), False, False, False)
dp.set_guard(HandshakeGuard(**PyGuard(SeededRng(3)).params()))
dp.set_tables([], [], [])
dp.set_clock(0.0)
dp.start()
for offset in (0.0, 1000.0):
    dp.set_clock(offset)  # the first source's bucket is stale: the next check collects it
    out.sendto(bytes([3, 0, 0, 0]) + bytes(60), udp.getsockname())
    end = time.monotonic() + 10
    while dp.take_stats().get("udp_rx", 0) == 0:
        assert time.monotonic() < end
        time.sleep(0.01)
dp.stop()
print("alive")
"""


def test_the_handshake_guard_allocates_without_the_gil_only_through_the_raw_allocator(
        tmp_path: pathlib.Path) -> None:
    """The thread's guard collects its rate buckets (a stale source, a second later) with
    PyMem_Raw* alone: PYTHONMALLOC=debug aborts on a PyMem_* call without the GIL."""
    env = dict(os.environ, PYTHONMALLOC="debug", PYTHONPATH=os.pathsep.join(sys.path))
    r = subprocess.run([sys.executable, "-c", _GUARD_GC], env=env, capture_output=True,
                       text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == "alive", r.stderr[-2000:]


def test_a_stranger_s_large_junk_fills_the_up_queue_to_a_byte_bound_and_is_counted() -> None:
    """Non-transport datagrams go up to Python; 400 of 60000 bytes while Python does not
    drain: the queue keeps at most 16 MiB of them, the rest are counted as overflow."""
    rig = Rig(keystate())
    try:
        junk = bytes([9, 0, 0, 0]) + bytes(59996)
        sent = 400
        for i in range(sent):
            rig.remote.sendto(junk, rig.udp.getsockname())
            end = time.monotonic() + DEADLINE
            while fcntl.ioctl(rig.udp.fileno(), termios.FIONREAD, b"\0" * 4) != b"\0" * 4:
                assert time.monotonic() < end, i  # the thread has taken it
                time.sleep(0.0005)
        time.sleep(0.05)
        _, grams, _, counts, _ = rig.dp.drain()
        assert sum(len(g[0]) for g in grams) <= 16 << 20
        assert counts.get("up_overflow", 0) == sent - len(grams) > 0
    finally:
        rig.close()
