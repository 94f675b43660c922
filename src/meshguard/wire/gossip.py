"""Binary codec for the SWIM gossip messages (no state, no crypto).

Every packet starts with a 5-byte header: type (u8), magic b"MG", version (u8), a zero byte.
Byte 1 is always 0x4D, so a gossip packet never looks like WireGuard (whose first four bytes are
a little-endian u32 in 1..4, i.e. bytes 1..3 are zero), and byte 4 is zero, so it is never
STUN (bytes 4..8 == 0x2112A442). Integers are little-endian; every field has a fixed size and
every variable part is count-prefixed and bounded. No packet exceeds MAX_PACKET (1280 bytes, the
IPv6 minimum MTU, so gossip never fragments).

Packets (type numbers keep the original's, docs/wire-format.md; new ones take numbers above 0x04):

  authenticated (sender key after the header, 16-byte MAC at the end, over everything before):
    0x01 Ping      sender(32) seq(u32) piggyback
    0x02 PingReq   sender(32) seq(u32) target(32) piggyback
    0x03 Ack       sender(32) seq(u32) about(32) piggyback        (about = the node proven alive)
    0x06 JoinAck   sender(32) nonce(u64) record-entry piggyback   (record = the sender's own)
    0x07 Leave     sender(32) piggyback
    0x08 SyncReq   sender(32) counter(u64) flags(u8) digests(128 x u64, one per key bucket)
    0x09 SyncData  sender(32) counter(u64) piggyback
    0x0A SyncSummary sender(32) counter(u64) count(u8) count x (key prefix(8) incarnation(u64))
    0x0B SyncWant  sender(32) counter(u64) count(u8) count x key prefix(8)
  unauthenticated (the joiner knows no key yet; padded to JOIN_MIN_LEN against amplification):
    0x05 Join      nonce(u64) record-entry zero-padding

piggyback = count(u8) then `count` entries; an entry is tag(u8) then:
  TAG_RECORD  a signed node record (below)
  TAG_SUSPECT / TAG_DEAD  subject(32) incarnation(u64) accuser(32) signature(64)

node record = flags(u8) n_endpoints(u8) cert_len(u16) identity(32) incarnation(u64)
              wg_public(32) nat_type(u8) endpoints(n x 19: family u8 (4|6), address 16, port u16)
              certificate(cert_len: 0 or 186..314)
              [routes, only when flags has FLAG_ROUTES: count(u8, 1..16)
               count x (family u8 (4|6), prefix length u8, address 16)]
              signature(64, over everything before it)
flags: FLAG_LEFT 0x01 (the node left), FLAG_ROUTES 0x02 (a routes block follows the
certificate: the prefixes the node offers to carry, docs/policy.md#routes). The prefixes are
canonical networks (no host bits, IPv4 padded with zeros), in strictly ascending order (IPv4
first), so one set of routes has one encoding.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from meshguard.errors import WireFormatError
from meshguard.sansio import Endpoint

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

PING = 0x01
PING_REQ = 0x02
ACK = 0x03
JOIN = 0x05
JOIN_ACK = 0x06
LEAVE = 0x07
SYNC_REQ = 0x08
SYNC_DATA = 0x09
SYNC_SUMMARY = 0x0A
SYNC_WANT = 0x0B
GOSSIP_TYPES = frozenset(
    {PING, PING_REQ, ACK, JOIN, JOIN_ACK, LEAVE, SYNC_REQ, SYNC_DATA, SYNC_SUMMARY, SYNC_WANT}
)
# the name of each type in counters (swim_rx_ping, swim_tx_sync_req, ...) and metrics
TYPE_NAMES: dict[int, str] = {
    PING: "ping", PING_REQ: "ping_req", ACK: "ack", JOIN: "join", JOIN_ACK: "join_ack",
    LEAVE: "leave", SYNC_REQ: "sync_req", SYNC_DATA: "sync_data",
    SYNC_SUMMARY: "sync_summary", SYNC_WANT: "sync_want",
}
SUMMARY_ITEM = 16
WANT_ITEM = 8
MAX_SUMMARY_ITEMS = 76  # 5 + 32 + 8 + 1 + 76 * 16 + 16 = 1278 bytes
MAX_WANT_ITEMS = 150  # 5 + 32 + 8 + 1 + 150 * 8 + 16 = 1262 bytes

MAGIC = b"MG"
VERSION = 1
HEADER = struct.Struct("<B2sBB")
HEADER_LEN = HEADER.size  # 5
KEY_LEN = 32
SIG_LEN = 64
MAC_LEN = 16
MAX_PACKET = 1280
JOIN_MIN_LEN = 1200
MAX_ENTRIES = 32
MAX_ENDPOINTS = 4
CERT_MIN = 186
CERT_MAX = 314

TAG_RECORD = 1
TAG_SUSPECT = 2
TAG_DEAD = 3

FLAG_LEFT = 0x01
FLAG_ROUTES = 0x02
REC_FLAGS = FLAG_LEFT | FLAG_ROUTES
MAX_ROUTES = 16  # prefixes one record may offer
ROUTE_LEN = 18  # family(1) prefix length(1) address(16)
SYNC_FLAG_REPLY = 0x01  # "please also pull from me" (set by the initiator only)

_REC_HEAD = struct.Struct("<BBH32sQ32sB")
REC_HEAD_LEN = _REC_HEAD.size  # 77
_EP = struct.Struct("<B16sH")
EP_LEN = _EP.size  # 19
_ACCUSE = struct.Struct("<32sQ32s64s")
ACCUSATION_LEN = _ACCUSE.size  # 136
_SEQ = struct.Struct("<I")
_SEQ_KEY = struct.Struct("<I32s")
_U64 = struct.Struct("<Q")
_SYNC = struct.Struct("<QB128Q")
SYNC_BUCKETS = 128

# Offsets inside a record (for cheap peeks before a full decode).
REC_ID_OFF = 4
REC_INC_OFF = 36
AUTH_MIN = HEADER_LEN + KEY_LEN + MAC_LEN


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """Everything a node claims about itself, as signed by its identity key."""

    identity: bytes
    wg_public: bytes
    incarnation: int
    endpoints: tuple[Endpoint, ...]
    nat_type: int = 0
    certificate: bytes | None = None
    left: bool = False
    signature: bytes = b"\x00" * SIG_LEN
    routes: tuple[IPNetwork, ...] = ()  # the prefixes offered (FLAG_ROUTES)


@dataclass(frozen=True, slots=True)
class Accusation:
    """A suspicion or death notice about `subject`, signed by `accuser`."""

    dead: bool
    subject: bytes
    incarnation: int
    accuser: bytes
    signature: bytes


Entry = tuple[int, bytes]  # (tag, raw entry bytes without the tag)


@dataclass(frozen=True, slots=True)
class Packet:
    """A decoded gossip packet. Fields unused by a type keep their defaults."""

    type: int
    sender: bytes = b""
    seq: int = 0  # Ping/PingReq/Ack seq; Join/JoinAck nonce; SyncReq/SyncData counter
    key: bytes = b""  # PingReq target; Ack about
    digests: tuple[int, ...] = ()  # SyncReq: SYNC_BUCKETS per-bucket digests
    flags: int = 0
    record: bytes = b""  # Join/JoinAck: raw record (without tag)
    entries: tuple[Entry, ...] = ()
    items: tuple[bytes, ...] = ()  # SyncSummary (16 bytes each) / SyncWant (8 bytes each)
    mac: bytes = b""


# -- endpoints and records ---------------------------------------------------------------------


def encode_endpoint(ep: Endpoint) -> bytes:
    host, port = ep
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise WireFormatError(f"not an IP address: {host!r}") from None
    if not 0 <= port <= 0xFFFF:
        raise WireFormatError("port out of range")
    if addr.version == 4:
        return _EP.pack(4, addr.packed + b"\x00" * 12, port)
    return _EP.pack(6, addr.packed, port)


def decode_endpoint(raw: bytes) -> Endpoint:
    fam, addr, port = _EP.unpack(raw)
    if fam == 4:
        if any(addr[4:]):
            raise WireFormatError("IPv4 endpoint with nonzero padding")
        return (str(ipaddress.IPv4Address(addr[:4])), port)
    if fam == 6:
        return (str(ipaddress.IPv6Address(addr)), port)
    raise WireFormatError("bad endpoint family")


def _route_key(net: IPNetwork) -> tuple[int, bytes, int]:
    return (net.version, net.network_address.packed, net.prefixlen)


def encode_routes(routes: tuple[IPNetwork, ...]) -> bytes:
    """The routes block (without the flag); b"" for no routes."""
    if not routes:
        return b""
    if len(routes) > MAX_ROUTES:
        raise WireFormatError(f"at most {MAX_ROUTES} routes")
    keys = [_route_key(r) for r in routes]
    if keys != sorted(keys) or len(set(keys)) != len(keys):
        raise WireFormatError("routes must be distinct and sorted (canonical_routes)")
    out = [bytes([len(routes)])]
    for v, addr, plen in keys:
        out.append(bytes([v, plen]) + addr.ljust(16, b"\x00"))
    return b"".join(out)


def canonical_routes(routes: Iterable[IPNetwork]) -> tuple[IPNetwork, ...]:
    """Distinct networks in the order a record carries them."""
    return tuple(sorted(set(routes), key=_route_key))


def decode_routes(raw: bytes, off: int) -> tuple[tuple[IPNetwork, ...], int]:
    """Decode the routes block at raw[off]; returns (routes, offset after it)."""
    if off >= len(raw):
        raise WireFormatError("truncated routes")
    n = raw[off]
    if not 1 <= n <= MAX_ROUTES:
        raise WireFormatError("bad routes count")
    off += 1
    if off + n * ROUTE_LEN > len(raw):
        raise WireFormatError("truncated routes")
    nets: list[IPNetwork] = []
    prev: tuple[int, bytes, int] | None = None
    for _ in range(n):
        fam, plen, addr = raw[off], raw[off + 1], raw[off + 2 : off + ROUTE_LEN]
        off += ROUTE_LEN
        net: IPNetwork
        try:
            if fam == 4:
                if any(addr[4:]):
                    raise WireFormatError("IPv4 route with nonzero padding")
                net = ipaddress.IPv4Network((addr[:4], plen))
            elif fam == 6:
                net = ipaddress.IPv6Network((addr, plen))
            else:
                raise WireFormatError("bad route family")
        except ValueError:  # host bits set, or prefix length out of range
            raise WireFormatError("route is not a canonical network") from None
        key = _route_key(net)
        if prev is not None and key <= prev:
            raise WireFormatError("routes not in ascending order")
        prev = key
        nets.append(net)
    return tuple(nets), off


def record_signed_part(rec: NodeRecord) -> bytes:
    """The record bytes covered by its signature (everything but the signature)."""
    n = len(rec.endpoints)
    if n > MAX_ENDPOINTS:
        raise WireFormatError(f"at most {MAX_ENDPOINTS} endpoints")
    cert = rec.certificate or b""
    if cert and not CERT_MIN <= len(cert) <= CERT_MAX:
        raise WireFormatError("certificate must be 186..314 bytes")
    if len(rec.identity) != KEY_LEN or len(rec.wg_public) != KEY_LEN:
        raise WireFormatError("keys must be 32 bytes")
    if not 0 <= rec.incarnation < 2**64 or not 0 <= rec.nat_type <= 0xFF:
        raise WireFormatError("incarnation or NAT type out of range")
    flags = (FLAG_LEFT if rec.left else 0) | (FLAG_ROUTES if rec.routes else 0)
    head = _REC_HEAD.pack(
        flags, n, len(cert), rec.identity, rec.incarnation, rec.wg_public, rec.nat_type
    )
    return (head + b"".join(encode_endpoint(e) for e in rec.endpoints) + cert
            + encode_routes(rec.routes))


def encode_record(rec: NodeRecord) -> bytes:
    if len(rec.signature) != SIG_LEN:
        raise WireFormatError("signature must be 64 bytes")
    return record_signed_part(rec) + rec.signature


def record_len_at(buf: bytes, off: int) -> int:
    """Length of the record starting at buf[off], validated against the buffer."""
    if off + REC_HEAD_LEN + SIG_LEN > len(buf):
        raise WireFormatError("truncated record")
    flags, n, clen = buf[off], buf[off + 1], buf[off + 2] | (buf[off + 3] << 8)
    if flags & ~REC_FLAGS or n > MAX_ENDPOINTS or (clen and not CERT_MIN <= clen <= CERT_MAX):
        raise WireFormatError("bad record header")
    size = REC_HEAD_LEN + n * EP_LEN + clen + SIG_LEN
    if flags & FLAG_ROUTES:  # the count byte sits just before the signature's place
        at = off + size - SIG_LEN
        if at >= len(buf) or not 1 <= buf[at] <= MAX_ROUTES:
            raise WireFormatError("bad routes count")
        size += 1 + buf[at] * ROUTE_LEN
    if off + size > len(buf):
        raise WireFormatError("truncated record")
    return size


def decode_record(raw: bytes) -> NodeRecord:
    if record_len_at(raw, 0) != len(raw):
        raise WireFormatError("record length mismatch")
    flags, n, clen, ident, inc, wg, nat = _REC_HEAD.unpack_from(raw, 0)
    off = REC_HEAD_LEN
    eps = []
    for _ in range(n):
        eps.append(decode_endpoint(raw[off : off + EP_LEN]))
        off += EP_LEN
    cert = raw[off : off + clen] if clen else None
    off += clen
    routes: tuple[IPNetwork, ...] = ()
    if flags & FLAG_ROUTES:
        routes, off = decode_routes(raw[: len(raw) - SIG_LEN], off)
    return NodeRecord(
        identity=ident,
        wg_public=wg,
        incarnation=inc,
        endpoints=tuple(eps),
        nat_type=nat,
        certificate=cert,
        left=bool(flags & FLAG_LEFT),
        signature=raw[off : off + SIG_LEN],
        routes=routes,
    )


def accusation_signed_part(subject: bytes, incarnation: int, accuser: bytes) -> bytes:
    return _ACCUSE.pack(subject, incarnation, accuser, b"\x00" * SIG_LEN)[:-SIG_LEN]


def encode_accusation(a: Accusation) -> Entry:
    if len(a.subject) != KEY_LEN or len(a.accuser) != KEY_LEN or len(a.signature) != SIG_LEN:
        raise WireFormatError("bad accusation field sizes")
    if not 0 <= a.incarnation < 2**64:
        raise WireFormatError("incarnation out of range")
    raw = _ACCUSE.pack(a.subject, a.incarnation, a.accuser, a.signature)
    return (TAG_DEAD if a.dead else TAG_SUSPECT, raw)


def decode_accusation(tag: int, raw: bytes) -> Accusation:
    if len(raw) != ACCUSATION_LEN or tag not in (TAG_SUSPECT, TAG_DEAD):
        raise WireFormatError("bad accusation")
    subject, inc, accuser, sig = _ACCUSE.unpack(raw)
    return Accusation(tag == TAG_DEAD, subject, inc, accuser, sig)


# -- piggyback ---------------------------------------------------------------------------------


_TAGS = {TAG_RECORD: b"\x01", TAG_SUSPECT: b"\x02", TAG_DEAD: b"\x03"}


def entry_size(entry: Entry) -> int:
    return 1 + len(entry[1])


def encode_entries(entries: tuple[Entry, ...] | list[Entry], check: bool = True) -> bytes:
    """Count byte and entries. check=False skips re-validating entries the caller built."""
    if len(entries) > MAX_ENTRIES:
        raise WireFormatError(f"at most {MAX_ENTRIES} entries per packet")
    if not check:
        parts = [bytes([len(entries)])]
        for tag, raw in entries:
            parts.append(_TAGS[tag])
            parts.append(raw)
        return b"".join(parts)
    out = [bytes([len(entries)])]
    for tag, raw in entries:
        if tag == TAG_RECORD:
            if record_len_at(raw, 0) != len(raw):
                raise WireFormatError("record length mismatch")
        elif tag in (TAG_SUSPECT, TAG_DEAD):
            if len(raw) != ACCUSATION_LEN:
                raise WireFormatError("bad accusation length")
        else:
            raise WireFormatError("unknown entry tag")
        out.append(bytes([tag]))
        out.append(raw)
    return b"".join(out)


def _decode_entries(buf: bytes, off: int, end: int) -> tuple[tuple[Entry, ...], int]:
    if off >= end:
        raise WireFormatError("missing entry count")
    count = buf[off]
    off += 1
    if count > MAX_ENTRIES:
        raise WireFormatError("too many entries")
    view = buf[:end]
    entries: list[Entry] = []
    for _ in range(count):
        if off >= end:
            raise WireFormatError("truncated entries")
        tag = view[off]
        off += 1
        if tag == TAG_RECORD:
            size = record_len_at(view, off)
        elif tag in (TAG_SUSPECT, TAG_DEAD):
            size = ACCUSATION_LEN
            if off + size > end:
                raise WireFormatError("truncated accusation")
        else:
            raise WireFormatError("unknown entry tag")
        entries.append((tag, view[off : off + size]))
        off += size
    return tuple(entries), off


# -- packets -----------------------------------------------------------------------------------


def _header(ptype: int) -> bytes:
    return HEADER.pack(ptype, MAGIC, VERSION, 0)


def encode_body(p: Packet, check: bool = True) -> bytes:
    """Encode everything except the MAC (authenticated types) or with padding (Join).

    check=False trusts that records and entries are well-formed (the core built them).
    """
    t = p.type
    if t == JOIN:
        if record_len_at(p.record, 0) != len(p.record):
            raise WireFormatError("record length mismatch")
        body = _header(t) + _U64.pack(p.seq) + p.record
        return body + b"\x00" * max(0, JOIN_MIN_LEN - len(body))
    if len(p.sender) != KEY_LEN:
        raise WireFormatError("sender must be 32 bytes")
    head = _header(t) + p.sender
    if t == PING:
        body = head + _SEQ.pack(p.seq) + encode_entries(p.entries, check)
    elif t in (PING_REQ, ACK):
        if len(p.key) != KEY_LEN:
            raise WireFormatError("key must be 32 bytes")
        body = head + _SEQ_KEY.pack(p.seq, p.key) + encode_entries(p.entries, check)
    elif t == JOIN_ACK:
        if check and record_len_at(p.record, 0) != len(p.record):
            raise WireFormatError("record length mismatch")
        body = head + _U64.pack(p.seq) + p.record + encode_entries(p.entries, check)
    elif t == LEAVE:
        body = head + encode_entries(p.entries, check)
    elif t == SYNC_REQ:
        if len(p.digests) != SYNC_BUCKETS:
            raise WireFormatError(f"sync request needs {SYNC_BUCKETS} digests")
        body = head + _SYNC.pack(p.seq, p.flags, *p.digests)
    elif t == SYNC_DATA:
        body = head + _U64.pack(p.seq) + encode_entries(p.entries, check)
    elif t in (SYNC_SUMMARY, SYNC_WANT):
        size, cap = (
            (SUMMARY_ITEM, MAX_SUMMARY_ITEMS) if t == SYNC_SUMMARY else (WANT_ITEM, MAX_WANT_ITEMS)
        )
        if len(p.items) > cap or any(len(i) != size for i in p.items):
            raise WireFormatError("bad sync items")
        body = head + _U64.pack(p.seq) + bytes([len(p.items)]) + b"".join(p.items)
    else:
        raise WireFormatError(f"unknown gossip type {t:#x}")
    if len(body) + MAC_LEN > MAX_PACKET:
        raise WireFormatError("packet exceeds 1280 bytes")
    return body


def encode_packet(p: Packet) -> bytes:
    """Full packet bytes (the MAC field is taken from p.mac for authenticated types)."""
    body = encode_body(p)
    if p.type == JOIN:
        return body
    if len(p.mac) != MAC_LEN:
        raise WireFormatError("MAC must be 16 bytes")
    return body + p.mac


def peek_type(data: bytes) -> int:
    """The gossip type of `data`, or -1 when it is not a well-formed gossip header."""
    if len(data) < HEADER_LEN or data[1:4] != b"MG\x01" or data[4] != 0:
        return -1
    t = data[0]
    return t if t in GOSSIP_TYPES else -1


def decode_packet(data: bytes) -> Packet:
    """Parse one packet; raises WireFormatError for anything malformed."""
    if len(data) > MAX_PACKET:
        raise WireFormatError("packet too long")
    t = peek_type(data)
    if t < 0:
        raise WireFormatError("not a gossip packet")
    if t == JOIN:
        if len(data) < JOIN_MIN_LEN:
            raise WireFormatError("join not padded")
        off = HEADER_LEN + 8
        size = record_len_at(data, off)
        if data.count(0, off + size) != len(data) - off - size:
            raise WireFormatError("nonzero join padding")
        (nonce,) = _U64.unpack_from(data, HEADER_LEN)
        return Packet(JOIN, seq=nonce, record=data[off : off + size])
    if len(data) < AUTH_MIN:
        raise WireFormatError("truncated packet")
    end = len(data) - MAC_LEN
    sender = data[HEADER_LEN : HEADER_LEN + KEY_LEN]
    off = HEADER_LEN + KEY_LEN
    mac = data[end:]
    try:
        if t == PING:
            if off + 4 > end:
                raise WireFormatError("truncated ping")
            (seq,) = _SEQ.unpack_from(data, off)
            entries, off = _decode_entries(data, off + 4, end)
            p = Packet(t, sender, seq, entries=entries, mac=mac)
        elif t in (PING_REQ, ACK):
            if off + _SEQ_KEY.size > end:
                raise WireFormatError("truncated probe")
            seq, key = _SEQ_KEY.unpack_from(data, off)
            entries, off = _decode_entries(data, off + _SEQ_KEY.size, end)
            p = Packet(t, sender, seq, key, entries=entries, mac=mac)
        elif t == JOIN_ACK:
            if off + 8 > end:
                raise WireFormatError("truncated join ack")
            (nonce,) = _U64.unpack_from(data, off)
            off += 8
            size = record_len_at(data[:end], off)
            rec = data[off : off + size]
            entries, off = _decode_entries(data, off + size, end)
            p = Packet(t, sender, nonce, record=rec, entries=entries, mac=mac)
        elif t == LEAVE:
            entries, off = _decode_entries(data, off, end)
            p = Packet(t, sender, entries=entries, mac=mac)
        elif t == SYNC_REQ:
            if off + _SYNC.size > end:
                raise WireFormatError("truncated sync request")
            counter, flags, *digests = _SYNC.unpack_from(data, off)
            off += _SYNC.size
            p = Packet(t, sender, counter, digests=tuple(digests), flags=flags, mac=mac)
        elif t in (SYNC_SUMMARY, SYNC_WANT):
            size, cap = (
                (SUMMARY_ITEM, MAX_SUMMARY_ITEMS)
                if t == SYNC_SUMMARY
                else (WANT_ITEM, MAX_WANT_ITEMS)
            )
            if off + 9 > end:
                raise WireFormatError("truncated sync items")
            (counter,) = _U64.unpack_from(data, off)
            count = data[off + 8]
            off += 9
            if count > cap or off + count * size > end:
                raise WireFormatError("bad sync item count")
            items = tuple([data[o : o + size] for o in range(off, off + count * size, size)])
            off += count * size
            p = Packet(t, sender, counter, items=items, mac=mac)
        else:  # SYNC_DATA
            if off + 8 > end:
                raise WireFormatError("truncated sync data")
            (counter,) = _U64.unpack_from(data, off)
            entries, off = _decode_entries(data, off + 8, end)
            p = Packet(t, sender, counter, entries=entries, mac=mac)
    except struct.error:
        raise WireFormatError("truncated packet") from None
    if off != end:
        raise WireFormatError("trailing bytes")
    return p


__all__ = [
    "ACCUSATION_LEN",
    "ACK",
    "GOSSIP_TYPES",
    "JOIN",
    "JOIN_ACK",
    "JOIN_MIN_LEN",
    "LEAVE",
    "MAC_LEN",
    "MAX_ENTRIES",
    "MAX_PACKET",
    "PING",
    "PING_REQ",
    "SYNC_BUCKETS",
    "SYNC_DATA",
    "SYNC_REQ",
    "SYNC_SUMMARY",
    "SYNC_WANT",
    "TAG_DEAD",
    "TAG_RECORD",
    "TAG_SUSPECT",
    "Accusation",
    "Endpoint",
    "Entry",
    "NodeRecord",
    "Packet",
    "accusation_signed_part",
    "decode_accusation",
    "decode_packet",
    "decode_record",
    "encode_accusation",
    "encode_body",
    "encode_entries",
    "encode_packet",
    "encode_record",
    "peek_type",
    "record_signed_part",
]
