"""The `mg://` pairing token (identity/pairing_token.py, docs/pairing.md): layout, signature,
expiry, and what damaged, truncated, forged or random input gets."""

from __future__ import annotations

import base64
import dataclasses
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshguard.crypto.hashes import blake3
from meshguard.crypto.keys import Ed25519PrivateKey
from meshguard.identity import pairing_token as tok
from meshguard.identity.addressing import mesh_ipv4

KEY = Ed25519PrivateKey(bytes(range(32)))
OTHER = Ed25519PrivateKey(bytes([7]) * 32)
NOW = 1_770_000_000


def _token(key: Ed25519PrivateKey = KEY, **kw: object) -> tok.PairingToken:
    base: dict[str, object] = dict(
        identity_key=key.public_key.raw, wg_key=bytes([9]) * 32,
        reflexive=("203.0.113.21", 51821), mesh_ipv4=str(mesh_ipv4(key.public_key.raw)),
        punch_time=NOW + 60, punch_window=60, nonce=bytes(range(8)),
        stun_server=("203.0.113.10", 3478), nat_type=tok.NAT_CONE, role=tok.ROLE_OFFER,
        expires=NOW + 120, reply_to=bytes(16),
        endpoints=(("192.168.10.2", 51821), ("fd00::2", 51821)))
    base.update(kw)
    return tok.PairingToken(**base)  # type: ignore[arg-type]


def _binary(**kw: object) -> bytes:
    return tok.sign(_token(**kw), KEY)


def test_round_trip_through_the_uri() -> None:
    t = _token()
    binary = tok.sign(t, KEY)
    uri = tok.to_uri(binary)
    assert uri.startswith("mg://") and not set(uri[5:]) & set("+/=")
    back, raw = tok.decode(uri)
    assert raw == binary
    assert back == dataclasses.replace(t, signature=binary[-64:])
    # local addresses first, then the STUN mapping
    assert back.candidates() == (("192.168.10.2", 51821), ("fd00::2", 51821),
                                 ("203.0.113.21", 51821))
    # whitespace around a pasted token, and a trailing slash some chat clients add
    assert tok.decode(f"  {uri}/\n")[0] == back


def test_the_first_106_bytes_have_the_originals_layout() -> None:
    b = _binary()
    assert b[0] == 2
    assert b[1:33] == KEY.public_key.raw
    assert b[33:65] == bytes([9]) * 32
    assert b[65:69] == bytes([203, 0, 113, 21]) and b[69:71] == struct.pack(">H", 51821)
    assert b[71:75] == mesh_ipv4(KEY.public_key.raw).packed
    assert struct.unpack(">QH", b[75:85]) == (NOW + 60, 60)
    assert b[85:93] == bytes(range(8))
    assert b[93:97] == bytes([203, 0, 113, 10]) and b[97:99] == struct.pack(">H", 3478)
    assert b[99] == tok.NAT_CONE
    assert b[100:106] == blake3(b[:100], 6)  # the original's integrity check
    assert b[106] == tok.ROLE_OFFER and struct.unpack(">Q", b[107:115]) == (NOW + 120,)
    assert b[115:131] == bytes(16) and b[131] == 2 and b[132] == 4 and b[139] == 6
    assert len(b) == 106 + 26 + 7 + 19 + 64


def test_a_token_of_the_original_gets_its_own_error() -> None:
    # the original's version-1 token: 106 bytes, a BLAKE3 check and no signature
    body = bytes([1]) + bytes(99)
    original = tok.SCHEME + base64.urlsafe_b64encode(body + blake3(body, 6)).decode().rstrip("=")
    with pytest.raises(tok.PairingTokenError, match="original Zig meshguard"):
        tok.decode(original)


def test_no_endpoint_means_none() -> None:
    t, _ = tok.decode(tok.to_uri(_binary(reflexive=None, stun_server=None, endpoints=())))
    assert t.reflexive is None and t.stun_server is None and t.candidates() == ()


def test_expiry() -> None:
    t = _token()
    assert tok.expiry_problem(t, NOW) is None
    assert "expired 0 min 1 s ago" in str(tok.expiry_problem(t, NOW + 121))
    far = _token(expires=NOW + 25 * 3600, punch_time=NOW + 60)
    assert "more than 24 hours" in str(tok.expiry_problem(far, NOW))
    late_punch = _token(punch_time=NOW + 200)
    assert "punch time" in str(tok.expiry_problem(late_punch, NOW))


def test_a_forged_signature_is_refused() -> None:
    b = bytearray(_binary())
    b[-1] ^= 1
    with pytest.raises(tok.PairingTokenError, match="signature does not verify"):
        tok.decode_binary(bytes(b))


