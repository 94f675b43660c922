"""The fast path's two implementations (C extension and pure Python) against each other and
against the reference code they replace: offload.py (split, coalesce, checksums),
wireguard/transport.seal_batch and crypto/aead.py (sealing). Every case runs for both
implementations.
"""

from __future__ import annotations

import os
import random
import socket
import struct
import weakref
from typing import Any

import pytest

from meshguard.crypto.aead import TransportCipher
from meshguard.dataplane import datapath_thread, fastpath, offload
from meshguard.dataplane.cipher_cache import CipherCache
from meshguard.dataplane.offload import TCP_ACK, TCP_CWR, TCP_FIN, TCP_PSH, TCP_SYN
from meshguard.dataplane.vnet import (
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_UDP_L4,
    ZERO_HDR,
    VirtioNetHdr,
)
from meshguard.wireguard.transport import seal_batch

from .helpers import (
    A_IN,
    B_IN,
    V4A,
    V4B,
    V6A,
    V6B,
    World,
    gso_super,
    ipv4_udp,
    partial,
    run,
    tcp_packet,
    udp_packet,
    until,
)

IMPLS = [fastpath.python_impl()]
if fastpath.c_impl() is not None:
    IMPLS.append(fastpath.c_impl())
elif os.environ.get("MESHGUARD_REQUIRE_C"):
    raise RuntimeError("the C fast path is not built")

KEY = bytes(range(32))


@pytest.fixture(params=IMPLS, ids=lambda m: m.name)
def fp(request: pytest.FixtureRequest) -> Any:
    return request.param


def test_c_extension_is_built() -> None:
    """The development environment has a compiler and OpenSSL headers (./dev installs them)."""
    assert fastpath.c_impl() is not None
    if not os.environ.get("MESHGUARD_PURE_PYTHON"):
        assert fastpath.IMPLEMENTATION == "c"


# -- cipher and checksum ----------------------------------------------------------------------


def test_cipher_matches_transport_cipher(fp: Any) -> None:
    tc = TransportCipher(KEY)
    c = fp.Cipher(KEY)
    rnd = random.Random(1)
    for n in (0, 1, 15, 16, 17, 1420, 9000):
        pt = rnd.randbytes(n)
        counter = rnd.getrandbits(64)
        ct = c.seal(counter, pt)
        assert ct == tc.seal(counter, pt)
        assert c.open(counter, ct) == pt
        assert c.open(counter + 1, ct) is None
        bad = bytearray(ct)
        bad[-1] ^= 1
        assert c.open(counter, bytes(bad)) is None
    assert c.open(0, b"short") is None
    assert "redacted" in repr(c)
    with pytest.raises(ValueError):
        fp.Cipher(b"x" * 31)


def test_checksum_matches_offload(fp: Any) -> None:
    rnd = random.Random(2)
    for n in [0, 1, 2, 3, 63, 64, 65, 1379, 1380, 1400, 2049, 9001]:
        data = rnd.randbytes(n)
        for initial in (0, 1, 0xFFFF, rnd.getrandbits(130)):
            assert fp.checksum(data, initial) == offload.checksum(data, initial), (n, initial)
    assert fp.checksum(bytes(100)) == offload.checksum(bytes(100)) == 0xFFFF
    assert fp.checksum(b"\xff\xff") == offload.checksum(b"\xff\xff")
    with pytest.raises(ValueError):
        fp.checksum(b"ab", -1)


# -- send side: split + seal ------------------------------------------------------------------


