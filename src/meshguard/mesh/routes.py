"""Subnet routes and exit nodes, sans-IO: which prefixes go to which peer (docs/policy.md#routes).

A member carries a prefix for this node only when all of these hold:

- it offers the prefix in its signed record (`up --advertise-routes`, `--advertise-exit-node`:
  the routes block of docs/wire-format.md);
- an org-signed policy in force grants it a prefix that covers the offer (`RouteGrant`s from
  `policy.compiler.route_grants`; `route 10.20.0.0/16 via gw` covers an offer of
  10.20.5.0/24);
- this node asked for it: `--accept-routes` for subnets, `--exit-node NAME` for the default
  routes (0.0.0.0/0 and ::/0) of one exit node;
- the prefix is safe: it neither covers nor lies inside the mesh prefixes (10.99.0.0/16,
  fd99:6d67::/64), and a subnet contains none of the underlay addresses this node reaches
  members at or sends from (the tunnel would route into itself). Exit routes are the exception
  the shell makes safe: they live in a table of their own that the tunnel's marked packets and
  the members' underlay addresses bypass (daemon/route_manager.py).

An offer that is not granted, or not safe, is not used, with one warning per (member, prefix).

Overlaps are resolved so that every node decides alike: WireGuard gives one prefix to one
peer, so when several members carry the same prefix, the one with the lowest identity key
(bytewise) carries it. Different prefixes may nest (10.20.0.0/16 via A, 10.20.5.0/24 via B):
the longest prefix wins, in the allowed IPs and in the routing table alike.

`RoutePlanner.plan` returns a `RoutePlan`: the extra allowed IPs per member (mesh/node.py adds
them to the peers it configures, userspace and kernel mode alike), the OS routes to install, the
exit node in use, and what this node itself carries (so the shell enables forwarding and NAT).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from meshguard.identity.addressing import MESH_IPV4_NETWORK, MESH_IPV6_NETWORK
from meshguard.mesh.actions import MemberView
from meshguard.policy.table import IPNetwork, RouteGrant

MESH_PREFIXES: tuple[IPNetwork, ...] = (MESH_IPV4_NETWORK, MESH_IPV6_NETWORK)
DEFAULT_ROUTES: tuple[IPNetwork, ...] = (ipaddress.IPv4Network("0.0.0.0/0"),
                                         ipaddress.IPv6Network("::/0"))
MAX_WARNED = 4096  # (member, prefix) pairs remembered as warned about


@dataclass(frozen=True, slots=True)
class RouteOptions:
    """What `up` asked for (cli/up_command.py)."""

    advertise: tuple[IPNetwork, ...] = ()  # our own offer, as in our record
    accept_routes: bool = False
    exit_node: str | None = None  # a member's name or base64 identity key
    exit_node_allow_lan_access: bool = False


@dataclass(frozen=True, slots=True)
class RouteMember:
    """A member with a tunnel, as the planner sees it."""

    identity: bytes
    name: str | None
    offered: tuple[IPNetwork, ...]
    underlay: tuple[str, ...] = ()  # hosts of its advertised endpoints


@dataclass(frozen=True, slots=True)
class RoutePlan:
    allowed: Mapping[bytes, tuple[IPNetwork, ...]] = field(default_factory=dict)  # identity ->
    subnets: tuple[tuple[IPNetwork, bytes], ...] = ()  # (prefix, carrier identity): OS routes
    exit_via: bytes | None = None  # the exit node in use
    exit_problem: str | None = None  # why --exit-node is not in use (None when it is, or unset)
    bypass: tuple[IPNetwork, ...] = ()  # members' underlay hosts, kept off the exit route
    carried: tuple[IPNetwork, ...] = ()  # subnets this node carries (granted and offered)
    exit_served: bool = False  # this node is a granted exit node


def net_key(n: IPNetwork) -> tuple[int, int, int]:
    return (n.version, int(n.network_address), n.prefixlen)


def _overlaps(a: IPNetwork, b: IPNetwork) -> bool:
    return a.version == b.version and (a.subnet_of(b) or b.subnet_of(a))  # type: ignore[arg-type]


def _covered(p: IPNetwork, grants: Iterable[IPNetwork]) -> bool:
    return any(p.version == g.version and p.subnet_of(g) for g in grants)  # type: ignore[arg-type]


def host_net(host: str) -> IPNetwork | None:
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return None
    return ipaddress.ip_network(addr)


def matches(member: RouteMember, wanted: str) -> bool:
    """Does `wanted` (from --exit-node) name this member: its name or base64 identity key?"""
    if member.name is not None and member.name.lower() == wanted.lower():
        return True
    try:
        key = base64.b64decode(wanted, validate=True)
    except (binascii.Error, ValueError):
        return False
    return key == member.identity


@dataclass
class RoutePlanner:
    options: RouteOptions = field(default_factory=RouteOptions)
    grants: tuple[RouteGrant, ...] = ()
    warnings: list[str] = field(default_factory=list)  # new ones, for the shell to log
    local_underlay: tuple[str, ...] = ()  # this node's own underlay addresses (the shell's)
    _warned: set[tuple[bytes, IPNetwork]] = field(default_factory=set)

    def set_grants(self, grants: Sequence[RouteGrant]) -> bool:
        """Take the grants in force; True when they changed."""
        new = tuple(sorted(set(grants), key=lambda g: (g.member, *net_key(g.prefix), g.source)))
        if new == self.grants:
            return False
        self.grants = new
        return True

    def _warn(self, member: bytes, prefix: IPNetwork, why: str) -> None:
        if (member, prefix) in self._warned:
            return
        if len(self._warned) >= MAX_WARNED:
            self._warned.clear()
        self._warned.add((member, prefix))
        self.warnings.append(f"route {prefix} offered by {member.hex()[:12]} is not used: {why}")

    def granted(self, member: bytes) -> list[IPNetwork]:
        return [g.prefix for g in self.grants if g.member == member]

    def usable(self, m: RouteMember, local_hosts: Sequence[IPNetwork]) -> list[IPNetwork]:
        """The member's offers that are granted and safe (warning once about the others)."""
        grants = self.granted(m.identity)
        out = []
        for p in m.offered:
            if not _covered(p, grants):
                self._warn(m.identity, p, "no org-signed policy grants it")
            elif p.prefixlen > 0 and any(_overlaps(p, x) for x in MESH_PREFIXES):
                self._warn(m.identity, p, "it overlaps the mesh prefixes")
            elif p.prefixlen > 0 and any(_overlaps(p, h) for h in local_hosts):
                self._warn(m.identity, p, "it covers an underlay address of the mesh")
            else:
                out.append(p)
        return out

    def plan(self, me: bytes, members: Sequence[RouteMember]) -> RoutePlan:
        opts = self.options
        hosts: list[IPNetwork] = []
        if opts.exit_node is not None or any(m.offered for m in members):
            for x in (*self.local_underlay, *(h for m in members for h in m.underlay)):
                net = host_net(x)
                if net is not None:
                    hosts.append(net)
        # subnets: prefix -> the lowest identity key that may carry it
        carriers: dict[IPNetwork, bytes] = {}
        exits: list[RouteMember] = []
        for m in sorted(members, key=lambda m: m.identity):
            use = self.usable(m, hosts)
            if any(p.prefixlen == 0 for p in use):
                exits.append(m)
            for p in use:
                if p.prefixlen > 0:
                    carriers.setdefault(p, m.identity)
        allowed: dict[bytes, list[IPNetwork]] = {}
        subnets: list[tuple[IPNetwork, bytes]] = []
        if opts.accept_routes:
            for p, who in sorted(carriers.items(), key=lambda kv: net_key(kv[0])):
                allowed.setdefault(who, []).append(p)
                subnets.append((p, who))
        exit_via, problem = self._exit(members, exits)
        if exit_via is not None:
            allowed.setdefault(exit_via.identity, []).extend(
                p for p in self.usable(exit_via, hosts) if p.prefixlen == 0)
        mine = self.granted(me)
        carried = tuple(p for p in opts.advertise if p.prefixlen > 0 and _covered(p, mine)
                        and not any(_overlaps(p, x) for x in MESH_PREFIXES))
        served = any(p.prefixlen == 0 for p in opts.advertise) and any(
            g.prefixlen == 0 for g in mine)
        bypass = tuple(dict.fromkeys(hosts)) if exit_via is not None else ()
        return RoutePlan({k: tuple(v) for k, v in allowed.items()}, tuple(subnets),
                         exit_via.identity if exit_via is not None else None, problem, bypass,
                         carried, served)

    def _exit(self, members: Sequence[RouteMember], exits: Sequence[RouteMember]
              ) -> tuple[RouteMember | None, str | None]:
        wanted = self.options.exit_node
        if wanted is None:
            return None, None
        named = [m for m in members if matches(m, wanted)]
        if not named:
            return None, f"exit node {wanted} is not a member with a tunnel"
        ok = [m for m in named if m in exits]
        if not ok:
            return None, (f"exit node {wanted} does not offer an exit that an org-signed policy "
                          "grants it")
        return min(ok, key=lambda m: m.identity), None


def plan_routes(planner: RoutePlanner, me: bytes, members: Sequence[MemberView],
                name_of: Callable[[MemberView], str | None]) -> RoutePlan:
    """The plan for the members that get a tunnel (MeshNode.desired_peers calls this)."""
    # the members' underlay addresses matter only when someone offers routes or we use an exit
    # (a mesh of a thousand members without routes pays one scan per reconcile)
    need = planner.options.exit_node is not None or any(m.routes for m in members)
    views = []
    for m in members:
        eps = [*m.endpoints, *([m.wg_endpoint] if m.wg_endpoint is not None else [])]
        views.append(RouteMember(m.identity_key, name_of(m) if m.routes else None, m.routes,
                                 tuple(dict.fromkeys(h for h, _ in eps)) if need else ()))
    return planner.plan(me, views)
