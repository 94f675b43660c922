"""What a compiled table decides for one peer, protocol and port (policy/table.py's meaning).

The data plane judges packets; this judges a (peer, protocol, port) triple the same way, for
`meshguard service show` and for checking a compiled table without packets.
"""

from __future__ import annotations

from meshguard.policy.table import ALL_PORTS, PROTO_ANY, Chain, FlatRule, PolicyTable


def chain_of(table: PolicyTable, wg_public: bytes) -> Chain:
    return table.chains[table.by_peer.get(wg_public, table.fallback)]


def rule_matches(rule: FlatRule, proto: int, port: int | None) -> bool:
    """`port` None: a protocol without ports, which only `all all` matches."""
    if port is None:
        return rule.proto == PROTO_ANY and (rule.port_lo, rule.port_hi) == ALL_PORTS
    return rule.proto in (PROTO_ANY, proto) and rule.port_lo <= port <= rule.port_hi


def decide(chain: Chain, proto: int, port: int | None) -> tuple[bool, int]:
    """(allowed, counter index of the rule or default that decided)."""
    for rule in chain.rules:
        if rule_matches(rule, proto, port):
            return rule.allow, rule.counter
    return chain.default_allow, chain.default_counter


def verdict(table: PolicyTable, wg_public: bytes, proto: int, port: int | None) -> bool:
    if not table.active:
        return True
    return decide(chain_of(table, wg_public), proto, port)[0]
