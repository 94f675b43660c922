"""WireGuard message codecs (paper section 5.4): no state, no cryptography.

Layouts (little-endian integers; `reserved` is three zero bytes, so the first four bytes read
as a little-endian u32 equal the message type):

    initiation (148): type(1) reserved(3) sender(4) ephemeral(32) static(32+16)
                      timestamp(12+16) mac1(16) mac2(16)
    response    (92): type(1) reserved(3) sender(4) receiver(4) ephemeral(32) empty(0+16)
                      mac1(16) mac2(16)
    cookie reply(64): type(1) reserved(3) receiver(4) nonce(24) cookie(16+16)
    transport (16+n): type(1) reserved(3) receiver(4) counter(8) packet(n), n >= 16

`parse` dispatches on (type, length) and raises WireFormatError for anything else.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from meshguard.errors import WireFormatError

MESSAGE_INITIATION = 1
MESSAGE_RESPONSE = 2
MESSAGE_COOKIE_REPLY = 3
MESSAGE_TRANSPORT = 4

KEY_LEN = 32
TAG_LEN = 16
MAC_LEN = 16
TIMESTAMP_LEN = 12
COOKIE_LEN = 16
COOKIE_NONCE_LEN = 24

INITIATION_SIZE = 148
RESPONSE_SIZE = 92
COOKIE_REPLY_SIZE = 64
TRANSPORT_HEADER_SIZE = 16
TRANSPORT_MIN_SIZE = TRANSPORT_HEADER_SIZE + TAG_LEN  # a keepalive
ENCRYPTED_STATIC_LEN = KEY_LEN + TAG_LEN
ENCRYPTED_TIMESTAMP_LEN = TIMESTAMP_LEN + TAG_LEN
ENCRYPTED_EMPTY_LEN = TAG_LEN
ENCRYPTED_COOKIE_LEN = COOKIE_LEN + TAG_LEN
# Transport payloads are zero-padded to a multiple of this (paper 5.4.6).
PADDING_MULTIPLE = 16

# Offsets of mac1 and mac2 in the two handshake messages (mac1 covers bytes [0:MAC1_OFFSET],
# mac2 covers [0:MAC2_OFFSET]).
INITIATION_MAC1_OFFSET = INITIATION_SIZE - 2 * MAC_LEN  # 116
INITIATION_MAC2_OFFSET = INITIATION_SIZE - MAC_LEN  # 132
RESPONSE_MAC1_OFFSET = RESPONSE_SIZE - 2 * MAC_LEN  # 60
RESPONSE_MAC2_OFFSET = RESPONSE_SIZE - MAC_LEN  # 76

TRANSPORT_RECEIVER_OFFSET = 4
TRANSPORT_COUNTER_OFFSET = 8

_HEADER = struct.Struct("<I")
_INITIATION = struct.Struct("<II32s48s28s16s16s")
_RESPONSE = struct.Struct("<III32s16s16s16s")
_COOKIE_REPLY = struct.Struct("<II24s32s")
_TRANSPORT_HEADER = struct.Struct("<IIQ")

assert _INITIATION.size == INITIATION_SIZE
assert _RESPONSE.size == RESPONSE_SIZE
assert _COOKIE_REPLY.size == COOKIE_REPLY_SIZE
assert _TRANSPORT_HEADER.size == TRANSPORT_HEADER_SIZE


def _check(name: str, value: bytes, size: int) -> None:
    if len(value) != size:
        raise WireFormatError(f"{name} must be {size} bytes, got {len(value)}")


@dataclass(frozen=True, slots=True)
class Initiation:
    sender: int
    ephemeral: bytes
    encrypted_static: bytes
    encrypted_timestamp: bytes
    mac1: bytes = bytes(MAC_LEN)
    mac2: bytes = bytes(MAC_LEN)

    def encode(self) -> bytes:
        _check("ephemeral", self.ephemeral, KEY_LEN)
        _check("encrypted static", self.encrypted_static, ENCRYPTED_STATIC_LEN)
        _check("encrypted timestamp", self.encrypted_timestamp, ENCRYPTED_TIMESTAMP_LEN)
        _check("mac1", self.mac1, MAC_LEN)
        _check("mac2", self.mac2, MAC_LEN)
        return _INITIATION.pack(
            MESSAGE_INITIATION,
            self.sender,
            self.ephemeral,
            self.encrypted_static,
            self.encrypted_timestamp,
            self.mac1,
            self.mac2,
        )

    @classmethod
    def decode(cls, data: bytes) -> Initiation:
        if len(data) != INITIATION_SIZE:
            raise WireFormatError("initiation must be 148 bytes")
        t, sender, eph, st, ts, m1, m2 = _INITIATION.unpack(data)
        if t != MESSAGE_INITIATION:
            raise WireFormatError("not an initiation")
        return cls(sender, eph, st, ts, m1, m2)


@dataclass(frozen=True, slots=True)
class Response:
    sender: int
    receiver: int
    ephemeral: bytes
    encrypted_empty: bytes
    mac1: bytes = bytes(MAC_LEN)
    mac2: bytes = bytes(MAC_LEN)

    def encode(self) -> bytes:
        _check("ephemeral", self.ephemeral, KEY_LEN)
        _check("encrypted empty", self.encrypted_empty, ENCRYPTED_EMPTY_LEN)
        _check("mac1", self.mac1, MAC_LEN)
        _check("mac2", self.mac2, MAC_LEN)
        return _RESPONSE.pack(
            MESSAGE_RESPONSE,
            self.sender,
            self.receiver,
            self.ephemeral,
            self.encrypted_empty,
            self.mac1,
            self.mac2,
        )

    @classmethod
    def decode(cls, data: bytes) -> Response:
        if len(data) != RESPONSE_SIZE:
            raise WireFormatError("response must be 92 bytes")
        t, sender, receiver, eph, empty, m1, m2 = _RESPONSE.unpack(data)
        if t != MESSAGE_RESPONSE:
            raise WireFormatError("not a response")
        return cls(sender, receiver, eph, empty, m1, m2)


@dataclass(frozen=True, slots=True)
class CookieReply:
    receiver: int
    nonce: bytes
    encrypted_cookie: bytes

    def encode(self) -> bytes:
        _check("nonce", self.nonce, COOKIE_NONCE_LEN)
        _check("encrypted cookie", self.encrypted_cookie, ENCRYPTED_COOKIE_LEN)
        return _COOKIE_REPLY.pack(
            MESSAGE_COOKIE_REPLY, self.receiver, self.nonce, self.encrypted_cookie
        )

    @classmethod
    def decode(cls, data: bytes) -> CookieReply:
        if len(data) != COOKIE_REPLY_SIZE:
            raise WireFormatError("cookie reply must be 64 bytes")
        t, receiver, nonce, cookie = _COOKIE_REPLY.unpack(data)
        if t != MESSAGE_COOKIE_REPLY:
            raise WireFormatError("not a cookie reply")
        return cls(receiver, nonce, cookie)


@dataclass(frozen=True, slots=True)
class Transport:
    receiver: int
    counter: int
    encrypted_packet: bytes

    def encode(self) -> bytes:
        if len(self.encrypted_packet) < TAG_LEN:
            raise WireFormatError("transport ciphertext shorter than its tag")
        return _TRANSPORT_HEADER.pack(MESSAGE_TRANSPORT, self.receiver, self.counter) + bytes(
            self.encrypted_packet
        )

    @classmethod
    def decode(cls, data: bytes) -> Transport:
        if len(data) < TRANSPORT_MIN_SIZE:
            raise WireFormatError("transport message too short")
        t, receiver, counter = _TRANSPORT_HEADER.unpack_from(data)
        if t != MESSAGE_TRANSPORT:
            raise WireFormatError("not a transport message")
        return cls(receiver, counter, bytes(data[TRANSPORT_HEADER_SIZE:]))


Message = Initiation | Response | CookieReply | Transport

_FIXED: dict[int, tuple[int, type[Initiation] | type[Response] | type[CookieReply]]] = {
    MESSAGE_INITIATION: (INITIATION_SIZE, Initiation),
    MESSAGE_RESPONSE: (RESPONSE_SIZE, Response),
    MESSAGE_COOKIE_REPLY: (COOKIE_REPLY_SIZE, CookieReply),
}


def message_type(data: bytes) -> int:
    """The message type (first four bytes as a little-endian u32); 0 when too short."""
    if len(data) < 4:
        return 0
    return int(_HEADER.unpack_from(data)[0])


def is_wireguard(data: bytes) -> bool:
    """Demux rule (docs/wire-format.md): a little-endian u32 of 1..4 in the first four bytes."""
    return 1 <= message_type(data) <= 4


def parse(data: bytes) -> Message:
    """Decode any WireGuard message; WireFormatError for a bad type or length."""
    t = message_type(data)
    if t == MESSAGE_TRANSPORT:
        return Transport.decode(data)
    fixed = _FIXED.get(t)
    if fixed is None:
        raise WireFormatError(f"unknown WireGuard message type {t}")
    size, cls = fixed
    if len(data) != size:
        raise WireFormatError(f"WireGuard message type {t} must be {size} bytes, got {len(data)}")
    return cls.decode(data)


def transport_header(receiver: int, counter: int) -> bytes:
    """The 16-byte transport header (for data planes that assemble messages themselves)."""
    return _TRANSPORT_HEADER.pack(MESSAGE_TRANSPORT, receiver, counter)


def unpack_transport_header(data: bytes) -> tuple[int, int]:
    """(receiver index, counter) of a transport message known to be at least 16 bytes."""
    _, receiver, counter = _TRANSPORT_HEADER.unpack_from(data)
    return int(receiver), int(counter)


def padded_length(n: int) -> int:
    """Length of an n-byte plaintext after zero-padding to a multiple of 16."""
    return (n + PADDING_MULTIPLE - 1) & ~(PADDING_MULTIPLE - 1)
