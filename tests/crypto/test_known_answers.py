"""Known-answer tests for every primitive, from the RFCs' own vectors (tests/vectors/*.json)."""

from __future__ import annotations

import pytest

from meshguard.crypto.aead import (
    TransportCipher,
    chacha20poly1305_open,
    chacha20poly1305_seal,
    hchacha20,
    wg_nonce,
    xchacha20poly1305_open,
    xchacha20poly1305_seal,
)
from meshguard.crypto.hashes import blake2s, blake3, mac
from meshguard.crypto.keys import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
    X25519PrivateKey,
    ed25519_verify,
)
from meshguard.errors import CryptoError, KeyFormatError

from .helpers import h, load_vectors

X25519 = load_vectors("x25519.json")
ED25519 = load_vectors("ed25519.json")
CHACHA = load_vectors("chacha20poly1305.json")
XCHACHA = load_vectors("xchacha20poly1305.json")
BLAKE2S = load_vectors("blake2s.json")
BLAKE3 = load_vectors("blake3.json")


# --- X25519 (RFC 7748) ---


@pytest.mark.parametrize("vec", X25519["scalarmult"])
def test_x25519_scalarmult(vec: dict[str, str]) -> None:
    # The RFC's scalars are unclamped; X25519 clamps internally, so use them as given.
    assert X25519PrivateKey(h(vec["scalar"])).exchange(h(vec["u"])) == h(vec["output"])


def test_x25519_iterated_ladder() -> None:
    it = X25519["iterated"]
    k = u = h(it["start"])
    for i in range(1, 1001):
        k, u = X25519PrivateKey(k).exchange(u), k
        if i == 1:
            assert k == h(it["after_1"])
    assert k == h(it["after_1000"])


def test_x25519_diffie_hellman() -> None:
    dh = X25519["dh"]
    alice = X25519PrivateKey(h(dh["alice_private"]))
    bob = X25519PrivateKey(h(dh["bob_private"]))
    assert alice.public_key.raw == h(dh["alice_public"])
    assert bob.public_key.raw == h(dh["bob_public"])
    assert alice.exchange(bob.public_key) == h(dh["shared"])
    assert bob.exchange(alice.public_key) == h(dh["shared"])


@pytest.mark.parametrize("point", X25519["low_order_points"])
def test_x25519_low_order_point_rejected(point: str) -> None:
    key = X25519PrivateKey(h(X25519["dh"]["alice_private"]))
    with pytest.raises(CryptoError, match="low-order"):
        key.exchange(h(point))


def test_x25519_generate_clamps() -> None:
    key = X25519PrivateKey.generate(b"\xff" * 32)
    assert key.raw[0] & 7 == 0
    assert key.raw[31] & 0x80 == 0
    assert key.raw[31] & 0x40 == 0x40


# --- Ed25519 (RFC 8032) ---


@pytest.mark.parametrize("vec", ED25519["tests"], ids=lambda v: v["name"])
def test_ed25519_rfc8032(vec: dict[str, str]) -> None:
    key = Ed25519PrivateKey(h(vec["secret_key"]))
    assert key.public_key.raw == h(vec["public_key"])
    msg = h(vec["message"])
    sig = key.sign(msg)
    assert sig == h(vec["signature"])
    assert key.public_key.verify(sig, msg)
    assert ed25519_verify(h(vec["public_key"]), sig, msg)
    tampered = bytes([sig[0] ^ 1]) + sig[1:]
    assert not key.public_key.verify(tampered, msg)
    assert not key.public_key.verify(sig, msg + b"x")
    assert not key.public_key.verify(sig[:63], msg)


def test_ed25519_secret_bytes_round_trip() -> None:
    vec = ED25519["tests"][0]
    key = Ed25519PrivateKey(h(vec["secret_key"]))
    secret = key.secret_bytes()
    assert secret == h(vec["secret_key"]) + h(vec["public_key"])
    assert Ed25519PrivateKey.from_secret_bytes(secret) == key
    with pytest.raises(KeyFormatError, match="halves do not match"):
        Ed25519PrivateKey.from_secret_bytes(secret[:32] + bytes(32))
    with pytest.raises(KeyFormatError, match="64 bytes"):
        Ed25519PrivateKey.from_secret_bytes(secret[:63])


@pytest.mark.parametrize("point", ED25519["small_order_public_keys"])
def test_ed25519_small_order_key_rejected(point: str) -> None:
    with pytest.raises(KeyFormatError, match="small-order"):
        Ed25519PublicKey(h(point))
    assert not ed25519_verify(h(point), bytes(64), b"")


@pytest.mark.parametrize("point", ED25519["non_canonical_public_keys"])
def test_ed25519_non_canonical_key_rejected(point: str) -> None:
    with pytest.raises(KeyFormatError, match="non-canonical"):
        Ed25519PublicKey(h(point))


def test_ed25519_off_curve_key_rejected() -> None:
    # y = 2 has no x on edwards25519 (u/v is not a square mod p).
    with pytest.raises(KeyFormatError, match="not a curve point"):
        Ed25519PublicKey(b"\x02" + bytes(31))


