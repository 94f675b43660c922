"""Attacks on the org messages (OrgCertRevoke 0x42, OrgAliasAnnounce 0x41) against the sans-IO
cores: a stranger's flood of forged revocations costs no signature verification, a member's
costs a bounded number; one trusted org cannot crowd another's revocations out of the store;
aliases with a negative or future `issued_at` are refused, so nobody wins an alias by
backdating it."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshguard.crypto.keys import Ed25519PrivateKey, X25519PrivateKey
from meshguard.mesh import org_gossip
from meshguard.mesh.org_gossip import OrgGossip, OrgLink, sign_alias, sign_revocation
from meshguard.testing.rng import SeededRng
from meshguard.wire import org as wire
from meshguard.wireguard.actions import SendDatagram

from .helpers import cluster

FLOOD = 20_000


@pytest.fixture
def verify_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts every Ed25519 verification the org core makes (the real check still runs)."""
    calls = [0]
    real: Callable[[bytes, bytes, bytes], bool] = org_gossip.ed25519_verify

    def counting(public: bytes, signature: bytes, message: bytes) -> bool:
        calls[0] += 1
        return real(public, signature, message)

    monkeypatch.setattr(org_gossip, "ed25519_verify", counting)
    yield calls


def _forged_items(rnd: random.Random, org_key: bytes) -> list[wire.CertRevocation]:
    return [wire.CertRevocation(org_key, rnd.randbytes(32), rnd.randrange(1 << 40),
                                rnd.randbytes(64)) for _ in range(wire.MAX_ITEMS)]


def test_stranger_flood_of_forged_revocations_costs_no_signature_check(
        verify_calls: list[int]) -> None:
    net, nodes = cluster(3, seed=31)
    a, b, victim = nodes
    org_key = net.org.public_key.raw  # copied from any gossiped certificate
    rnd = random.Random(5)
    now, wall = net.clock.monotonic(), net.clock.wall()
    member_wg = b.node.wg_key
    for i in range(FLOOD):
        body = wire.encode_revocations(_forged_items(rnd, org_key))
        kind = i % 3
        if kind == 0:
            data = body  # the bare signed items (what the measured flood sent)
        elif kind == 1:
            data = body + rnd.randbytes(32) + rnd.randbytes(16)  # a made-up sender
        else:
            data = body + member_wg + rnd.randbytes(16)  # a real member's key, no MAC key
        src = (f"203.0.113.{i % 250 + 1}", 1024 + i % 50_000)
        assert a.node.receive(now, wall, data, src) == []
    assert verify_calls[0] == 0
    org = a.node.org
    assert org is not None and org.revocations == {}
    assert sum(org.counters.values()) >= FLOOD  # every packet counted under some reason
    # a real revocation from a member still goes through at once afterwards
    rev = sign_revocation(net.org, victim.key, int(wall))
    b.node.announce_revocations([rev], wall)
    net.run(3.0)
    assert rev.target in org.revocations
    assert victim.node.wg_key not in a.node.peers
    assert verify_calls[0] <= 2


def test_one_org_cannot_crowd_out_another_orgs_revocations() -> None:
    core = OrgGossip(SeededRng(4))
    rogue = Ed25519PrivateKey(b"\x11" * 32)
    honest = Ed25519PrivateKey(b"\x12" * 32)
    trusted = {rogue.public_key.raw, honest.public_key.raw}
    # a trusted but hostile org signs revocations of made-up nodes until the store is full
    for i in range(org_gossip.MAX_ITEMS_STORED + 10):
        core.add_revocation(sign_revocation(rogue, i.to_bytes(32, "little"), 1), trusted)
    real = sign_revocation(honest, b"\x99" * 32, 1_700_000_000)
    assert core.add_revocation(real, trusted)
    assert real.target in core.revocations
    assert core.counters["org_revoke_full"] >= 10  # the rogue org only fills its own store


def test_backdated_alias_cannot_steal_another_orgs_alias() -> None:
    core = OrgGossip(SeededRng(6))
    owner = Ed25519PrivateKey(b"\x21" * 32)
    thief = Ed25519PrivateKey(b"\x22" * 32)
    trusted = {owner.public_key.raw, thief.public_key.raw}
    wall = 1_700_000_000.0
    assert core.add_alias(sign_alias(owner, "acme", int(wall) - 3600), trusted, wall)
    for issued in (-1, -(2**62), int(wall) + 7 * 86400):  # before 1970, or far in the future
        assert not core.add_alias(sign_alias(thief, "acme", issued), trusted, wall)
    assert core.alias_map(trusted) == {"acme": owner.public_key.raw}
    assert core.counters["org_alias_bad_time"] == 3
    # dated 1970 itself, not before: a valid claim, earlier than the owner's, and so the
    # alias would be the thief's if the earliest claim won; a contested alias names nobody
    for issued in (0, 1):
        assert core.add_alias(sign_alias(thief, "acme", issued), trusted, wall)
        assert core.alias_map(trusted) == {}
    # an org cannot pin its own alias with a future time either: a later rename still wins
    assert not core.add_alias(sign_alias(owner, "acme-old", 2**62), trusted, wall)
    assert core.add_alias(sign_alias(owner, "acme2", int(wall)), trusted, wall)
    assert core.alias_map(trusted) == {"acme2": owner.public_key.raw,
                                       "acme": thief.public_key.raw}  # given up: uncontested


