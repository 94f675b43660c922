"""Binary codec for the hole-punching messages (no state, no crypto).

Both types keep the original's numbers (docs/wire-format.md) and the gossip header (type, b"MG",
version, 0), so the demultiplexer sends them to the mesh layer:

    0x33 HolepunchRequest   stage 0: "please punch with me"  (origin -> rendezvous -> target)
                            stage 1: punch probe            (origin -> target, direct)
    0x34 HolepunchResponse  stage 0: "yes, punching now"    (origin -> rendezvous -> origin)
                            stage 1: probe answer           (origin -> target, direct)

body: stage(u8) origin(32) target(32) session(u64) nonce(u64) wall_ms(u64) n_endpoints(u8)
      endpoints(n x 19, the gossip endpoint encoding) signature(64)

The signature is the origin's Ed25519 identity signature over SIGN_CONTEXT + everything before
it, so a rendezvous forwards the bytes unchanged and the target checks them end to end.
`nonce` is fresh in every probe and echoed by its answer (stage 1); it is 0 in stage 0.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from meshguard.errors import WireFormatError
from meshguard.sansio import Endpoint
from meshguard.wire.gossip import EP_LEN, MAGIC, VERSION, decode_endpoint, encode_endpoint

HOLEPUNCH_REQUEST = 0x33
HOLEPUNCH_RESPONSE = 0x34
HOLEPUNCH_TYPES = frozenset({HOLEPUNCH_REQUEST, HOLEPUNCH_RESPONSE})
STAGE_RENDEZVOUS = 0
STAGE_PROBE = 1
MAX_ENDPOINTS = 4
SIG_LEN = 64
SIGN_CONTEXT = b"meshguard holepunch v2\x00"

_HEAD = struct.Struct("<B2sBBB32s32sQQQB")
HEAD_LEN = _HEAD.size  # 95
MIN_LEN = HEAD_LEN + SIG_LEN
MAX_LEN = HEAD_LEN + MAX_ENDPOINTS * EP_LEN + SIG_LEN


@dataclass(frozen=True)
class PunchMessage:
    type: int
    stage: int
    origin: bytes
    target: bytes
    session: int
    wall_ms: int
    endpoints: tuple[Endpoint, ...] = ()
    signature: bytes = b""
    nonce: int = 0


def signed_part(m: PunchMessage) -> bytes:
    """The bytes the signature covers, without the context prefix."""
    if m.type not in HOLEPUNCH_TYPES:
        raise WireFormatError(f"not a hole-punch type: {m.type:#x}")
    if m.stage not in (STAGE_RENDEZVOUS, STAGE_PROBE):
        raise WireFormatError("bad stage")
    if len(m.origin) != 32 or len(m.target) != 32:
        raise WireFormatError("keys must be 32 bytes")
    if len(m.endpoints) > MAX_ENDPOINTS:
        raise WireFormatError("too many endpoints")
    if not (0 <= m.session < 2**64 and 0 <= m.wall_ms < 2**64 and 0 <= m.nonce < 2**64):
        raise WireFormatError("session, nonce or time out of range")
    head = _HEAD.pack(m.type, MAGIC, VERSION, 0, m.stage, m.origin, m.target, m.session,
                      m.nonce, m.wall_ms, len(m.endpoints))
    return head + b"".join(encode_endpoint(e) for e in m.endpoints)


def encode(m: PunchMessage) -> bytes:
    if len(m.signature) != SIG_LEN:
        raise WireFormatError("signature must be 64 bytes")
    return signed_part(m) + m.signature


def decode(data: bytes) -> PunchMessage:
    """Parse (no signature check); WireFormatError on anything malformed."""
    if not MIN_LEN <= len(data) <= MAX_LEN:
        raise WireFormatError("bad hole-punch message length")
    t, magic, ver, zero, stage, origin, target, session, nonce, wall_ms, n = \
        _HEAD.unpack_from(data)
    if t not in HOLEPUNCH_TYPES or magic != MAGIC or ver != VERSION or zero != 0:
        raise WireFormatError("bad hole-punch header")
    if stage not in (STAGE_RENDEZVOUS, STAGE_PROBE) or n > MAX_ENDPOINTS:
        raise WireFormatError("bad hole-punch stage or endpoint count")
    if len(data) != HEAD_LEN + n * EP_LEN + SIG_LEN:
        raise WireFormatError("hole-punch length does not match its endpoint count")
    eps = tuple(decode_endpoint(data[HEAD_LEN + i * EP_LEN:HEAD_LEN + (i + 1) * EP_LEN])
                for i in range(n))
    return PunchMessage(t, stage, origin, target, session, wall_ms, eps, data[-SIG_LEN:], nonce)
