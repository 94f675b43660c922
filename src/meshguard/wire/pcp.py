"""PCP (RFC 6887) MAP request/response codec, IPv4 over UDP only: what a node needs to ask its
home router for a port mapping.

Common header (section 7.1/7.2), network byte order:

    request:  version u8 (2) | R=0 + opcode u8 | reserved u16 | lifetime u32 |
              client IP (16 bytes, IPv4-mapped IPv6)                              24 bytes
    response: version u8 (2) | R=1 + opcode u8 | reserved u8 | result code u8 |
              lifetime u32 | epoch time u32 | reserved (12 bytes)                 24 bytes

MAP payload (section 11.1), after the header, 36 bytes: nonce (12) | protocol u8 |
reserved (3) | internal port u16 | (suggested / assigned) external port u16 | (suggested /
assigned) external IP (16, IPv4-mapped). Options may follow in a response; they are skipped.
A PCP message is at most 1100 bytes and a multiple of 4 long (section 7).

`decode_map_response` is strict: wrong version, a request bit, another opcode, a short or
oversized or misaligned message raise WireFormatError; a NAT-PMP-only server's reply to a PCP
request (version 0, "unsupported version") is reported as `UnsupportedVersion`.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from meshguard.errors import WireFormatError

VERSION = 2
OPCODE_MAP = 1
RESPONSE_BIT = 0x80
PROTO_UDP = 17
NONCE_LEN = 12
HEADER_LEN = 24
MAP_LEN = 36
MAX_LEN = 1100

# result codes (section 7.4)
SUCCESS = 0
UNSUPP_VERSION = 1
NOT_AUTHORIZED = 2
MALFORMED_REQUEST = 3
UNSUPP_OPCODE = 4
NETWORK_FAILURE = 7
NO_RESOURCES = 8
UNSUPP_PROTOCOL = 9
USER_EX_QUOTA = 10
CANNOT_PROVIDE_EXTERNAL = 11
ADDRESS_MISMATCH = 12
RESULTS = {
    0: "success", 1: "unsupported version", 2: "not authorized", 3: "malformed request",
    4: "unsupported opcode", 5: "unsupported option", 6: "malformed option",
    7: "network failure", 8: "no resources", 9: "unsupported protocol",
    10: "user exceeded quota", 11: "cannot provide external", 12: "address mismatch",
    13: "excessive remote peers",
}

_HDR_REQ = struct.Struct("!BBHI16s")
_HDR_RESP = struct.Struct("!BBBBII12x")
_MAP = struct.Struct("!12sB3xHH16s")


@dataclass(frozen=True, slots=True)
class MapResponse:
    result: int
    lifetime: int
    epoch: int
    nonce: bytes
    protocol: int
    internal_port: int
    external_port: int
    external_ip: str  # dotted quad ("0.0.0.0" in most error responses)


@dataclass(frozen=True, slots=True)
class UnsupportedVersion:
    """The server answered with another version (a NAT-PMP-only server answers version 0)."""

    version: int


def _mapped(ip: str) -> bytes:
    return ipaddress.IPv6Address(f"::ffff:{ipaddress.IPv4Address(ip)}").packed


def encode_map_request(nonce: bytes, client_ip: str, internal_port: int, lifetime: int,
                       suggested_port: int = 0, suggested_ip: str = "0.0.0.0") -> bytes:
    """A MAP request for UDP `internal_port` (lifetime 0 deletes the mapping)."""
    if len(nonce) != NONCE_LEN:
        raise ValueError("PCP nonce must be 12 bytes")
    return (_HDR_REQ.pack(VERSION, OPCODE_MAP, 0, lifetime, _mapped(client_ip))
            + _MAP.pack(nonce, PROTO_UDP, internal_port, suggested_port, _mapped(suggested_ip)))


def decode_map_response(data: bytes) -> MapResponse | UnsupportedVersion:
    n = len(data)
    if n < 4:
        raise WireFormatError(f"PCP: {n}-byte message")
    if data[0] != VERSION:
        # RFC 6887 section 9: an older server answers with its own version and result 1
        if data[0] == 0 and n >= 4 and data[1] & RESPONSE_BIT and data[3] == UNSUPP_VERSION:
            return UnsupportedVersion(0)
        raise WireFormatError(f"PCP: version {data[0]}")
    if n < HEADER_LEN + MAP_LEN or n > MAX_LEN or n % 4:
        raise WireFormatError(f"PCP: {n}-byte response")
    _, op, _, result, lifetime, epoch = _HDR_RESP.unpack_from(data)
    if op != RESPONSE_BIT | OPCODE_MAP:
        raise WireFormatError(f"PCP: opcode byte {op:#x} is not a MAP response")
    nonce, proto, iport, eport, eip = _MAP.unpack_from(data, HEADER_LEN)
    addr = ipaddress.IPv6Address(eip)
    v4 = addr.ipv4_mapped
    if v4 is None:
        if addr != ipaddress.IPv6Address("::") or result == SUCCESS:
            raise WireFormatError("PCP: assigned address is not IPv4")
        v4 = ipaddress.IPv4Address(0)
    return MapResponse(result, lifetime, epoch, nonce, proto, iport, eport, str(v4))
