"""The mesh node's vocabulary: the member view it reads from the membership core, the peer
configuration it applies, and the actions it returns to its shell (mesh/node.py).

`SendDatagram` and `WriteTun` are the WireGuard device's own action types (wireguard/actions.py),
so the data-plane engine executes the node's actions exactly like the device's.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from meshguard.mesh.org_gossip import AliasLearned, RevocationLearned, VouchLearned
from meshguard.mesh.policy_gossip import PolicyLearned
from meshguard.nat.holepunch import PunchRendezvous
from meshguard.nat.relay import RelayDelivered
from meshguard.sansio import Endpoint
from meshguard.wireguard.actions import Action as DeviceAction

__all__ = ["ROUTED_STATES", "Action", "AliasLearned", "IPNetwork", "Joined", "MemberView",
           "PeerConfig", "PeerDown", "PeerUp", "PolicyLearned", "ReflexiveEndpoint",
           "RevocationLearned", "SelfAddressChanged", "StunResult", "VouchLearned"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
ROUTED_STATES = frozenset({"alive", "suspect"})  # the member states that get a tunnel


@dataclass(frozen=True)
class MemberView:
    """What the mesh layer needs to know about one member (from its signed gossip record)."""

    identity_key: bytes
    wg_key: bytes | None
    wg_endpoint: Endpoint | None
    gossip_endpoint: Endpoint | None
    certificate: bytes | None
    state: str  # "alive" | "suspect" | "dead" | "left"
    incarnation: int = 0
    nat_type: int = 0  # the record's NAT type (low 7 bits: nat.stun_client.NatType)
    endpoints: tuple[Endpoint, ...] = ()  # every advertised gossip endpoint
    routes: tuple[IPNetwork, ...] = ()  # the prefixes it offers to carry (docs/policy.md#routes)


@dataclass(frozen=True)
class PeerConfig:
    wg_key: bytes
    identity_key: bytes
    endpoint: Endpoint | None
    allowed_ips: tuple[IPNetwork, ...]
    keepalive: int


# actions -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PeerUp:
    """A peer was added or its endpoint/allowed IPs changed."""

    peer: PeerConfig


@dataclass(frozen=True)
class PeerDown:
    wg_key: bytes
    identity_key: bytes
    reason: str


@dataclass(frozen=True)
class Joined:
    """The membership core has joined the mesh through a seed (the daemon reports READY)."""


@dataclass(frozen=True)
class StunResult:
    """STUN discovery finished: our public endpoint (None if no server answered), NAT type."""

    mapped: Endpoint | None
    nat_type: int


@dataclass(frozen=True)
class SelfAddressChanged:
    """Our mesh IPv4 moved (an address collision with a lower key); None = IPv6 only."""

    old: ipaddress.IPv4Address | None
    new: ipaddress.IPv4Address | None


@dataclass(frozen=True)
class ReflexiveEndpoint:
    """A public member (relay) sees us at `endpoint`, which differs from our STUN mapping:
    the NAT maps per destination (symmetric), so advertise this one (the shell's job)."""

    endpoint: Endpoint
    relay: bytes


Action = (DeviceAction | PeerUp | PeerDown | SelfAddressChanged | Joined | StunResult
          | RevocationLearned | AliasLearned | VouchLearned | ReflexiveEndpoint | PolicyLearned
          # kernel mode only (no Device here): for the shell's kernel traversal
          # (mesh/kernel_traversal.py, daemon/kernel_paths.py)
          | PunchRendezvous | RelayDelivered)
