"""TUN offload packet work: split super-packets read from the TUN, coalesce segments written to it.

Pure functions on bytes, no I/O.

Send side (`segment`, `split_tun_read`): a TUN with `TUN_F_TSO4/6` hands over TCP packets of up
to 64 KB with a virtio-net header (gso_type TCPV4/TCPV6, gso_size = segment payload size). They
are cut into gso_size segments, each a complete IP packet with its own lengths, IPv4 ID and
header checksum, TCP sequence number and full TCP checksum, so each can be sealed as one standard
WireGuard transport message. FIN and PSH stay on the last segment only, CWR on the first only.
A packet with NEEDS_CSUM and no GSO (the kernel left the transport checksum to us) gets its
checksum completed; UDP_L4 (USO) super-packets are split into datagrams the same way.

Receive side (`coalesce`): decrypted inner packets, in arrival order, are grouped per TCP flow;
consecutive in-sequence segments whose IP and TCP headers agree except for length, ID, sequence
number and checksum (flags ACK or ACK|PSH, PSH ending a group, all but the last of equal payload
size, at most 64 KB) are merged into one super-packet with a GSO virtio-net header (NEEDS_CSUM,
csum_start at the TCP header, the pseudo-header sum in the checksum field, which is what the
kernel expects from a TUN writer). The checksums of a group's segments are verified before
it is written (the kernel will not check a NEEDS_CSUM packet again), with one reduction for the
whole group; when that fails, each segment is checked and the bad ones are written on their own.
Everything else passes through in order with a zero header. Order within a flow is preserved;
groups and pass-through packets are emitted in the order of their first packet.

Checksums use the identity "sum of 16-bit big-endian words == int.from_bytes(data) mod 0xFFFF"
(2**16 is 1 modulo 0xFFFF), which is several times faster in CPython than summing words.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence

from meshguard.dataplane.vnet import (
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_ECN,
    VIRTIO_NET_HDR_GSO_NONE,
    VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6,
    VIRTIO_NET_HDR_GSO_UDP_L4,
    VNET_HDR_LEN,
    ZERO_HDR,
    VirtioNetHdr,
    pack_hdr,
    unpack_hdr_from,
)
from meshguard.errors import WireFormatError

Buffer = bytes | bytearray | memoryview

PROTO_TCP = 6
PROTO_UDP = 17
MAX_SUPER = 65535  # largest IPv4 total length / IPv6 payload length

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_ACK = 0x10
TCP_URG = 0x20
TCP_ECE = 0x40
TCP_CWR = 0x80

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_pack_u16_into = _U16.pack_into
_pack_u32_into = _U32.pack_into
_from_bytes = int.from_bytes


class OffloadError(WireFormatError):
    """A packet read from the TUN could not be segmented (malformed or unsupported)."""


# -- checksums ------------------------------------------------------------------------------

_FOLD_MASKS: dict[int, int] = {}


def _mod(v: int) -> int:
    """v mod 0xFFFF for a large non-negative v. Halving folds at multiples of 240 bits (2**16
    and CPython's 30-bit digits both divide them, so shifts are digit-aligned and 2**h is 1
    modulo 0xFFFF) are cheaper than the long division of `%` on large numbers."""
    n = v.bit_length()
    while n > 4096:
        h = ((n >> 1) // 240 + 1) * 240
        m = _FOLD_MASKS.get(h)
        if m is None:
            m = _FOLD_MASKS[h] = (1 << h) - 1
        v = (v >> h) + (v & m)
        n = v.bit_length()
    return v % 0xFFFF



def _wsum(data: Buffer) -> int:
    """A number congruent modulo 0xFFFF to the sum of the big-endian 16-bit words of `data`
    (odd length padded with a zero byte), zero only for all-zero data. Packet-sized buffers
    are read as four chunks starting at even offsets: four short numbers are cheaper to add
    and reduce than one long one."""
    n = len(data)
    if n < 64 or n > 2048:
        v = _from_bytes(data, "big")
        return v << 8 if n & 1 else v
    return _wsum4(memoryview(data), n)


def _wsum4(mv: memoryview, n: int) -> int:
    q = (n >> 2) & ~1
    last = _from_bytes(mv[3 * q :], "big")
    if (n - 3 * q) & 1:
        last <<= 8
    return (_from_bytes(mv[:q], "big") + _from_bytes(mv[q : 2 * q], "big")
            + _from_bytes(mv[2 * q : 3 * q], "big") + last)


def ones_sum(data: Buffer, initial: int = 0) -> int:
    """16-bit ones' complement sum of `data` (odd length padded with a zero byte) plus
    `initial`, folded to 1..0xFFFF (0 only when everything is zero)."""
    v = _wsum(data) + initial
    if not v:
        return 0
    return _mod(v) or 0xFFFF


def checksum(data: Buffer, initial: int = 0) -> int:
    """Internet checksum (RFC 1071) of `data` plus an unfolded `initial` sum."""
    return 0xFFFF - ones_sum(data, initial)


def _finish(v: int) -> int:
    """Checksum field value from an unfolded nonzero sum (0xFFFF complement of the fold)."""
    r = _mod(v)
    return 0xFFFF - r if r else 0


def pseudo_sum(src: Buffer, dst: Buffer, proto: int, length: int) -> int:
    """Unfolded sum of the IPv4/IPv6 pseudo-header (works mod 0xFFFF like `ones_sum`)."""
    return _from_bytes(src, "big") + _from_bytes(dst, "big") + proto + length


def _addrs(pkt: Buffer) -> tuple[Buffer, Buffer]:
    if pkt[0] >> 4 == 4:
        return pkt[12:16], pkt[16:20]
    return pkt[8:24], pkt[24:40]


def l4_checksum_ok(pkt: Buffer, l4_off: int, proto: int) -> bool:
    """True when the TCP or UDP checksum of the transport segment at `l4_off` verifies
    (a UDP checksum of zero over IPv4 means "none" and is accepted)."""
    seg = pkt[l4_off:]
    if proto == PROTO_UDP and pkt[0] >> 4 == 4 and len(seg) >= 8 and seg[6] == 0 == seg[7]:
        return True
    src, dst = _addrs(pkt)
    return _mod(_wsum(seg) + pseudo_sum(src, dst, proto, len(seg))) == 0


def ipv4_header_ok(pkt: Buffer) -> bool:
    ihl = (pkt[0] & 0x0F) * 4
    return _from_bytes(pkt[:ihl], "big") % 0xFFFF == 0


def _transport(pkt: Buffer) -> tuple[int, int] | None:
    """(l4 offset, protocol) for an IPv4 packet or an IPv6 packet without extension headers."""
    if len(pkt) < 20:
        return None
    ver = pkt[0] >> 4
    if ver == 4:
        return (pkt[0] & 0x0F) * 4, pkt[9]
    if ver == 6 and len(pkt) >= 40:
        return 40, pkt[6]
    return None


def checksums_ok(pkt: Buffer) -> bool:
    """Verify an IP packet's IPv4 header checksum and its TCP/UDP checksum (other transports:
    header only). For tests, diagnostics and the benchmark."""
    t = _transport(pkt)
    if t is None:
        return False
    l4, proto = t
    if pkt[0] >> 4 == 4 and not ipv4_header_ok(pkt):
        return False
    if proto in (PROTO_TCP, PROTO_UDP):
        return l4_checksum_ok(pkt, l4, proto)
    return True


def _ipv4_csum_into(hdr: bytearray, ihl: int) -> None:
    hdr[10] = hdr[11] = 0
    _pack_u16_into(hdr, 10, _finish(_from_bytes(hdr[:ihl], "big") or 0xFFFF))


def _set_ip_length(hdr: bytearray, l4: int, total_len: int, ip_id: int | None = None) -> None:
    """Set the length of an IP header copy whose L4 header starts at `l4`: IPv4 total length
    (and ID, when given) with a fresh header checksum, or the IPv6 payload length."""
    if hdr[0] >> 4 == 4:
        _pack_u16_into(hdr, 2, total_len)
        if ip_id is not None:
            _pack_u16_into(hdr, 4, ip_id & 0xFFFF)
        _ipv4_csum_into(hdr, l4)
    else:
        _pack_u16_into(hdr, 4, total_len - 40)


# -- send side: segmentation ---------------------------------------------------------------


def complete_checksum(pkt: Buffer, csum_start: int, csum_offset: int) -> bytes:
    """Finish a partial (NEEDS_CSUM) checksum: the field holds the pseudo-header sum; add
    everything from csum_start and store the complement. UDP's zero result becomes 0xFFFF."""
    field = csum_start + csum_offset
    if csum_start < 0 or field + 2 > len(pkt):
        raise OffloadError("checksum offsets outside the packet")
    out = bytearray(pkt)
    c = checksum(out[csum_start:])
    if c == 0 and csum_offset == 6:  # UDP
        c = 0xFFFF
    _pack_u16_into(out, field, c)
    return bytes(out)


