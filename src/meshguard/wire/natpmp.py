"""NAT-PMP (RFC 6886) codec: the external address request and the UDP mapping request.

Requests (section 3.2 and 3.3), network byte order:

    external address: version u8 (0) | opcode u8 (0)                                2 bytes
    map UDP:          version u8 (0) | opcode u8 (1) | reserved u16 | internal port u16 |
                      suggested external port u16 | lifetime u32                    12 bytes

Responses (opcode + 128): version u8 (0) | opcode u8 | result code u16 | seconds since
epoch u32, then either the external IPv4 address (4 bytes, 12 in all) or internal port u16 |
mapped external port u16 | lifetime u32 (16 in all).

Decoding is strict: wrong version, a request opcode, an unknown opcode or a length other than
the opcode's raise WireFormatError; an 8-byte answer (header and epoch only) is accepted
as a refusal. A PCP server's answer to a NAT-PMP request has version 2 and
is rejected here (the client asked NAT-PMP, so it is not a NAT-PMP answer).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from meshguard.errors import WireFormatError

VERSION = 0
OP_EXTERNAL = 0
OP_MAP_UDP = 1
RESPONSE = 128
ERROR_LEN = 8

SUCCESS = 0
RESULTS = {0: "success", 1: "unsupported version", 2: "not authorized or refused",
           3: "network failure", 4: "out of resources", 5: "unsupported opcode"}

_MAP_REQ = struct.Struct("!BBHHHI")
_EXT_RESP = struct.Struct("!BBHI4s")
_MAP_RESP = struct.Struct("!BBHIHHI")


@dataclass(frozen=True, slots=True)
class ExternalResponse:
    result: int
    epoch: int
    external_ip: str


@dataclass(frozen=True, slots=True)
class MapResponse:
    result: int
    epoch: int
    internal_port: int
    external_port: int
    lifetime: int


def encode_external_request() -> bytes:
    return bytes((VERSION, OP_EXTERNAL))


def encode_map_request(internal_port: int, lifetime: int, suggested_port: int = 0) -> bytes:
    """Map UDP `internal_port`; lifetime 0 with suggested port 0 deletes the mapping."""
    return _MAP_REQ.pack(VERSION, OP_MAP_UDP, 0, internal_port, suggested_port, lifetime)


def decode_response(data: bytes) -> ExternalResponse | MapResponse:
    n = len(data)
    if n < 2:
        raise WireFormatError(f"NAT-PMP: {n}-byte message")
    if data[0] != VERSION:
        raise WireFormatError(f"NAT-PMP: version {data[0]}")
    op = data[1]
    if n == ERROR_LEN and op in (RESPONSE | OP_EXTERNAL, RESPONSE | OP_MAP_UDP):
        # a refusal may carry only the result and the epoch (libnatpmp reads such answers)
        result, epoch = struct.unpack_from("!HI", data, 2)
        if result == SUCCESS:
            raise WireFormatError("NAT-PMP: 8-byte success response")
        if op == RESPONSE | OP_EXTERNAL:
            return ExternalResponse(result, epoch, "0.0.0.0")
        return MapResponse(result, epoch, 0, 0, 0)
    if op == RESPONSE | OP_EXTERNAL:
        if n != _EXT_RESP.size:
            raise WireFormatError(f"NAT-PMP: {n}-byte external address response")
        _, _, result, epoch, ip = _EXT_RESP.unpack(data)
        return ExternalResponse(result, epoch, str(ipaddress.IPv4Address(ip)))
    if op == RESPONSE | OP_MAP_UDP:
        if n != _MAP_RESP.size:
            raise WireFormatError(f"NAT-PMP: {n}-byte mapping response")
        _, _, result, epoch, iport, eport, lifetime = _MAP_RESP.unpack(data)
        return MapResponse(result, epoch, iport, eport, lifetime)
    raise WireFormatError(f"NAT-PMP: opcode {op}")
