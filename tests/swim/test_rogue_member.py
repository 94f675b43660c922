"""A trusted member that turns rogue, a revoked one, or a stranger replaying what it captured,
cannot evict, impersonate or redirect anyone: each test performs the attack."""

from __future__ import annotations

import dataclasses

import pytest

from meshguard.crypto.hashes import mac
from meshguard.crypto.keys import Ed25519PrivateKey, X25519PrivateKey
from meshguard.swim.config import SwimConfig
from meshguard.swim.membership import Membership
from meshguard.swim.records import sign_accusation, sign_record
from meshguard.testing.rng import SeededRng
from meshguard.testing.simnet import KeySetAdmission, SwimCluster
from meshguard.wire import gossip as g

SEED = 11
N = 6
ROGUE = 1
VICTIM = 4
SPOOFED = ("198.51.100.7", 9)
U64_MAX = 2**64 - 1


@pytest.fixture
def cluster() -> SwimCluster:
    c = SwimCluster(N, SEED)
    c.start(join_window=0.5)
    c.run_until_true(lambda: c.converged(range(N)), limit=60)
    return c


def record_of(c: SwimCluster, observer: int, subject: int) -> g.NodeRecord | None:
    return next((r for r in c.nodes[observer].members() if r.identity == c.ids[subject]), None)


def test_one_dead_notice_at_any_incarnation_evicts_no_one(cluster: SwimCluster) -> None:
    c = cluster
    inc = c.nodes[VICTIM].incarnation
    notices = tuple(
        g.encode_accusation(sign_accusation(c.id_keys[ROGUE], True, c.ids[VICTIM], i))
        for i in (U64_MAX, inc + 1, inc)
    )
    c.gossip_from(ROGUE, notices)
    c.net.run_for(60)
    assert not [d for d in c.down_events if d[2] == VICTIM], "the victim was evicted"
    for i in range(N):
        if i != VICTIM:
            assert c.nodes[i].state_of(c.ids[VICTIM]) == "alive"
    # the victim refuted at a sane incarnation and can go on refuting
    assert c.nodes[VICTIM].incarnation < 2**63
    assert c.total("accusation_not_current") >= N - 2


def test_suspicion_above_the_current_incarnation_is_ignored(cluster: SwimCluster) -> None:
    c = cluster
    inc = c.nodes[VICTIM].incarnation
    acc = sign_accusation(c.id_keys[ROGUE], False, c.ids[VICTIM], inc + 1000)
    c.gossip_from(ROGUE, (g.encode_accusation(acc),))
    c.net.run_for(0.2)
    for i in range(N):
        if i not in (ROGUE, VICTIM):
            assert c.nodes[i].state_of(c.ids[VICTIM]) == "alive"
    assert c.nodes[VICTIM].incarnation == inc  # nothing to refute


def test_a_dead_notice_starts_suspicion_which_the_subject_refutes(cluster: SwimCluster) -> None:
    c = cluster
    inc = c.nodes[VICTIM].incarnation
    acc = sign_accusation(c.id_keys[ROGUE], True, c.ids[VICTIM], inc)
    c.gossip_from(ROGUE, (g.encode_accusation(acc),))
    c.net.run_for(0.1)
    states = {c.nodes[i].state_of(c.ids[VICTIM]) for i in range(N) if i not in (ROGUE, VICTIM)}
    assert "dead" not in states and "suspect" in states
    c.net.run_for(30)
    assert c.nodes[VICTIM].incarnation > inc
    assert all(
        c.nodes[i].state_of(c.ids[VICTIM]) == "alive" for i in range(N) if i != VICTIM
    )


def test_a_crashed_member_is_still_declared_dead_everywhere(cluster: SwimCluster) -> None:
    c = cluster
    c.crash(VICTIM)
    cfg = c.config
    others = [i for i in range(N) if i != VICTIM]
    c.run_until_true(
        lambda: c.all_see_gone(VICTIM, others),
        limit=cfg.detection_bound(N) + cfg.spread_bound(N) + cfg.suspicion_max(N),
    )


def test_a_record_claiming_another_members_wireguard_key_is_refused(
    cluster: SwimCluster,
) -> None:
    c = cluster
    rec = record_of(c, 0, ROGUE)
    assert rec is not None
    stolen = c.wg_keys[VICTIM].public_key.raw
    _, raw = sign_record(
        c.id_keys[ROGUE],
        dataclasses.replace(rec, incarnation=rec.incarnation + 1, wg_public=stolen),
    )
    # as a hello (its own record first) and as gossip relayed among other entries
    c.gossip_from(ROGUE, ((g.TAG_RECORD, raw),))
    c.gossip_from(ROGUE, ((g.TAG_RECORD, c.nodes[VICTIM].raw_record), (g.TAG_RECORD, raw)))
    c.net.run_for(1)
    for i in range(N):
        if i == ROGUE:
            continue
        r = record_of(c, i, ROGUE)
        assert r is not None and r.wg_public == c.wg_keys[ROGUE].public_key.raw
        v = record_of(c, i, VICTIM) if i != VICTIM else None
        assert v is None or v.wg_public == stolen
    assert c.total("wg_key_taken") >= N - 2


