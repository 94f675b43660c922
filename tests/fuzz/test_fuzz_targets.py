"""A bounded fuzz run of every target of meshguard/testing/fuzz.py (bench/fuzz.py runs a
million inputs per target): every codec that reads network or file bytes raises only its
documented error, the demultiplexer, the DNS resolver and the node's receive path raise
nothing, and canonical codecs re-encode what they decode to the same bytes.

Deterministic: fixed mutation seeds, a mesh built in virtual time from a fixed seed.
"""

from __future__ import annotations

import random

import pytest

from meshguard.testing import fuzz
from meshguard.wire import gossip, holepunch, relay, wireguard

INPUTS = 5000
SEED = 20261201


def _report(stats: fuzz.FuzzStats) -> str:
    return "; ".join(f"{f.error[:200]} at {f.where} input={f.data.hex()}" for f in stats.failures)


@pytest.fixture(scope="module")
def codecs() -> dict[str, fuzz.Target]:
    return fuzz.codec_targets()


def test_seed_mesh_formed_and_every_seed_generator_worked() -> None:
    m = fuzz.mesh_capture()
    assert m.problems == []
    assert len(m.victim.node.peers) == len(m.members)
    assert m.relay_seeds and m.punch_seeds and m.records


@pytest.mark.parametrize("name", sorted(fuzz.codec_targets()))
def test_codec_raises_only_its_documented_error(codecs: dict[str, fuzz.Target],
                                                name: str) -> None:
    target = codecs[name]
    assert target.seeds, f"{name} has no seeds"
    stats = fuzz.fuzz(target, INPUTS, seed=SEED)
    assert stats.inputs == INPUTS + len(target.seeds)
    assert stats.exceptions == 0, _report(stats)
    assert stats.log_records == 0


@pytest.mark.parametrize("name", ["node", "node_auth"])
def test_node_receive_path_never_raises(name: str) -> None:
    target = fuzz.node_targets(seed=1)[name]
    stats = fuzz.fuzz(target, INPUTS, seed=SEED)
    assert stats.exceptions == 0, _report(stats)


def test_reauthenticated_inputs_pass_every_authentication_check() -> None:
    """node_auth would only exercise the MAC and signature checks if its re-authentication
    of a member's datagram were wrong: the seeds, re-authenticated, must all get through."""
    h = fuzz.NodeHarness(seed=1, under_load=10**9)
    node = h.node
    seeds = h.mesh.to_victim + h.mesh.relay_seeds + h.mesh.punch_seeds
    members = {x.key for x in h.mesh.members}
    checked = 0
    for d in seeds:
        from_member = (d[0] in gossip.GOSSIP_TYPES and d[0] != gossip.JOIN
                       and d[5:37] in members) or (d[0] == relay.RELAY_DATA
                                                   and d[5:37] in members)
        if d[0] in holepunch.HOLEPUNCH_TYPES and d[6:38] in members:
            from_member = True
        if not from_member:
            continue
        # corrupt the authenticator, then let the harness repair it
        broken = d[:-1] + bytes([d[-1] ^ 0xFF])
        assert h.reauth(broken) == d or d[0] == relay.RELAY_DATA or \
            d[0] in holepunch.HOLEPUNCH_TYPES
        h.receive(h.reauth(broken))
        checked += 1
    assert checked > 20
    swim = node.membership.counters()
    assert swim.get("swim_bad_mac", 0) == 0
    assert node.relay is not None and node.relay.counters["relay_bad_mac"] == 0
    assert node.holepunch is not None and node.holepunch.counters["punch_bad_signature"] == 0
    # a WireGuard initiation with a broken mac1 is repaired too
    init = next(d for d in h.mesh.datagrams if len(d) == wireguard.INITIATION_SIZE
                and d[0] == wireguard.MESSAGE_INITIATION)
    off = wireguard.INITIATION_MAC1_OFFSET
    broken = init[:off] + bytes(16) + init[off + 16:]
    assert h.reauth(broken)[off:off + 16] != bytes(16)


def test_mutator_is_deterministic() -> None:
    seeds = [bytes(range(40)), b"\x01MG\x01\x00" + bytes(60)]
    a = fuzz.Mutator(random.Random(5), seeds)
    b = fuzz.Mutator(random.Random(5), seeds)
    assert [a.mutate() for _ in range(500)] == [b.mutate() for _ in range(500)]
