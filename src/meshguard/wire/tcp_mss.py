"""TCP MSS clamping of tunnelled SYN and SYN-ACK packets (pure bytes; twin of the C
`clamp_mss` in dataplane/_fastpath.c, which must give identical bytes).

A peer whose path carries at most `inner_mtu` bytes of inner IP packet (path MTU minus the
outer IP/UDP header minus WireGuard's 32 bytes, rounded down to WireGuard's 16-byte padding:
`inner_mtu`) gets the MSS option of every TCP SYN to or from it lowered to `inner_mtu - 40`
(IPv4) or `inner_mtu - 60` (IPv6), so TCP never sends a segment the path would drop.

Only the first MSS option of a SYN whose TCP header directly follows the IP header (IPv4, not
a fragment; IPv6 without extension headers) is changed, and only downwards. Every length is
checked before it is read: a truncated header, a data offset past the packet or an option
length that runs past the options leaves the packet as it is. The TCP checksum is computed
again from scratch, except for a packet whose checksum is still partial (a virtio-net
NEEDS_CSUM read, where the field holds the pseudo-header sum and the data path completes it).
A SYN without an MSS option is left alone (the peer then assumes 536 or 1220 bytes).
"""

from __future__ import annotations

WG_OVERHEAD = 32  # transport header 16 + Poly1305 tag 16
OUTER_V4, OUTER_V6 = 28, 48
TCP = 6
SYN = 0x02


def inner_mtu(path_mtu: int, outer_v6: bool) -> int:
    """The largest inner packet a path of `path_mtu` bytes carries (padding included)."""
    room = path_mtu - (OUTER_V6 if outer_v6 else OUTER_V4) - WG_OVERHEAD
    return max(0, room - room % 16)


def _sum16(data: bytes | bytearray | memoryview) -> int:
    if len(data) & 1:
        data = bytes(data) + b"\x00"
    s = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def tcp_checksum(pkt: bytes | bytearray, l4: int, end: int) -> int:
    """The TCP checksum of pkt[l4:end] (checksum field taken as zero) with its pseudo-header."""
    seg = bytearray(pkt[l4:end])
    seg[16:18] = b"\x00\x00"
    if pkt[0] >> 4 == 4:
        pseudo = bytes(pkt[12:20]) + bytes((0, TCP)) + (end - l4).to_bytes(2, "big")
    else:
        pseudo = bytes(pkt[8:40]) + (end - l4).to_bytes(4, "big") + bytes((0, 0, 0, TCP))
    s = _sum16(pseudo) + _sum16(seg)
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _syn_bounds(pkt: bytes | bytearray, off: int) -> tuple[int, int, int] | None:
    """(TCP header offset, end of the IP packet, the MSS ceiling's header size) of a TCP SYN
    starting at `off`, or None."""
    n = len(pkt) - off
    if n < 20:
        return None
    ver = pkt[off] >> 4
    if ver == 4:
        ihl = (pkt[off] & 15) * 4
        if ihl < 20 or pkt[off + 9] != TCP:
            return None
        if ((pkt[off + 6] << 8) | pkt[off + 7]) & 0x3FFF:
            return None  # a fragment
        end = (pkt[off + 2] << 8) | pkt[off + 3]
        if end > n or end < ihl:
            return None
        l4, hdrs = ihl, 40
    elif ver == 6:
        if n < 40 or pkt[off + 6] != TCP:
            return None
        end = 40 + ((pkt[off + 4] << 8) | pkt[off + 5])
        if end > n:
            return None
        l4, hdrs = 40, 60
    else:
        return None
    if l4 + 20 > end or not pkt[off + l4 + 13] & SYN:
        return None
    return l4, end, hdrs


def is_syn(pkt: bytes | bytearray, off: int = 0) -> bool:
    """Whether the IP packet at `off` is a TCP SYN this module would look at."""
    return _syn_bounds(pkt, off) is not None


def clamp(pkt: bytes, mtu: int, off: int = 0, partial: bool = False) -> bytes:
    """`pkt` with the MSS of a TCP SYN at `off` lowered to fit `mtu` (the peer's inner MTU;
    0: no clamp); the same object when nothing changes."""
    if mtu <= 0:
        return pkt
    b = _syn_bounds(pkt, off)
    if b is None:
        return pkt
    l4, end, hdrs = b
    ceiling = mtu - hdrs
    if ceiling <= 0:
        return pkt
    t = off + l4
    thl = (pkt[t + 12] >> 4) * 4
    if thl < 20 or l4 + thl > end:
        return pkt
    i, opt_end = t + 20, t + thl
    while i < opt_end:
        kind = pkt[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= opt_end:
            break
        olen = pkt[i + 1]
        if olen < 2 or i + olen > opt_end:
            break
        if kind == 2 and olen == 4:
            mss = (pkt[i + 2] << 8) | pkt[i + 3]
            if mss <= ceiling:
                return pkt
            out = bytearray(pkt)
            out[i + 2 : i + 4] = ceiling.to_bytes(2, "big")
            if not partial:
                c = tcp_checksum(out[off:] if off else out, l4, end)
                out[t + 16 : t + 18] = c.to_bytes(2, "big")
            return bytes(out)
        i += olen
    return pkt


__all__ = ["WG_OVERHEAD", "clamp", "inner_mtu", "is_syn", "tcp_checksum"]