def reads() -> list[tuple[str, bytes]]:
    """TUN reads (virtio-net header + packet) of every kind the kernel hands over."""
    rnd = random.Random(3)
    out: list[tuple[str, bytes]] = []
    opts = b"\x01\x01\x08\x0a" + struct.pack("!II", 11, 22)
    for v6 in (False, True):
        src, dst = (V6A.packed, V6B.packed) if v6 else (V4A.packed, V4B.packed)
        for mss, size, flags in [
            (1388, 65000 - 100, TCP_ACK),
            (1380, 5000, TCP_ACK | TCP_PSH | TCP_FIN | TCP_CWR),
            (1379, 2758, TCP_ACK | TCP_PSH),  # odd mss, exact multiple
            (500, 1, TCP_ACK),
            (1380, 0, TCP_ACK | TCP_FIN),
        ]:
            hdr, pkt = gso_super(src, dst, rnd.getrandbits(32), rnd.randbytes(size), mss,
                                 flags=flags, options=opts if size % 2 else b"",
                                 ip_id=0xFFFF - size % 3)
            out.append((f"tso v6={v6} mss={mss} size={size}", hdr.pack() + pkt))
        # UDP segmentation offload
        l4 = 40 if v6 else 20
        upkt = partial(udp_packet(src, dst, rnd.randbytes(3001)), l4, 17, 6)
        uhdr = VirtioNetHdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_UDP_L4, l4 + 8, 1200,
                            l4, 6)
        out.append((f"uso v6={v6}", uhdr.pack() + upkt))
        # checksum completion only (TCP and UDP, including a UDP sum that comes out zero)
        tpkt = partial(tcp_packet(src, dst, 5, rnd.randbytes(77), flags=TCP_SYN), l4, 6, 16)
        out.append((f"csum tcp v6={v6}",
                    VirtioNetHdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0, l4, 16).pack() + tpkt))
        upkt = partial(udp_packet(src, dst, rnd.randbytes(33)), l4, 17, 6)
        out.append((f"csum udp v6={v6}",
                    VirtioNetHdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0, l4, 6).pack() + upkt))
        out.append((f"plain v6={v6}", ZERO_HDR + tcp_packet(src, dst, 9, b"hello")))
    zero = bytearray(partial(udp_packet(V4A.packed, V4B.packed, bytes(8)), 20, 17, 6))
    zero[20:] = bytes(len(zero) - 20)  # all-zero data from csum_start: the sum is 0xFFFF
    out.append(("csum zero", VirtioNetHdr(1, 0, 0, 0, 20, 6).pack() + bytes(zero)))
    out.append(("flags only", bytes([2]) + bytes(9) + udp_packet(V4A.packed, V4B.packed, b"x")))
    return out


READS = reads()


@pytest.mark.parametrize("name,read", READS, ids=[n for n, _ in READS])
def test_seal_segments_matches_split_and_seal(fp: Any, name: str, read: bytes) -> None:
    packets = offload.split_tun_read(read)
    tc = TransportCipher(KEY)
    first = 0xFFFF_FF00 + len(name)
    expect = seal_batch(tc.aead, 0x01020304, first, packets)
    assert fp.segment_count(read) == len(packets)
    data, seg, count = fp.seal_segments(fp.Cipher(KEY), 0x01020304, first, read)
    assert count == len(packets)
    assert seg == len(expect[0])
    assert data == b"".join(expect)
    assert all(len(m) == seg for m in expect[:-1]) and len(expect[-1]) <= seg
    # every segment is a valid IP packet with correct checksums
    for pkt in packets:
        assert offload.checksums_ok(pkt) or name in ("flags only", "csum zero")


def test_seal_segments_plain_packets(fp: Any) -> None:
    pkt = udp_packet(V4A.packed, V4B.packed, b"ping")
    assert fp.segment_count(pkt, vnet=False) == 1
    data, seg, count = fp.seal_segments(fp.Cipher(KEY), 7, 42, pkt, vnet=False)
    assert (seg, count) == (len(data), 1)
    assert data == seal_batch(TransportCipher(KEY).aead, 7, 42, [pkt])[0]


def test_malformed_reads_are_rejected_alike() -> None:
    """Mutated reads: every implementation raises ValueError or gives the reference bytes."""
    rnd = random.Random(4)
    tc = TransportCipher(KEY)
    ciphers = [(m, m.Cipher(KEY)) for m in IMPLS]
    bad = [b"", b"123", ZERO_HDR[:9]]
    for _ in range(400):
        read = bytearray(rnd.choice(READS)[1])
        for _ in range(rnd.randint(1, 3)):
            pos = rnd.randrange(min(len(read), 80))
            read[pos] = rnd.getrandbits(8)
        if rnd.random() < 0.2:
            del read[rnd.randrange(10, len(read)):]
        bad.append(bytes(read))
    for read in bad:
        verdicts = []
        for m, c in ciphers:
            try:
                n = m.segment_count(read)
                data = m.seal_segments(c, 1, 0, read)[0]
                verdicts.append((n, data))
            except ValueError:
                verdicts.append(None)
        assert all(v == verdicts[0] for v in verdicts), read.hex()
        if verdicts[0] is not None:
            ref = seal_batch(tc.aead, 1, 0, offload.split_tun_read(read))
            assert verdicts[0] == (len(ref), b"".join(ref))