def test_a_token_signed_by_another_key_is_refused() -> None:
    with pytest.raises(tok.PairingTokenError, match="not the signing key"):
        tok.sign(_token(), OTHER)
    # built by hand: KEY's token, OTHER's signature
    body = _binary()[:-64]
    forged = body + OTHER.sign(tok.SIGN_CONTEXT + body)
    with pytest.raises(tok.PairingTokenError, match="signature does not verify"):
        tok.decode_binary(forged)


def test_swapping_in_another_key_breaks_the_signature() -> None:
    # an attacker replaces the identity key with theirs and fixes the (unkeyed) check bytes:
    # the signature, by the real key, no longer verifies under the attacker's key
    b = bytearray(_binary())
    b[1:33] = OTHER.public_key.raw
    b[71:75] = mesh_ipv4(OTHER.public_key.raw).packed  # and the address that goes with it
    b[100:106] = blake3(bytes(b[:100]), 6)
    with pytest.raises(tok.PairingTokenError, match="signature does not verify"):
        tok.decode_binary(bytes(b))


def test_changed_endpoints_break_the_signature() -> None:
    b = bytearray(_binary())
    b[134] ^= 0x40  # the first extra endpoint's address, after the check bytes
    with pytest.raises(tok.PairingTokenError, match="signature does not verify"):
        tok.decode_binary(bytes(b))


def test_every_truncation_is_refused() -> None:
    uri = tok.to_uri(_binary())
    for n in range(len(uri)):
        with pytest.raises(tok.PairingTokenError):
            tok.decode(uri[:n])
    binary = _binary()
    for n in range(len(binary)):
        with pytest.raises(tok.PairingTokenError):
            tok.decode_binary(binary[:n])


def test_every_bit_flip_is_refused() -> None:
    binary = _binary()
    for i in range(len(binary)):
        for bit in range(8):
            b = bytearray(binary)
            b[i] ^= 1 << bit
            with pytest.raises(tok.PairingTokenError):
                tok.decode_binary(bytes(b))


def test_malformed_texts() -> None:
    for text, what in [("http://x", "must start with mg://"), ("mg://", "truncated"),
                       ("mg://@@@@", "base64url"), ("mg://" + "A" * 2000, "longer than"),
                       ("mg://AAAAA", "truncated"), ("mg://é", "truncated")]:
        with pytest.raises(tok.PairingTokenError, match=what):
            tok.decode(text)


def test_structure_is_checked_before_the_signature() -> None:
    def with_check(b: bytearray) -> bytes:
        b[100:106] = blake3(bytes(b[:100]), 6)
        return bytes(b)

    b = bytearray(_binary())
    b[0] = 3
    with pytest.raises(tok.PairingTokenError, match="unknown token version 3"):
        tok.decode_binary(bytes(b))
    b = bytearray(_binary())
    b[131] = 9
    with pytest.raises(tok.PairingTokenError, match="9 endpoints"):
        tok.decode_binary(bytes(b))
    b = bytearray(_binary())
    b[132] = 5
    with pytest.raises(tok.PairingTokenError, match="unknown family 5"):
        tok.decode_binary(bytes(b))
    b = bytearray(_binary())
    b[106] = 7
    with pytest.raises(tok.PairingTokenError, match="unknown role"):
        tok.decode_binary(bytes(b))
    b = bytearray(_binary())
    b[1:33] = bytes(32)  # a low-order point
    with pytest.raises(tok.PairingTokenError, match="unusable identity key"):
        tok.decode_binary(with_check(b))


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_raise_only_the_codecs_error(data: bytes) -> None:
    with pytest.raises(tok.PairingTokenError):
        tok.decode_binary(data)


@settings(max_examples=400, deadline=None)
@given(st.binary(min_size=106, max_size=600), st.integers(0, 8))
def test_random_bodies_past_the_check_raise_only_the_codecs_error(data: bytes, count: int
                                                                   ) -> None:
    # version 2 and valid check bytes, so the parser gets past its cheap checks
    b = bytearray(data)
    b[0] = 2
    b[100:106] = blake3(bytes(b[:100]), 6)
    if len(b) > 131:
        b[131] = count
    with pytest.raises(tok.PairingTokenError):
        tok.decode_binary(bytes(b))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=600))
def test_random_text_raises_only_the_codecs_error(text: str) -> None:
    with pytest.raises(tok.PairingTokenError):
        tok.decode("mg://" + text if len(text) % 2 else text)


def test_a_token_naming_another_nodes_mesh_address_is_refused() -> None:
    """The mesh address is derived from the identity key; a signed token that claims another
    one (a trusted node's, say) would make `connect` tell the user the new peer sits there."""
    victim = str(mesh_ipv4(OTHER.public_key.raw))
    with pytest.raises(tok.PairingTokenError, match="mesh address"):
        tok.decode_binary(_binary(mesh_ipv4=victim))
