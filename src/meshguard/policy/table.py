"""The compiled form of every policy in force on a node: what the data plane enforces.

A node's policies come from its local service files (`services/`, the original's syntax) and
from the org-signed policies it holds (docs/policy.md). The compiler flattens, for every peer,
the chain local peer -> local org -> local global -> org-signed -> default into one ordered list
of `FlatRule`s, so the data plane walks one list per packet and needs to know nothing about
where a rule came from. Rules filter traffic *arriving from the tunnel* (decrypt -> TUN);
replies to flows this node opened pass by connection tracking.

The same table drives the pure Python filter and the C fast path (they must agree on every
packet), so its meaning is fixed here:
  - `proto` is an IP protocol number: PROTO_TCP, PROTO_UDP, or PROTO_ANY (0), which matches
    every protocol; a rule with PROTO_ANY and ports (0, 65535) also matches protocols that
    have no ports.
  - a TCP/UDP packet matches when its protocol matches and its destination port is in
    [port_lo, port_hi]; a packet of another protocol matches only a PROTO_ANY rule whose ports
    are (0, 65535).
  - ICMP and ICMPv6 always pass (as in the original), counted as such.
  - a packet that cannot be parsed (truncated, not IPv4/IPv6, a non-first fragment, an IPv6
    header chain that cannot be walked) is dropped whenever the table is active: fail closed.
  - the first matching rule decides; when none matches, the chain's default decides.
  - `active` False means no policy at all: everything passes and nothing is tracked, so a node
    without policies pays nothing for the feature.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

PROTO_ANY = 0
PROTO_TCP = 6
PROTO_UDP = 17
ALL_PORTS = (0, 65535)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class FlatRule:
    """One rule of a compiled chain; `counter` indexes PolicyTable.rules."""

    allow: bool
    proto: int
    port_lo: int
    port_hi: int
    counter: int


@dataclass(frozen=True, slots=True)
class RuleInfo:
    """Where a counted rule came from, for `meshguard policy` (one per counter index)."""

    source: str  # e.g. "services/global.policy" or "org example (serial 7)"
    line: int  # 1-based line in that source; 0 for an implied default
    text: str  # the rule as written, e.g. "allow tcp 9100 from monitoring"


@dataclass(frozen=True, slots=True)
class Chain:
    """The flattened rules one peer is judged by, then the default."""

    rules: tuple[FlatRule, ...]
    default_allow: bool
    default_counter: int


@dataclass(frozen=True, slots=True)
class PolicyTable:
    """Every chain in force; `by_peer` maps a WireGuard public key to its chain's index.

    A peer missing from `by_peer` is judged by `chains[fallback]`. Chains are deduplicated,
    so a mesh of a thousand members under one group policy holds a handful of chains.
    """

    active: bool = False
    chains: tuple[Chain, ...] = (Chain((), True, 0),)
    by_peer: Mapping[bytes, int] = field(default_factory=dict)
    fallback: int = 0
    rules: tuple[RuleInfo, ...] = (RuleInfo("default", 0, "allow all"),)


ALLOW_ALL = PolicyTable()


@dataclass(frozen=True, slots=True)
class MemberInfo:
    """What the compiler knows about a member, to pick its chain and its route grants."""

    identity: bytes  # Ed25519 identity key
    wg_public: bytes  # X25519 WireGuard key, the data plane's name for the peer
    name: str | None = None  # certificate name, or the authorized_keys name
    orgs: tuple[bytes, ...] = ()  # keys of the orgs whose certificate or vouch admitted it


@dataclass(frozen=True, slots=True)
class RouteGrant:
    """An org-signed policy lets `member` (identity key) carry `prefix` for the mesh."""

    member: bytes
    prefix: IPNetwork
    source: str  # e.g. "org example (serial 7) line 12"

    @property
    def exit(self) -> bool:
        return self.prefix.prefixlen == 0
