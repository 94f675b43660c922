"""The kernel runner's policy wiring (daemon/kernel_runner.py set_policy, daemon/kernel_policy.py):
which nft scripts it runs, for which tables and sources, and when. The scripts are rendered
for real; only running them is recorded (the namespace test loads them into a kernel:
test_kernel_policy_netns.py)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Sequence

import pytest

from meshguard.clock import SystemClock
from meshguard.daemon.daemon_config import DaemonConfig
from meshguard.daemon.kernel_policy import KernelPolicy, KernelPolicyError
from meshguard.daemon.kernel_runner import POLICY_DELAY, KernelRunner
from meshguard.mesh.actions import PeerConfig, PeerDown, PeerUp
from meshguard.policy.table import ALLOW_ALL, PROTO_TCP, Chain, FlatRule, PolicyTable, RuleInfo

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
