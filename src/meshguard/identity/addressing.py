"""Deterministic mesh addresses and org domains (docs/compatibility.md#mesh-addresses-and-names).

    h = BLAKE3-256(ed25519_public_key)
    IPv4 = 10.99.h[0].h[1], with x = 0 -> 1, y = 0 -> 1, y = 255 -> 254     (prefix /16)
    IPv6 = fd99:6d67::/64 with interface identifier h[0:8] (all zero -> last byte 1)
    org domain = hex(BLAKE3-256(org_public_key)[0:3])

The IPv4 space has only 255 * 254 addresses, so two members can share one (and anyone can
grind a key onto a chosen address). A mesh address therefore never authenticates anything;
peers are keyed by public key. `assign_ipv4` resolves collisions with one rule that every node
computes the same way from the same member set:

1. Every member's *natural* address is the one above.
2. Among members with the same natural address, the one whose public key sorts lowest
   (bytewise) keeps it.
3. Each other member, taken in ascending order of public key, gets the first address of its
   probe sequence `probe(key, i)` for i = 1, 2, ... that is neither any member's natural
   address nor already assigned. probe(key, i) applies the IPv4 rule to
   BLAKE3(b"meshguard ipv4 probe" || key || u32le(i)).
4. A member whose first MAX_PROBES probes are all taken gets no IPv4 address (None); its
   IPv6 address, which has 64 bits, is always available.

Because natural addresses are reserved for their owners before any probing, a member who
wins its natural address keeps it whatever else joins, except when a member with a lower key
and the same natural address joins; only members that already collided can move.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable

from meshguard.crypto.hashes import blake3

MESH_IPV4_NETWORK = ipaddress.IPv4Network("10.99.0.0/16")
MESH_IPV6_NETWORK = ipaddress.IPv6Network("fd99:6d67::/64")
MESH_IPV4_PREFIXLEN = 16
MESH_IPV6_PREFIXLEN = 64
ORG_DOMAIN_LEN = 6
MAX_PROBES = 64
_PROBE_LABEL = b"meshguard ipv4 probe"
_U32 = struct.Struct("<I")


def _ipv4_from_hash(h: bytes) -> ipaddress.IPv4Address:
    x, y = h[0], h[1]
    if x == 0:
        x = 1
    if y == 0:
        y = 1
    elif y == 255:
        y = 254
    return ipaddress.IPv4Address(bytes((10, 99, x, y)))


def mesh_ipv4(pub: bytes) -> ipaddress.IPv4Address:
    """The natural mesh IPv4 address of an Ed25519 identity key (10.99.x.y)."""
    return _ipv4_from_hash(blake3(bytes(pub)))


def mesh_ipv6(pub: bytes) -> ipaddress.IPv6Address:
    """The mesh IPv6 address: fd99:6d67::/64 with BLAKE3(pub)[0:8] as interface identifier."""
    iid = bytearray(blake3(bytes(pub))[:8])
    if not any(iid):
        iid[7] = 1
    return ipaddress.IPv6Address(MESH_IPV6_NETWORK.network_address.packed[:8] + bytes(iid))


def org_domain(org_pub: bytes) -> str:
    """The 6-hex-digit domain of an org key (`<node>.<domain>.mesh`)."""
    return blake3(bytes(org_pub))[:3].hex()


def probe_ipv4(pub: bytes, attempt: int) -> ipaddress.IPv4Address:
    """The attempt-th alternative address of a key whose natural address is taken."""
    return _ipv4_from_hash(blake3(_PROBE_LABEL + bytes(pub) + _U32.pack(attempt)))


def assign_ipv4(members: Iterable[bytes]) -> dict[bytes, ipaddress.IPv4Address | None]:
    """The collision-free IPv4 assignment for a member set (module docstring has the rule)."""
    keys = sorted({bytes(k) for k in members})
    natural = {k: mesh_ipv4(k) for k in keys}
    result: dict[bytes, ipaddress.IPv4Address | None] = {}
    taken: set[ipaddress.IPv4Address] = set(natural.values())
    owners: dict[ipaddress.IPv4Address, bytes] = {}
    losers: list[bytes] = []
    for k in keys:  # ascending: the first key seen for an address is the lowest
        addr = natural[k]
        if addr in owners:
            losers.append(k)
        else:
            owners[addr] = k
            result[k] = addr
    for k in losers:
        result[k] = None
        for attempt in range(1, MAX_PROBES + 1):
            cand = probe_ipv4(k, attempt)
            if cand not in taken:
                taken.add(cand)
                result[k] = cand
                break
    return result
