"""Fuzz target for the TCP MSS clamp (wire/tcp_mss.py and its C twin in dataplane/_fastpath.c).

    mss_clamp   the input is mtu(u16 BE) flags(u8: bit 0 = partial checksum) IP packet; the
                Python clamp and the C clamp (when built) must give identical bytes, never
                raise, never change the length, and change nothing but the MSS value and the
                TCP checksum, and only of a packet that is a TCP SYN

Seeds are SYN and SYN-ACK packets over IPv4 and IPv6 with and without options.
"""

from __future__ import annotations

import struct

from meshguard.dataplane import fastpath
from meshguard.testing.fuzz_engine import RoundTripError, Target
from meshguard.wire import tcp_mss

_OPTS = (b"", b"\x02\x04\x05\xb4",
         b"\x02\x04\xff\xd7\x04\x02\x08\x0a" + bytes(8) + b"\x01\x03\x03\x07",
         b"\x01\x01\x02\x04\x23\x28\x00\x00")


def syn_packet(v6: bool, options: bytes, flags: int = 0x02, payload: bytes = b"") -> bytes:
    """A TCP SYN (flags 0x12: SYN-ACK) with `options`, checksums right."""
    doff = (20 + len(options) + 3) // 4
    options += bytes(doff * 4 - 20 - len(options))
    th = bytearray(struct.pack("!HHIIBBHHH", 40000, 5201, 1, 0, doff << 4, flags, 64240, 0, 0)
                   + options) + payload
    if v6:
        ip = bytearray(struct.pack("!IHBB16s16s", 6 << 28, len(th), 6, 64, bytes(15) + b"\x01",
                                   bytes(15) + b"\x02"))
    else:
        ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(th), 1, 0x4000, 64, 6, 0,
                                   b"\x0a\x63\x00\x01", b"\x0a\x63\x00\x02"))
    pkt = bytes(ip) + bytes(th)
    c = tcp_mss.tcp_checksum(pkt, len(ip), len(pkt))
    return pkt[: len(ip) + 16] + c.to_bytes(2, "big") + pkt[len(ip) + 18 :]


def _run(data: bytes) -> None:
    if len(data) < 3:
        return
    mtu = int.from_bytes(data[:2], "big")
    partial = bool(data[2] & 1)
    pkt = data[3:]
    out = tcp_mss.clamp(pkt, mtu, 0, partial)
    c = getattr(fastpath, "c_clamp_mss", None)
    if c is not None and c(pkt, mtu, 0, partial) != out:
        raise RoundTripError("the C and Python clamps differ")
    if len(out) != len(pkt):
        raise RoundTripError("the clamp changed the length")
    diff = [i for i in range(len(pkt)) if pkt[i] != out[i]]
    if diff and not tcp_mss.is_syn(pkt):
        raise RoundTripError("a packet that is not a SYN changed")
    if len(diff) > 4 and len({i // 2 for i in diff}) > 2:
        raise RoundTripError("more than the MSS and the checksum changed")


def mss_targets() -> list[Target]:
    seeds = [struct.pack("!HB", mtu, part) + syn_packet(v6, o, f)
             for v6 in (False, True) for o in _OPTS for f in (0x02, 0x12)
             for mtu, part in ((1216, 0), (1100, 1))]
    return [Target("mss_clamp", seeds, _run, max_len=256)]


__all__ = ["mss_targets", "syn_packet"]
