"""Codec for the org messages OrgAliasAnnounce (0x41), OrgCertRevoke (0x42) and OrgTrustVouch
(0x43); no crypto.

Every item carries an Ed25519 signature by the org key over a domain-separated message, so an
item is the same wherever it travels. Each *packet* is also sent from one member to another
and carries a link trailer: the sender's WireGuard public key and a 16-byte keyed-BLAKE2s MAC
under the key the two members share (mesh/org_gossip.py), so a receiver drops a packet from a
non-member after a dictionary lookup and one MAC, before any signature check. The header is
the gossip header of wire/gossip.py (type, b"MG", version 1, a zero byte), so the demultiplexer
(mesh/demux.py) already routes both types to the gossip side.

    0x42 OrgCertRevoke   header count(u8) count x revoke-item  trailer
         revoke-item = org(32) node(32) revoked_at(i64) signature(64)            136 bytes
         signed message = b"meshguard org-cert-revoke v1\\0" org node revoked_at(i64)
    0x41 OrgAliasAnnounce header count(u8) count x alias-item  trailer
         alias-item = org(32) issued_at(i64) alias_len(u8) alias(alias_len) signature(64)
         signed message = b"meshguard org-alias v1\\0" org issued_at(i64) alias_len alias
    0x43 OrgTrustVouch   header count(u8) count x vouch-item  trailer
         vouch-item = org(32) node(32) lamport(u64) signature(64)                136 bytes
         signed message = node lamport(u64)  (the original's vouch, byte for byte: a vouch
         file in vouched/ holds exactly one item, identity/vouch.py)
    trailer = sender_wg(32) mac(16)    mac = MAC(link key, everything before it)

`encode_*`/`decode_*` handle the body (header and items); `split_link` cuts the trailer off.
Integers are little-endian, as in the rest of the gossip. At most MAX_ITEMS items per packet,
and a body is at most MAX_BODY bytes, so a packet stays within the 1280-byte gossip limit.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from meshguard.errors import WireFormatError

ORG_ALIAS_ANNOUNCE = 0x41
ORG_CERT_REVOKE = 0x42
ORG_TRUST_VOUCH = 0x43
ORG_TYPES = frozenset({ORG_ALIAS_ANNOUNCE, ORG_CERT_REVOKE, ORG_TRUST_VOUCH})

_HEADER = struct.Struct("<B2sBB")
HEADER_LEN = _HEADER.size + 1  # 5-byte gossip header + count byte
KEY_LEN = 32
SIG_LEN = 64
MAX_ITEMS = 8  # 6 + 8 * 136 = 1094 bytes; alias items are at most 32 + 8 + 1 + 63 + 64 = 168
MAX_ALIAS_LEN = 63
MAX_PACKET = 1280
MAC_LEN = 16
LINK_LEN = KEY_LEN + MAC_LEN  # the trailer: sender WireGuard key, MAC
MAX_BODY = MAX_PACKET - LINK_LEN

_REVOKE = struct.Struct("<32s32sq64s")
REVOKE_ITEM_LEN = _REVOKE.size  # 136
_VOUCH = struct.Struct("<32s32sQ64s")
VOUCH_ITEM_LEN = _VOUCH.size  # 136
_ALIAS_HEAD = struct.Struct("<32sqB")
_I64 = struct.Struct("<q")

REVOKE_CONTEXT = b"meshguard org-cert-revoke v1\x00"
ALIAS_CONTEXT = b"meshguard org-alias v1\x00"


@dataclass(frozen=True, slots=True)
class CertRevocation:
    """The org `org_key` revokes its certificate of `node_key` (signed by the org key)."""

    org_key: bytes
    node_key: bytes
    revoked_at: int  # unix seconds (informational: the revocation never expires)
    signature: bytes

    @property
    def target(self) -> tuple[bytes, bytes]:
        return (self.org_key, self.node_key)


@dataclass(frozen=True, slots=True)
class OrgVouch:
    """The org `org_key` vouches for `node_key`, a node without its certificate (signed by
    the org key over node_key || lamport)."""

    org_key: bytes
    node_key: bytes
    lamport: int  # unix seconds when signed (informational: a vouch ends only by revocation)
    signature: bytes

    @property
    def target(self) -> tuple[bytes, bytes]:
        return (self.org_key, self.node_key)

    def to_bytes(self) -> bytes:
        if len(self.signature) != SIG_LEN or len(self.org_key) != KEY_LEN \
                or len(self.node_key) != KEY_LEN or not 0 <= self.lamport < 2**64:
            raise WireFormatError("bad vouch field sizes")
        return _VOUCH.pack(self.org_key, self.node_key, self.lamport, self.signature)

    @classmethod
    def from_bytes(cls, data: bytes, offset: int = 0) -> OrgVouch:
        if len(data) - offset < VOUCH_ITEM_LEN:
            raise WireFormatError("truncated vouch")
        org, node, lamport, sig = _VOUCH.unpack_from(data, offset)
        return cls(bytes(org), bytes(node), lamport, bytes(sig))


@dataclass(frozen=True, slots=True)
class AliasAnnouncement:
    """The org `org_key` calls its domain `alias` (a DNS label), as of `issued_at`."""

    org_key: bytes
    alias: str
    issued_at: int
    signature: bytes


def _i64(t: int) -> bytes:
    if not -(2**63) <= t < 2**63:  # times read from files can be any integer
        raise WireFormatError("time out of range")
    return _I64.pack(t)


def revoke_message(org_key: bytes, node_key: bytes, revoked_at: int) -> bytes:
    if len(org_key) != KEY_LEN or len(node_key) != KEY_LEN:
        raise WireFormatError("keys must be 32 bytes")
    return REVOKE_CONTEXT + org_key + node_key + _i64(revoked_at)


def vouch_message(node_key: bytes, lamport: int) -> bytes:
    """What the org signs for a vouch: node(32) || lamport(u64 LE), 40 bytes, no context
    (the original's message; no other org-signed message is 40 bytes long)."""
    if len(node_key) != KEY_LEN or not 0 <= lamport < 2**64:
        raise WireFormatError("bad vouch key or lamport")
    return bytes(node_key) + lamport.to_bytes(8, "little")


def alias_message(org_key: bytes, alias: str, issued_at: int) -> bytes:
    try:
        raw = alias.encode("ascii")
    except UnicodeEncodeError:
        raise WireFormatError("alias is not ASCII") from None
    if len(org_key) != KEY_LEN or not 0 < len(raw) <= MAX_ALIAS_LEN:
        raise WireFormatError("bad org key or alias length")
    return ALIAS_CONTEXT + org_key + _i64(issued_at) + bytes([len(raw)]) + raw


def _header(ptype: int, count: int) -> bytes:
    return _HEADER.pack(ptype, b"MG", 1, 0) + bytes([count])


def encode_revocations(items: Sequence[CertRevocation]) -> bytes:
    if not 0 < len(items) <= MAX_ITEMS:
        raise WireFormatError(f"1..{MAX_ITEMS} revocations per packet")
    parts = [_header(ORG_CERT_REVOKE, len(items))]
    for r in items:
        if len(r.signature) != SIG_LEN or len(r.org_key) != KEY_LEN or len(r.node_key) != KEY_LEN:
            raise WireFormatError("bad revocation field sizes")
        parts.append(_REVOKE.pack(r.org_key, r.node_key, r.revoked_at, r.signature))
    return b"".join(parts)


def encode_vouches(items: Sequence[OrgVouch]) -> bytes:
    if not 0 < len(items) <= MAX_ITEMS:
        raise WireFormatError(f"1..{MAX_ITEMS} vouches per packet")
    return _header(ORG_TRUST_VOUCH, len(items)) + b"".join(v.to_bytes() for v in items)


def encode_aliases(items: Sequence[AliasAnnouncement]) -> bytes:
    if not 0 < len(items) <= MAX_ITEMS:
        raise WireFormatError(f"1..{MAX_ITEMS} aliases per packet")
    parts = [_header(ORG_ALIAS_ANNOUNCE, len(items))]
    for a in items:
        raw = a.alias.encode("ascii")
        if len(a.signature) != SIG_LEN or len(a.org_key) != KEY_LEN:
            raise WireFormatError("bad alias field sizes")
        if not 0 < len(raw) <= MAX_ALIAS_LEN:
            raise WireFormatError("bad alias length")
        parts.append(_ALIAS_HEAD.pack(a.org_key, a.issued_at, len(raw)) + raw + a.signature)
    out = b"".join(parts)
    if len(out) > MAX_BODY:
        raise WireFormatError("aliases do not fit in one packet")
    return out


def alias_item_len(a: AliasAnnouncement) -> int:
    """Bytes one alias item takes in a packet (to pack packets up to MAX_BODY)."""
    return _ALIAS_HEAD.size + len(a.alias.encode("ascii")) + SIG_LEN


def split_link(data: bytes) -> tuple[bytes, bytes, bytes]:
    """(body, sender WireGuard key, MAC) of an org packet; the MAC covers body + sender."""
    if not HEADER_LEN + LINK_LEN <= len(data) <= MAX_PACKET:
        raise WireFormatError("bad org packet length")
    return data[:-LINK_LEN], data[-LINK_LEN:-MAC_LEN], data[-MAC_LEN:]


def _check_header(data: bytes, ptype: int) -> int:
    if len(data) < HEADER_LEN or len(data) > MAX_BODY:
        raise WireFormatError("bad org packet length")
    t, magic, version, zero = _HEADER.unpack_from(data, 0)
    if t != ptype or magic != b"MG" or version != 1 or zero != 0:
        raise WireFormatError("not an org packet of this type")
    count = data[HEADER_LEN - 1]
    if not 0 < count <= MAX_ITEMS:
        raise WireFormatError("bad item count")
    return count


def decode_revocations(data: bytes) -> tuple[CertRevocation, ...]:
    count = _check_header(data, ORG_CERT_REVOKE)
    if len(data) != HEADER_LEN + count * REVOKE_ITEM_LEN:
        raise WireFormatError("revocation packet length mismatch")
    return tuple(CertRevocation(*_REVOKE.unpack_from(data, HEADER_LEN + i * REVOKE_ITEM_LEN))
                 for i in range(count))


def decode_vouches(data: bytes) -> tuple[OrgVouch, ...]:
    count = _check_header(data, ORG_TRUST_VOUCH)
    if len(data) != HEADER_LEN + count * VOUCH_ITEM_LEN:
        raise WireFormatError("vouch packet length mismatch")
    return tuple(OrgVouch.from_bytes(data, HEADER_LEN + i * VOUCH_ITEM_LEN)
                 for i in range(count))


def decode_aliases(data: bytes) -> tuple[AliasAnnouncement, ...]:
    count = _check_header(data, ORG_ALIAS_ANNOUNCE)
    off = HEADER_LEN
    out = []
    for _ in range(count):
        if off + _ALIAS_HEAD.size > len(data):
            raise WireFormatError("truncated alias")
        org, issued, n = _ALIAS_HEAD.unpack_from(data, off)
        off += _ALIAS_HEAD.size
        if not 0 < n <= MAX_ALIAS_LEN or off + n + SIG_LEN > len(data):
            raise WireFormatError("bad alias length")
        try:
            alias = data[off : off + n].decode("ascii")
        except UnicodeDecodeError:
            raise WireFormatError("alias is not ASCII") from None
        off += n
        out.append(AliasAnnouncement(org, alias, issued, bytes(data[off : off + SIG_LEN])))
        off += SIG_LEN
    if off != len(data):
        raise WireFormatError("trailing bytes")
    return tuple(out)