# -- receive side: open --------------------------------------------------------------------


def test_open_batch_results(fp: Any) -> None:
    tc = TransportCipher(KEY)
    c = fp.Cipher(KEY)
    v4 = tcp_packet(V4A.packed, V4B.packed, 1, os.urandom(1380))
    v6 = tcp_packet(V6A.packed, V6B.packed, 1, os.urandom(1360))
    msgs = seal_batch(tc.aead, 9, 100, [v4, v6, b"", v4])
    msgs[3] = msgs[3][:-1] + bytes([msgs[3][-1] ^ 1])  # forged
    garbage = seal_batch(tc.aead, 9, 104, [b"\x45" + bytes(30)])  # total length 0: bad inner
    other = seal_batch(tc.aead, 10, 105, [v4])  # another receiver index: stops the batch
    all_msgs = [*msgs, *garbage, *other]
    # datagram by datagram (no GRO)
    results = []
    for m in all_msgs[:5]:
        end, res = fp.open_batch(c, m, 0, 9)
        assert end == len(m)
        results += res
    assert [(r[0], r[1]) for r in results] == [
        (100, fastpath.OK), (101, fastpath.OK), (102, fastpath.KEEPALIVE),
        (103, fastpath.BAD_AUTH), (104, fastpath.BAD_INNER)]
    assert results[0][2:] == (v4, V4A.packed, len(msgs[0]))
    assert results[1][2:] == (v6, V6A.packed, len(msgs[1]))
    assert results[2][2] == b"" and results[3][2] is None and results[4][2] is None
    # as one GRO buffer of equal-size datagrams (the last may be shorter)
    same = seal_batch(tc.aead, 9, 200, [v4] * 5)
    keep = seal_batch(tc.aead, 9, 205, [b""])
    buf = b"".join(same + other + keep)
    seg = len(same[0])
    end, res = fp.open_batch(c, memoryview(buf), seg, 9)
    assert end == 5 * seg  # stopped at the other receiver's datagram
    assert [r[0] for r in res] == list(range(200, 205))
    assert all(r[1] == fastpath.OK and r[2] == v4 for r in res)
    end2, res2 = fp.open_batch(c, buf, seg, 10, end)
    assert end2 == 6 * seg and [r[:3] for r in res2] == [(105, fastpath.OK, v4)]
    end3, res3 = fp.open_batch(c, buf, seg, 9, end2)
    assert end3 == len(buf) and [r[:3] for r in res3] == [(205, fastpath.KEEPALIVE, b"")]
    # not a transport message: nothing consumed
    assert fp.open_batch(c, b"\x01" + bytes(147), 0, 9) == (0, [])
    assert fp.open_batch(c, msgs[0][:31], 0, 9) == (0, [])


# -- receive side: coalesce ----------------------------------------------------------------


def flows(rnd: random.Random) -> list[bytes]:
    """Decrypted packets as they arrive: interleaved TCP flows (v4 and v6), PSH, short and
    out-of-order segments, a corrupt one, pure ACKs, UDP and ICMP-like packets."""
    pkts: list[bytes] = []
    seqs = {0: 1000, 1: 5, 2: 0xFFFFFF00}
    for i in range(120):
        f = rnd.choice([0, 0, 0, 1, 1, 2])
        src, dst = (V6A.packed, V6B.packed) if f == 1 else (V4A.packed, V4B.packed)
        sport = 40000 + f
        r = rnd.random()
        if r < 0.05:
            pkts.append(udp_packet(src, dst, rnd.randbytes(rnd.randint(0, 100))))
            continue
        if r < 0.08:
            pkts.append(tcp_packet(src, dst, seqs[f], b"", sport=sport))  # pure ACK
            continue
        n = 1380 if rnd.random() < 0.85 else rnd.randint(1, 1379)
        flags = TCP_ACK | (TCP_PSH if rnd.random() < 0.1 else 0)
        seq = seqs[f] if rnd.random() < 0.95 else seqs[f] + 7
        good = rnd.random() < 0.97
        pkts.append(tcp_packet(src, dst, seq, rnd.randbytes(n), flags=flags, sport=sport,
                               ip_id=i, good=good))
        seqs[f] = (seq + n) & 0xFFFFFFFF
    pkts.append(b"\x45" + bytes(10))  # not even an IP header
    return pkts


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("verify", [True, False])
def test_coalesce_matches_offload(fp: Any, seed: int, verify: bool) -> None:
    pkts = flows(random.Random(seed))
    expect = offload.coalesce(pkts, verify=verify)
    got = fp.coalesce(pkts, verify=verify)
    assert got == expect
    assert sum(1 for b in got if b[1]) > 0  # some super-packets were built


