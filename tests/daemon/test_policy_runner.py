"""The daemon's policy runner without a network (daemon/policy_runner.py): a malformed
services file stops `up` with one "FILE:LINE:" line, a reload that fails keeps the last good
policies, a policy `meshguard org-policy sign` wrote is taken on reload, and `meshguard policy`
prints what the `policy` op reports."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from meshguard.cli.policy_view import format_policy
from meshguard.crypto.keys import Ed25519PrivateKey, X25519PrivateKey, b64encode
from meshguard.daemon.policy_runner import PolicyRunner
from meshguard.daemon.trust_holder import TrustHolder
from meshguard.identity import store as files
from meshguard.identity.certificate import sign_certificate
from meshguard.identity.trust import TrustStore
from meshguard.mesh.node import MeshNode
from meshguard.policy.rules import PolicyError
from meshguard.policy.signed import sign_policy
from meshguard.policy.store import PolicyStore
from meshguard.policy.table import PolicyTable, RouteGrant
from meshguard.testing.rng import SeededRng

ORG = Ed25519PrivateKey(bytes(range(32)))


def config(tmp: Path, global_rules: str | None = "allow tcp 22\ndeny all\n") -> Path:
    cfg = tmp / "cfg"
    (cfg / files.TRUSTED_ORGS).mkdir(parents=True)
    (cfg / files.TRUSTED_ORGS / "fleet.org").write_bytes(
        files.public_key_file(ORG.public_key.raw))
    if global_rules is not None:
        (cfg / "services").mkdir()
        (cfg / "services" / "global.policy").write_text(global_rules)
    return cfg


def test_a_malformed_services_file_is_one_line_naming_file_and_line(tmp_path: Path) -> None:
    cfg = config(tmp_path, "allow tcp 22\nallow tcp 99999\n")
    with pytest.raises(PolicyError) as e:
        PolicyRunner.load(cfg, TrustStore.load(cfg))
    assert str(e.value).startswith("services/global.policy:2: ")
    assert "\n" not in str(e.value)


def test_a_failed_reload_keeps_the_last_good_policies(tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    cfg = config(tmp_path)
    trust = TrustStore.load(cfg)
    runner = PolicyRunner.load(cfg, trust)
    good = runner.local
    assert len(good.global_rules) == 2
    (cfg / "services" / "global.policy").write_text("allow tcp 22\nallow sctp 1\n")
    with caplog.at_level(logging.ERROR, logger="meshguard.policy"):
        runner.reload(trust)
    assert runner.local is good
    assert runner.last_error is not None and "global.policy:2" in runner.last_error
    assert len([r for r in caplog.records if "keeping the last good" in r.getMessage()]) == 1
    # fixed: the next reload takes it and clears the error
    (cfg / "services" / "global.policy").write_text("allow tcp 23\n")
    runner.reload(trust)
    assert runner.last_error is None and len(runner.local.global_rules) == 1


def test_reload_takes_a_newer_signed_policy_from_policies_dir(tmp_path: Path) -> None:
    cfg = config(tmp_path, None)
    trust = TrustStore.load(cfg)
    runner = PolicyRunner.load(cfg, trust)
    assert runner.store.newest(ORG.public_key.raw) is None
    sp = sign_policy(ORG, "to *\nallow tcp 22\n", 7, 0)
    assert PolicyStore.load(cfg).offer(sp, {ORG.public_key.raw}) == "accepted"  # the CLI's way
    runner.reload(trust)
    assert runner.store.newest(ORG.public_key.raw) == sp
    older = sign_policy(ORG, "to *\nallow tcp 23\n", 6, 0)
    (cfg / "policies").joinpath(next(p.name for p in (cfg / "policies").iterdir())
                                ).write_bytes(older.raw)
    runner.reload(trust)
    assert runner.store.newest(ORG.public_key.raw) == sp  # an older file changes nothing
    # and is written again, so a restart does not roll the policy back
    assert PolicyStore.load(cfg).newest(ORG.public_key.raw) == sp


def test_a_corrupt_policy_file_at_reload_is_a_counted_warning_and_the_policy_stays(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = config(tmp_path, None)
    trust = TrustStore.load(cfg)
    sp = sign_policy(ORG, "to *\nallow tcp 22\n", 7, 0)
    assert PolicyStore.load(cfg).offer(sp, {ORG.public_key.raw}) == "accepted"
    runner = PolicyRunner.load(cfg, trust)
    path = next((cfg / "policies").iterdir())
    path.write_bytes(sp.raw[:-1] + bytes([sp.raw[-1] ^ 1]))  # a flipped signature bit
    with caplog.at_level(logging.WARNING, logger="meshguard.policy"):
        runner.reload(trust)
    assert runner.store.newest(ORG.public_key.raw) == sp
    assert runner.store.counts["bad_file"] == 1
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 2 and all(path.name in w and "\n" not in w for w in warned)
    # the file holds the policy in force again: a restart keeps it
    assert path.read_bytes() == sp.raw
    assert PolicyStore.load(cfg).newest(ORG.public_key.raw) == sp


def test_meshguard_policy_prints_sources_rules_counters_and_refusals() -> None:
    rep: dict[str, object] = {
        "mode": "userspace", "active": True, "enforced": True,
        "sources": [{"kind": "local", "source": "services/global.policy", "rules": 2},
                    {"kind": "org", "source": "org fleet (serial 7)", "serial": 7,
                     "digest": "ab" * 16, "issued_at": 5, "routes": 0}],
        "rules": [{"source": "services/global.policy", "line": 1, "text": "allow tcp 22",
                   "packets": 12},
                  {"source": "services/global.policy", "line": 2, "text": "deny all",
                   "packets": 3}],
        "reasons": {"policy": 3, "unparsed": 1, "allowed": 12, "reply": 9, "icmp": 0},
        "refused": {"older": 2, "invalid": 1},
        "gossip": {"policy_digest_mismatch": 1, "policy_chunk_served": 40},
        "transfers": [], "grants": [], "last_error": None,
    }
    out = format_policy(rep)
    assert out.splitlines()[0] == "policy: enforced"
    assert "org fleet (serial 7)  digest abababababababab" in out
    assert "       12  services/global.policy:1  allow tcp 22" in out
    assert "dropped: policy 3, unparsed 1" in out
    assert "refused policies: invalid 1, older 2" in out
    assert "gossip dropped: digest_mismatch 1" in out
    kernel = format_policy({**rep, "mode": "kernel"})
    assert kernel.startswith("policy: enforced by nftables (kernel mode)\n")
    refused = format_policy({**rep, "mode": "kernel", "enforced": False})
    assert refused.startswith("policy: not enforced: nft refused the rules")


class _NoMembers:
    """A membership with no other member yet (the runner reads only `members`)."""

    def members(self) -> list[object]:
        return []


@dataclass
class _Sink:
    tables: list[PolicyTable] = field(default_factory=list)
    grants: list[tuple[RouteGrant, ...]] = field(default_factory=list)

    def set_policy(self, table: PolicyTable) -> None:
        self.tables.append(table)

    def set_grants(self, grants: Sequence[RouteGrant]) -> None:
        self.grants.append(tuple(grants))


def test_the_table_goes_to_the_engine_and_own_grants_to_a_route_manager_started_later(
        tmp_path: Path) -> None:
    cfg = config(tmp_path, None)
    me = Ed25519PrivateKey(bytes(range(2, 34)))
    cert = sign_certificate(ORG, me.public_key.raw, "gw-1", 0)
    sp = sign_policy(ORG, "default deny\nroute 10.20.0.0/24 via gw-1\n", 3, 0)
    assert PolicyStore.load(cfg).offer(sp, {ORG.public_key.raw}) == "accepted"
    trust = TrustStore.load(cfg)
    holder = TrustHolder(trust)
    wg = X25519PrivateKey.generate(bytes(32))
    node = MeshNode(me.public_key.raw, wg.public_key.raw, _NoMembers(),  # type: ignore[arg-type]
                    holder, certificate=cert.to_bytes())
    runner = PolicyRunner.load(cfg, trust)
    engine = _Sink()
    routes: list[_Sink] = []
    runner.attach(node, SeededRng(1), wg, lambda: 1e9, engine,
                  lambda: routes[0] if routes else None)
    assert node.policy is not None and node.policy.held[ORG.public_key.raw] == sp  # announced
    assert len(engine.tables) == 1 and engine.tables[0].active  # default deny is in force
    assert [str(g.prefix) for g in runner.grants] == ["10.20.0.0/24"]
    assert runner.grants[0].member == me.public_key.raw  # this node's own grant
    routes.append(_Sink())  # the route manager starts after the runner
    runner.recompile("members changed")
    assert routes[0].grants == [runner.grants]
    runner.recompile("members changed")
    assert len(routes[0].grants) == 1  # unchanged grants are not pushed again
    rep = runner.report(None)
    assert rep["sources"] == [{"kind": "org", "source": "org fleet (serial 3)",
                               "org_key": b64encode(ORG.public_key.raw), "serial": 3,
                               "digest": sp.digest.hex(), "issued_at": 0, "routes": 1}]
    assert rep["active"] and not rep["enforced"]  # no counters: nothing reported enforcing
