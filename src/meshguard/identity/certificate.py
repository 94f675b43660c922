"""NodeCertificate: an org's signature over a node's identity and name (docs/compatibility.md).

Version 1, 186 bytes, little-endian:

    0    1  version (1)
    1   32  org public key
    33  32  node public key (Ed25519 identity)
    65  32  node name, UTF-8, NUL-padded (a DNS label)
    97   8  issued_at, i64 unix seconds
    105  8  expires_at, i64 unix seconds, 0 = never
    113  1  flags (0)
    114 64  Ed25519 signature by the org key over bytes [0:114]
    178  8  zero padding

Version 2 (314 bytes) appends wg_pubkey(32) || issuer_pubkey(32) || delegation_signature(64)
to those 186 bytes (so they start at offset 186), and its signature covers
bytes [0:114] || wg_pubkey || issuer_pubkey. We read both versions and write version 1.
A version 2 certificate is accepted only when the issuer is the org itself (or all zero);
delegated issuers are refused, since what the delegation signature covers is unspecified.
The original writes version 1 zero-padded up to 314 bytes, so any length
from 186 to 314 is accepted for version 1 as long as the padding is zero; the version byte
decides.
"""

from __future__ import annotations

import datetime
import struct
from dataclasses import dataclass

from meshguard.crypto.keys import Ed25519PrivateKey, ed25519_verify
from meshguard.identity.errors import CertificateError
from meshguard.identity.names import CERT_NAME_LEN, is_dns_label

V1 = 1
V2 = 2
V1_LEN = 186
V2_LEN = 314
MIN_LEN = V1_LEN
MAX_LEN = V2_LEN
SIGNED_LEN = 114
SIG_OFFSET = 114
SIG_END = 178
NEVER = 0
MAX_CLOCK_SKEW = 300  # seconds an issued_at may lie in the future (clock drift between hosts)

_HEAD = struct.Struct("<B32s32s32sqqB")  # the 114 signed bytes
assert _HEAD.size == SIGNED_LEN


@dataclass(frozen=True)
class NodeCertificate:
    version: int
    org_key: bytes
    node_key: bytes
    name: str
    issued_at: int
    expires_at: int
    flags: int
    signature: bytes
    wg_key: bytes | None = None  # version 2 only
    issuer_key: bytes | None = None  # version 2 only
    delegation_signature: bytes | None = None  # version 2 only

    def head_bytes(self) -> bytes:
        name = self.name.encode("utf-8")
        return _HEAD.pack(
            self.version,
            self.org_key,
            self.node_key,
            name.ljust(CERT_NAME_LEN, b"\x00"),
            self.issued_at,
            self.expires_at,
            self.flags,
        )

    def signed_bytes(self) -> bytes:
        """What the org signs: [0:114], plus wg_pubkey || issuer_pubkey for version 2."""
        head = self.head_bytes()
        if self.version == V2:
            assert self.wg_key is not None and self.issuer_key is not None
            return head + self.wg_key + self.issuer_key
        return head

    def to_bytes(self) -> bytes:
        """186 bytes for version 1, 314 for version 2."""
        body = self.head_bytes() + self.signature
        if self.version == V2:
            assert self.wg_key is not None and self.issuer_key is not None
            assert self.delegation_signature is not None
            return (
                body
                + bytes(V1_LEN - SIG_END)
                + self.wg_key
                + self.issuer_key
                + (self.delegation_signature)
            )
        return body + bytes(V1_LEN - SIG_END)

    @classmethod
    def from_bytes(cls, data: bytes) -> NodeCertificate:
        """Parse; raises CertificateError (never anything else) for malformed input."""
        data = bytes(data)
        if not MIN_LEN <= len(data) <= MAX_LEN:
            raise CertificateError(
                f"certificate is {len(data)} bytes, expected {V1_LEN} to {V2_LEN}; "
                "pass a .cert file written by `meshguard org-sign`"
            )
        version, org, node, raw_name, issued, expires, flags = _HEAD.unpack_from(data)
        sig = data[SIG_OFFSET:SIG_END]
        name = _decode_name(raw_name)
        if version == V1:
            if any(data[SIG_END:]):
                raise CertificateError(
                    "certificate version 1 has non-zero padding; the file is corrupt, "
                    "ask the org admin to sign it again"
                )
            return cls(V1, org, node, name, issued, expires, flags, sig)
        if version == V2:
            if any(data[SIG_END:V1_LEN]):
                raise CertificateError(
                    "certificate version 2 has non-zero padding; the file is corrupt, "
                    "ask the org admin to sign it again"
                )
            if len(data) != V2_LEN:
                raise CertificateError(
                    f"certificate version 2 must be {V2_LEN} bytes, got {len(data)}; "
                    "the file is truncated, copy it again"
                )
            return cls(
                V2,
                org,
                node,
                name,
                issued,
                expires,
                flags,
                sig,
                wg_key=data[V1_LEN : V1_LEN + 32],
                issuer_key=data[V1_LEN + 32 : V1_LEN + 64],
                delegation_signature=data[V1_LEN + 64 : V2_LEN],
            )
        raise CertificateError(
            f"unknown certificate version {version}; this meshguard reads versions 1 and 2"
        )

    def signature_valid(self) -> bool:
        """The org signature verifies (version 2: only when the org itself is the issuer)."""
        if self.version == V2 and self.issuer_key not in (self.org_key, bytes(32)):
            return False  # delegated issuers are not supported
        return ed25519_verify(self.org_key, self.signature, self.signed_bytes())

    def problem(self, now_wall: float, claimed_node_key: bytes | None = None) -> str | None:
        """Why this certificate is not acceptable at `now_wall`, or None if it is.

        Checks node key, signature and validity period; the caller checks that the org is
        trusted and that (org, node) is not revoked.
        """
        if claimed_node_key is not None and bytes(claimed_node_key) != self.node_key:
            return "certificate belongs to another node key"
        if not self.signature_valid():
            return "certificate signature does not verify"
        if self.expires_at != NEVER and now_wall >= self.expires_at:
            return "certificate expired"
        if self.issued_at > now_wall + MAX_CLOCK_SKEW:
            return "certificate issued in the future"
        return None


