#!/usr/bin/env python3
"""Per-packet CPU costs of the data plane's building blocks, so the team knows the budget.

    .venv/bin/python bench/offload_micro.py [--repeat 5]

Prints the best-of-N cost per inner packet (1420-byte MTU, 1380-byte TCP segments) of:
checksums, segmenting a 64 KB TSO super-packet, coalescing received segments, the TUN read
split of a plain packet, and ChaCha20-Poly1305 seal/open of 1420 bytes (`cryptography`, one
cached AEAD object). At 1 Gbit/s of 1420-byte packets a direction moves ~88 k packets/s, i.e.
~11 us of one core per packet for everything. The machine is shared: costs are noisy.
"""

from __future__ import annotations

import argparse
import os
import struct
import timeit
from collections.abc import Callable

from meshguard.crypto.aead import TransportCipher
from meshguard.dataplane import offload
from meshguard.dataplane.vnet import (
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_TCPV4,
    ZERO_HDR,
    VirtioNetHdr,
)

MTU = 1420
MSS = MTU - 40


def tcp4(seq: int, payload: bytes, ip_id: int = 1) -> bytes:
    src, dst = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    th = bytearray(struct.pack("!HHIIBBHHH", 40000, 5201, seq, 1, 5 << 4, 0x10, 512, 0, 0))
    ps = offload.pseudo_sum(src, dst, 6, 20 + len(payload))
    struct.pack_into("!H", th, 16, offload.checksum(bytes(th) + payload, ps))
    ih = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40 + len(payload), ip_id, 0x4000, 64,
                               6, 0, src, dst))
    struct.pack_into("!H", ih, 10, offload.checksum(bytes(ih)))
    return bytes(ih) + bytes(th) + payload


def per_call(fn: Callable[[], object], repeat: int, number: int) -> float:
    return min(timeit.repeat(fn, repeat=repeat, number=number)) / number


def main() -> None:
    ap = argparse.ArgumentParser(description="per-packet costs of offload and crypto")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    rep = args.repeat

    payload = os.urandom(65535 - 40)
    super_pkt = bytearray(tcp4(1000, payload))
    struct.pack_into("!H", super_pkt, 36, 0)
    hdr = VirtioNetHdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, 40, MSS, 20, 16)
    segs = offload.segment(hdr, super_pkt)
    nseg = len(segs)
    assert all(offload.checksums_ok(s) for s in segs)
    plain = segs[0]
    udp = bytearray(plain)
    udp[9] = 17
    udps = [bytes(udp)] * 64
    key = os.urandom(32)
    cipher = TransportCipher(key)
    aead = cipher.aead
    pt = os.urandom(MTU)
    nonce = bytes(12)
    ct = aead.encrypt(nonce, pt, None)

    rows: list[tuple[str, float]] = [
        ("ones' complement sum, 1400 B (int.from_bytes, mod 0xFFFF)",
         per_call(lambda: offload.ones_sum(pt[:1400]), rep, 20000)),
        ("verify TCP checksum of one 1420 B segment",
         per_call(lambda: offload.l4_checksum_ok(plain, 20, 6), rep, 20000)),
        (f"segment 64 KB TSO packet, per segment ({nseg} segments)",
         per_call(lambda: offload.segment(hdr, super_pkt), rep, 200) / nseg),
        (f"coalesce {nseg} segments, verify checksums, per segment",
         per_call(lambda: offload.coalesce(segs), rep, 200) / nseg),
        (f"coalesce {nseg} segments, no verification, per segment",
         per_call(lambda: offload.coalesce(segs, verify=False), rep, 200) / nseg),
        ("split_tun_read of a plain packet (zero header)",
         per_call(lambda: offload.split_tun_read(ZERO_HDR + plain), rep, 20000)),
        ("coalesce 64 UDP packets (pass-through), per packet",
         per_call(lambda: offload.coalesce(udps), rep, 500) / len(udps)),
        ("ChaCha20-Poly1305 seal 1420 B (cached AEAD)",
         per_call(lambda: aead.encrypt(nonce, pt, None), rep, 20000)),
        ("ChaCha20-Poly1305 open 1420 B (cached AEAD)",
         per_call(lambda: aead.decrypt(nonce, ct, None), rep, 20000)),
        ("TransportCipher.seal 1420 B (nonce packing included)",
         per_call(lambda: cipher.seal(7, pt), rep, 20000)),
    ]
    width = max(len(n) for n, _ in rows)
    print(f"{'operation':{width}}  us/packet")
    for name, t in rows:
        print(f"{name:{width}}  {t * 1e6:8.2f}")
    seal = rows[7][1]
    opn = rows[8][1]
    print(f"\nbudget: 1 Gbit/s of {MTU}-byte packets = {1e9 / 8 / MTU / 1e3:.0f} k packets/s, "
          f"{8 * MTU / 1e9 * 1e6:.1f} us per packet per direction on one core")
    print(f"send side per packet (segment + seal): {(rows[2][1] + seal) * 1e6:.2f} us; "
          f"receive side (open + coalesce): {(opn + rows[3][1]) * 1e6:.2f} us "
          "(syscalls and the event loop come on top)")


if __name__ == "__main__":
    main()
