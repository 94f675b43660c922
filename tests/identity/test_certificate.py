"""NodeCertificate codec (v1 write, v1/v2 read), signatures and validity rules."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshguard.identity.certificate import (
    MAX_CLOCK_SKEW,
    V1_LEN,
    V2_LEN,
    NodeCertificate,
    parse_expiry,
    sign_certificate,
)
from meshguard.identity.errors import CertificateError

from .helpers import make_key

ORG = make_key("org")
NODE = make_key("node").public_key.raw
T0 = 1_700_000_000

labels = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9-]{0,30}[A-Za-z0-9])?", fullmatch=True)
i64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
b32 = st.binary(min_size=32, max_size=32)


def test_layout_matches_spec() -> None:
    cert = sign_certificate(ORG, NODE, "node-1", T0, T0 + 3600)
    raw = cert.to_bytes()
    assert len(raw) == V1_LEN == 186
    assert raw[0] == 1
    assert raw[1:33] == ORG.public_key.raw
    assert raw[33:65] == NODE
    assert raw[65:97] == b"node-1" + bytes(26)
    assert struct.unpack("<qq", raw[97:113]) == (T0, T0 + 3600)
    assert raw[113] == 0
    assert ORG.public_key.verify(raw[114:178], raw[:114])
    assert raw[178:] == bytes(8)
    assert NodeCertificate.from_bytes(raw) == cert
    assert cert.problem(T0 + 1, NODE) is None


@settings(max_examples=150, deadline=None)
@given(
    org=b32,
    node=b32,
    name=labels,
    issued=i64,
    expires=i64,
    flags=st.integers(0, 255),
    sig=st.binary(min_size=64, max_size=64),
)
def test_v1_round_trip(
    org: bytes, node: bytes, name: str, issued: int, expires: int, flags: int, sig: bytes
) -> None:
    cert = NodeCertificate(1, org, node, name, issued, expires, flags, sig)
    raw = cert.to_bytes()
    assert len(raw) == V1_LEN
    assert NodeCertificate.from_bytes(raw) == cert
    # The original pads version 1 up to 314 bytes: still the same certificate.
    for pad in (1, V2_LEN - V1_LEN):
        assert NodeCertificate.from_bytes(raw + bytes(pad)) == cert


@settings(max_examples=100, deadline=None)
@given(
    name=labels,
    issued=i64,
    expires=i64,
    wg=b32,
    issuer=b32,
    dsig=st.binary(min_size=64, max_size=64),
)
def test_v2_round_trip(
    name: str, issued: int, expires: int, wg: bytes, issuer: bytes, dsig: bytes
) -> None:
    cert = NodeCertificate(
        2, b"o" * 32, b"n" * 32, name, issued, expires, 0, b"s" * 64, wg, issuer, dsig
    )
    raw = cert.to_bytes()
    assert len(raw) == V2_LEN
    assert NodeCertificate.from_bytes(raw) == cert


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=400))
def test_garbage_raises_only_certificate_error(data: bytes) -> None:
    with contextlib.suppress(CertificateError):
        NodeCertificate.from_bytes(data)


def test_v2_signature_covers_wg_and_issuer() -> None:
    wg = b"w" * 32
    head = NodeCertificate(
        2, ORG.public_key.raw, NODE, "n2", T0, 0, 0, bytes(64), wg, ORG.public_key.raw, bytes(64)
    )
    signed = head.signed_bytes()
    assert len(signed) == 178
    cert = NodeCertificate(
        2, head.org_key, NODE, "n2", T0, 0, 0, ORG.sign(signed), wg, head.issuer_key, bytes(64)
    )
    assert cert.signature_valid()
    parsed = NodeCertificate.from_bytes(cert.to_bytes())
    assert parsed.signature_valid()
    tampered = NodeCertificate(
        2, head.org_key, NODE, "n2", T0, 0, 0, cert.signature, b"x" * 32, head.issuer_key, bytes(64)
    )
    assert not tampered.signature_valid()
    delegated = NodeCertificate(
        2, head.org_key, NODE, "n2", T0, 0, 0, cert.signature, wg, b"i" * 32, bytes(64)
    )
    assert not delegated.signature_valid()


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda r: r[:185], "185 bytes"),
        (lambda r: r + bytes(129), "315 bytes"),
        (lambda r: b"\x03" + r[1:], "unknown certificate version 3"),
        (lambda r: r[:180] + b"\x01" + r[181:], "non-zero padding"),
        (lambda r: b"\x02" + r[1:], "must be 314 bytes"),
        (lambda r: b"\x02" + r[1:180] + b"\x01" + r[181:] + bytes(128), "non-zero padding"),
        (lambda r: r[:65] + b"bad_name" + bytes(24) + r[97:], "not a DNS label"),
        (lambda r: r[:65] + b"ab\x00c" + bytes(28) + r[97:], "after its NUL"),
        (lambda r: r[:65] + b"\xff\xfe" + bytes(30) + r[97:], "not UTF-8"),
        (lambda r: r[:65] + bytes(32) + r[97:], "not a DNS label"),
    ],
)
def test_malformed(mutate: object, match: str) -> None:
    raw = sign_certificate(ORG, NODE, "node-1", T0).to_bytes()
    assert callable(mutate)
    with pytest.raises(CertificateError, match=match):
        NodeCertificate.from_bytes(mutate(raw))


def test_validity_rules() -> None:
    cert = sign_certificate(ORG, NODE, "node-1", T0, T0 + 100)
    assert cert.problem(T0, NODE) is None
    assert cert.problem(T0 + 99, NODE) is None
    assert cert.problem(T0 + 100, NODE) == "certificate expired"
    assert (
        cert.problem(T0, make_key("other").public_key.raw)
        == "certificate belongs to another node key"
    )
    assert cert.problem(T0 - MAX_CLOCK_SKEW, NODE) is None
    assert cert.problem(T0 - MAX_CLOCK_SKEW - 1, NODE) == "certificate issued in the future"
    never = sign_certificate(ORG, NODE, "node-1", T0)
    assert never.problem(2**40, NODE) is None
    raw = bytearray(cert.to_bytes())
    raw[70] ^= 1  # inside the name: "node-1" -> "node-0"
    forged = NodeCertificate.from_bytes(bytes(raw))
    assert forged.problem(T0, NODE) == "certificate signature does not verify"
    raw = bytearray(cert.to_bytes())
    raw[120] ^= 1  # signature
    assert (
        NodeCertificate.from_bytes(bytes(raw)).problem(T0, NODE)
        == "certificate signature does not verify"
    )


def test_sign_rejects_bad_input() -> None:
    with pytest.raises(CertificateError, match="DNS label"):
        sign_certificate(ORG, NODE, "x" * 33, T0)
    with pytest.raises(CertificateError, match="DNS label"):
        sign_certificate(ORG, NODE, "../etc", T0)
    with pytest.raises(CertificateError, match="not after"):
        sign_certificate(ORG, NODE, "n", T0, T0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2030-01-01", 1893456000),
        ("2030-01-01T00:00:00Z", 1893456000),
        ("2030-01-01T01:00:00+01:00", 1893456000),
        ("2030-01-01 00:00:00", 1893456000),
        ("1893456000", 1893456000),
    ],
)
def test_parse_expiry(text: str, expected: int) -> None:
    assert parse_expiry(text) == expected


@pytest.mark.parametrize("text", ["tomorrow", "2030-13-01", "0", "-5", ""])
def test_parse_expiry_rejects(text: str) -> None:
    with pytest.raises(CertificateError):
        parse_expiry(text)


def test_golden_certificate() -> None:
    import json
    from pathlib import Path

    from meshguard.crypto.keys import Ed25519PrivateKey

    vec = json.loads(
        (Path(__file__).resolve().parents[1] / "vectors" / "identity.json").read_text()
    )
    gold = vec["certificate"]
    org = Ed25519PrivateKey(bytes.fromhex(vec["seed"]))
    node = Ed25519PrivateKey(bytes.fromhex(gold["node_seed"])).public_key.raw
    cert = sign_certificate(org, node, gold["name"], gold["issued_at"], gold["expires_at"])
    assert cert.to_bytes().hex() == gold["bytes"]
    parsed = NodeCertificate.from_bytes(bytes.fromhex(gold["bytes"]))
    assert parsed == cert and parsed.problem(gold["issued_at"], node) is None