# --- ChaCha20-Poly1305 (RFC 8439) ---


@pytest.mark.parametrize("vec", CHACHA["tests"], ids=lambda v: v["name"])
def test_chacha20poly1305(vec: dict[str, str]) -> None:
    key, nonce, aad = h(vec["key"]), h(vec["nonce"]), h(vec["aad"])
    pt, sealed = h(vec["plaintext"]), h(vec["ciphertext"]) + h(vec["tag"])
    assert chacha20poly1305_seal(key, nonce, pt, aad) == sealed
    assert chacha20poly1305_open(key, nonce, sealed, aad) == pt
    bad = sealed[:-1] + bytes([sealed[-1] ^ 0x80])
    with pytest.raises(CryptoError):
        chacha20poly1305_open(key, nonce, bad, aad)
    with pytest.raises(CryptoError):
        chacha20poly1305_open(key, nonce, sealed, aad + b"\x00")


def test_transport_cipher_matches_rfc_with_wireguard_nonce() -> None:
    vec = CHACHA["tests"][0]
    key, pt, aad = h(vec["key"]), h(vec["plaintext"]), h(vec["aad"])
    # The RFC's nonce 07000000 40414243 44454647 is WireGuard's nonce only if its first 4
    # bytes are zero; build the equivalent WireGuard counter and compare with the one-shot API.
    counter = 0x4746454443424140
    cipher = TransportCipher(key)
    assert wg_nonce(counter) == bytes(4) + h("4041424344454647")
    sealed = cipher.seal(counter, pt, aad)
    assert sealed == chacha20poly1305_seal(key, wg_nonce(counter), pt, aad)
    assert cipher.open(counter, sealed, aad) == pt
    assert cipher.open_or_none(counter, sealed) is None  # wrong (empty) associated data
    assert cipher.open_or_none(1, cipher.seal(1, pt)) == pt
    assert "redacted" in repr(cipher)
    with pytest.raises(CryptoError):
        TransportCipher(key[:31])


# --- XChaCha20-Poly1305, HChaCha20 (draft-irtf-cfrg-xchacha) ---


def test_hchacha20() -> None:
    v = XCHACHA["hchacha20"]
    assert hchacha20(h(v["key"]), h(v["nonce"])) == h(v["subkey"])
    with pytest.raises(CryptoError):
        hchacha20(h(v["key"]), h(v["nonce"])[:15])


def test_xchacha20poly1305() -> None:
    v = XCHACHA["xchacha20poly1305"]
    key, nonce, aad, pt = h(v["key"]), h(v["nonce"]), h(v["aad"]), h(v["plaintext"])
    sealed = h(v["ciphertext"]) + h(v["tag"])
    assert xchacha20poly1305_seal(key, nonce, pt, aad) == sealed
    assert xchacha20poly1305_open(key, nonce, sealed, aad) == pt
    with pytest.raises(CryptoError):
        xchacha20poly1305_open(key, nonce, sealed[:-1] + b"\x00", aad)
    with pytest.raises(CryptoError):
        xchacha20poly1305_seal(key, nonce[:12], pt, aad)


# --- BLAKE2s (RFC 7693), BLAKE3 ---


def test_blake2s_rfc7693_abc() -> None:
    v = BLAKE2S["rfc7693_abc"]
    assert blake2s(h(v["message"])) == h(v["digest"])
    assert blake2s(b"a", b"bc") == h(v["digest"])  # parts are concatenated


@pytest.mark.parametrize("vec", BLAKE2S["unkeyed"], ids=lambda v: str(len(v["message"]) // 2))
def test_blake2s_unkeyed(vec: dict[str, str]) -> None:
    assert blake2s(h(vec["message"])) == h(vec["digest"])


@pytest.mark.parametrize("vec", BLAKE2S["keyed"], ids=lambda v: str(len(v["message"]) // 2))
def test_blake2s_keyed(vec: dict[str, str]) -> None:
    # WireGuard's MAC is keyed BLAKE2s truncated by parameter (digest length 16), which is a
    # different function from a truncated 32-byte digest; check the 32-byte KAT through the
    # same code path by comparing the 16-byte MAC's properties below.
    import hashlib

    assert hashlib.blake2s(h(vec["message"]), key=h(vec["key"])).digest() == h(vec["digest"])
    m = mac(h(vec["key"]), h(vec["message"]))
    assert len(m) == 16
    assert m != h(vec["digest"])[:16]  # digest length is a parameter, not a truncation


@pytest.mark.parametrize("vec", BLAKE3["tests"], ids=lambda v: str(v["input_len"]))
def test_blake3_official(vec: dict[str, object]) -> None:
    n = vec["input_len"]
    assert isinstance(n, int)
    data = bytes(i % 251 for i in range(n))
    assert blake3(data) == h(str(vec["hash"]))


def test_blake3_abc_and_lengths() -> None:
    assert blake3(b"abc") == h(BLAKE3["abc"])
    assert blake3(b"abc", 8) == h(BLAKE3["abc"])[:8]  # XOF prefix
