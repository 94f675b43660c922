"""The MAC key two members share for the messages they send each other directly (sans-IO).

key = BLAKE2s(label, X25519(own WireGuard key, theirs), sorted WireGuard keys, sorted identity
keys): both sides compute the same key, nobody else can, and each message family (org gossip,
path probes) takes its own label, so a MAC of one family never verifies as another's.
"""

from __future__ import annotations

from meshguard.crypto.hashes import blake2s
from meshguard.crypto.keys import X25519PrivateKey
from meshguard.errors import CryptoError


def derive_link_key(own: X25519PrivateKey, own_identity: bytes, wg_key: bytes,
                    identity_key: bytes, label: bytes) -> bytes | None:
    """The key under `label` shared with the member (`wg_key`, `identity_key`); None for a
    key X25519 refuses (low order)."""
    try:
        shared = own.exchange(wg_key)
    except CryptoError:
        return None
    w0, w1 = sorted((own.public_key.raw, wg_key))
    i0, i1 = sorted((own_identity, identity_key))
    return blake2s(label, shared, w0, w1, i0, i1)


__all__ = ["derive_link_key"]
