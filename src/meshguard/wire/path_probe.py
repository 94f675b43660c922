"""Codec for the path probes PathProbe (0x51) and PathProbeAck (0x52); no crypto, no state.

A member sends a PathProbe straight to another member's WireGuard endpoint, padded with zero
bytes to the datagram size it wants to test (DPLPMTUD, RFC 8899; mesh/path_probe.py); the
receiver answers with a small PathProbeAck that echoes the nonce and the size it received.
Both carry the link trailer of the org messages (wire/org.py): the sender's WireGuard public
key and a 16-byte keyed-BLAKE2s MAC under the key the two members share, over everything
before it, so a receiver drops a stranger's probe after a dictionary lookup and a forged one
after one MAC. The header is the gossip header (type, b"MG", version 1, a zero byte), so the
demultiplexer (mesh/demux.py) routes both to the gossip side.

    0x51 PathProbe     header nonce(u64) size(u16) zero-padding  sender_wg(32) mac(16)
    0x52 PathProbeAck  header nonce(u64) size(u16)               sender_wg(32) mac(16)

`size` is the probe's own UDP payload length as sent; in the ack, the length the receiver got.
An ack is ACK_LEN (63) bytes, never more than the probe it answers (at least PROBE_MIN = 63
bytes), so answering cannot amplify. Integers are little-endian.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from meshguard.errors import WireFormatError

PATH_PROBE = 0x51
PATH_PROBE_ACK = 0x52
PATH_PROBE_TYPES = frozenset({PATH_PROBE, PATH_PROBE_ACK})

_HEAD = struct.Struct("<B2sBBQH")
HEAD_LEN = _HEAD.size  # 15
KEY_LEN = 32
MAC_LEN = 16
LINK_LEN = KEY_LEN + MAC_LEN
PROBE_MIN = HEAD_LEN + LINK_LEN  # 63
ACK_LEN = HEAD_LEN + LINK_LEN  # 63
MAX_PROBE = 65507  # the largest UDP payload over IPv4


@dataclass(frozen=True, slots=True)
class ProbeMessage:
    """A decoded PathProbe or PathProbeAck (`kind` is the type byte)."""

    kind: int
    nonce: int
    size: int
    sender_wg: bytes
    mac: bytes


def probe_body(nonce: int, size: int, sender_wg: bytes) -> bytes:
    """A PathProbe of exactly `size` bytes without its MAC (the caller appends it)."""
    if not PROBE_MIN <= size <= MAX_PROBE:
        raise WireFormatError(f"probe size {size} out of range")
    if len(sender_wg) != KEY_LEN:
        raise WireFormatError("sender key must be 32 bytes")
    head = _HEAD.pack(PATH_PROBE, b"MG", 1, 0, nonce & 0xFFFFFFFFFFFFFFFF, min(size, 0xFFFF))
    return head + bytes(size - PROBE_MIN) + sender_wg


def ack_body(nonce: int, size: int, sender_wg: bytes) -> bytes:
    """A PathProbeAck without its MAC."""
    if len(sender_wg) != KEY_LEN:
        raise WireFormatError("sender key must be 32 bytes")
    return _HEAD.pack(PATH_PROBE_ACK, b"MG", 1, 0, nonce & 0xFFFFFFFFFFFFFFFF,
                      min(size, 0xFFFF)) + sender_wg


def decode(data: bytes) -> ProbeMessage:
    """The fields of a probe or ack; the MAC is not checked here. A probe's padding must be
    zero and its size field its length; an ack has exactly ACK_LEN bytes."""
    n = len(data)
    if n < PROBE_MIN or n > MAX_PROBE:
        raise WireFormatError("bad path probe length")
    t, magic, version, zero, nonce, size = _HEAD.unpack_from(data, 0)
    if magic != b"MG" or version != 1 or zero != 0:
        raise WireFormatError("not a path probe")
    if t == PATH_PROBE_ACK:
        if n != ACK_LEN:
            raise WireFormatError("bad path probe ack length")
    elif t == PATH_PROBE:
        if size != min(n, 0xFFFF):
            raise WireFormatError("path probe size does not match its length")
        pad = data[HEAD_LEN : n - LINK_LEN]
        if pad.count(0) != len(pad):
            raise WireFormatError("path probe padding is not zero")
    else:
        raise WireFormatError("not a path probe type")
    return ProbeMessage(t, nonce, size, data[n - LINK_LEN : n - MAC_LEN], data[n - MAC_LEN :])


__all__ = ["ACK_LEN", "HEAD_LEN", "LINK_LEN", "MAC_LEN", "PATH_PROBE", "PATH_PROBE_ACK",
           "PATH_PROBE_TYPES", "PROBE_MIN", "ProbeMessage", "ack_body", "decode", "probe_body"]