def _l4_offset(pkt: Buffer, hdr: VirtioNetHdr) -> int:
    ver = pkt[0] >> 4
    if hdr.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM:
        return hdr.csum_start
    if ver == 4:
        return (pkt[0] & 0x0F) * 4
    return 40


def segment(hdr: VirtioNetHdr, pkt: Buffer) -> list[bytes]:
    """Turn one packet read from a vnet-hdr TUN into complete IP packets.

    GSO TCPV4/TCPV6 and UDP_L4 packets are split at gso_size; a NEEDS_CSUM packet without
    GSO gets its checksum completed; anything else is returned as is. Raises OffloadError for
    a packet whose headers do not match its virtio-net header.
    """
    gso = hdr.gso_type & ~VIRTIO_NET_HDR_GSO_ECN
    if gso == VIRTIO_NET_HDR_GSO_NONE:
        if hdr.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM:
            return [complete_checksum(pkt, hdr.csum_start, hdr.csum_offset)]
        return [bytes(pkt)]
    if len(pkt) < 20:
        raise OffloadError("GSO packet too short")
    ver = pkt[0] >> 4
    if (gso, ver) in ((VIRTIO_NET_HDR_GSO_TCPV4, 6), (VIRTIO_NET_HDR_GSO_TCPV6, 4)):
        raise OffloadError("GSO type does not match the IP version")
    if gso in (VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6):
        return _segment_tcp(pkt, _l4_offset(pkt, hdr), hdr.gso_size)
    if gso == VIRTIO_NET_HDR_GSO_UDP_L4:
        return _segment_udp(pkt, _l4_offset(pkt, hdr), hdr.gso_size)
    raise OffloadError(f"unsupported GSO type {hdr.gso_type}")


