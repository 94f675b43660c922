"""Binary codec for RelayData (0x31, docs/wire-format.md): one hop of a relayed datagram.

    type(0x31) b"MG" version(u8) 0(u8) hop(32) origin(32) target(32) counter(u64)
    payload tag(16) mac(16)

`hop` is the identity of the member that sent this hop, `origin` the member the payload comes
from, `target` the member it is for. `counter` is the origin's message counter: it grows by
one per message the origin sends, and its high 40 bits (counter >> COUNTER_TIME_SHIFT) are the
origin's wall-clock second, at most a few seconds behind (nat/relay.py), so a receiver both
refuses a counter it has seen (replay window) and one too old or too new (clock skew).

`tag` authenticates the origin end to end: keyed BLAKE2s (16 bytes) under the key the origin
shares with the target, over `end_to_end_part` (the relay's identity, origin, target, counter,
payload), so a relay cannot claim another origin, and the target knows which relay the origin
chose. A message the hop sender originates itself (origin == hop) carries 16 zero bytes there.
`mac` (keyed BLAKE2s, 16 bytes) covers everything before it, under the key the hop sender
shares with the hop receiver.

An empty payload addressed to the hop receiver is a registration ("relay for me"); the echo
carries the address the relay saw (19 bytes, the gossip endpoint encoding) and, while that
address is not yet confirmed, a 16-byte cookie, which the registering member sends back
(payload = cookie) from the same address to confirm it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from meshguard.errors import WireFormatError
from meshguard.wire.gossip import MAGIC, VERSION

RELAY_DATA = 0x31
MAC_LEN = 16
TAG_LEN = 16
NO_TAG = b"\x00" * TAG_LEN
COUNTER_TIME_SHIFT = 24  # counter >> 24 = the origin's wall-clock second
_HEAD = struct.Struct("<B2sBB32s32s32sQ")
HEAD_LEN = _HEAD.size  # 109
OVERHEAD = HEAD_LEN + TAG_LEN + MAC_LEN
MAX_PAYLOAD = 65535 - 8 - OVERHEAD
E2E_LABEL = b"meshguard relay origin v2\x00"


@dataclass(frozen=True)
class RelayMessage:
    hop: bytes
    origin: bytes
    target: bytes
    payload: bytes
    counter: int = 0
    tag: bytes = NO_TAG
    mac: bytes = b""


def _check(m: RelayMessage) -> None:
    if len(m.hop) != 32 or len(m.origin) != 32 or len(m.target) != 32:
        raise WireFormatError("relay keys must be 32 bytes")
    if len(m.payload) > MAX_PAYLOAD:
        raise WireFormatError("relay payload too large")
    if not 0 <= m.counter < 2**64:
        raise WireFormatError("relay counter out of range")


def end_to_end_part(relay: bytes, m: RelayMessage) -> bytes:
    """The bytes the origin's tag covers (the relay is the member the origin sends it to)."""
    _check(m)
    return b"".join((E2E_LABEL, relay, m.origin, m.target, m.counter.to_bytes(8, "little"),
                     m.payload))


def authenticated_part(m: RelayMessage) -> bytes:
    """Everything the hop MAC covers."""
    _check(m)
    if len(m.tag) != TAG_LEN:
        raise WireFormatError("relay tag must be 16 bytes")
    head = _HEAD.pack(RELAY_DATA, MAGIC, VERSION, 0, m.hop, m.origin, m.target, m.counter)
    return head + m.payload + m.tag


def decode(data: bytes) -> RelayMessage:
    if len(data) < OVERHEAD:
        raise WireFormatError("short RelayData")
    t, magic, ver, zero, hop, origin, target, counter = _HEAD.unpack_from(data)
    if t != RELAY_DATA or magic != MAGIC or ver != VERSION or zero != 0:
        raise WireFormatError("bad RelayData header")
    end = len(data) - MAC_LEN
    return RelayMessage(hop, origin, target, bytes(data[HEAD_LEN:end - TAG_LEN]), counter,
                        bytes(data[end - TAG_LEN:end]), bytes(data[end:]))
