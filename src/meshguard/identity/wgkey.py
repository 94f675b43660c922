"""How an identity vouches for its WireGuard key.

The WireGuard static key (X25519, `wireguard.key`) is separate from the Ed25519 identity so it
can be rotated without changing the node's identity, mesh address or certificates. Peers
learn it from gossip, so the identity signs it:

    message   = b"meshguard wg-key v1\\x00" || identity_pub(32) || wg_pub(32) || issued_at(u64 LE)
    signature = Ed25519(identity, message)

A vouch travels as 104 bytes: wg_pub(32) || issued_at(8, u64 LE) || signature(64); the identity
key travels beside it (the member's own identity). A receiver keeps, per identity, the vouch
with the highest issued_at that verifies; a rotation is simply a newer vouch. The domain label
keeps this signature from ever being valid as any other meshguard or foreign signed message,
and including the identity key binds the vouch to it explicitly.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from meshguard.crypto.keys import Ed25519PrivateKey, ed25519_verify
from meshguard.identity.errors import KeyFileError

DOMAIN = b"meshguard wg-key v1\x00"
VOUCH_LEN = 104
_BODY = struct.Struct("<32sQ64s")
assert _BODY.size == VOUCH_LEN


def vouch_message(identity_pub: bytes, wg_pub: bytes, issued_at: int) -> bytes:
    return DOMAIN + bytes(identity_pub) + bytes(wg_pub) + struct.pack("<Q", issued_at)


@dataclass(frozen=True)
class WgKeyVouch:
    identity_key: bytes
    wg_key: bytes
    issued_at: int
    signature: bytes

    def to_bytes(self) -> bytes:
        return _BODY.pack(self.wg_key, self.issued_at, self.signature)

    @classmethod
    def from_bytes(cls, identity_key: bytes, data: bytes) -> WgKeyVouch:
        """Parse (not verify); raises KeyFileError for a wrong length."""
        if len(data) != VOUCH_LEN:
            raise KeyFileError(
                f"WireGuard key vouch must be {VOUCH_LEN} bytes, got {len(data)}; "
                "run `meshguard rotate-wg-key` to write a new one"
            )
        wg, issued, sig = _BODY.unpack(data)
        return cls(bytes(identity_key), wg, issued, sig)

    def verify(self) -> bool:
        msg = vouch_message(self.identity_key, self.wg_key, self.issued_at)
        return ed25519_verify(self.identity_key, self.signature, msg)

    def supersedes(self, other: WgKeyVouch | None) -> bool:
        """True if this (verified) vouch should replace `other` for the same identity."""
        if other is None:
            return True
        if other.identity_key != self.identity_key:
            return False
        return self.issued_at > other.issued_at


def vouch_wg_key(identity: Ed25519PrivateKey, wg_pub: bytes, issued_at: int) -> WgKeyVouch:
    """Sign `wg_pub` with the identity (issued_at: unix seconds, monotone per identity)."""
    if len(wg_pub) != 32:
        raise KeyFileError("WireGuard public key must be 32 bytes")
    if not 0 <= issued_at < 1 << 64:
        raise KeyFileError("vouch time out of range")
    pub = identity.public_key.raw
    sig = identity.sign(vouch_message(pub, wg_pub, issued_at))
    return WgKeyVouch(pub, bytes(wg_pub), issued_at, sig)
