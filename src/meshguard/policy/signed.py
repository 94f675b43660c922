"""A signed org policy: the policy text as its admin wrote it, signed with a serial.

    blob = MAGIC(4) org_key(32) serial(u64) issued_at(i64) text_len(u32) text signature(64)
    signature = Ed25519(org key, DOMAIN || blob without its signature)

Integers are little-endian. The text is UTF-8, at most MAX_TEXT bytes, in the syntax of
docs/policy.md; this module only frames and checks it, it does not parse rules. A node keeps
the newest serial per org and refuses an older or equal one (policy/store.py), so a serial
only goes up; `issued_at` is informational. The same bytes are the file on disk, the gossip
payload and what `meshguard policy` reports the digest of.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from meshguard.crypto.hashes import blake2s
from meshguard.crypto.keys import Ed25519PrivateKey, ed25519_verify
from meshguard.errors import WireFormatError

MAGIC = b"MGP1"
DOMAIN = b"meshguard org-policy v1\x00"
MAX_TEXT = 60 * 1024
SIG_LEN = 64
_HEAD = struct.Struct("<4s32sQqI")
HEAD_LEN = _HEAD.size  # 56
MAX_BLOB = HEAD_LEN + MAX_TEXT + SIG_LEN


@dataclass(frozen=True, slots=True)
class SignedPolicy:
    org_key: bytes
    serial: int
    issued_at: int
    text: str
    signature: bytes
    raw: bytes  # the whole blob, as signed and as sent

    @property
    def digest(self) -> bytes:
        """16 bytes naming this exact blob (gossip announcements carry it)."""
        return blake2s(self.raw)[:16]


def _body(org_key: bytes, serial: int, issued_at: int, text: bytes) -> bytes:
    if len(org_key) != 32:
        raise WireFormatError("org key must be 32 bytes")
    if not 0 <= serial < 2**64 or not -(2**63) <= issued_at < 2**63:
        raise WireFormatError("serial or time out of range")
    if len(text) > MAX_TEXT:
        raise WireFormatError(f"a policy is at most {MAX_TEXT} bytes")
    return _HEAD.pack(MAGIC, org_key, serial, issued_at, len(text)) + text


def sign_policy(org: Ed25519PrivateKey, text: str, serial: int, issued_at: int) -> SignedPolicy:
    raw_text = text.encode("utf-8")
    body = _body(org.public_key.raw, serial, issued_at, raw_text)
    sig = org.sign(DOMAIN + body)
    return SignedPolicy(org.public_key.raw, serial, issued_at, text, sig, body + sig)


def decode_policy(raw: bytes) -> SignedPolicy:
    """Frame check only (no signature check): WireFormatError for anything malformed."""
    raw = bytes(raw)
    if len(raw) < HEAD_LEN + SIG_LEN or len(raw) > MAX_BLOB:
        raise WireFormatError("bad signed policy length")
    magic, org_key, serial, issued_at, n = _HEAD.unpack_from(raw, 0)
    if magic != MAGIC:
        raise WireFormatError("not a signed meshguard policy")
    if HEAD_LEN + n + SIG_LEN != len(raw):
        raise WireFormatError("signed policy length mismatch")
    try:
        text = raw[HEAD_LEN : HEAD_LEN + n].decode("utf-8")
    except UnicodeDecodeError:
        raise WireFormatError("policy text is not UTF-8") from None
    return SignedPolicy(org_key, serial, issued_at, text, raw[-SIG_LEN:], raw)


def signature_valid(p: SignedPolicy) -> bool:
    return ed25519_verify(p.org_key, p.signature, DOMAIN + p.raw[:-SIG_LEN])
