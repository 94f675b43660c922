"""The daemon's policies: files, signed policies and members in, a PolicyTable and route
grants out (docs/policy.md).

* `load` (at `up`, before anything is created): reads `services/` (policy/service_files.py; a
  malformed file stops `up` with one line "FILE:LINE: ...") and the signed policies in
  `policies/` (policy/store.py);
* `attach` gives the node its policy gossip core (mesh/policy_gossip.py), whose complete,
  digest-checked blobs go to PolicyStore.offer (one signature check, an atomic write), and
  announces the newest policy of every trusted org the store holds;
* `recompile` builds a MemberInfo for every member with a tunnel (its name and orgs from its
  admission: a certificate or a vouch) and pushes the compiled table to the data-plane engine
  (`Engine.set_policy`) and the grants to the route manager (`set_grants`, when there is one).
  It runs at start, on membership changes (coalesced), on a policy learned by gossip and on a
  trust reload (the trust poller watches `services/` and `policies/` too: identity/trust.py
  trust_stamp). A reload that fails keeps the last good table and logs one line saying so;
* `report` is the `policy` control op: sources, rules with per-rule packet counters, drops by
  reason, refused policies by reason, transfers in progress (`meshguard policy`).

In kernel mode the kernel runner takes the table instead of the engine (KernelRunner.set_policy:
nftables on the link, daemon/kernel_policy.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from meshguard.crypto.keys import X25519PrivateKey, b64encode
from meshguard.errors import MeshguardError
from meshguard.identity import store as files
from meshguard.identity.certificate import NodeCertificate
from meshguard.identity.trust import TrustStore
from meshguard.mesh.node import MeshNode
from meshguard.mesh.policy_gossip import PolicyGossip
from meshguard.policy.compiler import compile_table, org_label, route_grants
from meshguard.policy.service_files import LocalPolicies, load_services
from meshguard.policy.signed import SignedPolicy
from meshguard.policy.store import PolicyStore, policy_file_name
from meshguard.policy.table import ALLOW_ALL, MemberInfo, PolicyTable, RouteGrant
from meshguard.rng import Rng

log = logging.getLogger("meshguard.policy")

RECOMPILE_DELAY = 0.02  # seconds: membership changes that come together compile once


class PolicyCounters(Protocol):
    """What the engine counts (dataplane/policy_filter.py PolicyCounters)."""

    @property
    def rule_packets(self) -> tuple[int, ...]: ...

    @property
    def reasons(self) -> dict[str, int]: ...

    @property
    def evicted(self) -> int: ...


def _cert(raw: bytes | None) -> NodeCertificate | None:
    if raw is None:
        return None
    try:
        return NodeCertificate.from_bytes(raw)
    except (MeshguardError, ValueError):
        return None


def member_infos(node: MeshNode, wall: float) -> list[MemberInfo]:
    """Every member with a tunnel, with its name and the orgs whose certificate or vouch
    admits it, as its admission says (identity/trust.py Admission)."""
    views = {m.identity_key: m for m in node.membership.members()}
    out = []
    for peer in node.peers.values():
        view = views.get(peer.identity_key)
        if view is None:
            continue
        adm = node.admission(view, wall)
        out.append(MemberInfo(peer.identity_key, peer.wg_key, adm.name,
                              adm.orgs if adm.admitted else ()))
    return out


def self_info(node: MeshNode) -> MemberInfo:
    cert = _cert(node.certificate)
    return MemberInfo(node.identity_key, node.wg_key, cert.name if cert else None,
                      (cert.org_key,) if cert else ())


@dataclass
class PolicyRunner:
    config_dir: Path
    local: LocalPolicies
    store: PolicyStore
    node: MeshNode | None = None
    engine: object | None = None  # the data-plane engine: Engine.set_policy(table)
    routes: Callable[[], object | None] = lambda: None  # the route manager, once it runs
    kernel: bool = False
    table: PolicyTable = ALLOW_ALL
    grants: tuple[RouteGrant, ...] = ()
    org_names: dict[bytes, str] = field(default_factory=dict)
    last_error: str | None = None
    compiles: int = 0
    _granted_to: object | None = None
    _wall: Callable[[], float] = lambda: 0.0
    _pending: asyncio.Handle | None = None

    @classmethod
    def load(cls, config_dir: Path, trust: TrustStore) -> PolicyRunner:
        """Read `services/` and `policies/`; PolicyError ("FILE:LINE: ...") stops `up`."""
        local = load_services(config_dir, trust)
        for p in local.problems:
            log.warning("services: %s", p)
        store = PolicyStore.load(config_dir)
        for p in store.problems:
            log.warning("policies: %s", p)
        return cls(config_dir, local, store, org_names=_org_names(trust))

    def attach(self, node: MeshNode, rng: Rng, wg_private: X25519PrivateKey,
               wall: Callable[[], float], engine: object | None,
               routes: Callable[[], object | None] = lambda: None, kernel: bool = False
               ) -> None:
        self.node, self.engine, self.routes, self.kernel, self._wall = (
            node, engine, routes, kernel, wall)
        node.policy = PolicyGossip(rng, wg_private, identity_key=node.identity_key,
                                   offer=self._offer)
        self._hold_newest()
        self.recompile("start")

    def _trusted(self) -> frozenset[bytes]:
        return self.node.trusted_orgs() if self.node is not None else frozenset()

    def _offer(self, sp: SignedPolicy) -> str:
        return self.store.offer(sp, self._trusted())

    def _hold_newest(self) -> None:
        core = self.node.policy if self.node is not None else None
        if core is None:
            return
        for sp, _ in self.store.in_force(self._trusted()):
            core.hold(sp)

    # triggers ----------------------------------------------------------------------------

    def members_changed(self) -> None:
        """Tunnels came or went: recompile soon (one compile for a burst of changes)."""
        if self._pending is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.recompile("members changed")
            return
        self._pending = loop.call_later(RECOMPILE_DELAY, self._flush)

    def _flush(self) -> None:
        self._pending = None
        self.recompile("members changed")

    def learned(self, sp: SignedPolicy) -> None:
        log.info("%s arrived by gossip (digest %s): in force now",
                 org_label(sp, self.org_names), sp.digest.hex())
        self.recompile("new policy")

    def reload(self, trust: TrustStore) -> None:
        """The config dir changed (trust poller or SIGHUP): `services/` and `policies/` again;
        on an error the last good policies stay in force. A corrupt or older file in
        `policies/` is a counted warning and is written again with the policy in force."""
        self.org_names = _org_names(trust)
        try:
            local = load_services(self.config_dir, trust)
        except MeshguardError as exc:
            self.last_error = str(exc)
            log.error("policy reload failed, keeping the last good policies: %s", exc)
            return
        self.local = local
        fresh = PolicyStore.load(self.config_dir)
        for p in fresh.problems:  # a corrupt file: counted and named; the held policy stays
            log.warning("policies: %s", p)
        self.store.counts["bad_file"] += fresh.counts["bad_file"]
        for org, (sp, op) in fresh.held.items():
            old = self.store.newest(org)
            if old is None or sp.serial > old.serial:
                self.store.held[org] = (sp, op)  # `meshguard org-policy sign` wrote it
        self._restore_files(fresh)
        self.last_error = None
        self._hold_newest()
        self.recompile("reload")

    def _restore_files(self, on_disk: PolicyStore) -> None:
        """A policy file that is corrupt or older than the policy in force is written again
        (atomically), so a restart does not fall back to less than what is in force."""
        directory = self.store.directory
        if directory is None:
            return
        for org, (sp, _) in self.store.held.items():
            there = on_disk.newest(org)
            path = directory / policy_file_name(org)
            if (there is None or there.serial < sp.serial) and path.exists():
                try:
                    files.write_file(path, sp.raw)
                except MeshguardError as exc:
                    log.warning("policies: %s", exc)
                    continue
                log.warning("policies: %s held less than the policy in force (%s); "
                            "written again", path, org_label(sp, self.org_names))

    # compile -----------------------------------------------------------------------------

    def recompile(self, why: str) -> None:
        node = self.node
        if node is None:
            return
        wall = self._wall()
        members = member_infos(node, wall)
        in_force = self.store.in_force(self._trusted())
        try:
            me = self_info(node)
            table = compile_table(self.local, in_force, me, members, self.org_names)
            # this node's own grants too: they turn forwarding on where it routes
            grants = route_grants(in_force, [*members, me], self.org_names)
            set_policy = getattr(self.engine, "set_policy", None)
            if set_policy is not None:  # the engine, or the kernel runner (nftables)
                set_policy(table)
        except (MeshguardError, ValueError) as exc:
            self.last_error = f"{why}: {exc}"
            log.error("policy compile failed (%s), keeping the last good table: %s", why, exc)
            return
        self.table, self.compiles = table, self.compiles + 1
        sink = self.routes()
        if grants != self.grants or sink is not self._granted_to:
            self.grants, self._granted_to = grants, sink
            set_grants = getattr(sink, "set_grants", None)
            if set_grants is not None:
                set_grants(grants)
        log.debug("policy compiled (%s): %d chains, %d rules, %d grants", why,
                  len(table.chains), len(table.rules), len(grants))

    # report ------------------------------------------------------------------------------

    def report(self, counters: PolicyCounters | None) -> dict[str, object]:
        """The `policy` control op's answer; `counters` is the engine's (or the kernel
        runner's), None when nothing enforces the table (nft refused it)."""
        loc = self.local
        sources: list[dict[str, object]] = []
        if loc.configured:
            sources.append({"kind": "local", "source": "services/default",
                            "default": None if loc.default_allow is None
                            else ("allow" if loc.default_allow else "deny")})
            if loc.global_rules:
                sources.append({"kind": "local", "source": "services/global.policy",
                                "rules": len(loc.global_rules)})
            for s in (*loc.peers, *loc.orgs):
                sources.append({"kind": "local", "source": s.source, "rules": len(s.rules),
                                "resolved": s.key is not None})
        trusted = self._trusted()
        for sp, op in self.store.in_force(trusted):
            sources.append({"kind": "org", "source": org_label(sp, self.org_names),
                            "org_key": b64encode(sp.org_key), "serial": sp.serial,
                            "digest": sp.digest.hex(), "issued_at": sp.issued_at,
                            "routes": len(op.routes)})
        packets = counters.rule_packets if counters is not None else ()
        rules = [{"source": r.source, "line": r.line, "text": r.text,
                  "packets": packets[i] if i < len(packets) else 0}
                 for i, r in enumerate(self.table.rules)]
        core = self.node.policy if self.node is not None else None
        gossip = {k: v for k, v in sorted(core.counters.items())} if core else {}
        refused = {k: v for k, v in self.store.counts.items()
                   if k not in ("accepted", "held") and v}
        return {
            "enforced": self.table.active and counters is not None,
            "mode": "kernel" if self.kernel else "userspace",
            "active": self.table.active,
            "sources": sources,
            "rules": rules,
            "reasons": dict(counters.reasons) if counters is not None else {},
            "conntrack_evicted": counters.evicted if counters is not None else 0,
            "refused": refused,
            "gossip": gossip,
            "transfers": [{"org_key": b64encode(it.org_key), "serial": it.serial,
                           "size": it.size, "received": got}
                          for it, got in (core.transfers() if core else [])],
            "grants": [{"member": b64encode(g.member), "prefix": str(g.prefix),
                        "source": g.source} for g in self.grants],
            "last_error": self.last_error,
        }


def _org_names(trust: TrustStore) -> dict[bytes, str]:
    out: dict[bytes, str] = {}
    for name, key in sorted(trust.orgs.items()):
        out.setdefault(key, name)
    return out


__all__ = ["PolicyRunner", "member_infos", "self_info"]