def split_tun_read(buf: Buffer) -> list[bytes]:
    """`segment` for a buffer as read from the TUN: 10-byte virtio-net header + packet."""
    if len(buf) < VNET_HDR_LEN:
        raise OffloadError("short read from a vnet-hdr TUN")
    flags, gso_type, _hl, gso_size, cstart, coff = unpack_hdr_from(buf)
    mv = memoryview(buf)[VNET_HDR_LEN:]
    if not flags and not gso_type:
        return [bytes(mv)]
    return segment(VirtioNetHdr(flags, gso_type, _hl, gso_size, cstart, coff), mv)


def _segment_tcp(pkt: Buffer, l4: int, mss: int) -> list[bytes]:
    n = len(pkt)
    if l4 < 20 or l4 + 20 > n:
        raise OffloadError("TCP header outside the packet")
    ver = pkt[0] >> 4
    thl = (pkt[l4 + 12] >> 4) * 4
    hl = l4 + thl
    if thl < 20 or hl > n:
        raise OffloadError("bad TCP data offset")
    if mss <= 0:
        raise OffloadError("GSO packet without gso_size")
    mv = memoryview(pkt)
    template = bytearray(mv[:hl])
    src, dst = _addrs(template)
    psum = pseudo_sum(src, dst, PROTO_TCP, 0)
    seq0 = _U32.unpack_from(template, l4 + 4)[0]
    ip_id0 = _U16.unpack_from(template, 4)[0] if ver == 4 else 0
    flags0 = template[l4 + 13]
    # Header words that are the same in every segment: everything except the IP length/ID/
    # checksum (not in the TCP sum anyway), the sequence number, flags and the TCP checksum.
    template[l4 + 16] = template[l4 + 17] = 0
    payload_len = n - hl
    out: list[bytes] = []
    join = b"".join
    off = 0
    i = 0
    while True:
        end = off + mss
        last = end >= payload_len
        if last:
            end = payload_len
        seg_hdr = bytearray(template)
        seg_len = hl + end - off
        _set_ip_length(seg_hdr, l4, seg_len, ip_id0 + i)
        _pack_u32_into(seg_hdr, l4 + 4, (seq0 + off) & 0xFFFFFFFF)
        f = flags0
        if not last:
            f &= ~(TCP_FIN | TCP_PSH)
        if i:
            f &= ~TCP_CWR
        seg_hdr[l4 + 13] = f
        body = mv[hl + off : hl + end]
        v = _from_bytes(seg_hdr[l4:], "big") + _wsum(body)
        _pack_u16_into(seg_hdr, l4 + 16, _finish(v + psum + seg_len - l4))
        out.append(join((seg_hdr, body)))
        if last:
            return out
        off = end
        i += 1