def test_coalesce_edge_cases(fp: Any) -> None:
    assert fp.coalesce([]) == []
    p = tcp_packet(V4A.packed, V4B.packed, 1, b"x" * 100)
    assert fp.coalesce([p]) == [ZERO_HDR + p]
    assert fp.coalesce([memoryview(p), bytearray(p)]) == offload.coalesce([p, p])
    # segments that would pass 64 KB are split into two groups
    seg = [tcp_packet(V4A.packed, V4B.packed, 1 + 1380 * i, bytes(1380)) for i in range(60)]
    assert fp.coalesce(seg) == offload.coalesce(seg)
    assert len(fp.coalesce(seg)) == 2
    cwr = tcp_packet(V4A.packed, V4B.packed, 1, b"y" * 10, flags=TCP_ACK | TCP_CWR)
    assert fp.coalesce([cwr, p]) == offload.coalesce([cwr, p])


# -- the engine's cipher cache and ZERO_KEYS ---------------------------------------------------


def test_cipher_cache_entry_dies_with_its_transport_cipher() -> None:
    cache = CipherCache()
    tc = TransportCipher(KEY)
    c = cache.get(tc)
    assert cache.get(tc) is c and len(cache) == 1
    assert c.seal(1, b"x") == tc.seal(1, b"x")
    del tc, c
    assert len(cache) == 0  # the keypair's cipher gone: its fast-path twin (and key) with it


THREAD = [False, True] if datapath_thread.available() else [False]


@pytest.mark.parametrize("thread", THREAD, ids=lambda t: "thread" if t else "loop")
def test_zeroed_keys_leave_the_fast_path(thread: bool) -> None:
    """After ZERO_KEYS the engine keeps no fast-path cipher (the loop's path) or KeyState (the
    data-path thread's) under the old session keys: a packet sealed under them is dropped, and
    nothing is sealed under them any more."""
    from meshguard.wireguard.constants import ZERO_KEYS_AFTER
    from meshguard.wireguard.device import seal_transport

    async def body(w: World) -> None:
        w.ta.peer.send(ipv4_udp(A_IN, B_IN, b"first"))
        await until(lambda: len(w.tb.received) == 1, "first packet")
        w.tb.peer.send(ipv4_udp(B_IN, A_IN, b"back"))
        await until(lambda: len(w.ta.received) == 1, "answer")
        kp = w.pa.keypairs.current
        assert kp is not None
        old_recv, old_index = kp.receive.key, kp.local_index
        shared = []
        if thread:
            assert kp.shared is not None  # the thread's KeyState
            shared = [weakref.ref(kp.shared)]
        else:
            assert len(w.eb._ciphers) == 2  # b's receive and send ciphers, fast-path keyed
        del kp
        now = w.eb.clock.monotonic() + ZERO_KEYS_AFTER + 1
        w.eb.execute(w.db.tick(now, w.eb.clock.wall() + ZERO_KEYS_AFTER + 1))
        assert w.pa.keypairs.current is None
        if thread:
            # the thread's keys go with the keypair (once its last notes were delivered)
            await until(lambda: shared[0]() is None, "the KeyState to go")
        else:
            assert len(w.eb._ciphers) == 0  # no fast-path cipher under the zeroed keys
        # a packet under the old key, e.g. replayed or from a that kept its keys, is dropped
        old = TransportCipher(old_recv)
        stale = seal_transport(old, old_index, 10, ipv4_udp(A_IN, B_IN, b"late"))
        drops_before = w.db.counters.unknown_index
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(stale, ("127.0.0.1", w.eb.port))
            await until(lambda: w.db.counters.unknown_index > drops_before, "the drop")
        assert [p for p in w.tb.received if p.endswith(b"late")] == []
        # and b seals nothing under its old send key: it needs a new handshake first
        assert w.db.prepare_send_peer(now, w.pa) is None

    run(body, thread=thread)
