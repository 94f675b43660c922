"""Codec for the signed-policy messages PolicyAnnounce (0x44), PolicyChunkRequest (0x45) and
PolicyChunk (0x46); no crypto. Layouts: docs/wire-format.md#signed-policy-gossip.

A signed org policy (policy/signed.py) is up to ~60 KiB, far above the 1280-byte gossip packet
limit, so it travels as an announcement of what a member holds and chunks pulled one by one:

    0x44 PolicyAnnounce      header count(u8) count x item                        trailer
         item = org(32) serial(u64) digest(16) size(u32)                          60 bytes
    0x45 PolicyChunkRequest  header org(32) serial(u64) digest(16) offset(u32)    trailer
    0x46 PolicyChunk         header org(32) serial(u64) digest(16) offset(u32) total(u32)
                             len(u16) data(len)                                   trailer
    trailer = sender_wg(32) mac(16)    mac = MAC(link key, everything before it)

The header is the gossip header of wire/gossip.py (type, b"MG", version 1, a zero byte) and the
trailer is the member link trailer of wire/org.py, so a packet from a non-member costs a
dictionary lookup and one MAC. `digest` is SignedPolicy.digest (BLAKE2s of the whole blob,
16 bytes), `size` the blob's length. A chunk's offset is a multiple of CHUNK and its data is
CHUNK bytes except the last one. Integers are little-endian.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from meshguard.errors import WireFormatError
from meshguard.wire.org import LINK_LEN, MAC_LEN, MAX_PACKET

__all__ = ["CHUNK", "MAC_LEN", "POLICY_TYPES", "Chunk", "ChunkRequest", "PolicyItem", "decode",
           "encode_announce", "encode_chunk", "encode_request", "split_link"]

POLICY_ANNOUNCE = 0x44
POLICY_CHUNK_REQUEST = 0x45
POLICY_CHUNK = 0x46
POLICY_TYPES = frozenset({POLICY_ANNOUNCE, POLICY_CHUNK_REQUEST, POLICY_CHUNK})

_HEADER = struct.Struct("<B2sBB")
GOSSIP_HEADER_LEN = _HEADER.size  # 5
DIGEST_LEN = 16
CHUNK = 1024  # data bytes per chunk; a chunk packet is 71 + 1024 + 48 = 1143 bytes
MAX_ANNOUNCE_ITEMS = 8
# the largest signed policy: policy/signed.py MAX_BLOB (56-byte head, 60 KiB text, signature);
# wire/ may not import policy/, a test checks that the two agree
MAX_BLOB = 56 + 60 * 1024 + 64

_ITEM = struct.Struct("<32sQ16sI")
ANNOUNCE_ITEM_LEN = _ITEM.size  # 60
_REQUEST = struct.Struct("<32sQ16sI")
REQUEST_LEN = GOSSIP_HEADER_LEN + _REQUEST.size  # 65
_CHUNK_HEAD = struct.Struct("<32sQ16sIIH")
CHUNK_HEAD_LEN = GOSSIP_HEADER_LEN + _CHUNK_HEAD.size  # 71
MAX_BODY = MAX_PACKET - LINK_LEN

assert CHUNK_HEAD_LEN + CHUNK <= MAX_BODY


@dataclass(frozen=True, slots=True)
class PolicyItem:
    """A member holds the signed policy `serial` of org `org_key`: `size` bytes, `digest`."""

    org_key: bytes
    serial: int
    digest: bytes
    size: int


@dataclass(frozen=True, slots=True)
class ChunkRequest:
    org_key: bytes
    serial: int
    digest: bytes
    offset: int


@dataclass(frozen=True, slots=True)
class Chunk:
    org_key: bytes
    serial: int
    digest: bytes
    offset: int
    total: int
    data: bytes


def _header(ptype: int) -> bytes:
    return _HEADER.pack(ptype, b"MG", 1, 0)


def _check_item(org_key: bytes, serial: int, digest: bytes) -> None:
    if len(org_key) != 32 or len(digest) != DIGEST_LEN or not 0 <= serial < 2**64:
        raise WireFormatError("bad policy item field sizes")


def encode_announce(items: Sequence[PolicyItem]) -> bytes:
    if not 0 < len(items) <= MAX_ANNOUNCE_ITEMS:
        raise WireFormatError(f"1..{MAX_ANNOUNCE_ITEMS} policies per announcement")
    parts = [_header(POLICY_ANNOUNCE), bytes([len(items)])]
    for it in items:
        _check_item(it.org_key, it.serial, it.digest)
        if not 0 < it.size <= MAX_BLOB:
            raise WireFormatError("bad policy size")
        parts.append(_ITEM.pack(it.org_key, it.serial, it.digest, it.size))
    return b"".join(parts)


def encode_request(r: ChunkRequest) -> bytes:
    _check_item(r.org_key, r.serial, r.digest)
    if not 0 <= r.offset < MAX_BLOB or r.offset % CHUNK:
        raise WireFormatError("bad chunk offset")
    return _header(POLICY_CHUNK_REQUEST) + _REQUEST.pack(r.org_key, r.serial, r.digest, r.offset)


def encode_chunk(c: Chunk) -> bytes:
    _check_item(c.org_key, c.serial, c.digest)
    _check_chunk(c.offset, c.total, len(c.data))
    return (_header(POLICY_CHUNK)
            + _CHUNK_HEAD.pack(c.org_key, c.serial, c.digest, c.offset, c.total, len(c.data))
            + c.data)


def chunk_len(offset: int, total: int) -> int:
    """The data length a chunk at `offset` of a `total`-byte blob must have."""
    return min(CHUNK, total - offset)


def _check_chunk(offset: int, total: int, n: int) -> None:
    if not 0 < total <= MAX_BLOB:
        raise WireFormatError("bad policy size")
    if offset % CHUNK or not 0 <= offset < total or n != chunk_len(offset, total):
        raise WireFormatError("bad chunk offset or length")


def split_link(data: bytes) -> tuple[bytes, bytes, bytes]:
    """(body, sender WireGuard key, MAC); the MAC covers body + sender."""
    if not GOSSIP_HEADER_LEN + LINK_LEN < len(data) <= MAX_PACKET:
        raise WireFormatError("bad policy packet length")
    return data[:-LINK_LEN], data[-LINK_LEN:-MAC_LEN], data[-MAC_LEN:]


def _check_header(data: bytes) -> int:
    if not GOSSIP_HEADER_LEN < len(data) <= MAX_BODY:
        raise WireFormatError("bad policy packet length")
    t, magic, version, zero = _HEADER.unpack_from(data, 0)
    if t not in POLICY_TYPES or magic != b"MG" or version != 1 or zero != 0:
        raise WireFormatError("not a policy packet")
    return int(t)


Decoded = tuple[PolicyItem, ...] | ChunkRequest | Chunk


def decode(data: bytes) -> Decoded:
    """One packet body (without its trailer); WireFormatError for anything malformed."""
    t = _check_header(data)
    if t == POLICY_ANNOUNCE:
        count = data[GOSSIP_HEADER_LEN]
        if not 0 < count <= MAX_ANNOUNCE_ITEMS:
            raise WireFormatError("bad item count")
        if len(data) != GOSSIP_HEADER_LEN + 1 + count * ANNOUNCE_ITEM_LEN:
            raise WireFormatError("announcement length mismatch")
        items = []
        for i in range(count):
            org, serial, digest, size = _ITEM.unpack_from(
                data, GOSSIP_HEADER_LEN + 1 + i * ANNOUNCE_ITEM_LEN)
            if not 0 < size <= MAX_BLOB:
                raise WireFormatError("bad policy size")
            items.append(PolicyItem(org, serial, digest, size))
        return tuple(items)
    if t == POLICY_CHUNK_REQUEST:
        if len(data) != REQUEST_LEN:
            raise WireFormatError("chunk request length mismatch")
        org, serial, digest, offset = _REQUEST.unpack_from(data, GOSSIP_HEADER_LEN)
        if offset % CHUNK or offset >= MAX_BLOB:
            raise WireFormatError("bad chunk offset")
        return ChunkRequest(org, serial, digest, offset)
    if len(data) < CHUNK_HEAD_LEN:
        raise WireFormatError("truncated chunk")
    org, serial, digest, offset, total, n = _CHUNK_HEAD.unpack_from(data, GOSSIP_HEADER_LEN)
    if len(data) != CHUNK_HEAD_LEN + n:
        raise WireFormatError("chunk length mismatch")
    _check_chunk(offset, total, n)
    return Chunk(org, serial, digest, offset, total, bytes(data[CHUNK_HEAD_LEN:]))
