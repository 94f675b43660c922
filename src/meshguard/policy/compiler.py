"""Compile the policies in force on a node into the table its data plane enforces.

For each peer P of node N (docs/policy.md#order-of-evaluation), the chain is:

    services/peer/<P>.policy -> services/org/<P's orgs>.policy -> services/global.policy
    -> each org-signed policy by org key: the rules of the sections that apply to N whose
       `from` includes P -> the default

Group membership is decided here, against the members N knows: a member is in an org's group
when the group lists its identity key, or when it lists the member's certificate name and the
member was admitted by that org (`MemberInfo.orgs`), so a certificate another org issued under
the same name matches nothing. Chains are deduplicated; every rule gets one counter
(`PolicyTable.rules`), shared by every chain that holds it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from meshguard.identity.addressing import org_domain
from meshguard.policy.org_policy import EVERY, OrgPolicy, RouteLine
from meshguard.policy.rules import Rule
from meshguard.policy.service_files import SERVICES, LocalPolicies
from meshguard.policy.signed import SignedPolicy
from meshguard.policy.table import (
    Chain,
    FlatRule,
    MemberInfo,
    PolicyTable,
    RouteGrant,
    RuleInfo,
)

InForce = Sequence[tuple[SignedPolicy, OrgPolicy]]
IMPLIED_DEFAULT = RuleInfo("default", 0, "allow all")
NOBODY = MemberInfo(b"", b"")  # a peer the compiler was not told about


def org_label(sp: SignedPolicy, org_names: Mapping[bytes, str] | None = None) -> str:
    """`org NAME (serial N)`: the trusted-org name, else the org's 6-hex domain."""
    name = (org_names or {}).get(sp.org_key) or org_domain(sp.org_key)
    return f"org {name} (serial {sp.serial})"


def in_group(org_key: bytes, policy: OrgPolicy, group: str, member: MemberInfo) -> bool:
    if group == EVERY:
        return True
    g = policy.groups.get(group)
    if g is None:
        return False
    if member.identity in g.keys:
        return True
    return member.name is not None and member.name in g.names and org_key in member.orgs


def names_peer(file_name: str, peer: MemberInfo) -> bool:
    """Whether an unresolved `services/peer/<file_name>.policy` is about `peer`: its
    certificate name, or `NAME.DOMAIN` for the certificate of the org with that domain."""
    if peer.name is None:
        return False
    name, dot, domain = file_name.partition(".")
    if not dot:
        return name == peer.name
    return name == peer.name and any(org_domain(o) == domain.lower() for o in peer.orgs)


def _via(org_key: bytes, policy: OrgPolicy, route: RouteLine, member: MemberInfo) -> bool:
    if route.via_group:
        return in_group(org_key, policy, route.via, member)
    if route.via_key is not None:
        return member.identity == route.via_key
    return member.name == route.via and org_key in member.orgs


def _ordered(in_force: InForce) -> list[tuple[SignedPolicy, OrgPolicy]]:
    return sorted(in_force, key=lambda pair: pair[0].org_key)