def _decode_name(raw: bytes) -> str:
    text, nul, rest = raw.partition(b"\x00")
    if nul and any(rest):
        raise CertificateError("certificate node name has bytes after its NUL padding")
    try:
        name = text.decode("utf-8")
    except UnicodeDecodeError:
        raise CertificateError("certificate node name is not UTF-8") from None
    if not is_dns_label(name, CERT_NAME_LEN):
        raise CertificateError(f"certificate node name {name!r} is not a DNS label")
    return name


def sign_certificate(
    org_key: Ed25519PrivateKey,
    node_key: bytes,
    name: str,
    issued_at: int,
    expires_at: int = NEVER,
) -> NodeCertificate:
    """Issue a version 1 certificate (the caller validates `name` for a friendly error)."""
    if not is_dns_label(name, CERT_NAME_LEN):
        raise CertificateError(
            f"node name {name!r} is not a DNS label of at most {CERT_NAME_LEN} characters; "
            "use letters, digits and '-'"
        )
    if len(node_key) != 32:
        raise CertificateError("node key must be 32 bytes")
    if expires_at != NEVER and expires_at <= issued_at:
        raise CertificateError("expiry is not after the issue time; pick a later date")
    unsigned = NodeCertificate(
        V1, org_key.public_key.raw, bytes(node_key), name, issued_at, expires_at, 0, bytes(64)
    )
    return NodeCertificate(
        V1,
        unsigned.org_key,
        unsigned.node_key,
        name,
        issued_at,
        expires_at,
        0,
        org_key.sign(unsigned.signed_bytes()),
    )


def parse_expiry(text: str) -> int:
    """An expiry as unix seconds from `YYYY-MM-DD` (UTC midnight), an ISO 8601 datetime
    (UTC unless it has an offset) or a plain number of unix seconds."""
    s = text.strip()
    if s.isdigit():
        value = int(s)
    else:
        try:
            when = datetime.datetime.fromisoformat(s.replace("Z", "+00:00"))
        except ValueError:
            raise CertificateError(
                f"cannot read the date {text!r}; use YYYY-MM-DD, an ISO datetime such as "
                "2030-01-31T12:00:00Z, or unix seconds"
            ) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.UTC)
        value = int(when.timestamp())
    if not 0 < value < 1 << 63:
        raise CertificateError(f"date {text!r} is out of range; pick a date after 1970")
    return value