def test_many_trusted_orgs_keep_their_aliases() -> None:
    core = OrgGossip(SeededRng(7))
    wall = 1_700_000_000.0
    orgs = [Ed25519PrivateKey(i.to_bytes(2, "little") * 16) for i in range(40)]
    trusted = {o.public_key.raw for o in orgs}
    for i, o in enumerate(orgs):
        assert core.add_alias(sign_alias(o, f"org{i}", int(wall)), trusted, wall)
    # renames by one org replace its own alias, never anyone else's
    for t in range(1, 50):
        assert core.add_alias(sign_alias(orgs[0], f"zz{t}", int(wall) + t), trusted, wall + t)
    names = core.alias_map(trusted)
    assert len(names) == 40 and names["zz49"] == orgs[0].public_key.raw
    assert all(names[f"org{i}"] == o.public_key.raw for i, o in enumerate(orgs) if i)


def test_member_flood_of_forged_revocations_costs_a_bounded_number_of_checks(
        verify_calls: list[int]) -> None:
    """A rogue (or compromised) member MACs its forgeries correctly: each new item costs a
    check, but only within its own budget, a replayed forgery costs none, and another member's
    real revocation still goes through during the flood."""
    net, nodes = cluster(4, seed=32)
    a, rogue, honest, victim = nodes
    org = a.node.org
    rogue_core = rogue.node.org
    assert org is not None and rogue_core is not None
    to_a = OrgLink(a.key, a.node.wg_key)
    rnd = random.Random(9)
    now, wall = net.clock.monotonic(), net.clock.wall()
    first = b""
    for _ in range(FLOOD):
        data = rogue_core.seal(wire.encode_revocations(_forged_items(rnd, net.org.public_key.raw)),
                               to_a)
        assert data is not None
        first = first or data
        assert a.node.receive(now, wall, data, rogue.ep) == []
    assert verify_calls[0] <= org_gossip.VERIFY_BURST_PER_SENDER
    assert org.counters["org_verify_rate_limited"] >= FLOOD * wire.MAX_ITEMS - verify_calls[0]
    checks = verify_calls[0]
    for _ in range(1000):  # the same forgery again: remembered, not re-checked
        a.node.receive(now, wall, first, rogue.ep)
    assert verify_calls[0] == checks
    rev = sign_revocation(net.org, victim.key, int(wall))
    data = honest.node.org.seal(wire.encode_revocations([rev]), to_a)  # type: ignore[union-attr]
    assert data is not None
    a.node.receive(now, wall, data, honest.ep)
    assert rev.target in org.revocations and victim.node.wg_key not in a.node.peers
    assert org.revocations.keys() == {rev.target}


def test_revoked_member_loses_its_org_gossip_rights() -> None:
    net, nodes = cluster(3, seed=33)
    a, _, victim = nodes
    rev = sign_revocation(net.org, victim.key, int(net.clock.wall()))
    a.node.announce_revocations([rev], net.clock.wall())
    assert victim.node.wg_key not in a.node.peers
    vcore = victim.node.org
    assert vcore is not None
    alias = sign_alias(net.org, "acme", int(net.clock.wall()))
    data = vcore.seal(wire.encode_aliases([alias]), OrgLink(a.key, a.node.wg_key))
    assert data is not None
    assert a.node.receive(net.clock.monotonic(), net.clock.wall(), data,
                                   victim.ep) == []
    assert a.node.org is not None and a.node.org.counters["org_not_member"] == 1
    assert a.node.org.aliases == {}


_NET, _NODES = cluster(2, seed=34)


@given(st.sampled_from([b"\x42MG\x01\x00", b"\x41MG\x01\x00", b"\x42MG\x01\x00\x01",
                        b"\x41MG\x01\x00\x08"]), st.binary(max_size=1300))
@settings(max_examples=300, deadline=None)
def test_member_macs_on_garbage_never_raise(prefix: bytes, body: bytes) -> None:
    """Garbage that passes the MAC (a member's bug or a rogue member) is counted, never raised."""
    a, b = _NODES
    core = b.node.org
    assert core is not None
    data = core.seal(prefix + body, OrgLink(a.key, a.node.wg_key))
    assert data is not None
    out = a.node.receive(1.0, _NET.clock.wall(), data, b.ep)
    assert not any(isinstance(x, SendDatagram) for x in out)


def test_long_aliases_are_packed_within_the_packet_limit() -> None:
    core = OrgGossip(SeededRng(8), X25519PrivateKey.generate(b"\x05" * 32),
                     identity_key=b"\x06" * 32)
    wall = 1_700_000_000.0
    orgs = [Ed25519PrivateKey(bytes([i + 1]) * 32) for i in range(2 * wire.MAX_ITEMS)]
    trusted = {o.public_key.raw for o in orgs}
    for i, o in enumerate(orgs):
        assert core.add_alias(sign_alias(o, f"{i:02d}" + "x" * 61, int(wall)), trusted, wall)
    peer = X25519PrivateKey.generate(b"\x07" * 32)
    link = OrgLink(b"\x08" * 32, peer.public_key.raw)
    core.bind(b"\x06" * 32, lambda wg: None, lambda: {("192.0.2.1", 1): link},
              lambda: [("192.0.2.1", 1)])
    sent = core.tick(0.0, wall)
    assert sent and all(isinstance(x, SendDatagram) for x in sent)
    got: set[str] = set()
    for data in (x.data for x in sent if isinstance(x, SendDatagram)):
        assert len(data) <= wire.MAX_PACKET
        body, _sender, _tag = wire.split_link(data)
        if body[0] == wire.ORG_ALIAS_ANNOUNCE:
            got |= {x.alias for x in wire.decode_aliases(body)}
    assert len(got) == len(orgs)
