"""Forged, replayed and spoofed gossip never changes anyone's view."""

from __future__ import annotations

import dataclasses

import pytest

from meshguard.crypto.hashes import mac
from meshguard.crypto.keys import Ed25519PrivateKey, X25519PrivateKey
from meshguard.swim.membership import Membership
from meshguard.swim.records import sign_accusation, sign_record
from meshguard.testing.rng import SeededRng
from meshguard.testing.simnet import SwimCluster
from meshguard.wire import gossip as g

SEED = 7
N = 6
ATTACKER_EP = ("192.0.2.66", 4444)


@pytest.fixture
def cluster() -> SwimCluster:
    c = SwimCluster(N, SEED)
    c.start(join_window=0.5)
    c.run_until_true(lambda: c.converged(range(N)), limit=60)
    return c


def views(c: SwimCluster) -> list[list[tuple[bytes, int, str | None, tuple[g.Endpoint, ...]]]]:
    out = []
    for node in c.nodes:
        row = []
        for k in c.ids:
            rec = next((r for r in node.members() if r.identity == k), None)
            inc = rec.incarnation if rec else -1
            eps = rec.endpoints if rec else ()
            row.append((k, inc, node.state_of(k), eps))
        out.append(row)
    return out


def _deliver(c: SwimCluster, sender: int, entries: tuple[g.Entry, ...]) -> None:
    c.gossip_from(sender, entries)
    c.net.run_for(0.5)


def test_bad_signature_record_is_ignored(cluster: SwimCluster) -> None:
    c = cluster
    before = views(c)
    victim = 3
    rec = next(r for r in c.nodes[0].members() if r.identity == c.ids[victim])
    # claims a newer incarnation with an attacker endpoint, signature corrupted
    forged, raw = sign_record(
        c.id_keys[victim],
        dataclasses.replace(rec, incarnation=rec.incarnation + 5, endpoints=(ATTACKER_EP,)),
    )
    bad = raw[:-1] + bytes([raw[-1] ^ 1])
    # and one signed by the wrong key
    other = Ed25519PrivateKey(b"\x42" * 32)
    body = g.record_signed_part(forged)
    wrong = body + other.sign(b"meshguard-swim-record-v1\x00" + body)
    _deliver(c, 1, ((g.TAG_RECORD, bad), (g.TAG_RECORD, wrong)))
    assert c.total("bad_signature") >= 2 * (N - 2), f"seed {SEED}"
    c.net.run_for(5)
    after = views(c)
    assert after == before, f"view changed (seed {SEED})"


def _attacker(c: SwimCluster) -> tuple[Membership, g.Packet]:
    key = Ed25519PrivateKey(b"\x66" * 32)
    wg = X25519PrivateKey.generate(b"\x67" * 32)
    m = Membership(key, wg, [ATTACKER_EP], c.admission, SeededRng(1), cache=c.cache)
    return m, g.Packet(g.JOIN, seq=1, record=g.encode_record(m.record))


def test_non_member_join_hello_and_gossip_are_dropped(cluster: SwimCluster) -> None:
    c = cluster
    before = views(c)
    att, join = _attacker(c)
    for r in range(N):
        c.net.inject(g.encode_packet(join), ATTACKER_EP, c.eps[r])
    # a "hello" ping carrying its own record, MACed correctly under the pair key
    att_wg = X25519PrivateKey.generate(b"\x67" * 32)  # the attacker's key (see _attacker)
    for r in range(N):
        key = c.cache.pair_key(att_wg, att.identity, c.wg_keys[r].public_key.raw, c.ids[r])
        assert key is not None
        hello = ((g.TAG_RECORD, att.raw_record),)
        body = g.encode_body(g.Packet(g.PING, att.identity, 5, entries=hello))
        c.net.inject(body + mac(key, body), ATTACKER_EP, c.eps[r])
    # and its record gossiped by a real member
    _deliver(c, 2, ((g.TAG_RECORD, att.raw_record),))
    c.net.run_for(5)
    assert all(n.state_of(att.identity) is None for n in c.nodes), f"seed {SEED}"
    assert views(c) == before, f"seed {SEED}"
    assert c.total("not_admitted") >= N, f"seed {SEED}"
    # a packet from the stranger with no record is dropped before any crypto
    verifs = c.cache.verifications
    for r in range(N):
        body = g.encode_body(g.Packet(g.PING, att.identity, 6))
        c.net.inject(body + b"\x00" * 16, ATTACKER_EP, c.eps[r])
    c.net.run_for(0.5)
    assert c.total("non_member") >= N and c.cache.verifications == verifs


