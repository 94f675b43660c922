"""Binary codec for RelayData (0x31, SPEC-NOTES section 4): one hop of a relayed datagram.

    type(0x31) b"MG" version(u8) 0(u8) hop(32) origin(32) target(32) payload mac(16)

`hop` is the identity of the member that sent this hop, `origin` the member the payload comes
from, `target` the member it is for. The MAC (keyed BLAKE2s, 16 bytes) covers everything before
it, under the key the hop sender shares with the hop receiver (nat/relay.py). An empty payload
addressed to the hop receiver is a registration ("relay for me, this is my address"), and its
echo is the answer, which measures the round-trip time.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from meshguard.errors import WireFormatError
from meshguard.wire.gossip import MAGIC, VERSION

RELAY_DATA = 0x31
MAC_LEN = 16
_HEAD = struct.Struct("<B2sBB32s32s32s")
HEAD_LEN = _HEAD.size  # 101
OVERHEAD = HEAD_LEN + MAC_LEN
MAX_PAYLOAD = 65535 - 8 - OVERHEAD


@dataclass(frozen=True)
class RelayMessage:
    hop: bytes
    origin: bytes
    target: bytes
    payload: bytes
    mac: bytes = b""


def authenticated_part(m: RelayMessage) -> bytes:
    if len(m.hop) != 32 or len(m.origin) != 32 or len(m.target) != 32:
        raise WireFormatError("relay keys must be 32 bytes")
    if len(m.payload) > MAX_PAYLOAD:
        raise WireFormatError("relay payload too large")
    return _HEAD.pack(RELAY_DATA, MAGIC, VERSION, 0, m.hop, m.origin, m.target) + m.payload


def decode(data: bytes) -> RelayMessage:
    if len(data) < OVERHEAD:
        raise WireFormatError("short RelayData")
    t, magic, ver, zero, hop, origin, target = _HEAD.unpack_from(data)
    if t != RELAY_DATA or magic != MAGIC or ver != VERSION or zero != 0:
        raise WireFormatError("bad RelayData header")
    return RelayMessage(hop, origin, target, bytes(data[HEAD_LEN:-MAC_LEN]),
                        bytes(data[-MAC_LEN:]))
