"""The kernel runner's policy wiring (daemon/kernel_runner.py set_policy, daemon/kernel_policy.py):
which nft scripts it runs, for which tables and sources, and when. The scripts are rendered
for real; only running them is recorded (the namespace test loads them into a kernel:
test_kernel_policy_netns.py)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Sequence
from pathlib import Path

import pytest

from meshguard.clock import SystemClock
from meshguard.crypto.keys import Ed25519PrivateKey, X25519PrivateKey
from meshguard.daemon.daemon_config import DaemonConfig
from meshguard.daemon.kernel_policy import KernelPolicy, KernelPolicyError
from meshguard.daemon.kernel_runner import POLICY_DELAY, KernelRunner
from meshguard.daemon.policy_runner import PolicyRunner
from meshguard.daemon.trust_holder import TrustHolder
from meshguard.identity.trust import TrustStore
from meshguard.mesh.actions import PeerConfig, PeerDown, PeerUp
from meshguard.mesh.node import MeshNode
from meshguard.policy.table import ALLOW_ALL, PROTO_TCP, Chain, FlatRule, PolicyTable, RuleInfo
from meshguard.testing.rng import SeededRng

from .helpers import RecordingKernel

IF = "mgk-pol"


class RecordingPolicy(KernelPolicy):
    def __init__(self) -> None:
        super().__init__(IF)
        self.scripts: list[str] = []
        self.fail = False

    def _run(self, args: Sequence[str], script: str | None = None) -> str:
        if self.fail:
            raise KernelPolicyError("nft: Error: Could not process rule: No such file")
        if script is not None:
            self.scripts.append(script)
            return ""
        return '{"nftables": []}'


def runner() -> tuple[KernelRunner, RecordingPolicy]:
    r = KernelRunner(DaemonConfig(IF, 51821, [], kernel=True, env={}), SystemClock(),
                     lambda actions: None)
    r.kernel = RecordingKernel(IF)
    pol = RecordingPolicy()
    r.policy = pol
    return r, pol


def up(n: int) -> PeerUp:
    nets = (ipaddress.ip_network(f"10.9.0.{n}/32"),)
    return PeerUp(PeerConfig(bytes([n]) * 32, bytes([n + 100]) * 32, None, nets, 0))


TABLE = PolicyTable(True, (Chain((FlatRule(True, PROTO_TCP, 22, 22, 0),), False, 1),), {}, 0,
                    (RuleInfo("g", 1, "allow tcp 22"), RuleInfo("default", 0, "deny")))


def test_no_policy_runs_no_nft_and_a_table_carries_the_peers_sources() -> None:
    r, pol = runner()
    r.peers_changed([up(1), up(2)])
    assert pol.scripts == []  # a node without policies pays nothing
    r.set_policy(TABLE)
    assert len(pol.scripts) == 1
    assert "10.9.0.1 : goto c0, 10.9.0.2 : goto c0" in pol.scripts[0]
    r.peers_changed([PeerDown(bytes([1]) * 32, bytes([101]) * 32, "gone")])
    assert len(pol.scripts) == 2 and "10.9.0.1 " not in pol.scripts[1]
    r.set_policy(ALLOW_ALL)
    assert pol.scripts[-1].endswith("delete table inet meshguard_policy_mgk_pol\n")
    assert not pol.installed


def test_a_burst_of_peer_changes_reaches_nft_once() -> None:
    async def main() -> list[str]:
        r, pol = runner()
        r.set_policy(TABLE)
        for n in range(1, 6):
            r.peers_changed([up(n)])
        await asyncio.sleep(POLICY_DELAY * 3)
        return pol.scripts

    scripts = asyncio.run(main())
    assert len(scripts) == 2
    assert all(f"10.9.0.{n} : goto c0" in scripts[1] for n in range(1, 6))


def test_nft_refusing_keeps_the_runner_going(caplog: pytest.LogCaptureFixture) -> None:
    r, pol = runner()
    pol.fail = True
    with caplog.at_level(logging.ERROR, "meshguard.daemon"):
        r.set_policy(TABLE)
    assert "kernel policy not applied" in caplog.text
    assert pol.table is ALLOW_ALL and not pol.installed  # what is in force is unchanged
    assert r.policy_counters() is None  # `meshguard policy`: not enforced
    pol.fail = False
    r.peers_changed([up(1)])  # the next change tries again
    assert pol.installed and pol.table is TABLE
    counters = r.policy_counters()
    assert counters is not None and counters.rule_packets == (0, 0)


class _NoMembers:
    def members(self) -> list[object]:
        return []


def test_the_policy_runner_hands_kernel_mode_its_table_and_reports_nfts_counts(
        tmp_path: Path) -> None:
    # what mesh_daemon.py wires in kernel mode: the kernel runner in the engine's place
    cfg = tmp_path / "cfg"
    (cfg / "services").mkdir(parents=True)
    (cfg / "services" / "global.policy").write_text("allow tcp 22\ndeny all\n")
    trust = TrustStore.load(cfg)
    me, wg = Ed25519PrivateKey(bytes(range(2, 34))), X25519PrivateKey(bytes(range(3, 35)))
    node = MeshNode(me.public_key.raw, wg.public_key.raw, _NoMembers(),  # type: ignore[arg-type]
                    TrustHolder(trust))
    kr, pol = runner()
    kr.peers_changed([up(1)])
    policies = PolicyRunner.load(cfg, trust)
    policies.attach(node, SeededRng(1), wg, lambda: 1e9, kr, kernel=True)
    assert pol.table is policies.table and pol.table.active
    assert len(pol.scripts) == 1
    assert "tcp dport 22 counter accept" in pol.scripts[0]
    assert "10.9.0.1 : goto c" in pol.scripts[0]
    rep = policies.report(kr.policy_counters())
    assert rep["mode"] == "kernel" and rep["enforced"] is True
    rules = rep["rules"]
    assert isinstance(rules, list) and len(rules) == len(pol.table.rules)
    assert all(r["packets"] == 0 for r in rules)
