"""TUN offload packet work: checksums, segmentation of super-packets, coalescing of segments.

Packets are built in helpers.py with a word-by-word reference checksum, independent of the code
under test.
"""

from __future__ import annotations

import os
import random
import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshguard.dataplane import offload
from meshguard.dataplane.offload import (
    TCP_ACK,
    TCP_CWR,
    TCP_FIN,
    TCP_PSH,
    TCP_SYN,
    OffloadError,
    checksums_ok,
    coalesce,
    complete_checksum,
    ones_sum,
    segment,
    split_tun_read,
)
from meshguard.dataplane.vnet import (
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_NONE,
    VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6,
    VIRTIO_NET_HDR_GSO_UDP_L4,
    VNET_HDR_LEN,
    ZERO_HDR,
    VirtioNetHdr,
)

from .helpers import (
    V4A,
    V4B,
    V6A,
    V6B,
    gso_super,
    ip_header,
    partial,
    pseudo,
    ref_l4_ok,
    ref_sum,
    resegment,
    tcp_fields,
    tcp_packet,
    udp_packet,
)

# -- checksums ------------------------------------------------------------------------------


@given(st.binary(max_size=3000))
def test_ones_sum_matches_reference(data: bytes) -> None:
    expect = ref_sum(data)
    got = ones_sum(data)
    # 0 and 0xFFFF are the same number in ones' complement; ours is 0 only for all-zero data.
    assert got == expect or {got, expect} == {0, 0xFFFF}
    if any(data):
        assert got != 0


def test_checksum_edge_cases() -> None:
    assert ones_sum(b"") == 0
    assert ones_sum(b"\xff\xff") == 0xFFFF
    assert ones_sum(b"\x00\x01\xff\xfe") == 0xFFFF
    assert ones_sum(b"\x01") == 0x0100
    assert offload.checksum(b"\x45\x00") == 0xFFFF - 0x4500


def test_checksums_ok_detects_corruption() -> None:
    pkt = tcp_packet(V4A.packed, V4B.packed, 1, os.urandom(999))
    assert checksums_ok(pkt)
    for pos in (5, 25, 500):
        bad = bytearray(pkt)
        bad[pos] ^= 0x40
        assert not checksums_ok(bytes(bad))
    assert checksums_ok(udp_packet(V6A.packed, V6B.packed, b"xyz"))


# -- segmentation ---------------------------------------------------------------------------


@pytest.mark.parametrize("v6", [False, True])
def test_segment_tcp_super_packet(v6: bool) -> None:
    src, dst = (V6A.packed, V6B.packed) if v6 else (V4A.packed, V4B.packed)
    payload = os.urandom(5000)
    opts = b"\x01\x01\x08\x0a" + struct.pack("!II", 11, 22)
    hdr, pkt = gso_super(src, dst, 0xFFFFF000, payload, 1388,
                         flags=TCP_ACK | TCP_PSH | TCP_FIN | TCP_CWR, options=opts, ip_id=0xFFFE)
    segs = segment(hdr, pkt)
    assert [len(tcp_fields(s)[2]) for s in segs] == [1388, 1388, 1388, 836]
    assert b"".join(tcp_fields(s)[2] for s in segs) == payload
    for i, s in enumerate(segs):
        assert ref_l4_ok(s), i
        assert checksums_ok(s)
        seq, flags, _ = tcp_fields(s)
        assert seq == (0xFFFFF000 + 1388 * i) & 0xFFFFFFFF
        assert bool(flags & TCP_CWR) == (i == 0)
        assert bool(flags & (TCP_FIN | TCP_PSH)) == (i == 3)
        assert flags & TCP_ACK
        if v6:
            assert struct.unpack_from("!H", s, 4)[0] == len(s) - 40
            assert s[:4] == pkt[:4] and s[6:40] == pkt[6:40]
        else:
            assert struct.unpack_from("!H", s, 2)[0] == len(s)
            assert struct.unpack_from("!H", s, 4)[0] == (0xFFFE + i) & 0xFFFF
            assert s[12:20] == pkt[12:20] and s[8] == pkt[8]
        l4 = 40 if v6 else 20
        assert s[l4 + 20 : l4 + 20 + len(opts)] == opts


