"""Key types: X25519 (WireGuard static/ephemeral keys) and Ed25519 (identities, orgs).

Private keys print as `<redacted>`; all keys compare in constant time.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519

from meshguard.errors import CryptoError, KeyFormatError

KEY_LEN = 32
SIGNATURE_LEN = 64


def b64encode(data: bytes) -> str:
    """Standard, padded base64 (the format of every key file and of `wg`)."""
    return base64.b64encode(data).decode("ascii")


def b64decode_key(text: str, length: int = KEY_LEN, what: str = "key") -> bytes:
    """Decode a base64 key of exactly `length` bytes; raises KeyFormatError otherwise."""
    s = text.strip()
    try:
        raw = base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        raise KeyFormatError(f"{what} is not valid base64") from None
    if len(raw) != length:
        raise KeyFormatError(f"{what} must decode to {length} bytes, got {len(raw)}")
    return raw


# Edwards25519 (RFC 8032 section 5.1): p = 2^255 - 19, d = -121665/121666, sqrt(-1).
_P = 2**255 - 19
_D = (-121665 * pow(121666, _P - 2, _P)) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)


def _ed_double(x: int, y: int, z: int) -> tuple[int, int, int]:
    """Projective twisted-Edwards doubling with a = -1 (no inversions)."""
    b = (x + y) * (x + y) % _P
    c = x * x % _P
    d = y * y % _P
    e = -c % _P
    f = (e + d) % _P
    j = (f - 2 * z * z) % _P
    return (b - c - d) * j % _P, f * (e - d) % _P, f * j % _P


@functools.lru_cache(maxsize=4096)
def ed25519_point_problem(raw: bytes) -> str | None:
    """Why `raw` is not a usable Ed25519 public key, or None if it is.

    OpenSSL accepts any 32 bytes as a public key and only fails later, at verification, so
    keys are checked here: the encoding must be canonical (y < p), decompress to a curve point
    (RFC 8032 section 5.1.3) and not be of small order (8 * P != identity), since a small-order
    key makes signatures meaningless.
    """
    if len(raw) != KEY_LEN:
        return f"must be {KEY_LEN} bytes"
    y = int.from_bytes(raw, "little") & ((1 << 255) - 1)
    sign = raw[31] >> 7
    if y >= _P:
        return "non-canonical encoding"
    u = (y * y - 1) % _P
    v = (_D * y * y + 1) % _P
    v3 = v * v * v % _P
    x = u * v3 * pow(u * v3 * v3 * v % _P, (_P - 5) // 8, _P) % _P
    vxx = v * x * x % _P
    if vxx != u:
        if vxx != (-u) % _P:
            return "not a curve point"
        x = x * _SQRT_M1 % _P
    if x == 0 and sign:
        return "non-canonical encoding"
    if x & 1 != sign:
        x = _P - x
    px, py, pz = x, y, 1
    for _ in range(3):
        px, py, pz = _ed_double(px, py, pz)
    if px == 0 and py == pz:
        return "small-order point"
    return None


class _Bytes32:
    __slots__ = ("_raw",)

    def __init__(self, raw: bytes) -> None:
        if len(raw) != KEY_LEN:
            raise KeyFormatError(f"{type(self).__name__} must be {KEY_LEN} bytes")
        self._raw = bytes(raw)

    def __bytes__(self) -> bytes:
        return self._raw

    @property
    def raw(self) -> bytes:
        return self._raw

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, _Bytes32)
        return hmac.compare_digest(self._raw, other._raw)

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._raw))

    def b64(self) -> str:
        return b64encode(self._raw)


class X25519PublicKey(_Bytes32):
    def __repr__(self) -> str:
        return f"X25519PublicKey({self.b64()})"

    @classmethod
    def from_b64(cls, text: str) -> X25519PublicKey:
        return cls(b64decode_key(text, what="WireGuard public key"))


class X25519PrivateKey(_Bytes32):
    """A Curve25519 private key (clamped on use by the underlying library)."""

    __slots__ = ("_obj", "_pub")

    def __init__(self, raw: bytes) -> None:
        super().__init__(raw)
        self._obj = x25519.X25519PrivateKey.from_private_bytes(self._raw)
        self._pub = X25519PublicKey(self._obj.public_key().public_bytes_raw())

    def __repr__(self) -> str:
        return "X25519PrivateKey(<redacted>)"

    @classmethod
    def generate(cls, random32: bytes) -> X25519PrivateKey:
        """Build from 32 injected random bytes, clamped as `wg genkey` does."""
        b = bytearray(random32)
        b[0] &= 248
        b[31] = (b[31] & 127) | 64
        return cls(bytes(b))

    @classmethod
    def from_b64(cls, text: str) -> X25519PrivateKey:
        return cls(b64decode_key(text, what="WireGuard private key"))

    @property
    def public_key(self) -> X25519PublicKey:
        return self._pub

    def exchange(self, peer: X25519PublicKey | bytes) -> bytes:
        """X25519 DH; raises CryptoError for a low-order point (all-zero shared secret)."""
        raw = peer.raw if isinstance(peer, X25519PublicKey) else peer
        try:
            shared = self._obj.exchange(x25519.X25519PublicKey.from_public_bytes(raw))
        except ValueError:
            raise CryptoError("X25519 with a low-order point") from None
        if not any(shared):
            raise CryptoError("X25519 with a low-order point")
        return shared


class Ed25519PublicKey(_Bytes32):
    __slots__ = ("_obj",)

    def __init__(self, raw: bytes) -> None:
        super().__init__(raw)
        problem = ed25519_point_problem(self._raw)
        if problem is not None:
            raise KeyFormatError(f"not a valid Ed25519 public key ({problem})")
        try:
            self._obj = ed25519.Ed25519PublicKey.from_public_bytes(self._raw)
        except ValueError:
            raise KeyFormatError("not a valid Ed25519 public key (not a curve point)") from None

    def __repr__(self) -> str:
        return f"Ed25519PublicKey({self.b64()})"

    @classmethod
    def from_b64(cls, text: str) -> Ed25519PublicKey:
        return cls(b64decode_key(text, what="Ed25519 public key"))

    def verify(self, signature: bytes, message: bytes) -> bool:
        if len(signature) != SIGNATURE_LEN:
            return False
        try:
            self._obj.verify(signature, message)
        except InvalidSignature:
            return False
        return True


class Ed25519PrivateKey(_Bytes32):
    """An Ed25519 key held as its 32-byte seed (RFC 8032)."""

    __slots__ = ("_obj", "_pub")

    def __init__(self, seed: bytes) -> None:
        super().__init__(seed)
        self._obj = ed25519.Ed25519PrivateKey.from_private_bytes(self._raw)
        self._pub = Ed25519PublicKey(self._obj.public_key().public_bytes_raw())

    def __repr__(self) -> str:
        return "Ed25519PrivateKey(<redacted>)"

    @property
    def seed(self) -> bytes:
        return self._raw

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self._pub

    def sign(self, message: bytes) -> bytes:
        return self._obj.sign(message)

    def secret_bytes(self) -> bytes:
        """The 64-byte libsodium-style secret: seed || public key (the identity.key format)."""
        return self._raw + self._pub.raw

    def to_x25519(self) -> X25519PrivateKey:
        """libsodium's crypto_sign_ed25519_sk_to_curve25519: the first 32 bytes of
        SHA-512(seed), clamped. The WireGuard key the original meshguard derives from its
        identity (docs/compatibility.md#the-wireguard-key)."""
        return X25519PrivateKey.generate(hashlib.sha512(self._raw).digest()[:32])

    @classmethod
    def from_secret_bytes(cls, secret: bytes) -> Ed25519PrivateKey:
        """Parse seed || public; raises KeyFormatError if the halves do not match."""
        if len(secret) != 64:
            raise KeyFormatError("Ed25519 secret key must be 64 bytes (seed || public key)")
        key = cls(secret[:32])
        if not hmac.compare_digest(key.public_key.raw, secret[32:]):
            raise KeyFormatError("Ed25519 secret key halves do not match (corrupt key file)")
        return key


def ed25519_verify(public: bytes, signature: bytes, message: bytes) -> bool:
    """Verify without building a key object first; False for any bad input."""
    try:
        return Ed25519PublicKey(public).verify(signature, message)
    except (KeyFormatError, CryptoError):
        return False


__all__ = [
    "KEY_LEN",
    "SIGNATURE_LEN",
    "Ed25519PrivateKey",
    "Ed25519PublicKey",
    "X25519PrivateKey",
    "X25519PublicKey",
    "b64decode_key",
    "b64encode",
    "ed25519_point_problem",
    "ed25519_verify",
]

