"""TCP MSS clamping (wire/tcp_mss.py, its C twin, dataplane/mss_clamp.py): SYN and SYN-ACK
over IPv4 and IPv6, with and without options, checksums against the reference computation
of tests/dataplane/helpers.py, the C and Python clamps byte for byte, and hostile packets
(truncated headers, bogus option lengths) left alone."""

from __future__ import annotations

import random
import struct

import pytest

from meshguard.crypto.keys import X25519PrivateKey
from meshguard.dataplane import fastpath
from meshguard.dataplane.mss_clamp import clamp_read, clamp_writes
from meshguard.testing import fuzz
from meshguard.testing.fuzz_mss import mss_targets
from meshguard.wire import tcp_mss
from meshguard.wireguard.peer import Peer

from .helpers import V4A, V4B, V6A, V6B, ref_l4_ok, tcp_packet

SYN, SYN_ACK, ACK = 0x02, 0x12, 0x10
MSS_1460 = b"\x02\x04\x05\xb4"
LINUX_OPTS = b"\x02\x04\xff\xc4\x04\x02\x08\x0a" + bytes(8) + b"\x01\x03\x03\x07"  # MSS 65476
NOPS_FIRST = b"\x01\x01\x01\x02\x04\x05\xb4\x00"  # odd offset of the MSS value

C = fastpath.c_clamp_mss


def _pkt(v6: bool, options: bytes, flags: int = SYN) -> bytes:
    src, dst = (V6A, V6B) if v6 else (V4A, V4B)
    return tcp_packet(src.packed, dst.packed, 1, b"", flags=flags, options=options)


def _mss(pkt: bytes) -> int | None:
    l4 = 40 if pkt[0] >> 4 == 6 else 20
    opts = pkt[l4 + 20 : l4 + (pkt[l4 + 12] >> 4) * 4]
    i = 0
    while i < len(opts):
        if opts[i] == 0:
            return None
        if opts[i] == 1:
            i += 1
            continue
        if opts[i] == 2:
            return int(struct.unpack_from("!H", opts, i + 2)[0])
        i += opts[i + 1]
    return None


def _both(pkt: bytes, mtu: int, off: int = 0, partial: bool = False) -> bytes:
    out = tcp_mss.clamp(pkt, mtu, off, partial)
    assert C is not None, "the C extension is built for the test suite"
    assert C(pkt, mtu, off, partial) == out
    return out


@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("flags", [SYN, SYN_ACK])
@pytest.mark.parametrize("options", [MSS_1460, LINUX_OPTS, NOPS_FIRST])
def test_syn_mss_is_lowered_and_checksum_is_right(v6: bool, flags: int, options: bytes) -> None:
    pkt = _pkt(v6, options, flags)
    mtu = tcp_mss.inner_mtu(1280, False)
    assert mtu == 1216
    out = _both(pkt, mtu)
    assert _mss(out) == mtu - (60 if v6 else 40)
    assert ref_l4_ok(out) and out != pkt and len(out) == len(pkt)
    assert _both(out, mtu) == out  # idempotent
    assert _both(pkt, 70000) == pkt  # only downwards


@pytest.mark.parametrize("v6", [False, True])
def test_left_alone_without_option_or_syn(v6: bool) -> None:
    mtu = 1216
    for pkt in (_pkt(v6, b""), _pkt(v6, MSS_1460, ACK), _pkt(v6, b"\x01\x01\x01\x00")):
        assert _both(pkt, mtu) == pkt
    assert _both(_pkt(v6, MSS_1460), 0) == _pkt(v6, MSS_1460)


def test_partial_checksum_is_not_touched() -> None:
    pkt = _pkt(False, MSS_1460)
    out = _both(pkt, 1216, partial=True)
    assert _mss(out) == 1176 and out[36:38] == pkt[36:38]
    hdr = b"\x01" + bytes(9)  # virtio-net header, NEEDS_CSUM
    peer = Peer(X25519PrivateKey.generate(bytes(32)).public_key, clamp_mtu=1216)
    read = clamp_read(hdr + pkt, peer, vnet=True)
    assert read == hdr + out
    assert _both(hdr + pkt, 1216, 10, True) == read


def test_hostile_packets_never_read_past_the_end() -> None:
    good = _pkt(False, LINUX_OPTS)
    cases = [good[:n] for n in range(len(good))]  # truncated anywhere
    bogus = bytearray(good)
    bogus[41] = 0xFF  # MSS option length past the options
    cases.append(bytes(bogus))
    bogus[41] = 1  # an option length below 2
    cases.append(bytes(bogus))
    offset = bytearray(good)
    offset[32] = 0xF0  # data offset 60 bytes, past the packet
    cases.append(bytes(offset))
    total = bytearray(good)
    total[2:4] = b"\xff\xff"  # IPv4 total length past the buffer
    cases.append(bytes(total))
    frag = bytearray(good)
    frag[6:8] = b"\x20\x01"  # a fragment
    cases.append(bytes(frag))
    for pkt in cases:
        assert _both(pkt, 1216) == pkt


def test_writes_are_clamped_to_the_sending_peer() -> None:
    peer = Peer(X25519PrivateKey.generate(bytes(32)).public_key, clamp_mtu=1216)
    syn, data = _pkt(False, MSS_1460, SYN_ACK), _pkt(False, b"", ACK)
    routes = {V4A.packed: peer}
    out = clamp_writes([data, syn], routes.get)
    assert out[0] is data and _mss(out[1]) == 1176 and ref_l4_ok(out[1])
    peer.clamp_mtu = 0
    assert clamp_writes([syn], routes.get) == [syn]


def test_random_packets_c_and_python_agree() -> None:
    rng = random.Random(7)
    seeds = [_pkt(v6, o, f) for v6 in (False, True) for o in (MSS_1460, LINUX_OPTS, NOPS_FIRST)
             for f in (SYN, SYN_ACK)]
    for _ in range(3000):
        p = bytearray(rng.choice(seeds))
        for _ in range(rng.randrange(1, 4)):
            p[rng.randrange(len(p))] = rng.randrange(256)
        if rng.random() < 0.3:
            del p[rng.randrange(len(p)) :]
        _both(bytes(p), rng.choice((536, 1216, 1400)), 0, rng.random() < 0.2)


def test_fuzz_target() -> None:
    (target,) = mss_targets()
    stats = fuzz.fuzz(target, 3000, seed=20261201)
    assert stats.exceptions == 0, [f.error for f in stats.failures]
