"""A small DNS message codec (RFC 1035 section 4, RFC 6891 EDNS0, RFC 3596 AAAA); no state.

Only what an authoritative server for one zone needs: parse a query (header, exactly one
question, an optional EDNS0 OPT record) and build a response that echoes the question and
carries answers (A, AAAA, NS, SOA) and an authority section (the zone's SOA in negative
answers, RFC 2308). Written here rather than taken from a library because it is small, its
every failure is one typed `WireFormatError` (remote garbage must never raise anything else),
and it is 5-20x faster per query than the same answers built with dnspython (measured by
bench/dns_codec.py; numbers in docs/mesh-dns-and-org-revocation.md#the-codec).

Header flags (RFC 1035 4.1.1): QR(15) OPCODE(14..11) AA(10) TC(9) RD(8) RA(7) Z(6..4)
RCODE(3..0). Names in queries must be uncompressed (a query has nothing to point back to);
answers name the question by the pointer 0xC00C (offset 12) unless they carry their own owner
name (uncompressed, as are names inside RDATA).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from meshguard.errors import WireFormatError

HEADER = struct.Struct("!HHHHHH")
HEADER_LEN = HEADER.size  # 12
_QTAIL = struct.Struct("!HH")
_RR_TAIL = struct.Struct("!HHIH")  # type, class, ttl, rdlength
_SOA_TAIL = struct.Struct("!IIIII")  # serial, refresh, retry, expire, minimum

QR = 0x8000
AA = 0x0400
TC = 0x0200
RD = 0x0100
RA = 0x0080
OPCODE_SHIFT = 11

TYPE_A = 1
TYPE_NS = 2
TYPE_SOA = 6
TYPE_AAAA = 28
TYPE_OPT = 41
TYPE_ANY = 255
CLASS_IN = 1
CLASS_ANY = 255

RCODE_NOERROR = 0
RCODE_FORMERR = 1
RCODE_SERVFAIL = 2
RCODE_NXDOMAIN = 3
RCODE_NOTIMP = 4
RCODE_REFUSED = 5

MAX_NAME = 255  # RFC 1035 2.3.4, wire form
MAX_LABEL = 63
UDP_PLAIN = 512  # RFC 1035 4.2.1: UDP replies without EDNS0
EDNS_PAYLOAD = 1232  # our advertised EDNS0 UDP payload (DNS flag day 2020: no fragmentation)
NAME_POINTER = b"\xc0\x0c"  # the question name, which always starts at offset 12


@dataclass(frozen=True, slots=True)
class Header:
    id: int
    flags: int
    qdcount: int
    ancount: int
    nscount: int
    arcount: int

    @property
    def opcode(self) -> int:
        return (self.flags >> OPCODE_SHIFT) & 0xF

    @property
    def is_response(self) -> bool:
        return bool(self.flags & QR)


@dataclass(frozen=True, slots=True)
class Question:
    labels: tuple[bytes, ...]  # raw labels as sent (case preserved)
    qtype: int
    qclass: int
    raw: bytes  # the question's wire bytes (name, type, class), echoed in the response

    @property
    def name(self) -> str:
        """The name lowercased, dot-joined, without the trailing dot ("" is the root).
        Non-ASCII bytes become U+FFFD, so they never match a mesh name."""
        return ".".join(lab.decode("ascii", "replace").lower() for lab in self.labels)


@dataclass(frozen=True, slots=True)
class Query:
    header: Header
    question: Question
    edns_payload: int | None  # the client's EDNS0 UDP payload size, None without OPT


def parse_header(data: bytes) -> Header:
    if len(data) < HEADER_LEN:
        raise WireFormatError("DNS message shorter than its header")
    return Header(*HEADER.unpack_from(data, 0))


def _parse_name(data: bytes, off: int) -> tuple[tuple[bytes, ...], int]:
    labels: list[bytes] = []
    total = 1
    while True:
        if off >= len(data):
            raise WireFormatError("truncated name")
        n = data[off]
        if n == 0:
            return tuple(labels), off + 1
        if n & 0xC0:
            raise WireFormatError("compressed or extended label in a query name")
        total += n + 1
        if total > MAX_NAME:
            raise WireFormatError("name longer than 255 bytes")
        if off + 1 + n > len(data):
            raise WireFormatError("truncated label")
        labels.append(bytes(data[off + 1 : off + 1 + n]))
        off += 1 + n


def parse_query(data: bytes) -> Query:
    """A query with exactly one question; raises WireFormatError for anything else."""
    h = parse_header(data)
    if h.qdcount != 1:
        raise WireFormatError("a query needs exactly one question")
    start = HEADER_LEN
    labels, off = _parse_name(data, start)
    if off + _QTAIL.size > len(data):
        raise WireFormatError("truncated question")
    qtype, qclass = _QTAIL.unpack_from(data, off)
    off += _QTAIL.size
    question = Question(labels, qtype, qclass, bytes(data[start:off]))
    edns: int | None = None
    # an OPT pseudo-record: root name, type 41, class = the client's UDP payload size
    if (h.ancount, h.nscount, h.arcount) == (0, 0, 1) and (
        off + 1 + _RR_TAIL.size <= len(data) and data[off] == 0
    ):
        rtype, rclass, _ttl, rdlen = _RR_TAIL.unpack_from(data, off + 1)
        if rtype == TYPE_OPT and off + 1 + _RR_TAIL.size + rdlen == len(data):
            edns = max(UDP_PLAIN, rclass)
    return Query(h, question, edns)


def encode_name(name: str) -> bytes:
    """The uncompressed wire form of a dotted ASCII name ("" or "." is the root)."""
    out = bytearray()
    for label in (x for x in name.rstrip(".").split(".") if x):
        raw = label.encode("ascii")
        if not 0 < len(raw) <= MAX_LABEL:
            raise WireFormatError("bad label")
        out += bytes([len(raw)]) + raw
    out.append(0)
    if len(out) > MAX_NAME:
        raise WireFormatError("name longer than 255 bytes")
    return bytes(out)


@dataclass(frozen=True, slots=True)
class Answer:
    """One resource record; `owner` is its name in wire form (default: the question's)."""

    rtype: int
    ttl: int
    rdata: bytes
    owner: bytes = NAME_POINTER


@dataclass(frozen=True, slots=True)
class Soa:
    """SOA RDATA (RFC 1035 3.3.13); `minimum` is the negative-caching TTL (RFC 2308 4)."""

    mname: str
    rname: str
    serial: int
    refresh: int
    retry: int
    expire: int
    minimum: int

    def rdata(self) -> bytes:
        return (encode_name(self.mname) + encode_name(self.rname)
                + _SOA_TAIL.pack(self.serial & 0xFFFFFFFF, self.refresh, self.retry,
                                 self.expire, self.minimum))


def opt_record(payload: int = EDNS_PAYLOAD) -> bytes:
    """An EDNS0 OPT pseudo-record with no options (RFC 6891 6.1.2)."""
    return b"\x00" + _RR_TAIL.pack(TYPE_OPT, payload, 0, 0)


def build_response(
    query_id: int,
    flags: int,
    rcode: int,
    question: bytes | None,
    answers: list[Answer] | tuple[Answer, ...] = (),
    *,
    authority: list[Answer] | tuple[Answer, ...] = (),
    edns: bool = False,
    max_size: int = UDP_PLAIN,
) -> bytes:
    """A response. `flags` carries QR/OPCODE/AA/RD/RA (TC is set here when needed). If the
    message would exceed max_size, the answer and authority sections are dropped and TC is
    set (RFC 1035 4.2.1, RFC 2181 9: the client retries over TCP)."""
    if not 0 <= rcode <= 15:
        raise WireFormatError("rcode out of range")
    qd = b"" if question is None else question
    an = b"".join(_record(a) for a in answers)
    ns = b"".join(_record(a) for a in authority)
    opt = opt_record() if edns else b""
    body = qd + an + ns + opt
    flags = (flags | QR) & ~(TC | 0xF) | rcode
    ancount, nscount = len(answers), len(authority)
    if HEADER_LEN + len(body) > max_size:
        flags |= TC
        ancount = nscount = 0
        body = qd + opt
    head = HEADER.pack(query_id & 0xFFFF, flags & 0xFFFF, 1 if question is not None else 0,
                       ancount, nscount, 1 if edns else 0)
    return head + body


def _record(a: Answer) -> bytes:
    return a.owner + _RR_TAIL.pack(a.rtype, CLASS_IN, a.ttl, len(a.rdata)) + a.rdata


def build_query(query_id: int, name: str, qtype: int, *, rd: bool = True,
                edns_payload: int | None = None) -> bytes:
    """A standard query for `name` (used by tests and clients)."""
    out = bytearray(HEADER.pack(query_id & 0xFFFF, RD if rd else 0, 1, 0, 0,
                                1 if edns_payload is not None else 0))
    out += encode_name(name) + _QTAIL.pack(qtype, CLASS_IN)
    if edns_payload is not None:
        out += opt_record(edns_payload)
    return bytes(out)


@dataclass(frozen=True, slots=True)
class ParsedResponse:
    header: Header
    rcode: int
    question: bytes
    answers: tuple[tuple[int, bytes], ...]  # (type, rdata)


def parse_response(data: bytes) -> ParsedResponse:
    """Parse a response built by build_response (answers name the question by pointer)."""
    h = parse_header(data)
    off = HEADER_LEN
    qraw = b""
    if h.qdcount == 1:
        _, end = _parse_name(data, off)
        qraw = bytes(data[off : end + _QTAIL.size])
        off = end + _QTAIL.size
    elif h.qdcount:
        raise WireFormatError("more than one question")
    answers = []
    for _ in range(h.ancount):
        if data[off : off + 2] != NAME_POINTER:
            raise WireFormatError("answer does not name the question")
        off += 2
        if off + _RR_TAIL.size > len(data):
            raise WireFormatError("truncated answer")
        rtype, _cls, _ttl, rdlen = _RR_TAIL.unpack_from(data, off)
        off += _RR_TAIL.size
        if off + rdlen > len(data):
            raise WireFormatError("truncated rdata")
        answers.append((rtype, bytes(data[off : off + rdlen])))
        off += rdlen
    return ParsedResponse(h, h.flags & 0xF, qraw, tuple(answers))