class _Revocable(KeySetAdmission):
    """Admits by key, except records carrying a revoked certificate."""

    def __init__(self, keys: set[bytes]) -> None:
        super().__init__(keys)
        self.revoked: set[bytes] = set()

    def admit(self, node_key: bytes, certificate: bytes | None, now_wall: float) -> bool:
        if certificate is not None and certificate in self.revoked:
            return False
        return super().admit(node_key, certificate, now_wall)


def test_a_new_record_is_checked_against_trust_again() -> None:
    c = SwimCluster(N, SEED)
    adm = _Revocable(set(c.ids))
    c.admission = adm
    c.nodes = [c._make(i, 0) for i in range(N)]
    c.start(join_window=0.5)
    c.run_until_true(lambda: c.converged(range(N)), limit=60)
    cert = b"\x01" * 200  # opaque to the gossip layer; the trust store says it is revoked
    adm.revoked.add(cert)
    rec = record_of(c, 0, ROGUE)
    assert rec is not None
    newer = dataclasses.replace(rec, incarnation=rec.incarnation + 1, certificate=cert)
    _, raw = sign_record(c.id_keys[ROGUE], newer)
    c.gossip_from(ROGUE, ((g.TAG_RECORD, raw),))
    c.net.run_for(1)
    for i in range(N):
        if i != ROGUE:
            assert c.nodes[i].state_of(c.ids[ROGUE]) is None, "a revoked record was accepted"


def test_a_member_no_longer_trusted_loses_every_gossip_right(cluster: SwimCluster) -> None:
    c = cluster
    # the trust store stops admitting the rogue (its certificate expired); nobody reloads trust
    c.admission.keys.discard(c.ids[ROGUE])
    c.net.run_for(c.config.admission_recheck + 2)
    inc = c.nodes[VICTIM].incarnation
    acc = sign_accusation(c.id_keys[ROGUE], False, c.ids[VICTIM], inc)
    c.gossip_from(ROGUE, (g.encode_accusation(acc),))
    c.net.run_for(0.2)
    for i in range(N):
        if i not in (ROGUE, VICTIM):
            assert c.nodes[i].state_of(c.ids[VICTIM]) == "alive"
            assert c.nodes[i].state_of(c.ids[ROGUE]) is None
    assert c.nodes[VICTIM].incarnation == inc


def _fresh_node(c: SwimCluster, i: int, now: float) -> Membership:
    return Membership(
        c.id_keys[i], c.wg_keys[i], [c.eps[i]], c.admission, SeededRng(99), c.config,
        cache=c.cache, incarnation=int(now * 1000), now=now,
    )


def test_an_old_record_with_a_rotated_key_is_refused_by_a_fresh_node(
    cluster: SwimCluster,
) -> None:
    c = cluster
    # the record carrying the WireGuard key about to be rotated away
    old = c.nodes[ROGUE].raw_record
    old_wg = c.wg_keys[ROGUE]
    c.net.run_for(5)
    new_wg = X25519PrivateKey.generate(b"\x51" * 32)
    c.nodes[ROGUE].update_self(c.net.now, wg_key=new_wg)
    c.net.run_for(c.config.record_max_age + 5)
    # A freshly started node hears the old record in a hello MACed under the old key.
    now = c.net.now
    fresh = _fresh_node(c, 0, now)
    key = c.cache.pair_key(old_wg, c.ids[ROGUE], c.wg_keys[0].public_key.raw, c.ids[0])
    assert key is not None
    body = g.encode_body(g.Packet(g.PING, c.ids[ROGUE], 5, entries=((g.TAG_RECORD, old),)))
    fresh.receive(now, now, body + mac(key, body), c.eps[ROGUE])
    assert fresh.state_of(c.ids[ROGUE]) is None
    assert fresh.stats["record_too_old"] == 1


def test_a_reaped_members_old_record_is_not_accepted_again(cluster: SwimCluster) -> None:
    c = cluster
    old = c.nodes[VICTIM].raw_record
    c.nodes[VICTIM].update_self(c.net.now, endpoints=[c.eps[VICTIM], ("10.9.9.9", 9)])
    c.net.run_for(5)
    c.crash(VICTIM)
    c.net.run_for(c.config.detection_bound(N) + c.config.spread_bound(N)
                  + c.config.dead_reap_after + 10)
    assert all(c.nodes[i].state_of(c.ids[VICTIM]) is None for i in range(N) if i != VICTIM)
    c.gossip_from(ROGUE, ((g.TAG_RECORD, old),))
    c.net.run_for(1)
    for i in range(N):
        if i not in (ROGUE, VICTIM):
            assert c.nodes[i].state_of(c.ids[VICTIM]) is None, "an old record came back"
    assert c.total("stale_record") >= N - 2