def _segment_udp(pkt: Buffer, l4: int, size: int) -> list[bytes]:
    n = len(pkt)
    hl = l4 + 8
    if l4 < 20 or hl > n:
        raise OffloadError("UDP header outside the packet")
    if size <= 0:
        raise OffloadError("GSO packet without gso_size")
    ver = pkt[0] >> 4
    mv = memoryview(pkt)
    template = bytearray(mv[:hl])
    src, dst = _addrs(template)
    psum = pseudo_sum(src, dst, PROTO_UDP, 0)
    ip_id0 = _U16.unpack_from(template, 4)[0] if ver == 4 else 0
    template[l4 + 6] = template[l4 + 7] = 0
    out: list[bytes] = []
    payload_len = n - hl
    off = 0
    i = 0
    while True:
        end = min(off + size, payload_len)
        seg_hdr = bytearray(template)
        seg_len = hl + end - off
        _set_ip_length(seg_hdr, l4, seg_len, ip_id0 + i)
        _pack_u16_into(seg_hdr, l4 + 4, seg_len - l4)
        body = mv[hl + off : hl + end]
        v = _from_bytes(seg_hdr[l4:], "big") + _wsum(body)
        c = _finish(v + psum + seg_len - l4)
        _pack_u16_into(seg_hdr, l4 + 6, c or 0xFFFF)
        out.append(b"".join((seg_hdr, body)))
        if end >= payload_len:
            return out
        off = end
        i += 1


# -- receive side: coalescing --------------------------------------------------------------


class _Group:
    """A run of mergeable TCP segments of one flow (or a single pass-through packet)."""

    __slots__ = ("closed", "l4", "mss", "next_seq", "pkts", "sig", "size")

    def __init__(self, pkt: Buffer) -> None:
        self.pkts: list[Buffer] = [pkt]
        self.closed = True
        self.sig = b""
        self.l4 = 0
        self.mss = 0
        self.next_seq = 0
        self.size = len(pkt)


def _tcp_view(pkt: Buffer) -> tuple[int, int, int] | None:
    """(l4 offset, header length, payload length) of a coalescable TCP packet, else None."""
    n = len(pkt)
    if n < 40:
        return None
    b0 = pkt[0]
    if b0 == 0x45:
        if pkt[9] != PROTO_TCP or _U16.unpack_from(pkt, 2)[0] != n:
            return None
        if pkt[6] & 0x3F or pkt[7]:  # MF or fragment offset
            return None
        l4 = 20
    elif b0 >> 4 == 6:
        if n < 60 or pkt[6] != PROTO_TCP or _U16.unpack_from(pkt, 4)[0] != n - 40:
            return None
        l4 = 40
    else:
        return None
    thl = (pkt[l4 + 12] >> 4) * 4
    if thl < 20 or l4 + thl > n:
        return None
    return l4, l4 + thl, n - l4 - thl


def _signature(pkt: Buffer, l4: int, hl: int) -> bytes:
    """Header bytes that must be equal for two segments to merge: IP header without length,
    ID and checksum (IPv4) or payload length (IPv6); TCP header without sequence number, flags
    byte and checksum."""
    if l4 == 20:
        return b"".join((pkt[0:2], pkt[6:10], pkt[12:20], pkt[20:24], pkt[28:33], pkt[34:36],
                         pkt[38:hl]))
    return b"".join((pkt[0:4], pkt[6:40], pkt[40:44], pkt[48:53], pkt[54:56], pkt[58:hl]))


