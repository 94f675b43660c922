"""A compiled PolicyTable as an nftables ruleset, and its counters read back (kernel mode).

In kernel mode the kernel's WireGuard device decrypts and delivers packets itself, so the
table (policy/table.py) is enforced by nftables on the mesh interface instead
(daemon/kernel_policy.py applies what is built here; docs/policy.md#kernel-mode). Pure
functions of the table, so the generated rules are unit-tested without a kernel.

The table `inet meshguard_policy_<ifname>` (one per interface) holds:

  * base chains on the `input` and `forward` hooks (priority filter) that send what arrives on
    the interface (`iifname`) to `judge`; everything else is not looked at;
  * `judge`: an IPv4 packet that is a non-first fragment, or an IPv6 packet that still carries
    a fragment header, is dropped (fail closed, counted "unparsed"; conntrack's defragmenter
    runs before priority filter, so only fragments that could not be reassembled get here);
    ICMP and ICMPv6 pass (counted "icmp"); then the source address names the peer: the kernel
    only accepts a packet from a peer whose allowed IPs hold its source, so the allowed IPs
    (`peer_sources`) are looked up longest prefix first, one verdict map per prefix length
    (the same lookup WireGuard's own allowed IPs make), each entry a `goto` to the peer's
    chain; a source in no map goes to the table's fallback chain;
  * one chain per compiled chain `cN`: its rules in order, each with a counter, then its
    default. A denying rule first lets a TCP or UDP packet pass that travels in the *reply*
    direction of a connection the kernel's conntrack holds (`ct direction reply`), counted
    "reply": a reply to a flow this node (or a host it forwards for) opened, as the userspace
    filter's connection tracking has it. A flow the peer opened is judged by the rules on every
    packet, so it ends when the rules stop allowing it, as in userspace mode; everything else
    a rule denies goes to `deny` (counted "policy").

Every counted rule carries a comment naming what it counts: `allow N` / `deny N` (N indexes
PolicyTable.rules; chains that share a rule add up), `reply`, `policy`, `icmp`, `unparsed`.
One script replaces the whole table in one transaction (`nft -f -`): it creates the table if
it is missing, deletes it and defines it anew, so the kernel never sees half a policy.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from meshguard.policy.table import (
    ALL_PORTS,
    PROTO_ANY,
    PROTO_TCP,
    PROTO_UDP,
    Chain,
    IPNetwork,
    PolicyTable,
)

TABLE_PREFIX = "meshguard_policy_"
REASONS = ("allowed", "policy", "unparsed", "reply", "icmp")
_IFNAME = re.compile(r"[A-Za-z0-9_.\-]{1,15}")
_PROTO_NAMES = {PROTO_TCP: "tcp", PROTO_UDP: "udp"}
_REPLY = "ct direction reply goto reply"
_TCP_UDP = "meta l4proto { tcp, udp }"


def table_name(ifname: str) -> str:
    """`meshguard_policy_<ifname>`, the interface name's `-` and `.` as `_`."""
    if not _IFNAME.fullmatch(ifname):
        raise ValueError(f"not an interface name nftables can be given: {ifname!r}")
    return TABLE_PREFIX + re.sub(r"[^A-Za-z0-9_]", "_", ifname)


def removal_script(ifname: str) -> str:
    """Remove the table, whether or not it exists (one transaction)."""
    name = table_name(ifname)
    return f"table inet {name}\ndelete table inet {name}\n"


def match_expr(proto: int, port_lo: int, port_hi: int) -> str:
    """The nft match of one rule (policy/table.py's meaning: ports match TCP and UDP only;
    `all all` matches every packet)."""
    ports = "" if (port_lo, port_hi) == ALL_PORTS else (
        str(port_lo) if port_lo == port_hi else f"{port_lo}-{port_hi}")
    if proto == PROTO_ANY:
        return f"meta l4proto {{ tcp, udp }} th dport {ports}" if ports else ""
    name = _PROTO_NAMES.get(proto, str(proto))
    if not ports:
        return f"meta l4proto {name}"
    if proto in _PROTO_NAMES:
        return f"{name} dport {ports}"
    return f"meta l4proto {name} th dport {ports}"


def _verdict_lines(match: str, allow: bool, counter: int) -> list[str]:
    pre = f"{match} " if match else ""
    if allow:
        return [f'{pre}counter accept comment "allow {counter}"']
    # only TCP and UDP flows are replies (as in the userspace filter)
    tcp_udp = match.startswith(("tcp ", "udp ", _TCP_UDP))
    reply = _REPLY if tcp_udp else f"{_TCP_UDP} {_REPLY}"
    return [f"{pre}{reply}", f'{pre}counter goto deny comment "deny {counter}"']


def chain_lines(chain: Chain) -> list[str]:
    out: list[str] = []
    for r in chain.rules:
        out += _verdict_lines(match_expr(r.proto, r.port_lo, r.port_hi), r.allow, r.counter)
    out += _verdict_lines("", chain.default_allow, chain.default_counter)
    return out


def _mask(version: int, prefixlen: int) -> str:
    net = ipaddress.ip_network(("0.0.0.0" if version == 4 else "::", prefixlen))
    return str(net.netmask)


