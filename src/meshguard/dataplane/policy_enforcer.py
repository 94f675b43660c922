"""The engine's policy state: the table in force, its filter, the counters harvested so far.

    enf = PolicyEnforcer(rng)
    pf = enf.set_table(table)      # the filter the data paths call, None for no policy
    enf.filter                     # the same (ReceiveBatch, seal_reads, the data-path thread)
    enf.counters()                 # PolicyCounters since the rules last changed

Engine.set_policy / Engine.policy_counters (dataplane/engine.py) are these calls. The filter is
the C PolicyFilter when the C fast path is in use, else policy_filter.PyPolicyFilter; it is
made once, so the flows it tracks survive a new table. With an inactive table the filter is
dropped from every path (`filter` is None: one test per batch) and nothing is tracked. Rule
counters are kept across a new table whose rules (PolicyTable.rules) are the same ones, and
start again at zero when they change (their indices name other rules then).
"""

from __future__ import annotations

from collections.abc import Callable

from meshguard.dataplane import fastpath
from meshguard.dataplane.policy_filter import (
    ALLOW,
    ICMP,
    REASONS,
    REPLY,
    PolicyCounters,
    PolicyFilterLike,
    PyPolicyFilter,
    table_args,
)
from meshguard.policy.table import ALLOW_ALL, PolicyTable
from meshguard.rng import Rng, SystemRng
from meshguard.wireguard.peer import Peer

__all__ = ["PolicyEnforcer"]


class PolicyEnforcer:
    """See the module docstring."""

    def __init__(self, rng: Rng | None = None) -> None:
        self._rng = rng
        self.table: PolicyTable = ALLOW_ALL
        self.filter: PolicyFilterLike | None = None
        self._pf: PolicyFilterLike | None = None
        self._rules = [0] * len(ALLOW_ALL.rules)
        self._reasons = dict.fromkeys(REASONS, 0)
        self._evicted = 0

    def _make(self) -> PolicyFilterLike:
        cls = fastpath.PolicyFilter
        if cls is None:
            return PyPolicyFilter()
        rng = self._rng or SystemRng()
        return cls(seed=int.from_bytes(rng.bytes(8), "big"))

    def set_table(self, table: PolicyTable) -> PolicyFilterLike | None:
        """Put `table` in force; returns the filter to use (None: no policy). Raises
        ValueError for a table whose indices are out of range (the old one stays)."""
        self._harvest()
        if table.active:
            pf = self._pf
            if pf is None:
                pf = self._pf = self._make()
            pf.set_table(*table_args(table))
        elif self._pf is not None:
            self._pf.clear()  # no policy: nothing tracked, as if it never was
        if table.rules != self.table.rules:
            self._rules = [0] * len(table.rules)
        self.table = table
        self.filter = self._pf if table.active else None
        return self.filter

    def _harvest(self) -> None:
        if self._pf is None:
            return
        rules, reasons, evicted = self._pf.take_counts()
        if len(rules) == len(self._rules):
            for i, n in enumerate(rules):
                if n:
                    self._rules[i] += n
        for name, n in zip(REASONS, reasons, strict=True):
            self._reasons[name] += n
        self._evicted += evicted

    def counters(self) -> PolicyCounters:
        self._harvest()
        return PolicyCounters(tuple(self._rules), dict(self._reasons), self._evicted)

    def filter_writes(self, packets: list[bytes], route: Callable[[bytes], Peer | None],
                      now: float) -> list[bytes]:
        """Packets for the TUN from the slow path (the Device's WriteTun actions): each is
        judged by the chain of the peer its source address routes to, which is the peer it
        came from (the Device checked the source against that peer's allowed IPs)."""
        pf = self.filter
        if pf is None:
            return packets
        out: list[bytes] = []
        for p in packets:
            src = p[12:16] if p[:1] and p[0] >> 4 == 4 else p[8:24]
            peer = route(bytes(src)) if len(src) in (4, 16) else None
            key = peer.public_key.raw if peer is not None else None
            if pf.check(key, p, now)[0] in (ALLOW, REPLY, ICMP):
                out.append(p)
        return out