class _Builder:
    """Builds the table; a chain is made once per distinct standing of a peer (the peer files
    that name it, its orgs, the `from` groups it is in), so a large mesh costs one look at
    each member and a handful of chains."""

    def __init__(self, local: LocalPolicies, in_force: InForce, me: MemberInfo,
                 org_names: Mapping[bytes, str] | None) -> None:
        self.local = local
        self.infos: list[RuleInfo] = []
        self.index: dict[RuleInfo, int] = {}
        self.chains: list[Chain] = []
        self.chain_index: dict[Chain, int] = {}
        self.labels = {sp.org_key: org_label(sp, org_names) for sp, _ in in_force}
        # per policy, by org key: the rules of the sections that apply to this node
        self.mine = [(sp, op, [r for r in op.rules if in_group(sp.org_key, op, r.to, me)])
                     for sp, op in _ordered(in_force)]
        self.senders = [sorted({r.sender for r in rules}) for _, _, rules in self.mine]
        self.default = self._default()
        self.files: dict[tuple[str, int], tuple[FlatRule, ...]] = {}
        self.signed: dict[tuple[int, int], FlatRule] = {}
        self.standing: dict[object, int] = {}

    def counter(self, info: RuleInfo) -> int:
        n = self.index.get(info)
        if n is None:
            n = self.index[info] = len(self.infos)
            self.infos.append(info)
        return n

    def flat(self, rule: Rule, info: RuleInfo) -> FlatRule:
        return FlatRule(rule.allow, rule.proto, rule.port_lo, rule.port_hi, self.counter(info))

    def file_rules(self, key: tuple[str, int], rules: tuple[Rule, ...]) -> tuple[FlatRule, ...]:
        flats = self.files.get(key)
        if flats is None:
            flats = self.files[key] = tuple(
                self.flat(r, RuleInfo(r.source, r.line, r.text)) for r in rules)
        return flats

    def signed_rule(self, k: int, m: int) -> FlatRule:
        flat = self.signed.get((k, m))
        if flat is None:
            sp, _, rules = self.mine[k]
            r = rules[m]
            info = RuleInfo(self.labels[sp.org_key], r.rule.line, r.text)
            flat = self.signed[(k, m)] = self.flat(r.rule, info)
        return flat

    def _default(self) -> tuple[bool, int]:
        if self.local.default_allow is not None:
            word = "allow" if self.local.default_allow else "deny"
            info = RuleInfo(f"{SERVICES}/default", 1, word)
            return self.local.default_allow, self.counter(info)
        for sp, op, _ in self.mine:
            if op.default_allow is False:
                info = RuleInfo(self.labels[sp.org_key], op.default_line, "default deny")
                return False, self.counter(info)
        return True, self.counter(IMPLIED_DEFAULT)

    def chain_for(self, peer: MemberInfo) -> int:
        """The index of the chain `peer` is judged by."""
        local = self.local
        peer_files = tuple(
            i for i, s in enumerate(local.peers)
            if s.key == peer.identity or (s.key is None and names_peer(s.name, peer)))
        groups = tuple(
            frozenset(g for g in senders if in_group(sp.org_key, op, g, peer))
            for (sp, op, _), senders in zip(self.mine, self.senders, strict=True))
        standing = (peer_files, tuple(peer.orgs), groups)
        n = self.standing.get(standing)
        if n is not None:
            return n
        flat: list[FlatRule] = []
        for i in peer_files:
            flat.extend(self.file_rules(("peer", i), local.peers[i].rules))
        for org in peer.orgs:
            for j, scoped in enumerate(local.orgs):
                if scoped.key == org:
                    flat.extend(self.file_rules(("org", j), scoped.rules))
        flat.extend(self.file_rules(("global", 0), local.global_rules))
        for k, ((_, _, rules), member_of) in enumerate(zip(self.mine, groups, strict=True)):
            flat.extend(self.signed_rule(k, m) for m, r in enumerate(rules)
                        if r.sender in member_of)
        chain = Chain(tuple(flat), *self.default)
        n = self.chain_index.get(chain)
        if n is None:
            n = self.chain_index[chain] = len(self.chains)
            self.chains.append(chain)
        self.standing[standing] = n
        return n


def compile_table(
    local: LocalPolicies,
    in_force: InForce,
    me: MemberInfo,
    members: Sequence[MemberInfo],
    org_names: Mapping[bytes, str] | None = None,
) -> PolicyTable:
    """The table node `me` enforces on traffic from each of `members` (me skipped).

    `org_names` maps org keys to the names shown in sources (TrustStore.org_names), else
    the org's domain. `active` is False when no rule and no deny default is in force."""
    b = _Builder(local, in_force, me, org_names)
    fallback = b.chain_for(NOBODY)
    by_peer = {peer.wg_public: b.chain_for(peer) for peer in members
               if peer.identity != me.identity}
    active = any(c.rules or not c.default_allow for c in b.chains)
    return PolicyTable(active, tuple(b.chains), by_peer, fallback, tuple(b.infos))


def route_grants(
    in_force: InForce,
    members: Sequence[MemberInfo],
    org_names: Mapping[bytes, str] | None = None,
) -> tuple[RouteGrant, ...]:
    """Every (member, prefix) an org-signed policy in force grants; the first grant of a
    pair names its source, `org NAME (serial N) line L`."""
    out: dict[tuple[bytes, object], RouteGrant] = {}
    for sp, op in _ordered(in_force):
        label = org_label(sp, org_names)
        for route in op.routes:
            for member in members:
                if not _via(sp.org_key, op, route, member):
                    continue
                for prefix in route.prefixes:
                    out.setdefault(
                        (member.identity, prefix),
                        RouteGrant(member.identity, prefix, f"{label} line {route.line}"),
                    )
    return tuple(out.values())
