"""Kernel mode's policy enforcement: the compiled table as nftables rules on the mesh interface
(the rules are policy/nft_rules.py's; docs/policy.md#kernel-mode).

    kp = KernelPolicy("mg0")
    kp.apply(table, peer_sources)   # one `nft -f -` transaction replaces the whole table
    kp.counters()                   # PolicyCounters, as the userspace engine's
    kp.close()                      # the nft table is gone (also a stale one, at start)

`apply` with an inactive table removes the nft table. Replacing the table resets nft's
counters, so before a replacement that keeps the same PolicyTable (the peers' sources
changed) the counts so far are read and carried over; a new PolicyTable starts from zero, as
the engine's counters do. Blocking: each call runs `nft` once or twice (a few milliseconds).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from meshguard.daemon.kernel_wg import KernelPeer
from meshguard.daemon.nft import NftError, run_nft
from meshguard.dataplane.policy_filter import PolicyCounters
from meshguard.errors import MeshguardError
from meshguard.policy.nft_rules import (
    NftCounts,
    read_counts,
    removal_script,
    render_ruleset,
    table_name,
)
from meshguard.policy.table import ALLOW_ALL, IPNetwork, PolicyTable

log = logging.getLogger("meshguard.policy")

class KernelPolicyError(MeshguardError):
    """nft refused the ruleset or could not be run."""


class KernelPolicy:
    def __init__(self, ifname: str, nft: Sequence[str] = ("nft",)) -> None:
        """`nft` is the command line that runs nft (e.g. inside a namespace, for tests)."""
        self.ifname = ifname
        self.name = table_name(ifname)
        self._nft = list(nft)
        self.table: PolicyTable = ALLOW_ALL
        self.sources: dict[bytes, tuple[IPNetwork, ...]] = {}
        self.installed = False  # the nft table exists (as far as we know)
        self._carried = NftCounts()

    def _run(self, args: Sequence[str], script: str | None = None) -> str:
        try:
            return run_nft(args, script, self._nft)
        except NftError as exc:
            raise KernelPolicyError(str(exc)) from None

    def apply(self, table: PolicyTable,
              peer_sources: Mapping[bytes, Sequence[IPNetwork]]) -> None:
        """Enforce `table` on the interface; `peer_sources` maps each peer's WireGuard key to
        its allowed IPs. Raises KernelPolicyError (the old rules stay in force then)."""
        sources = {k: tuple(v) for k, v in peer_sources.items()}
        same = table is self.table or table == self.table
        carried = NftCounts()
        if same and self.installed and table.active:
            carried.add(self._carried)
            try:
                carried.add(self._read())
            except KernelPolicyError as exc:  # removed behind our back: it is made anew
                log.warning("reading the policy counters before a replacement: %s", exc)
        self._run(["-f", "-"], render_ruleset(self.ifname, table, sources))
        self.table, self.sources = table, sources
        self.installed = table.active
        self._carried = carried if table.active else NftCounts()

    def track(self, peers: Sequence[KernelPeer]) -> bool:
        """Follow what the kernel device was told (kernel_wg.py KernelPeer): a removed peer's
        sources go, a peer's replaced allowed IPs become its sources. True when they
        changed."""
        sources = dict(self.sources)
        for p in peers:
            if p.remove:
                sources.pop(p.public_key, None)
            elif p.replace_allowed_ips:
                sources[p.public_key] = tuple(p.allowed_ips)
            elif p.allowed_ips:
                old = sources.get(p.public_key, ())
                sources[p.public_key] = old + tuple(n for n in p.allowed_ips if n not in old)
        changed = sources != self.sources
        self.sources = sources
        return changed

    def peers_set(self, peers: Sequence[KernelPeer]) -> None:
        """`track`, and apply the rules again at once when a table is in force."""
        if self.track(peers) and self.table.active:
            self.apply(self.table, self.sources)

    def _read(self) -> NftCounts:
        return read_counts(self._run(["-j", "-t", "list", "table", "inet", self.name]),
                           len(self.table.rules))

    def counters(self) -> PolicyCounters:
        """The counts since the table was set; zeros when no table is installed. The kernel's
        conntrack evicts no flow of ours, so `evicted` stays 0."""
        total = NftCounts([0] * len(self.table.rules))
        total.add(self._carried)
        if self.installed:
            try:
                total.add(self._read())
            except KernelPolicyError as exc:
                log.warning("reading the policy counters: %s", exc)
        return PolicyCounters(tuple(total.rule_packets[:len(self.table.rules)]),
                                    dict(total.reasons))

    def close(self) -> None:
        """Remove the nft table, ours or one a killed daemon left on this interface."""
        self._run(["-f", "-"], removal_script(self.ifname))
        self.installed = False
        self.table = ALLOW_ALL
        self._carried = NftCounts()