def test_segment_exact_multiple_and_single() -> None:
    payload = os.urandom(3000)
    hdr, pkt = gso_super(V4A.packed, V4B.packed, 5, payload, 1500)
    segs = segment(hdr, pkt)
    assert [len(tcp_fields(s)[2]) for s in segs] == [1500, 1500]
    hdr, pkt = gso_super(V4A.packed, V4B.packed, 5, payload, 4000)
    (one,) = segment(hdr, pkt)
    assert ref_l4_ok(one) and tcp_fields(one)[2] == payload


def test_segment_udp_l4() -> None:
    payload = os.urandom(2501)
    pkt = partial(udp_packet(V4A.packed, V4B.packed, payload), 20, 17, 6)
    hdr = VirtioNetHdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_UDP_L4, 28, 1000, 20, 6)
    segs = segment(hdr, pkt)
    assert [len(s) - 28 for s in segs] == [1000, 1000, 501]
    assert b"".join(s[28:] for s in segs) == payload
    for i, s in enumerate(segs):
        assert ref_l4_ok(s)
        assert struct.unpack_from("!H", s, 24)[0] == len(s) - 20
        assert struct.unpack_from("!H", s, 4)[0] == 1 + i


@pytest.mark.parametrize("v6", [False, True])
def test_complete_partial_checksum(v6: bool) -> None:
    src, dst = (V6A.packed, V6B.packed) if v6 else (V4A.packed, V4B.packed)
    l4 = 40 if v6 else 20
    udp = udp_packet(src, dst, os.urandom(333))
    hdr = VirtioNetHdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE, 0, 0, l4, 6)
    (out,) = segment(hdr, partial(udp, l4, 17, 6))
    assert out == udp
    tcp = tcp_packet(src, dst, 9, os.urandom(100))
    hdr = VirtioNetHdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE, 0, 0, l4, 16)
    (out,) = segment(hdr, partial(tcp, l4, 6, 16))
    assert out == tcp


def test_udp_zero_checksum_becomes_ffff() -> None:
    # Search a payload whose UDP checksum computes to zero; it must be sent as 0xFFFF.
    rnd = random.Random(7)
    for _ in range(200000):
        payload = rnd.randbytes(6)
        pkt = udp_packet(V4A.packed, V4B.packed, payload)
        if struct.unpack_from("!H", pkt, 26)[0] == 0xFFFF:
            break
    else:
        pytest.skip("no zero-checksum payload found")
    hdr = VirtioNetHdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0, 20, 6)
    (out,) = segment(hdr, partial(pkt, 20, 17, 6))
    assert out == pkt


def test_plain_packets_untouched_and_split_tun_read() -> None:
    icmp = ip_header(V4A.packed, V4B.packed, 1, 8) + b"\x08\x00\xf7\xff\x00\x00\x00\x00"
    assert segment(VirtioNetHdr(), icmp) == [icmp]
    assert split_tun_read(ZERO_HDR + icmp) == [icmp]
    hdr, pkt = gso_super(V6A.packed, V6B.packed, 1, os.urandom(4000), 1000)
    assert split_tun_read(hdr.pack() + pkt) == segment(hdr, pkt)
    assert len(split_tun_read(bytearray(hdr.pack() + pkt))) == 4


def test_segment_rejects_malformed() -> None:
    hdr, pkt = gso_super(V4A.packed, V4B.packed, 1, os.urandom(4000), 1000)
    with pytest.raises(OffloadError):
        segment(hdr._replace(gso_type=VIRTIO_NET_HDR_GSO_TCPV6), pkt)
    with pytest.raises(OffloadError):
        segment(hdr._replace(gso_size=0), pkt)
    with pytest.raises(OffloadError):
        segment(hdr, pkt[:30])
    with pytest.raises(OffloadError):
        segment(hdr._replace(gso_type=77), pkt)
    with pytest.raises(OffloadError):
        segment(VirtioNetHdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0, 20, 9000), pkt)
    with pytest.raises(OffloadError):
        split_tun_read(b"\x01\x00")