def test_junk_joins_from_one_source_do_not_close_the_seed() -> None:
    c = SwimCluster(N, SEED)
    c.start(join_window=0.5, members=range(N - 1))
    c.run_until_true(lambda: c.converged(range(N - 1)), limit=60)
    junk_key = Ed25519PrivateKey(b"\x21" * 32)
    junk_wg = X25519PrivateKey.generate(b"\x22" * 32)
    for k in range(1000):
        rec = g.NodeRecord(junk_key.public_key.raw, junk_wg.public_key.raw, k, (SPOOFED,))
        raw = g.encode_record(dataclasses.replace(rec, signature=b"\x00" * 64))
        body = g.encode_body(g.Packet(g.JOIN, seq=k, record=raw))
        c.net.inject(body, SPOOFED, c.eps[0])
    c.net.run_for(0.01)
    assert c.nodes[0].stats["join_rate_limited"] > 900
    c._start_one(N - 1)
    c.run_until_true(lambda: c.converged(range(N)), limit=30)


def test_a_replayed_join_draws_no_answer(cluster: SwimCluster) -> None:
    c = cluster
    joins: list[tuple[bytes, g.Endpoint]] = []

    def tap(src: g.Endpoint, dst: g.Endpoint, data: bytes) -> bool:
        if data[0] == g.JOIN and dst == c.eps[0]:
            joins.append((data, src))
        return False

    c.net.drop_filter = tap
    c.restart(VICTIM, incarnation=int(c.net.now * 1000))
    c.run_until_true(lambda: bool(joins), limit=5)
    c.net.run_for(2)
    answered = c.nodes[0].stats["joins_answered"]
    replies = c.watch(SPOOFED)
    for _ in range(50):
        c.net.inject(joins[0][0], SPOOFED, c.eps[0])
    c.net.run_for(1)
    assert replies == []
    assert c.nodes[0].stats["joins_answered"] == answered
    assert c.nodes[0].stats["join_replayed"] == 50
    # The nonce is not signed: with a new one each time, a replay draws at most one bare
    # answer (the record and nothing from the piggyback queue) per half retry interval.
    p = g.decode_packet(joins[0][0])
    for k in range(50):
        forged = g.encode_body(dataclasses.replace(p, seq=p.seq + 1 + k))
        c.net.inject(forged, SPOOFED, c.eps[0])
    c.net.run_for(0.2)
    assert len(replies) <= 1
    for r in replies:
        assert g.decode_packet(r).entries == ()


def test_sync_replies_go_to_announced_endpoints_only(cluster: SwimCluster) -> None:
    c = cluster
    replies = c.watch(SPOOFED)
    # An insider asks for everything (all-zero digests) from a victim's address.
    for ctr in range(1, 11):
        p = g.Packet(g.SYNC_REQ, c.ids[ROGUE], 10**9 + ctr, digests=(0,) * g.SYNC_BUCKETS)
        c.net.inject(c.authentic(ROGUE, 0, p), SPOOFED, c.eps[0])
    c.net.run_for(1)
    assert sum(len(r) for r in replies) == 0


def test_the_config_knobs_are_sane() -> None:
    cfg = SwimConfig()
    assert cfg.record_refresh * 2 < cfg.record_max_age
    assert cfg.record_max_age > cfg.dead_reap_after


def test_confirmations_beyond_k_cost_the_observer_nothing() -> None:
    """Many members confirming one suspicion: the observer keeps at most k confirmers (k from
    SwimConfig.expected_confirmations) and its timeout stops at the minimum."""
    n, victim, observer = 10, 9, 0
    c = SwimCluster(n, SEED)
    c.start(join_window=0.5)
    c.run_until_true(lambda: c.converged(range(n)), limit=60)
    c.crash(victim)  # it cannot refute
    inc = c.nodes[victim].incarnation
    for accuser in range(1, n - 1):
        acc = g.encode_accusation(sign_accusation(c.id_keys[accuser], False, c.ids[victim], inc))
        pkt = g.Packet(g.PING, c.ids[accuser], 77, entries=(acc,))
        c.net.inject(c.authentic(accuser, observer, pkt), c.eps[accuser], c.eps[observer])
    c.net.run_for(0.5)
    cfg = c.config
    k = cfg.expected_confirmations(n)
    assert 0 < k < n - 3  # more accusers than k
    # the suspicion as the observer holds it (no public view of it exists)
    s = c.nodes[observer]._s.members[c.ids[victim]].suspicion
    assert s is not None and c.nodes[observer].state_of(c.ids[victim]) == "suspect"
    assert len(s.accusers) <= k + 1, f"seed {SEED}"
    assert s.timeout() == cfg.suspicion_min(c.nodes[observer].alive_count()), f"seed {SEED}"
