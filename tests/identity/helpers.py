"""Deterministic keys shared by the identity tests."""

from __future__ import annotations

import hashlib

from meshguard.crypto.keys import Ed25519PrivateKey


def make_key(label: str) -> Ed25519PrivateKey:
    """A fixed Ed25519 key per label (tests are deterministic)."""
    return Ed25519PrivateKey(hashlib.sha256(label.encode()).digest())
