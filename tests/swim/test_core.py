"""Unit tests of the SWIM pieces: piggyback queue, suspicion curve, config formulas, and a
membership core fed garbage."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from meshguard.crypto.keys import Ed25519PrivateKey, X25519PrivateKey
from meshguard.sansio import SendDatagram
from meshguard.swim.awareness import Awareness
from meshguard.swim.broadcast import NORMAL, URGENT, BroadcastQueue
from meshguard.swim.config import SwimConfig
from meshguard.swim.membership import Membership
from meshguard.swim.suspicion import Suspicion
from meshguard.testing.rng import SeededRng
from meshguard.testing.simnet import KeySetAdmission, SwimCluster
from meshguard.wire import gossip as g


def _e(i: int, size: int = 160) -> g.Entry:
    return (g.TAG_RECORD, bytes([i]) * size)


def test_queue_prefers_urgent_fresh_and_retires_after_limit() -> None:
    q = BroadcastQueue()
    q.put(b"a", _e(1), NORMAL)
    q.put(b"b", _e(2))
    q.put(b"c", _e(3))
    # urgent before normal, newest first
    assert q.take(budget=2 * 161, limit=2, max_entries=10) == [_e(3), _e(2)]
    # urgent entries sent once still go before the unsent normal one
    assert q.take(budget=3 * 161, limit=2, max_entries=10) == [_e(2), _e(3), _e(1)]
    assert len(q) == 1  # b and c reached the limit of 2 transmissions
    assert q.take(budget=10_000, limit=2, max_entries=10, limit_normal=5) == [_e(1)]
    assert len(q) == 1
    assert q.take(budget=10_000, limit=2, max_entries=10) == [_e(1)]
    assert len(q) == 0


def test_queue_sends_critical_before_urgent() -> None:
    q = BroadcastQueue()
    q.put(b"j", _e(5), URGENT)
    q.put(b"s", (g.TAG_SUSPECT, b"\x07" * 136))
    assert q.take(budget=140, limit=3, max_entries=1) == [(g.TAG_SUSPECT, b"\x07" * 136)]


def test_queue_replaces_per_subject_and_respects_budget_and_skip() -> None:
    q = BroadcastQueue()
    q.put(b"a", _e(1))
    q.put(b"a", _e(9))
    assert len(q) == 1
    assert q.take(budget=10_000, limit=5, max_entries=5) == [_e(9)]
    q.put(b"b", _e(2))
    assert q.take(budget=100, limit=5, max_entries=5) == []  # does not fit
    assert q.take(budget=10_000, limit=5, max_entries=5, skip=b"b") == [_e(9)]
    q.drop(b"b")
    assert b"b" not in q


def test_suspicion_shrinks_with_confirmations_to_the_minimum() -> None:
    s = Suspicion(100.0, 3, b"x", min_t=10.0, max_t=60.0, k=2)
    assert s.deadline() == 160.0
    assert s.confirm(b"y") and not s.confirm(b"y")
    mid = s.timeout()
    assert 10.0 < mid < 60.0
    assert math.isclose(mid, 60.0 - 50.0 * math.log(2) / math.log(3))
    s.confirm(b"z")
    assert s.timeout() == 10.0


def test_confirmations_beyond_k_neither_shrink_the_timeout_nor_are_stored() -> None:
    k = 2
    s = Suspicion(100.0, 3, b"x", min_t=10.0, max_t=60.0, k=k)
    news = [s.confirm(bytes([i])) for i in range(k + 5)]
    assert news == [True] * k + [False] * 5
    assert s.timeout() == 10.0
    assert len(s.accusers) - 1 <= k  # the first accuser plus at most k confirmers


def test_no_confirmations_are_stored_when_k_is_zero() -> None:
    s = Suspicion(0.0, 1, b"x", min_t=4.0, max_t=24.0, k=0)
    assert not s.confirm(b"y")
    assert s.accusers == {b"x"} and s.timeout() == 4.0


def test_awareness_stretches_timeouts_within_its_bounds() -> None:
    a = Awareness(max_score=2)
    a.better()
    assert a.score == 0 and a.scale(0.5) == 0.5
    for _ in range(5):
        a.worse()
    assert a.score == 2 and a.scale(0.5) == 1.5
    a.better()
    assert a.scale(1.0) == 2.0


def test_config_formulas_scale_with_log_n() -> None:
    c = SwimConfig()
    assert c.retransmit_limit(9) == 4 and c.retransmit_limit(1000) == 16
    assert c.suspicion_min(10) == 4.0 and math.isclose(c.suspicion_min(1000), 12.0)
    assert c.suspicion_max(1000) == 6 * c.suspicion_min(1000)
    assert c.expected_confirmations(2) == 0 and c.expected_confirmations(100) == 2
    assert c.join_bound(1000) > c.join_bound(100)


def _node() -> Membership:
    key = Ed25519PrivateKey(b"\x01" * 32)
    wg = X25519PrivateKey.generate(b"\x02" * 32)
    return Membership(key, wg, [("10.0.0.1", 51821)], KeySetAdmission(), SeededRng(3))


@settings(max_examples=300)
@given(st.binary(max_size=1400))
def test_membership_never_raises_on_garbage(data: bytes) -> None:
    m = _node()
    # from a stranger, nothing is answered: a Join would need a valid self-signed record
    assert m.receive(1.0, 1.0, data, ("192.0.2.1", 9)) == []
    m.tick(2.0, 2.0)


_TRAFFIC: list[tuple[SwimCluster, list[bytes]]] = []


def _traffic() -> tuple[SwimCluster, list[bytes]]:
    if not _TRAFFIC:
        c = SwimCluster(3, 5)
        captured: list[bytes] = []

        def tap(src: g.Endpoint, dst: g.Endpoint, data: bytes) -> bool:
            captured.append(data)
            return False

        c.net.drop_filter = tap
        c.start(join_window=0.2)
        c.net.run_for(12.0)
        c.net.drop_filter = None
        _TRAFFIC.append((c, captured))
    return _TRAFFIC[0]


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_membership_never_raises_on_mutated_real_traffic(data: st.DataObject) -> None:
    c, captured = _traffic()
    assert {p[0] for p in captured} >= {g.PING, g.ACK, g.JOIN, g.JOIN_ACK, g.SYNC_REQ}
    pkt = bytearray(data.draw(st.sampled_from(captured)))
    for _ in range(data.draw(st.integers(1, 3))):
        pkt[data.draw(st.integers(0, len(pkt) - 1))] = data.draw(st.integers(0, 255))
    for i in range(3):
        out = c.nodes[i].receive(c.net.now, c.net.now, bytes(pkt), c.eps[(i + 1) % 3])
        assert all(not isinstance(a, SendDatagram) or len(a.data) <= 1280 for a in out)


def test_join_packets_are_padded_against_amplification() -> None:
    m = _node()
    out = m.join([("10.0.0.2", 51821)], 0.0)
    assert len(out) == 1 and isinstance(out[0], SendDatagram)
    assert len(out[0].data) >= g.JOIN_MIN_LEN


def test_member_tables_share_one_copy_of_each_record() -> None:
    # Every packet carrying a record is a fresh slice; the table keeps the CryptoCache's copy,
    # so N simulated nodes (or one node hearing a record many times) hold each record once.
    n, seed = 12, 41
    c = SwimCluster(n, seed)
    c.start()
    c.run_until_true(lambda: c.converged(range(n)), limit=60)
    for subject in range(n):
        k = c.ids[subject]
        held = [c.nodes[i]._s.members[k] for i in range(n) if i != subject]
        assert len({id(m.raw) for m in held}) == 1, f"subject {subject} (seed {seed})"
        assert len({id(m.key) for m in held}) == 1, f"subject {subject} (seed {seed})"
        assert all(m.raw == held[0].raw and m.key == k for m in held)


def test_dead_members_are_indexed_for_recontact_until_they_refute_or_are_reaped() -> None:
    n, seed = 12, 42
    c = SwimCluster(n, seed)
    c.start()
    c.run_until_true(lambda: c.converged(range(n)), limit=60)
    others = [i for i in range(n) if i not in (3, 4)]
    for victim in (3, 4):
        c.crash(victim)
    c.run_until_true(lambda: c.all_see_gone(3, others) and c.all_see_gone(4, others), limit=120)
    for i in others:
        dead = c.nodes[i]._s.dead
        assert len(dead) == 2 and c.ids[3] in dead and c.ids[4] in dead, f"node {i}"
    joins = c.total("joins_sent")
    c.restart(3, incarnation=0)  # comes back and refutes: no longer a re-contact candidate
    c.run_until_true(lambda: c.converged([i for i in range(n) if i != 4]), limit=120)
    for i in others:
        dead = c.nodes[i]._s.dead
        assert c.ids[3] not in dead and c.ids[4] in dead, f"node {i} (seed {seed})"
    c.net.run_for(SwimConfig().dead_reap_after + 20)  # reaped: gone from the index too
    for i in [*others, 3]:
        assert len(c.nodes[i]._s.dead) == 0, f"node {i} (seed {seed})"
        assert c.nodes[i].state_of(c.ids[4]) is None
    assert c.total("joins_sent") > joins + len(others), "the dead were not re-contacted"


def test_indirect_probes_go_to_k_distinct_alive_members_other_than_the_target() -> None:
    n, seed = 20, 43
    c = SwimCluster(n, seed)
    c.start()
    c.run_until_true(lambda: c.converged(range(n)), limit=60)
    a, b = c.eps[1], c.eps[2]
    c.crash(5)
    asked: dict[bytes, list[tuple[str, int]]] = {}  # probe seq -> [target, asked...]
    ep_of = dict(zip(c.ids, c.eps, strict=True))

    def tap(src: tuple[str, int], dst: tuple[str, int], data: bytes) -> bool:
        if src == a and data[0] == g.PING_REQ:
            asked.setdefault(data[37:41], [ep_of[data[41:73]]]).append(dst)
        return (src, dst) in ((a, b), (b, a))

    c.net.drop_filter = tap
    c.net.run_for(60.0)
    assert len(asked) >= 2, f"seed {seed}"
    for target, *dsts in asked.values():
        assert target in (b, c.eps[5]), f"seed {seed}"
        assert len(dsts) == 3 == len(set(dsts)), f"{dsts} (seed {seed})"
        assert target not in dsts and a not in dsts, f"seed {seed}"
