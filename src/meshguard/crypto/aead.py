"""AEADs: ChaCha20-Poly1305 (RFC 8439) with WireGuard's counter nonce, and XChaCha20-Poly1305.

`TransportCipher` caches one AEAD object per key, which is what the data plane wants.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from meshguard.errors import CryptoError

KEY_LEN = 32
TAG_LEN = 16
XNONCE_LEN = 24

_NONCE = struct.Struct("<4xQ")
_WORDS4 = struct.Struct("<4I")
_SIGMA = _WORDS4.unpack(b"expand 32-byte k")


def wg_nonce(counter: int) -> bytes:
    """WireGuard's 96-bit nonce: 32 zero bits then the 64-bit little-endian counter."""
    return _NONCE.pack(counter)


class TransportCipher:
    """ChaCha20-Poly1305 under one fixed key, with the AEAD object built once."""

    __slots__ = ("__weakref__", "_aead", "_key")  # (weakref: the data plane's cipher cache)

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_LEN:
            raise CryptoError("ChaCha20-Poly1305 key must be 32 bytes")
        self._aead = ChaCha20Poly1305(key)
        self._key = bytes(key)

    def __repr__(self) -> str:
        return "TransportCipher(<redacted>)"

    def seal(self, counter: int, plaintext: bytes, ad: bytes = b"") -> bytes:
        return self._aead.encrypt(_NONCE.pack(counter), plaintext, ad or None)

    def open(self, counter: int, ciphertext: bytes, ad: bytes = b"") -> bytes:
        """Decrypt; raises CryptoError when authentication fails."""
        try:
            return self._aead.decrypt(_NONCE.pack(counter), ciphertext, ad or None)
        except InvalidTag:
            raise CryptoError("authentication failed") from None

    def open_or_none(self, counter: int, ciphertext: bytes) -> bytes | None:
        """Decrypt with no associated data; None when authentication fails (hot path)."""
        try:
            return self._aead.decrypt(_NONCE.pack(counter), ciphertext, None)
        except InvalidTag:
            return None

    @property
    def key(self) -> bytes:
        """The raw key, for the data plane's compiled batch loop (which keys its own cipher)."""
        return self._key

    @property
    def aead(self) -> ChaCha20Poly1305:
        """The underlying AEAD object (for the data plane's batched loops)."""
        return self._aead


def chacha20poly1305_seal(key: bytes, nonce: bytes, plaintext: bytes, ad: bytes) -> bytes:
    """One-shot RFC 8439 AEAD with an explicit 12-byte nonce."""
    return ChaCha20Poly1305(key).encrypt(nonce, plaintext, ad)


def chacha20poly1305_open(key: bytes, nonce: bytes, ciphertext: bytes, ad: bytes) -> bytes:
    try:
        return ChaCha20Poly1305(key).decrypt(nonce, ciphertext, ad)
    except InvalidTag:
        raise CryptoError("authentication failed") from None


def hchacha20(key: bytes, nonce16: bytes) -> bytes:
    """HChaCha20 (draft-irtf-cfrg-xchacha section 2.2).

    ChaCha20's keystream block is rounds(state) + state; HChaCha20 is words 0-3 and 12-15 of
    rounds(state). With the 16-byte input as ChaCha20's counter||nonce, those words are the
    keystream words minus the constants and minus the input words respectively.
    """
    if len(key) != KEY_LEN or len(nonce16) != 16:
        raise CryptoError("HChaCha20 needs a 32-byte key and a 16-byte input")
    enc = Cipher(algorithms.ChaCha20(key, nonce16), mode=None).encryptor()
    block = enc.update(bytes(64))
    ks = struct.unpack("<16I", block)
    inp = _WORDS4.unpack(nonce16)
    out = [(ks[i] - _SIGMA[i]) & 0xFFFFFFFF for i in range(4)]
    out += [(ks[12 + i] - inp[i]) & 0xFFFFFFFF for i in range(4)]
    return struct.pack("<8I", *out)


def _xchacha_subkey(key: bytes, nonce: bytes) -> tuple[bytes, bytes]:
    if len(nonce) != XNONCE_LEN:
        raise CryptoError("XChaCha20-Poly1305 nonce must be 24 bytes")
    return hchacha20(key, nonce[:16]), b"\x00\x00\x00\x00" + nonce[16:]


def xchacha20poly1305_seal(key: bytes, nonce: bytes, plaintext: bytes, ad: bytes) -> bytes:
    subkey, n12 = _xchacha_subkey(key, nonce)
    return ChaCha20Poly1305(subkey).encrypt(n12, plaintext, ad)


def xchacha20poly1305_open(key: bytes, nonce: bytes, ciphertext: bytes, ad: bytes) -> bytes:
    subkey, n12 = _xchacha_subkey(key, nonce)
    try:
        return ChaCha20Poly1305(subkey).decrypt(n12, ciphertext, ad)
    except InvalidTag:
        raise CryptoError("authentication failed") from None