def coalesce(packets: Iterable[Buffer], verify: bool = True) -> list[bytes]:
    """Merge TCP segments for one TUN write each; returns buffers of virtio-net header + packet.

    `verify=False` skips the checksum verification (only for packets whose checksums are
    known to be good, e.g. in benchmarks).
    """
    items: list[_Group] = []
    flows: dict[bytes, _Group] = {}
    for pkt in packets:
        tv = _tcp_view(pkt)
        if tv is None:
            items.append(_Group(pkt))
            continue
        l4, hl, plen = tv
        flow = bytes(pkt[12:24] if l4 == 20 else pkt[8:44])  # addresses and ports
        flags = pkt[l4 + 13]
        mergeable = plen > 0 and (flags & ~TCP_PSH) == TCP_ACK
        g = flows.get(flow)
        if (
            mergeable
            and g is not None
            and not g.closed
            and g.l4 == l4
            and plen <= g.mss
            and g.size + plen <= MAX_SUPER
            and _U32.unpack_from(pkt, l4 + 4)[0] == g.next_seq
            and _signature(pkt, l4, hl) == g.sig
        ):
            g.pkts.append(pkt)
            g.size += plen
            g.next_seq = (g.next_seq + plen) & 0xFFFFFFFF
            if plen < g.mss or flags & TCP_PSH:
                g.closed = True
            continue
        ng = _Group(pkt)
        items.append(ng)
        if mergeable and not flags & TCP_PSH:
            ng.closed = False
            ng.sig = _signature(pkt, l4, hl)
            ng.l4 = l4
            ng.mss = plen
            ng.next_seq = (_U32.unpack_from(pkt, l4 + 4)[0] + plen) & 0xFFFFFFFF
        flows[flow] = ng
    out: list[bytes] = []
    for g in items:
        pkts = g.pkts
        if len(pkts) == 1:
            out.append(ZERO_HDR + pkts[0])
        elif not verify or _group_checksums_ok(pkts, g.l4):
            out.append(_build_super(pkts, g.l4))
        else:
            for run in _valid_runs(pkts, g.l4):
                out.append(_build_super(run, g.l4) if len(run) > 1 else ZERO_HDR + run[0])
    return out


def _group_checksums_ok(pkts: list[Buffer], l4: int) -> bool:
    """One check for a whole group: a segment verifies when its sum (pseudo-header included)
    is 0 modulo 0xFFFF, so the sum of all of them is 0 when each is; one reduction instead of
    one per segment. A corrupt segment is caught as surely as by its own check (two corrupt
    segments could cancel with odds of 1 in 65535, like one corruption slipping past a
    16-bit checksum)."""
    total = 0
    for p in pkts:
        seg = memoryview(p)[l4:]
        total += _wsum(seg) + len(seg)
    src, dst = _addrs(pkts[0])
    return _mod(total + len(pkts) * pseudo_sum(src, dst, PROTO_TCP, 0)) == 0


def _valid_runs(pkts: list[Buffer], l4: int) -> list[list[Buffer]]:
    """Split a group whose check failed: runs of verifying segments, bad ones alone."""
    runs: list[list[Buffer]] = []
    cur: list[Buffer] = []
    for p in pkts:
        if l4_checksum_ok(p, l4, PROTO_TCP):
            cur.append(p)
            continue
        if cur:
            runs.append(cur)
            cur = []
        runs.append([p])
    if cur:
        runs.append(cur)
    return runs


def _build_super(pkts: list[Buffer], l4: int) -> bytes:
    first = pkts[0]
    hl = l4 + (first[l4 + 12] >> 4) * 4
    head = bytearray(first[:hl])
    total = hl + sum(len(p) for p in pkts) - hl * len(pkts)
    mss = len(first) - hl
    last_flags = pkts[-1][l4 + 13]
    _set_ip_length(head, l4, total)
    gso_type = VIRTIO_NET_HDR_GSO_TCPV4 if l4 == 20 else VIRTIO_NET_HDR_GSO_TCPV6
    head[l4 + 13] |= last_flags & TCP_PSH
    src, dst = _addrs(head)
    r = pseudo_sum(src, dst, PROTO_TCP, total - l4) % 0xFFFF
    _pack_u16_into(head, l4 + 16, r or 0xFFFF)
    vh = pack_hdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, gso_type, hl, mss, l4, 16)
    return b"".join((vh, head, *(memoryview(p)[hl:] for p in pkts)))


def coalesce_stats(out: Sequence[Buffer]) -> tuple[int, int]:
    """(number of GSO super-packets, number of pass-through packets) in a `coalesce` result."""
    gso = sum(1 for b in out if b[1] != VIRTIO_NET_HDR_GSO_NONE)
    return gso, len(out) - gso
