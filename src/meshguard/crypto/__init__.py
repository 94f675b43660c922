"""Cryptographic primitives: the only package that imports cryptography, blake3 and hashlib."""
