"""The `mg://` pairing token of `meshguard connect` (byte layout in docs/pairing.md).

A token is `mg://` followed by the unpadded base64url (RFC 4648 section 5) of its binary form.
The first 106 bytes have the layout of the original Zig meshguard's version-1 token (identity
key, WireGuard key, STUN mapping, mesh IPv4, punch time and window, nonce, STUN server, NAT
type, and a 6-byte BLAKE3 check of the bytes before it). Version 2, meshguard's, adds:

    role(1) expires(8, u64 BE) reply_to(16) count(1) count x endpoint  signature(64)
    endpoint = family(1: 4 or 6) address(4 or 16) port(2, BE)

and an Ed25519 signature by the identity key over SIGN_CONTEXT || every byte before it. An
offer (`connect --generate`) has a zero `reply_to`; a reply (`connect --join`) carries the
first 16 bytes of BLAKE3 over the offer's binary form, so it answers that offer only.

`decode` checks, cheapest first: the scheme, the text length, base64url, the binary length,
the version, the check bytes, the structure, the identity key, the mesh address (which must
be the identity key's own, identity/addressing.py), and only then the signature.
It raises `PairingTokenError` (one line for the CLI) for everything else it is given; expiry
is checked separately by `expiry_problem`, against the caller's wall clock.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import struct
from dataclasses import dataclass

from meshguard.crypto.hashes import blake3, equal
from meshguard.crypto.keys import Ed25519PrivateKey, Ed25519PublicKey
from meshguard.errors import KeyFormatError, MeshguardError
from meshguard.identity.addressing import mesh_ipv4
from meshguard.sansio import Endpoint

SCHEME = "mg://"
VERSION = 2
ORIGINAL_VERSION = 1  # the Zig meshguard's unsigned 106-byte token
ORIGINAL_LEN = 106
CHECK_LEN = 6
SIGNATURE_LEN = 64
REPLY_TO_LEN = 16
NONCE_LEN = 8
MAX_ENDPOINTS = 8
MAX_VALIDITY = 24 * 3600  # a token names an expiry at most this far ahead
MAX_TEXT = 1024  # characters; the largest valid token is far shorter
SIGN_CONTEXT = b"meshguard pairing token v2\x00"

ROLE_OFFER = 0
ROLE_REPLY = 1

# the original's NAT type numbering (byte 99)
NAT_PUBLIC = 0
NAT_CONE = 1
NAT_SYMMETRIC = 2
NAT_UNKNOWN = 3

_PREFIX = struct.Struct(">B32s32s4sH4sQH8s4sHB")  # bytes 0..99, the check follows
_EXT = struct.Struct(">BQ16sB")  # role, expires, reply_to, endpoint count
_MIN_LEN = ORIGINAL_LEN + _EXT.size + SIGNATURE_LEN
_NO_V4 = b"\x00\x00\x00\x00"


class PairingTokenError(MeshguardError):
    """A token is malformed, damaged, forged, expired or not meant for this step."""


@dataclass(frozen=True)
class PairingToken:
    identity_key: bytes
    wg_key: bytes
    reflexive: Endpoint | None  # the STUN mapping, IPv4 only (the original's field)
    mesh_ipv4: str
    punch_time: int  # unix seconds: both sides start probing then
    punch_window: int  # seconds each attempt lasts
    nonce: bytes
    stun_server: Endpoint | None
    nat_type: int  # NAT_* above
    role: int
    expires: int  # unix seconds
    reply_to: bytes  # BLAKE3(offer)[0:16] in a reply, zeros in an offer
    endpoints: tuple[Endpoint, ...]  # other endpoints: local addresses, IPv6
    signature: bytes = b""

    def candidates(self) -> tuple[Endpoint, ...]:
        """Where to probe the token's owner: its local addresses first, then its mapping."""
        out = list(self.endpoints)
        if self.reflexive is not None and self.reflexive not in out:
            out.append(self.reflexive)
        return tuple(out)


def _v4(ep: Endpoint | None) -> tuple[bytes, int]:
    if ep is None:
        return _NO_V4, 0
    return ipaddress.IPv4Address(ep[0]).packed, ep[1]


def _from_v4(raw: bytes, port: int) -> Endpoint | None:
    if raw == _NO_V4 or port == 0:
        return None
    return str(ipaddress.IPv4Address(raw)), port


def _unsigned_bytes(t: PairingToken) -> bytes:
    if len(t.endpoints) > MAX_ENDPOINTS:
        raise PairingTokenError(f"a token carries at most {MAX_ENDPOINTS} endpoints")
    refl, refl_port = _v4(t.reflexive)
    stun, stun_port = _v4(t.stun_server)
    prefix = _PREFIX.pack(VERSION, t.identity_key, t.wg_key, refl, refl_port,
                          ipaddress.IPv4Address(t.mesh_ipv4).packed, t.punch_time,
                          t.punch_window, t.nonce, stun, stun_port, t.nat_type)
    out = bytearray(prefix + blake3(prefix, CHECK_LEN))
    out += _EXT.pack(t.role, t.expires, t.reply_to, len(t.endpoints))
    for host, port in t.endpoints:
        ip = ipaddress.ip_address(host)
        out += bytes([ip.version]) + ip.packed + struct.pack(">H", port)
    return bytes(out)


def sign(t: PairingToken, key: Ed25519PrivateKey) -> bytes:
    """The token's binary form, signed by `key` (which must be the token's identity key)."""
    if key.public_key.raw != t.identity_key:
        raise PairingTokenError("the token's identity key is not the signing key")
    body = _unsigned_bytes(t)
    return body + key.sign(SIGN_CONTEXT + body)


