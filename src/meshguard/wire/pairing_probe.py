"""Binary codec of the probes `meshguard connect` punches with (no state; docs/pairing.md).

The first 16 bytes are the original Zig meshguard's coordinated-punch probe: the magic "MGCP",
the sender's token nonce and the first 4 bytes of BLAKE3 over the sender's identity key.
meshguard's probe goes on:

    0  4  magic "MGCP"
    4  8  sender's token nonce
    12 4  BLAKE3(sender identity key)[0:4]
    16 1  flags: 0x01 answer (echoes a probe, draws none), 0x02 the sender has proven a path
    17 8  challenge: fresh in every probe (zero in an answer)
    25 8  echo: the challenge this answers (zero in a probe)
    33 16 MAC: keyed BLAKE2s-128 over bytes 0..32 (key from nat/pairing_punch.py)

49 bytes in all; an answer is the same size as the probe it answers.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from meshguard.errors import WireFormatError

MAGIC = b"MGCP"
PROBE_LEN = 49
MAC_LEN = 16
BODY_LEN = PROBE_LEN - MAC_LEN
FLAG_ANSWER = 0x01
FLAG_PROVEN = 0x02
_KNOWN_FLAGS = FLAG_ANSWER | FLAG_PROVEN

_BODY = struct.Struct(">4s8s4sB8s8s")


@dataclass(frozen=True, slots=True)
class PairingProbe:
    nonce: bytes
    sender_tag: bytes
    flags: int
    challenge: bytes
    echo: bytes
    mac: bytes = b""

    @property
    def answer(self) -> bool:
        return bool(self.flags & FLAG_ANSWER)

    @property
    def proven(self) -> bool:
        return bool(self.flags & FLAG_PROVEN)


def is_pairing_probe(data: bytes) -> bool:
    return len(data) == PROBE_LEN and data[:4] == MAGIC


def encode_body(p: PairingProbe) -> bytes:
    """Bytes 0..32, which the MAC covers."""
    return _BODY.pack(MAGIC, p.nonce, p.sender_tag, p.flags, p.challenge, p.echo)


def decode(data: bytes) -> PairingProbe:
    if not is_pairing_probe(data):
        raise WireFormatError("not a pairing probe")
    _, nonce, tag, flags, challenge, echo = _BODY.unpack_from(data, 0)
    if flags & ~_KNOWN_FLAGS:
        raise WireFormatError(f"pairing probe with unknown flags {flags:#x}")
    return PairingProbe(nonce, tag, flags, challenge, echo, data[BODY_LEN:])
