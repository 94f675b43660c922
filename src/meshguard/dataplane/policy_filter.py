"""Policy enforcement on traffic arriving from the tunnel: the pure Python reference.

    pf = PyPolicyFilter()                        # or the C twin: fastpath's PolicyFilter
    pf.set_table(*table_args(table))             # a policy.table.PolicyTable, compiled
    pf.track(reads, offset, now, peer_key)       # TUN reads to that peer (IP at `offset`)
    pf.filter(peer_key, packets, start, now)     # drops packets[start:] that may not pass
    verdict, counter = pf.check(peer_key, packet, now)
    rule_deltas, reason_deltas, evicted = pf.take_counts()

What a verdict means is fixed by policy/table.py's docstring; in order, for a packet from a
peer whose chain is `chains[by_peer.get(key, fallback)]`:
  1. it is classified (`classify`): IPv4 (IHL checked, a non-first fragment is unparsed),
     IPv6 (hop-by-hop, routing, destination options and fragment headers walked, at most
     MAX_EXT_HEADERS of them), then the TCP or UDP ports (a whole TCP or UDP header must be
     there); whatever cannot be classified is UNPARSED: dropped (fail closed);
  2. ICMP (IPv4) and ICMPv6 pass (ICMP);
  3. the chain's rules in order, first match decides, then the chain's default: ALLOW, counted
     by the deciding rule's counter (`FlatRule.counter`);
  4. else a TCP or UDP packet of a flow this node has sent on passes (REPLY; the flows are
     dataplane/conntrack.py's, learned by `track` from what the TUN hands us to send to a
     peer whose chain denies the replies), and anything else is dropped (DENY, counted as
     "policy" and by the deciding rule).
So a packet passes when the rules allow it or it belongs to a tracked flow (the order of 3
and 4 only decides where it is counted: an allowed service's packets on its rule).
A TCP super-packet (a TSO read or a coalesced write) is one 5-tuple: its headers are
classified once, like any packet.

The C fast path (dataplane/_fastpath_policy.c) implements the same object; the differential
test (tests/dataplane/test_policy_filter_c.py) holds both to the same verdicts and counters.
`PolicyCounters` is what the engine reports (Engine.policy_counters).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from meshguard.dataplane.conntrack import CAPACITY, Conntrack, flow_key
from meshguard.policy.table import PROTO_TCP, PROTO_UDP, Chain, FlatRule, PolicyTable
from meshguard.policy.verdict import decide

__all__ = [
    "ALLOW",
    "DENY",
    "ICMP",
    "MAX_EXT_HEADERS",
    "REASONS",
    "REPLY",
    "UNPARSED",
    "Flow",
    "PolicyCounters",
    "PolicyFilterLike",
    "PyPolicyFilter",
    "classify",
    "table_args",
]

# verdicts (also the index of their reason in REASONS)
ALLOW, DENY, UNPARSED, REPLY, ICMP = range(5)
REASONS = ("allowed", "policy", "unparsed", "reply", "icmp")
MAX_EXT_HEADERS = 8
_EXT_HEADERS = frozenset({0, 43, 60})  # hop-by-hop, routing, destination options
_FRAGMENT = 44
_ICMP4, _ICMP6 = 1, 58

# one flow as a packet shows it: (proto, source, destination, source port, destination port)
Flow = tuple[int, bytes, bytes, int, int]
ChainArgs = tuple[bool, int, Sequence[tuple[bool, int, int, int, int]]]


def classify(pkt: bytes | bytearray | memoryview, off: int = 0) -> Flow | None:
    """The 5-tuple of the IP packet at `off` (ports -1 for protocols without them, an ICMP
    packet included), or None when it cannot be classified (see the module docstring)."""
    got = _classify(pkt, off)
    return got[0] if got is not None else None


def _classify(pkt: bytes | bytearray | memoryview, off: int) -> tuple[Flow, bool] | None:
    """`classify`, and whether the packet opens a TCP connection (SYN without ACK)."""
    n = len(pkt)
    if n - off < 20:
        return None
    ver = pkt[off] >> 4
    if ver == 4:
        ihl = (pkt[off] & 0x0F) * 4
        if ihl < 20 or off + ihl > n:
            return None
        if ((pkt[off + 6] << 8) | pkt[off + 7]) & 0x1FFF:
            return None  # a non-first fragment: no ports to judge it by
        proto = pkt[off + 9]
        src, dst = bytes(pkt[off + 12 : off + 16]), bytes(pkt[off + 16 : off + 20])
        pos = off + ihl
        if proto == _ICMP4:
            return (proto, src, dst, -1, -1), False
    elif ver == 6:
        if n - off < 40:
            return None
        proto = pkt[off + 6]
        src, dst = bytes(pkt[off + 8 : off + 24]), bytes(pkt[off + 24 : off + 40])
        pos = off + 40
        walked = 0
        while proto in _EXT_HEADERS or proto == _FRAGMENT:
            walked += 1
            if walked > MAX_EXT_HEADERS or pos + 8 > n:
                return None
            if proto == _FRAGMENT:
                if ((pkt[pos + 2] << 8) | pkt[pos + 3]) & 0xFFF8:
                    return None  # a non-first fragment
                hl = 8
            else:
                hl = (pkt[pos + 1] + 1) * 8
                if pos + hl > n:
                    return None
            proto = pkt[pos]
            pos += hl
        if proto == _ICMP6:
            return (proto, src, dst, -1, -1), False
    else:
        return None
    if proto == PROTO_TCP:
        if pos + 20 > n:
            return None
    elif proto == PROTO_UDP:
        if pos + 8 > n:
            return None
    else:
        return (proto, src, dst, -1, -1), False
    opens = proto == PROTO_TCP and pkt[pos + 13] & 0x12 == 0x02
    return (proto, src, dst, (pkt[pos] << 8) | pkt[pos + 1],
            (pkt[pos + 2] << 8) | pkt[pos + 3]), opens


def _is_icmp(flow: Flow) -> bool:
    return flow[0] == (_ICMP4 if len(flow[1]) == 4 else _ICMP6)


def table_args(table: PolicyTable) -> tuple[list[ChainArgs], dict[bytes, int], int, int]:
    """A PolicyTable as `set_table` takes it (the C filter takes plain tuples): chains as
    (default_allow, default_counter, [(allow, proto, port_lo, port_hi, counter)]), by_peer,
    fallback, and how many counters there are."""
    chains: list[ChainArgs] = [
        (c.default_allow, c.default_counter,
         [(r.allow, r.proto, r.port_lo, r.port_hi, r.counter) for r in c.rules])
        for c in table.chains]
    return chains, dict(table.by_peer), table.fallback, len(table.rules)


@dataclass(frozen=True, slots=True)
class PolicyCounters:
    """Packets per rule (indexed like PolicyTable.rules) and verdicts by reason: drops
    "policy" (a rule or the default denied) and "unparsed" (fail closed); passes "allowed"
    (by a rule or the default), "reply" (a tracked flow) and "icmp". `evicted` counts live
    flows pushed out of a full conntrack table."""

    rule_packets: tuple[int, ...] = ()
    reasons: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    evicted: int = 0


class PolicyFilterLike(Protocol):
    """The filter as the engine uses it: PyPolicyFilter or the C PolicyFilter."""

    def set_table(self, chains: Sequence[ChainArgs], by_peer: dict[bytes, int],
                  fallback: int, n_counters: int, /) -> None: ...

    def check(self, key: bytes | None, packet: bytes, now: float, /) -> tuple[int, int]: ...

    def filter(self, key: bytes | None, packets: list[bytes], start: int, now: float,
               /) -> None: ...

    def track(self, reads: Sequence[bytes], offset: int, now: float,
              key: bytes | None = None, /) -> None: ...

    def take_counts(self) -> tuple[tuple[int, ...], tuple[int, ...], int]: ...

    def clear(self) -> None: ...


class PyPolicyFilter:
    """The reference filter: a compiled table, a conntrack table, counters since take_counts."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self.conntrack = Conntrack(capacity)
        self._chains: list[Chain] = [Chain((), True, 0)]
        self._by_peer: dict[bytes, int] = {}
        self._fallback = 0
        self._rule_packets = [0]
        self._reasons = [0] * len(REASONS)
        self._evicted_taken = 0

    def set_table(self, chains: Sequence[ChainArgs], by_peer: dict[bytes, int],
                  fallback: int, n_counters: int, /) -> None:
        """Install a compiled table (`table_args`); the rule counters start again at zero,
        the flows stay. Raises ValueError for an index out of range."""
        if not chains or not 0 <= fallback < len(chains) or n_counters < 1:
            raise ValueError("policy table: no chains, or a bad fallback")
        built: list[Chain] = []
        for default_allow, default_counter, rules in chains:
            rs = tuple(FlatRule(bool(a), int(p), int(lo), int(hi), int(c))
                       for a, p, lo, hi, c in rules)
            if any(not 0 <= r.counter < n_counters for r in rs) or not (
                    0 <= default_counter < n_counters):
                raise ValueError("policy table: a counter out of range")
            built.append(Chain(rs, bool(default_allow), int(default_counter)))
        if any(len(k) != 32 or not 0 <= i < len(chains) for k, i in by_peer.items()):
            raise ValueError("policy table: by_peer maps 32-byte keys to chain indices")
        self._chains = built
        self._by_peer = dict(by_peer)
        self._fallback = fallback
        self._rule_packets = [0] * n_counters

    def check(self, key: bytes | None, packet: bytes, now: float, /) -> tuple[int, int]:
        """The verdict on one packet from the peer `key`, and the counter that counted it
        (-1 for UNPARSED, ICMP and REPLY); counted."""
        verdict, counter = self._judge(key, packet, now)
        self._reasons[verdict] += 1
        if counter >= 0:
            self._rule_packets[counter] += 1
        return verdict, counter

    def _chain(self, key: bytes | None) -> Chain:
        return self._chains[
            self._fallback if key is None else self._by_peer.get(key, self._fallback)]

    def _judge(self, key: bytes | None, packet: bytes, now: float) -> tuple[int, int]:
        flow = classify(packet)
        if flow is None:
            return UNPARSED, -1
        if _is_icmp(flow):
            return ICMP, -1
        proto, src, dst, sport, dport = flow
        has_ports = sport >= 0
        chain = self._chain(key)
        allow, counter = decide(chain, proto, dport if has_ports else None)
        if allow:
            return ALLOW, counter
        if has_ports and self.conntrack.seen(flow_key(proto, dst, dport, src, sport), now):
            return REPLY, -1
        return DENY, counter

    def filter(self, key: bytes | None, packets: list[bytes], start: int, now: float,
               /) -> None:
        """Remove from packets[start:] (all from the peer `key`) those that may not pass."""
        kept = [p for p in packets[start:] if self.check(key, p, now)[0] in (ALLOW, REPLY,
                                                                            ICMP)]
        packets[start:] = kept

    def track(self, reads: Sequence[bytes], offset: int, now: float,
              key: bytes | None = None, /) -> None:
        """Learn the TCP/UDP flows of packets this node sends to the peer `key` (each read's
        IP packet starts at `offset`: 10 with virtio-net headers): a TCP SYN without ACK
        always, anything else only when that peer's chain denies its replies. An answer whose
        replies the rules let in needs no entry (it would only let them keep passing once the
        rules deny them, and a peer could fill the table with a service's answers)."""
        note, flows = self.conntrack.note, self.conntrack.flows
        chain = self._chain(key)
        for r in reads:
            got = _classify(r, offset)
            if got is not None and got[0][3] >= 0:
                (proto, src, dst, sport, dport), opens = got
                k = flow_key(proto, src, sport, dst, dport)
                if k in flows or opens or not decide(chain, proto, sport)[0]:
                    note(k, proto, now)  # refreshed, or created

    def take_counts(self) -> tuple[tuple[int, ...], tuple[int, ...], int]:
        """Rule counters, reason counters and evictions since the previous call."""
        rules, self._rule_packets = tuple(self._rule_packets), [0] * len(self._rule_packets)
        reasons, self._reasons = tuple(self._reasons), [0] * len(REASONS)
        evicted = self.conntrack.evicted - self._evicted_taken
        self._evicted_taken = self.conntrack.evicted
        return rules, reasons, evicted

    def clear(self) -> None:
        """Forget every flow."""
        self.conntrack.clear()