def test_vnet_header_codec() -> None:
    h = VirtioNetHdr(1, 4, 60, 1380, 40, 16)
    raw = h.pack()
    assert raw == bytes([1, 4, 60, 0, 0x64, 0x05, 40, 0, 16, 0])
    assert len(raw) == VNET_HDR_LEN
    assert VirtioNetHdr.unpack(b"xx" + raw, 2) == h
    assert h.needs_csum and h.gso == 4
    assert VirtioNetHdr(gso_type=0x81).gso == 1


# -- coalescing -----------------------------------------------------------------------------


def stream(src: bytes, dst: bytes, seq: int, sizes: list[int], **kw: object) -> list[bytes]:
    out = []
    for i, n in enumerate(sizes):
        out.append(tcp_packet(src, dst, seq, os.urandom(n), ip_id=10 + i, **kw))  # type: ignore[arg-type]
        seq += n
    return out


@pytest.mark.parametrize("v6", [False, True])
def test_coalesce_merges_a_run(v6: bool) -> None:
    src, dst = (V6A.packed, V6B.packed) if v6 else (V4A.packed, V4B.packed)
    l4 = 40 if v6 else 20
    pkts = stream(src, dst, 1000, [1368] * 5 + [500])
    pkts[-1] = tcp_packet(src, dst, 1000 + 5 * 1368, tcp_fields(pkts[-1])[2],
                          flags=TCP_ACK | TCP_PSH, ip_id=15)
    (buf,) = coalesce(pkts)
    h = VirtioNetHdr.unpack(buf)
    assert h == VirtioNetHdr(VIRTIO_NET_HDR_F_NEEDS_CSUM,
                             VIRTIO_NET_HDR_GSO_TCPV6 if v6 else VIRTIO_NET_HDR_GSO_TCPV4,
                             l4 + 20, 1368, l4, 16)
    sp = buf[VNET_HDR_LEN:]
    assert tcp_fields(sp)[2] == b"".join(tcp_fields(p)[2] for p in pkts)
    assert tcp_fields(sp)[0] == 1000 and tcp_fields(sp)[1] == TCP_ACK | TCP_PSH
    if v6:
        assert struct.unpack_from("!H", sp, 4)[0] == len(sp) - 40
    else:
        assert struct.unpack_from("!H", sp, 2)[0] == len(sp)
        assert ref_sum(sp[:20]) == 0xFFFF
    # The checksum field carries the pseudo-header sum, so completing it gives a valid packet.
    src_b, dst_b = (sp[8:24], sp[24:40]) if v6 else (sp[12:16], sp[16:20])
    want = ref_sum(pseudo(src_b, dst_b, 6, len(sp) - l4))
    assert struct.unpack_from("!H", sp, l4 + 16)[0] == want
    assert ref_l4_ok(complete_checksum(sp, l4, 16))
    # And the kernel's re-segmentation gives back exactly the original packets.
    assert resegment(buf) == pkts


def test_coalesce_passes_through_what_it_must_not_merge() -> None:
    a, b = V4A.packed, V4B.packed
    base = stream(a, b, 0, [1000, 1000])
    cases = {
        "gap": [base[0], tcp_packet(a, b, 1001, os.urandom(1000))],
        "other flow": [base[0], tcp_packet(a, b, 1000, os.urandom(1000), sport=1)],
        "pure ack": [base[0], tcp_packet(a, b, 1000, b"")],
        "syn": [base[0], tcp_packet(a, b, 1000, os.urandom(1000), flags=TCP_SYN | TCP_ACK)],
        "fin": [base[0], tcp_packet(a, b, 1000, os.urandom(1000), flags=TCP_FIN | TCP_ACK)],
        "cwr": [base[0], tcp_packet(a, b, 1000, os.urandom(1000), flags=TCP_CWR | TCP_ACK)],
        "ttl": [base[0], tcp_packet(a, b, 1000, os.urandom(1000), ttl=3)],
        "ack no": [base[0], tcp_packet(a, b, 1000, os.urandom(1000), ack=1)],
        "window": [base[0], tcp_packet(a, b, 1000, os.urandom(1000), window=9)],
        "options": [base[0], tcp_packet(a, b, 1000, os.urandom(1000), options=b"\x01" * 4)],
        "bigger": [base[0], tcp_packet(a, b, 1000, os.urandom(1001))],
        "bad csum 2nd": [base[0], tcp_packet(a, b, 1000, os.urandom(1000), good=False)],
        "bad csum 1st": [tcp_packet(a, b, 0, os.urandom(1000), good=False), base[1]],
        "psh first": [tcp_packet(a, b, 0, os.urandom(1000), flags=TCP_ACK | TCP_PSH), base[1]],
        "v6 vs v4": [base[0], tcp_packet(V6A.packed, V6B.packed, 1000, os.urandom(1000))],
    }
    for name, pkts in cases.items():
        out = coalesce(pkts)
        assert out == [ZERO_HDR + p for p in pkts], name


