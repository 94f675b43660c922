"""HMAC-BLAKE2s and the Noise KDF against RFC 2104/HKDF written out by hand; TAI64N; key types."""

from __future__ import annotations

import pytest

from meshguard.crypto import keys as keys_module
from meshguard.crypto.hashes import blake2s, hmac_blake2s, kdf1, kdf2, kdf3
from meshguard.crypto.keys import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
    X25519PrivateKey,
    X25519PublicKey,
    b64decode_key,
)
from meshguard.crypto.tai64n import parse_tai64n, tai64n
from meshguard.errors import KeyFormatError

from .helpers import h, load_vectors

BLOCK = 64  # BLAKE2s block size


def _hmac_by_hand(key: bytes, data: bytes) -> bytes:
    if len(key) > BLOCK:
        key = blake2s(key)
    key = key.ljust(BLOCK, b"\x00")
    inner = blake2s(bytes(b ^ 0x36 for b in key), data)
    return blake2s(bytes(b ^ 0x5C for b in key), inner)


@pytest.mark.parametrize(
    ("key", "data"),
    [(b"", b""), (b"k" * 32, b"data"), (bytes(range(64)), b"x" * 100), (b"z" * 65, b"long key")],
)
def test_hmac_blake2s_is_rfc2104(key: bytes, data: bytes) -> None:
    assert hmac_blake2s(key, data) == _hmac_by_hand(key, data)


def test_noise_kdf_is_hkdf_over_blake2s() -> None:
    ck, ikm = bytes(range(32)), b"input key material"
    t0 = _hmac_by_hand(ck, ikm)
    t1 = _hmac_by_hand(t0, b"\x01")
    t2 = _hmac_by_hand(t0, t1 + b"\x02")
    t3 = _hmac_by_hand(t0, t2 + b"\x03")
    assert kdf1(ck, ikm) == t1
    assert kdf2(ck, ikm) == (t1, t2)
    assert kdf3(ck, ikm) == (t1, t2, t3)
    assert len({t1, t2, t3}) == 3


def test_noise_initial_chaining_key() -> None:
    # Ci = HASH(CONSTRUCTION), the first step of WireGuard's handshake; a stable anchor value.
    construction = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
    ci = blake2s(construction)
    assert ci == h("60e26daef327efc02ec335e2a025d2d016eb4206f87277f52d38d1988b78cd36")


# --- TAI64N ---


def test_tai64n_epoch_and_known_values() -> None:
    assert tai64n(0) == h("400000000000000a00000000")
    assert tai64n(1, whiten=False) == h("400000000000000b00000000")
    assert tai64n(1.5, whiten=False) == h("400000000000000b1dcd6500")  # 500_000_000 ns


def test_tai64n_whitening_and_round_trip() -> None:
    raw = tai64n(1_700_000_000.123456789, whiten=False)
    secs, nanos = parse_tai64n(raw)
    assert secs == 1_700_000_000
    assert abs(nanos - 123_456_789) < 1000
    w_secs, w_nanos = parse_tai64n(tai64n(1_700_000_000.123456789))
    assert w_secs == secs
    assert w_nanos % (1 << 24) == 0
    assert w_nanos <= nanos
    with pytest.raises(ValueError):
        parse_tai64n(raw[:11])


def test_tai64n_orders_like_time() -> None:
    times = [0.0, 0.9999999999, 1.0, 59.5, 1_600_000_000.25, 1_600_000_001.0]
    encoded = [tai64n(t, whiten=False) for t in times]
    assert encoded == sorted(encoded)
    assert tai64n(0.9999999999, whiten=False) == tai64n(1, whiten=False)  # rounding carries


# --- key types: redaction, constant-time equality, base64 ---


def test_private_key_reprs_are_redacted() -> None:
    ed = Ed25519PrivateKey(bytes(range(32)))
    x = X25519PrivateKey.generate(bytes(range(32)))
    for key in (ed, x):
        text = repr(key)
        assert "redacted" in text
        assert key.raw.hex() not in text
        assert key.b64() not in text
        assert key.b64() not in str(key)
    assert ed.public_key.b64() in repr(ed.public_key)
    assert x.public_key.b64() in repr(x.public_key)


def test_keys_compare_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = keys_module.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(keys_module.hmac, "compare_digest", spy)
    a = X25519PublicKey(bytes(32))
    b = X25519PublicKey(bytes(32))
    c = X25519PublicKey(b"\x01" * 32)
    assert a == b
    assert a != c
    assert len(calls) == 2
    # Different key types never compare equal, even with the same bytes.
    assert X25519PrivateKey(bytes(range(32))) != X25519PublicKey(bytes(range(32)))
    assert hash(a) == hash(b)


def test_b64decode_key_errors() -> None:
    good = Ed25519PrivateKey(bytes(range(32))).public_key.b64()
    assert b64decode_key(good + "\n") == Ed25519PublicKey.from_b64(good).raw
    with pytest.raises(KeyFormatError, match="not valid base64"):
        b64decode_key("not base64!")
    with pytest.raises(KeyFormatError, match="32 bytes, got 3"):
        b64decode_key("AAAA")
    with pytest.raises(KeyFormatError):
        X25519PublicKey(b"short")


def test_identity_known_answer() -> None:
    vec = load_vectors("identity.json")
    key = Ed25519PrivateKey(h(vec["seed"]))
    assert key.public_key.b64() == vec["public_key_b64"]
    import base64

    assert base64.b64encode(key.secret_bytes()).decode() + "\n" == vec["identity_key_file"]