def source_lookup(table: PolicyTable, peer_sources: Mapping[bytes, Sequence[IPNetwork]]
                  ) -> tuple[list[str], list[str]]:
    """(map definitions, `judge` lines) sending a source to its peer's chain, longest prefix
    first. A prefix two peers claim goes to the first peer's chain (the kernel gives a prefix
    to one peer only, so this cannot happen on a consistent device)."""
    by_len: dict[tuple[int, int], dict[str, int]] = {}
    for key, nets in peer_sources.items():
        idx = table.by_peer.get(key, table.fallback)
        for net in nets:
            slot = by_len.setdefault((net.version, net.prefixlen), {})
            slot.setdefault(str(net.network_address), idx)
    maps: list[str] = []
    judge: list[str] = []
    for (version, plen), entries in sorted(by_len.items(), key=lambda kv: (kv[0][0],
                                                                           -kv[0][1])):
        fam = "ip" if version == 4 else "ip6"
        if plen == 0:  # 0.0.0.0/0 or ::/0: one peer takes every source of that family
            judge.append(f"meta nfproto ipv{version} goto c{entries[next(iter(entries))]}")
            continue
        mname = f"src{version}_{plen}"
        elems = ", ".join(f"{a} : goto c{i}" for a, i in sorted(entries.items()))
        maps.append(f"map {mname} {{ type ipv{version}_addr : verdict; "
                    f"elements = {{ {elems} }} }}")
        full = plen == (32 if version == 4 else 128)
        lookup = f"{fam} saddr" if full else f"{fam} saddr & {_mask(version, plen)}"
        judge.append(f"{lookup} vmap @{mname}")
    return maps, judge


def render_ruleset(ifname: str, table: PolicyTable,
                   peer_sources: Mapping[bytes, Sequence[IPNetwork]]) -> str:
    """The `nft -f -` script that makes `table` the interface's policy, in one transaction;
    an inactive table only removes it (a node without policies pays nothing)."""
    if not table.active:
        return removal_script(ifname)
    name = table_name(ifname)
    maps, lookup = source_lookup(table, peer_sources)
    hook = f'policy accept; iifname "{ifname}" goto judge'
    body: list[str] = [*maps]
    body.append(f"chain input {{ type filter hook input priority filter; {hook}; }}")
    body.append(f"chain forward {{ type filter hook forward priority filter; {hook}; }}")
    judge = [
        'ip frag-off & 0x1fff != 0 counter drop comment "unparsed"',
        'meta nfproto ipv6 exthdr frag exists counter drop comment "unparsed"',
        'meta l4proto { icmp, ipv6-icmp } counter accept comment "icmp"',
        *lookup,
        f"goto c{table.fallback}",
    ]
    body.append(_chain("judge", judge))
    body.append(_chain("reply", ['counter accept comment "reply"']))
    body.append(_chain("deny", ['counter drop comment "policy"']))
    for i, chain in enumerate(table.chains):
        body.append(_chain(f"c{i}", chain_lines(chain)))
    inner = "\n".join(f"\t{line}" for block in body for line in block.split("\n"))
    return (f"table inet {name}\ndelete table inet {name}\n"
            f"table inet {name} {{\n{inner}\n}}\n")


def _chain(name: str, lines: Iterable[str]) -> str:
    return "\n".join([f"chain {name} {{", *(f"\t{x}" for x in lines), "}"])


@dataclass
class NftCounts:
    """Packets per rule (indexed like PolicyTable.rules) and by reason, as nft counted them."""

    rule_packets: list[int] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))

    def add(self, other: NftCounts) -> None:
        n = max(len(self.rule_packets), len(other.rule_packets))
        self.rule_packets += [0] * (n - len(self.rule_packets))
        for i, v in enumerate(other.rule_packets):
            self.rule_packets[i] += v
        for k, v in other.reasons.items():
            self.reasons[k] = self.reasons.get(k, 0) + v


def read_counts(listing: str, n_rules: int) -> NftCounts:
    """The counters of `nft -j list table inet NAME` output; rules without a counter or a
    comment of ours are ignored, as is an index outside [0, n_rules)."""
    counts = NftCounts([0] * n_rules)
    doc = json.loads(listing)
    items = doc.get("nftables", []) if isinstance(doc, dict) else []
    for item in items:
        rule = item.get("rule") if isinstance(item, dict) else None
        if not isinstance(rule, dict):
            continue
        comment = rule.get("comment")
        packets = _counter_packets(rule.get("expr"))
        if not isinstance(comment, str) or packets is None:
            continue
        word, _, num = comment.partition(" ")
        if word in ("allow", "deny") and num.isdigit():
            if int(num) < n_rules:
                counts.rule_packets[int(num)] += packets
            if word == "allow":
                counts.reasons["allowed"] += packets
        elif word in counts.reasons and not num:
            counts.reasons[word] += packets
    return counts


def _counter_packets(exprs: object) -> int | None:
    if not isinstance(exprs, list):
        return None
    for e in exprs:
        c = e.get("counter") if isinstance(e, dict) else None
        if isinstance(c, dict) and isinstance(c.get("packets"), int):
            return int(c["packets"])
    return None


__all__ = [
    "REASONS",
    "TABLE_PREFIX",
    "NftCounts",
    "chain_lines",
    "match_expr",
    "read_counts",
    "removal_script",
    "render_ruleset",
    "source_lookup",
    "table_name",
]
