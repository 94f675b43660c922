"""Classify a datagram arriving on the mesh's single UDP port (docs/wire-format.md#the-demux-rule).

Order of checks (cheapest first, no allocation):
1. the first four bytes as a little-endian u32 in 1..4 -> WireGuard (initiation, response,
   cookie reply, transport; WireGuard's three reserved bytes are zero, so the u32 is the type);
2. bytes 4..8 == the STUN magic cookie 0x2112A442 -> STUN (RFC 5389 section 6);
3. otherwise the first byte is a gossip/NAT message type (Ping 0x01, PingReq 0x02, Ack 0x03,
   Join 0x05, JoinAck 0x06, Leave 0x07, SyncReq 0x08, SyncData 0x09, ... as wire/gossip.py
   lists them; RelayData 0x31 (one MACed relay hop, wire/relay.py); HolepunchRequest 0x33 and
   HolepunchResponse 0x34 (a stage byte: 0 through the rendezvous, 1 a direct probe or its
   answer, wire/holepunch.py); OrgAliasAnnounce 0x41, OrgCertRevoke 0x42 and OrgTrustVouch 0x43
   (wire/org.py); PolicyAnnounce 0x44, PolicyChunkRequest 0x45 and PolicyChunk 0x46
   (wire/policy_gossip.py);
   PathProbe 0x51 and PathProbeAck 0x52 (wire/path_probe.py); new types take new numbers);
anything else (empty, unknown type byte) is garbage, which the caller counts and drops.

A gossip Ping starts with 0x01 too; it is told apart from a WireGuard initiation because
WireGuard's bytes 1..3 are zero, which a gossip message never has as its first four bytes
(every gossip packet has the magic b"MG" at bytes 1..2, see wire/gossip.py).
"""

from __future__ import annotations

import enum

from meshguard.wire.gossip import GOSSIP_TYPES as SWIM_TYPES

STUN_MAGIC = b"\x21\x12\xa4\x42"

# NAT and org messages (docs/wire-format.md#message-types): RelayData, HolepunchRequest/Response,
# OrgAliasAnnounce, OrgCertRevoke, OrgTrustVouch, PolicyAnnounce/ChunkRequest/Chunk,
# PathProbe/PathProbeAck
NAT_ORG_TYPES = frozenset({0x31, 0x33, 0x34, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x51, 0x52})
# every SWIM type wire/gossip.py defines (new ones are picked up automatically) plus the above
GOSSIP_TYPES = SWIM_TYPES | NAT_ORG_TYPES


class Kind(enum.Enum):
    WIREGUARD = "wireguard"
    STUN = "stun"
    GOSSIP = "gossip"
    GARBAGE = "garbage"


def classify(data: bytes | bytearray | memoryview, gossip_types: frozenset[int] = GOSSIP_TYPES
             ) -> Kind:
    n = len(data)
    if n == 0:
        return Kind.GARBAGE
    if n >= 4 and 1 <= data[0] <= 4 and data[1] == 0 and data[2] == 0 and data[3] == 0:
        return Kind.WIREGUARD
    if n >= 20 and bytes(data[4:8]) == STUN_MAGIC:
        return Kind.STUN
    if data[0] in gossip_types:
        return Kind.GOSSIP
    return Kind.GARBAGE