def test_replayed_old_incarnation_loses(cluster: SwimCluster) -> None:
    c = cluster
    subject = 4
    old_raw = c.nodes[subject].raw_record
    captured: list[tuple[bytes, g.Endpoint, g.Endpoint]] = []

    def tap(src: g.Endpoint, dst: g.Endpoint, data: bytes) -> bool:
        captured.append((data, src, dst))
        return False

    c.net.drop_filter = tap
    c.nodes[subject].update_self(c.net.now, endpoints=[c.eps[subject], ("10.9.9.9", 9)])
    c.run_until_true(
        lambda: all(
            c.nodes[i].state_of(c.ids[subject]) == "alive"
            and next(r for r in c.nodes[i].members() if r.identity == c.ids[subject]).incarnation
            == c.nodes[subject].incarnation
            for i in range(N)
            if i != subject
        ),
        limit=60,
    )
    c.net.drop_filter = None
    before = views(c)
    _deliver(c, 1, ((g.TAG_RECORD, old_raw),))
    for data, src, dst in captured[:300]:  # replay everything captured, verbatim
        c.net.inject(data, src, dst)
    c.net.run_for(3)
    assert views(c) == before, f"seed {SEED}"
    assert c.total("stale_record") > 0


def test_accusations_from_non_members_and_forged_ones_are_ignored(cluster: SwimCluster) -> None:
    c = cluster
    before = views(c)
    victim = 5
    inc = c.nodes[victim].incarnation
    outsider = Ed25519PrivateKey(b"\x77" * 32)
    a1 = sign_accusation(outsider, True, c.ids[victim], inc)
    a2 = sign_accusation(outsider, False, c.ids[victim], inc)
    # a member's name as accuser, but signed by someone else
    a3 = dataclasses.replace(sign_accusation(outsider, True, c.ids[victim], inc), accuser=c.ids[2])
    entries = tuple(g.encode_accusation(a) for a in (a1, a2, a3))
    _deliver(c, 1, entries)
    c.net.run_for(60)
    assert views(c) == before, f"seed {SEED}"
    assert c.total("accuser_not_member") >= 2 * (N - 2)
    assert c.total("bad_signature") >= N - 2
    assert not c.down_events, f"seed {SEED}"


def test_spoofed_source_cannot_inject(cluster: SwimCluster) -> None:
    c = cluster
    victim = 3
    c.crash(victim)
    # an attacker answers every probe of the crashed node in its name, from anywhere
    spoofed = 0

    def spoof(src: g.Endpoint, dst: g.Endpoint, data: bytes) -> bool:
        nonlocal spoofed
        if dst == c.eps[victim] and data[0] == g.PING:
            p = g.decode_packet(data)
            ack = g.Packet(g.ACK, c.ids[victim], p.seq, c.ids[victim], mac=b"\x00" * 16)
            c.net.inject(g.encode_packet(ack), c.eps[victim], src, delay=0.001)
            spoofed += 1
        return False

    c.net.drop_filter = spoof
    # and claims, in a member's name, a newer record for node 1
    rec = next(r for r in c.nodes[0].members() if r.identity == c.ids[1])
    _, raw = sign_record(c.id_keys[1], dataclasses.replace(rec, incarnation=rec.incarnation + 1))
    for r in range(N):
        p = g.Packet(g.PING, c.ids[2], 1, entries=((g.TAG_RECORD, raw),), mac=b"\x11" * 16)
        c.net.inject(g.encode_packet(p), ATTACKER_EP, c.eps[r])
    cfg = c.config
    bound = cfg.detection_bound(N) + cfg.spread_bound(N)
    others = [i for i in range(N) if i != victim]
    c.run_until_true(lambda: c.all_see_gone(victim, others), limit=bound)
    assert spoofed > 0
    assert c.total("bad_mac") >= spoofed
    for i in others:
        if i == 1:
            continue
        r = next(r for r in c.nodes[i].members() if r.identity == c.ids[1])
        assert r.incarnation == rec.incarnation, f"seed {SEED}"


def test_replayed_ping_from_spoofed_source_draws_only_a_bare_reply(cluster: SwimCluster) -> None:
    c = cluster
    pings: list[tuple[bytes, g.Endpoint, g.Endpoint]] = []

    def tap(src: g.Endpoint, dst: g.Endpoint, data: bytes) -> bool:
        if data[0] == g.PING:
            pings.append((data, src, dst))
        return False

    c.net.drop_filter = tap
    c.net.run_for(3.0)
    victim_ep = ("198.51.100.9", 53)
    replies: list[bytes] = []

    def watch(src: g.Endpoint, dst: g.Endpoint, data: bytes) -> bool:
        if dst == victim_ep:
            replies.append(data)
        return True

    c.net.drop_filter = watch
    smallest = min(pings, key=lambda x: len(x[0]))
    for data, _, dst in [*pings[:20], smallest]:
        c.net.inject(data, victim_ep, dst)
    c.net.run_for(1.0)
    assert replies, f"seed {SEED}"
    assert max(len(r) for r in replies) <= 2 * len(smallest[0]) + 40, f"seed {SEED}"
    assert c.total("bare_replies") >= len(replies)