def to_uri(binary: bytes) -> str:
    return SCHEME + base64.urlsafe_b64encode(binary).decode("ascii").rstrip("=")


def offer_digest(binary: bytes) -> bytes:
    """What a reply's `reply_to` holds for the offer with this binary form."""
    return blake3(binary, REPLY_TO_LEN)


def uri_binary(text: str) -> bytes:
    """The binary form of an `mg://` text (no checks of the content)."""
    t = text.strip()
    if not t.startswith(SCHEME):
        raise PairingTokenError("not a pairing token: it must start with mg://")
    if len(t) > MAX_TEXT:
        raise PairingTokenError(f"not a pairing token: longer than {MAX_TEXT} characters")
    body = t[len(SCHEME):]
    if body.endswith("/"):  # some chat clients append one to anything with a scheme
        body = body[:-1]
    if not body or len(body) % 4 == 1 or not body.isascii():
        raise PairingTokenError("the token is truncated or not base64url")
    try:
        return base64.b64decode(body + "=" * (-len(body) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise PairingTokenError("the token is not valid base64url (truncated or "
                                "mistyped?)") from None


def decode(text: str) -> tuple[PairingToken, bytes]:
    """Parse and verify an `mg://` token; returns it and its binary form."""
    binary = uri_binary(text)
    return decode_binary(binary), binary


def decode_binary(data: bytes) -> PairingToken:
    n = len(data)
    if n == 0:
        raise PairingTokenError("the token is empty")
    if data[0] == ORIGINAL_VERSION and n == ORIGINAL_LEN:
        raise PairingTokenError(
            "this token comes from the original Zig meshguard (version 1, unsigned); "
            "meshguard pairs only with signed version 2 tokens, from `meshguard connect`")
    if n < _MIN_LEN:
        raise PairingTokenError(f"the token is truncated ({n} bytes, at least {_MIN_LEN} "
                                "expected)")
    if data[0] != VERSION:
        raise PairingTokenError(f"unknown token version {data[0]} (this meshguard reads "
                                f"version {VERSION})")
    check = data[_PREFIX.size:ORIGINAL_LEN]
    if not equal(check, blake3(data[:_PREFIX.size], CHECK_LEN)):
        raise PairingTokenError("the token is damaged (its check bytes do not match)")
    role, expires, reply_to, count = _EXT.unpack_from(data, ORIGINAL_LEN)
    if role not in (ROLE_OFFER, ROLE_REPLY):
        raise PairingTokenError(f"the token has an unknown role {role}")
    if count > MAX_ENDPOINTS:
        raise PairingTokenError(f"the token lists {count} endpoints (at most "
                                f"{MAX_ENDPOINTS})")
    pos = ORIGINAL_LEN + _EXT.size
    endpoints: list[Endpoint] = []
    for _ in range(count):
        if pos >= n:
            raise PairingTokenError("the token is truncated (in its endpoint list)")
        family = data[pos]
        size = {4: 4, 6: 16}.get(family)
        if size is None:
            raise PairingTokenError(f"the token has an endpoint of unknown family {family}")
        if pos + 1 + size + 2 > n - SIGNATURE_LEN:
            raise PairingTokenError("the token is truncated (in its endpoint list)")
        raw = data[pos + 1:pos + 1 + size]
        (port,) = struct.unpack_from(">H", data, pos + 1 + size)
        ip = ipaddress.ip_address(raw)
        if port == 0 or ip.is_unspecified or ip.is_multicast:
            raise PairingTokenError(f"the token has an unusable endpoint {ip}:{port}")
        endpoints.append((str(ip), port))
        pos += 1 + size + 2
    if pos != n - SIGNATURE_LEN:
        raise PairingTokenError("the token is malformed (its length does not match its "
                                "endpoint list)")
    (_, ident, wg, refl, refl_port, mesh, punch_time, window, nonce, stun, stun_port,
     nat_type) = _PREFIX.unpack_from(data, 0)
    signature = data[pos:]
    try:
        pub = Ed25519PublicKey(ident)
    except KeyFormatError as exc:
        raise PairingTokenError(f"the token carries an unusable identity key ({exc})") from None
    if mesh != mesh_ipv4(ident).packed:  # shown to the user as the peer's address
        raise PairingTokenError("the token's mesh address is not its identity key's")
    if not pub.verify(signature, SIGN_CONTEXT + data[:pos]):
        raise PairingTokenError("the token's signature does not verify (forged or altered)")
    return PairingToken(
        identity_key=ident, wg_key=wg, reflexive=_from_v4(refl, refl_port),
        mesh_ipv4=str(ipaddress.IPv4Address(mesh)), punch_time=punch_time,
        punch_window=window, nonce=nonce, stun_server=_from_v4(stun, stun_port),
        nat_type=nat_type, role=role, expires=expires, reply_to=reply_to,
        endpoints=tuple(endpoints), signature=signature)


def expiry_problem(t: PairingToken, wall: float, skew: float = 120.0) -> str | None:
    """Why the token cannot be used at `wall` (None if it can)."""
    if t.expires <= wall:
        ago = int(wall - t.expires)
        return f"the token expired {ago // 60} min {ago % 60} s ago; ask for a new one"
    if t.expires > wall + MAX_VALIDITY + skew:
        return ("the token claims to be valid for more than 24 hours (a wrong clock on one "
                "side?); ask for a new one")
    if t.punch_time > t.expires or t.punch_window == 0:
        return "the token's punch time is outside its validity; ask for a new one"
    return None
