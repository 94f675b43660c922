"""The identity's vouch for its WireGuard key."""

from __future__ import annotations

import pytest

from meshguard.identity.errors import KeyFileError
from meshguard.identity.wgkey import DOMAIN, VOUCH_LEN, WgKeyVouch, vouch_message, vouch_wg_key

from .helpers import make_key

ID = make_key("id")
WG = b"\x09" * 32


def test_vouch_verifies_and_round_trips() -> None:
    v = vouch_wg_key(ID, WG, 1000)
    assert v.verify()
    raw = v.to_bytes()
    assert len(raw) == VOUCH_LEN
    assert raw[:32] == WG
    assert WgKeyVouch.from_bytes(ID.public_key.raw, raw) == v
    assert ID.public_key.verify(raw[40:], vouch_message(ID.public_key.raw, WG, 1000))
    assert vouch_message(ID.public_key.raw, WG, 1000).startswith(DOMAIN)


def test_vouch_rejects_tampering_and_other_identities() -> None:
    v = vouch_wg_key(ID, WG, 1000)
    other = make_key("other").public_key.raw
    assert not WgKeyVouch(other, v.wg_key, v.issued_at, v.signature).verify()
    assert not WgKeyVouch(v.identity_key, b"\x0a" * 32, v.issued_at, v.signature).verify()
    assert not WgKeyVouch(v.identity_key, v.wg_key, 1001, v.signature).verify()
    # A plain signature over the key (no domain label) is not a vouch.
    assert not WgKeyVouch(v.identity_key, WG, 1000, ID.sign(WG)).verify()


def test_newer_vouch_supersedes() -> None:
    old = vouch_wg_key(ID, WG, 1000)
    new = vouch_wg_key(ID, b"\x0b" * 32, 1001)
    assert new.supersedes(old)
    assert not old.supersedes(new)
    assert not old.supersedes(old)
    assert old.supersedes(None)
    assert not vouch_wg_key(make_key("x"), WG, 5000).supersedes(old)


def test_bad_inputs() -> None:
    with pytest.raises(KeyFileError):
        WgKeyVouch.from_bytes(ID.public_key.raw, b"short")
    with pytest.raises(KeyFileError):
        vouch_wg_key(ID, b"short", 1)
    with pytest.raises(KeyFileError):
        vouch_wg_key(ID, WG, -1)