@pytest.mark.parametrize("bad", [0, 3, 5])
def test_coalesce_isolates_a_corrupt_segment(bad: int) -> None:
    pkts = stream(V4A.packed, V4B.packed, 0, [1000] * 6)
    corrupt = bytearray(pkts[bad])
    corrupt[200] ^= 0x10
    pkts[bad] = bytes(corrupt)
    out = coalesce(pkts)
    assert ZERO_HDR + pkts[bad] in out
    assert [p for o in out for p in resegment(o)] == pkts
    assert all(ref_l4_ok(p) for o in out if o[1] for p in resegment(o))
    assert len(out) == 1 + (bad > 1) + (bad < 4)  # runs of two or more around it stay merged
    assert coalesce(pkts, verify=False)[0][1] == VIRTIO_NET_HDR_GSO_TCPV4


def test_coalesce_short_segment_ends_group_and_size_limit() -> None:
    a, b = V4A.packed, V4B.packed
    pkts = stream(a, b, 0, [1000, 1000, 600, 1000, 1000])
    out = coalesce(pkts)
    assert [VirtioNetHdr.unpack(o).gso_type for o in out] == [VIRTIO_NET_HDR_GSO_TCPV4] * 2
    assert [resegment(o) for o in out] == [pkts[:3], pkts[3:]]
    big = stream(a, b, 0, [1400] * 100)
    out = coalesce(big)
    assert all(len(o) - VNET_HDR_LEN <= 65535 for o in out)
    assert len(out) == 3  # 46 segments of 1400 fit in 64 KB
    assert [p for o in out for p in resegment(o)] == big


def test_coalesce_keeps_flow_order_with_interleaving() -> None:
    a, b = V4A.packed, V4B.packed
    f1 = stream(a, b, 0, [1000] * 4)
    f2 = stream(b, a, 50, [700] * 3)
    udp = udp_packet(a, b, b"hello")
    ack = tcp_packet(a, b, 2000, b"")  # flow 1 pure ACK between its data
    pkts = [f1[0], f2[0], udp, f1[1], ack, f2[1], f1[2], f2[2], f1[3]]
    out = coalesce(pkts)
    assert out[0][1] == VIRTIO_NET_HDR_GSO_TCPV4 and resegment(out[0]) == f1[:2]
    assert resegment(out[1]) == f2
    assert out[2] == ZERO_HDR + udp
    assert out[3] == ZERO_HDR + ack
    assert resegment(out[4]) == f1[2:]


def test_coalesce_garbage_never_raises() -> None:
    rnd = random.Random(1)
    junk: list[bytes] = [b"", b"\x45", b"\x60" * 39]
    good = tcp_packet(V4A.packed, V4B.packed, 0, b"x" * 100)
    for _ in range(500):
        p = bytearray(good)
        for _ in range(rnd.randrange(1, 6)):
            p[rnd.randrange(len(p))] = rnd.randrange(256)
        junk.append(bytes(p[: rnd.randrange(len(p) + 1)]))
        junk.append(rnd.randbytes(rnd.randrange(80)))
    out = coalesce([*junk, good])
    flat = [p for o in out for p in ([o[VNET_HDR_LEN:]] if o[1] == 0 else resegment(o))]
    assert flat == [*junk, good]


# -- properties -----------------------------------------------------------------------------


FlowCase = tuple[list[tuple[VirtioNetHdr, bytes]], list[int]]


