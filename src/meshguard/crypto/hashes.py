"""Hashes: BLAKE2s (hash, keyed MAC, HMAC), the Noise HKDF over BLAKE2s, and BLAKE3."""

from __future__ import annotations

import hashlib
import hmac as _hmac

import blake3 as _blake3

HASH_LEN = 32
MAC_LEN = 16


def blake2s(*parts: bytes) -> bytes:
    """BLAKE2s-256 of the concatenation of parts (WireGuard's HASH)."""
    h = hashlib.blake2s()
    for p in parts:
        h.update(p)
    return h.digest()


def mac(key: bytes, *parts: bytes) -> bytes:
    """Keyed BLAKE2s with a 16-byte output (WireGuard's MAC, RFC 7693 keyed mode)."""
    h = hashlib.blake2s(key=key, digest_size=MAC_LEN)
    for p in parts:
        h.update(p)
    return h.digest()


def equal(a: bytes, b: bytes) -> bool:
    """Constant-time comparison of two MACs or secrets."""
    return _hmac.compare_digest(a, b)


def hmac_blake2s(key: bytes, data: bytes) -> bytes:
    """HMAC (RFC 2104) over BLAKE2s-256 (WireGuard's HMAC)."""
    return _hmac.digest(key, data, hashlib.blake2s)


def kdf1(key: bytes, data: bytes) -> bytes:
    """Noise HKDF with one output."""
    t0 = hmac_blake2s(key, data)
    return hmac_blake2s(t0, b"\x01")


def kdf2(key: bytes, data: bytes) -> tuple[bytes, bytes]:
    """Noise HKDF with two outputs."""
    t0 = hmac_blake2s(key, data)
    t1 = hmac_blake2s(t0, b"\x01")
    t2 = hmac_blake2s(t0, t1 + b"\x02")
    return t1, t2


def kdf3(key: bytes, data: bytes) -> tuple[bytes, bytes, bytes]:
    """Noise HKDF with three outputs."""
    t0 = hmac_blake2s(key, data)
    t1 = hmac_blake2s(t0, b"\x01")
    t2 = hmac_blake2s(t0, t1 + b"\x02")
    t3 = hmac_blake2s(t0, t2 + b"\x03")
    return t1, t2, t3


def blake3(data: bytes, length: int = 32) -> bytes:
    """BLAKE3 hash of data (mesh addresses and org domains)."""
    return _blake3.blake3(data).digest(length=length)
