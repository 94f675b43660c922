"""Noise IKpsk2 core: both sides agree, and every tampering or wrong key is refused."""

from __future__ import annotations

import dataclasses

import pytest

from meshguard.crypto.keys import X25519PrivateKey
from meshguard.errors import CryptoError
from meshguard.testing.rng import SeededRng
from meshguard.wireguard import noise
from meshguard.wireguard.constants import CONSTRUCTION, IDENTIFIER

from .sim import make_key

TS = bytes(12)


def _eph(seed: int) -> X25519PrivateKey:
    return X25519PrivateKey.generate(SeededRng(seed).bytes(32))


def _run(psk_i: bytes = bytes(32), psk_r: bytes = bytes(32)) -> tuple[noise.Session, noise.Session]:
    i, r = make_key(1), make_key(2)
    body, ist = noise.create_initiation(i, r.public_key.raw, _eph(3), TS)
    rst = noise.consume_initiation(r, body)
    rbody, rs = noise.create_response(rst, _eph(4), psk_r)
    return noise.consume_response(ist, i, rbody, psk_i), rs


def test_constants() -> None:
    assert CONSTRUCTION == b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
    assert IDENTIFIER == b"WireGuard v1 zx2c4 Jason@zx2c4.com"


def test_sessions_agree_and_keys_cross() -> None:
    si, sr = _run()
    assert si.h == sr.h and si.ck == sr.ck
    assert si.transport_keys(True) == sr.transport_keys(False)[::-1]
    s1, s2 = si.transport_keys(True)
    assert s1 != s2


def test_psk_changes_keys_and_mismatch_fails() -> None:
    psk = bytes(range(32))
    si, _sr = _run(psk, psk)
    base, _ = _run()
    assert si.ck != base.ck
    with pytest.raises(CryptoError):
        _run(psk, bytes(32))


def test_precomputed_static_static_gives_same_result() -> None:
    i, r = make_key(1), make_key(2)
    ss = i.exchange(r.public_key)
    b1, _ = noise.create_initiation(i, r.public_key.raw, _eph(3), TS)
    b2, _ = noise.create_initiation(i, r.public_key.raw, _eph(3), TS, static_static=ss)
    assert b1 == b2
    st = noise.consume_initiation(r, b1, static_static_for={i.public_key.raw: ss})
    assert st.remote_static == i.public_key.raw


@pytest.mark.parametrize("field", ["ephemeral", "encrypted_static", "encrypted_payload"])
def test_tampered_initiation_refused(field: str) -> None:
    i, r = make_key(1), make_key(2)
    body, _ = noise.create_initiation(i, r.public_key.raw, _eph(3), TS)
    v = bytearray(getattr(body, field))
    v[5] ^= 0x40
    bad = dataclasses.replace(body, **{field: bytes(v)})
    with pytest.raises(CryptoError):
        noise.consume_initiation(r, bad)


def test_initiation_to_wrong_responder_refused() -> None:
    i, r = make_key(1), make_key(2)
    body, _ = noise.create_initiation(i, r.public_key.raw, _eph(3), TS)
    with pytest.raises(CryptoError):
        noise.consume_initiation(make_key(9), body)


def test_tampered_response_refused() -> None:
    i, r = make_key(1), make_key(2)
    body, ist = noise.create_initiation(i, r.public_key.raw, _eph(3), TS)
    rbody, _ = noise.create_response(noise.consume_initiation(r, body), _eph(4), bytes(32))
    bad = dataclasses.replace(rbody, encrypted_payload=bytes(16))
    with pytest.raises(CryptoError):
        noise.consume_response(ist, i, bad, bytes(32))


def test_low_order_ephemeral_refused() -> None:
    i, r = make_key(1), make_key(2)
    body, _ = noise.create_initiation(i, r.public_key.raw, _eph(3), TS)
    with pytest.raises(CryptoError):
        noise.consume_initiation(r, dataclasses.replace(body, ephemeral=bytes(32)))
