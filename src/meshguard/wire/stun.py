"""STUN Binding request/response codec (RFC 5389), enough for public-endpoint discovery.

Message header (section 6), 20 bytes, network byte order: type u16 (top two bits zero),
length u16 (of the attributes, a multiple of 4), magic cookie 0x2112A442, transaction id 96 bits.
Attributes (section 15): type u16, length u16, value padded to 4 bytes. We read
XOR-MAPPED-ADDRESS (0x0020, section 15.2) and fall back to MAPPED-ADDRESS (0x0001, 15.1) for old
servers; everything else is skipped.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from meshguard.errors import WireFormatError

HEADER_LEN = 20
MAGIC_COOKIE = 0x2112A442
MAGIC_BYTES = MAGIC_COOKIE.to_bytes(4, "big")
TXID_LEN = 12

BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101
BINDING_ERROR = 0x0111

ATTR_MAPPED_ADDRESS = 0x0001
ATTR_XOR_MAPPED_ADDRESS = 0x0020
ATTR_SOFTWARE = 0x8022
ATTR_ERROR_CODE = 0x0009

FAMILY_IPV4 = 0x01
FAMILY_IPV6 = 0x02


@dataclass(frozen=True)
class StunMessage:
    msg_type: int
    transaction_id: bytes
    mapped: tuple[str, int] | None = None  # from XOR-MAPPED-ADDRESS, else MAPPED-ADDRESS
    error_code: int | None = None


def is_stun(data: bytes) -> bool:
    return len(data) >= HEADER_LEN and data[0] & 0xC0 == 0 and data[4:8] == MAGIC_BYTES


def encode_binding_request(transaction_id: bytes) -> bytes:
    if len(transaction_id) != TXID_LEN:
        raise ValueError("STUN transaction id must be 12 bytes")
    return struct.pack("!HHI", BINDING_REQUEST, 0, MAGIC_COOKIE) + transaction_id


def _xor_address(family: int, port: int, addr: bytes, txid: bytes) -> bytes:
    xport = port ^ (MAGIC_COOKIE >> 16)
    mask = MAGIC_BYTES + (txid if family == FAMILY_IPV6 else b"")
    xaddr = bytes(a ^ b for a, b in zip(addr, mask, strict=False))
    return struct.pack("!BBH", 0, family, xport) + xaddr


def _attr(atype: int, value: bytes) -> bytes:
    pad = (-len(value)) % 4
    return struct.pack("!HH", atype, len(value)) + value + b"\x00" * pad


def encode_binding_success(transaction_id: bytes, mapped: tuple[str, int]) -> bytes:
    """A Binding success response carrying XOR-MAPPED-ADDRESS (used by tests and responders)."""
    ip = ipaddress.ip_address(mapped[0])
    family = FAMILY_IPV4 if ip.version == 4 else FAMILY_IPV6
    body = _attr(ATTR_XOR_MAPPED_ADDRESS,
                 _xor_address(family, mapped[1], ip.packed, transaction_id))
    return struct.pack("!HHI", BINDING_SUCCESS, len(body), MAGIC_COOKIE) + transaction_id + body


def _parse_address(value: bytes, xor: bool, txid: bytes) -> tuple[str, int]:
    if len(value) < 4:
        raise WireFormatError("STUN address attribute too short")
    family = value[1]
    port = struct.unpack_from("!H", value, 2)[0]
    if family == FAMILY_IPV4:
        raw, size = value[4:8], 4
    elif family == FAMILY_IPV6:
        raw, size = value[4:20], 16
    else:
        raise WireFormatError(f"unknown STUN address family {family}")
    if len(raw) != size:
        raise WireFormatError("STUN address attribute truncated")
    if xor:
        port ^= MAGIC_COOKIE >> 16
        mask = MAGIC_BYTES + (txid if family == FAMILY_IPV6 else b"")
        raw = bytes(a ^ b for a, b in zip(raw, mask, strict=False))
    return str(ipaddress.ip_address(raw)), port


def decode(data: bytes) -> StunMessage:
    if len(data) < HEADER_LEN:
        raise WireFormatError("STUN message shorter than its header")
    msg_type, length, cookie = struct.unpack_from("!HHI", data, 0)
    if msg_type & 0xC000 or cookie != MAGIC_COOKIE:
        raise WireFormatError("not a STUN message")
    if length % 4 or HEADER_LEN + length != len(data):
        raise WireFormatError("STUN length field does not match the datagram")
    txid = bytes(data[8:20])
    xor_mapped: tuple[str, int] | None = None
    mapped: tuple[str, int] | None = None
    error_code: int | None = None
    off = HEADER_LEN
    while off < len(data):
        if off + 4 > len(data):
            raise WireFormatError("STUN attribute header truncated")
        atype, alen = struct.unpack_from("!HH", data, off)
        value = data[off + 4: off + 4 + alen]
        if len(value) != alen:
            raise WireFormatError("STUN attribute truncated")
        if atype == ATTR_XOR_MAPPED_ADDRESS and xor_mapped is None:
            xor_mapped = _parse_address(value, True, txid)
        elif atype == ATTR_MAPPED_ADDRESS and mapped is None:
            mapped = _parse_address(value, False, txid)
        elif atype == ATTR_ERROR_CODE and alen >= 4:
            error_code = (value[2] & 0x07) * 100 + value[3]
        off += 4 + alen + ((-alen) % 4)
    return StunMessage(msg_type, txid, xor_mapped or mapped, error_code)
