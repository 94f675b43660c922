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


def cached_link_key(cache: dict[tuple[bytes, bytes], bytes | None],
                    own: X25519PrivateKey | None, own_identity: bytes, wg_key: bytes,
                    identity_key: bytes, label: bytes, limit: int) -> bytes | None:
    """`derive_link_key` through `cache` (one X25519 per member; the cache is cleared when it
    holds `limit` keys); None without our own key."""
    k = (wg_key, identity_key)
    if k in cache:
        return cache[k]
    if own is None:
        return None
    key = derive_link_key(own, own_identity, wg_key, identity_key, label)
    if len(cache) >= limit:
        cache.clear()
    cache[k] = key
    return key


__all__ = ["cached_link_key", "derive_link_key"]