@st.composite
def flows(draw: st.DrawFn) -> FlowCase:
    n = draw(st.integers(1, 4))
    supers = []
    for f in range(n):
        v6 = draw(st.booleans())
        src, dst = (V6A.packed, V6B.packed) if v6 else (V4A.packed, V4B.packed)
        mss = draw(st.integers(1, 1500))
        length = draw(st.integers(1, 9000))
        payload = draw(st.binary(min_size=length, max_size=length))
        flags = TCP_ACK | draw(st.sampled_from([0, TCP_PSH, TCP_FIN, TCP_CWR, TCP_PSH | TCP_CWR]))
        seq = draw(st.integers(0, 2**32 - 1))
        opts = draw(st.sampled_from([b"", b"\x01\x01\x08\x0a" + b"\x00\x00\x00\x05" * 2]))
        hdr, pkt = gso_super(src, dst, seq, payload, mss, flags=flags, options=opts,
                             ip_id=draw(st.integers(0, 0xFFFF)))
        pkt = bytearray(pkt)
        struct.pack_into("!H", pkt, (20 if not v6 else 40), 1000 + f)  # distinct source ports
        supers.append((hdr, bytes(pkt)))
    order = draw(st.permutations([i for i, (h, p) in enumerate(supers)
                                  for _ in range(-(-(len(p) - h.hdr_len) // h.gso_size))]))
    return supers, order


@settings(max_examples=60, deadline=None)
@given(flows())
def test_segment_then_coalesce_round_trips(case: FlowCase) -> None:
    supers, order = case
    per_flow = []
    for hdr, pkt in supers:
        segs = segment(hdr, pkt)
        assert all(ref_l4_ok(s) for s in segs)
        assert b"".join(tcp_fields(s)[2] for s in segs) == pkt[hdr.hdr_len :]
        per_flow.append(segs)
    # interleave the flows in a random order that keeps each flow's own order
    cursor = [0] * len(per_flow)
    mixed = []
    for f in order:
        mixed.append(per_flow[f][cursor[f]])
        cursor[f] += 1
    out = coalesce(mixed)
    assert len(out) <= len(mixed)
    got: dict[bytes, list[bytes]] = {}
    for o in out:
        for p in resegment(o):
            assert ref_l4_ok(p)
            l4 = 20 if p[0] >> 4 == 4 else 40
            got.setdefault(p[l4 : l4 + 2], []).append(p)
    for segs in per_flow:
        l4 = 20 if segs[0][0] >> 4 == 4 else 40
        assert got[segs[0][l4 : l4 + 2]] == segs


# -- VnetTunIO on a message-preserving stand-in for the TUN fd ---------------------------------


def test_vnet_tun_io_reads_and_writes_batches() -> None:
    from meshguard.dataplane.vnet import OffloadState, VnetTunIO

    kernel, ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        ours.setblocking(False)
        kernel.setblocking(False)
        io = VnetTunIO(ours.fileno(), OffloadState(vnet_hdr=True, offloads=7))
        assert io.read_batch() == []
        hdr, sp = gso_super(V4A.packed, V4B.packed, 1, os.urandom(4000), 1000)
        udp = udp_packet(V4A.packed, V4B.packed, b"dns?")
        kernel.send(hdr.pack() + sp)
        kernel.send(ZERO_HDR + udp)
        kernel.send(b"\x00\x01\x02")  # shorter than a virtio-net header
        kernel.send(VirtioNetHdr(0, VIRTIO_NET_HDR_GSO_TCPV6, 0, 10, 0, 0).pack() + sp)
        got = io.read_batch()
        assert got == [*segment(hdr, sp), udp]
        assert (io.stats.reads, io.stats.gso_reads, io.stats.bad_reads) == (4, 2, 2)
        segs = stream(V4A.packed, V4B.packed, 0, [1000] * 5)
        assert io.write_batch([*segs, udp]) == 2
        first, second = kernel.recv(70000), kernel.recv(70000)
        assert resegment(first) == segs and second == ZERO_HDR + udp
        assert (io.stats.writes, io.stats.gso_writes, io.stats.packets_out) == (2, 1, 6)
        plain = VnetTunIO(ours.fileno(), OffloadState(vnet_hdr=False, offloads=0))
        assert plain.write_batch(segs[:2]) == 2
        assert kernel.recv(9000) == segs[0]
        kernel.send(udp)
        assert plain.read_batch() == [udp]
    finally:
        kernel.close()
        ours.close()
