"""The path selector (nat/path_select.py) with a deterministic clock and Rng: re-punch
backoff and its reset, death of a direct path, the grace after going direct, the ranking of
endpoints."""

from __future__ import annotations

import itertools

from meshguard.nat.path_select import (
    BASE_BACKOFF,
    DEAD_AFTER,
    GRACE,
    JITTER,
    MAX_BACKOFF,
    PROBE_AFTER,
    RESET_DELAY,
    STABLE,
    Decision,
    PathSelector,
    first_endpoint,
    is_lan,
    order_endpoints,
)
from meshguard.testing.rng import SeededRng

P = b"\x01" * 32
FP = ((("203.0.113.22", 51821),), 2, (("203.0.113.21", 51821),), True)


def _sel() -> PathSelector:
    return PathSelector(SeededRng(7))


def test_failed_punches_back_off_from_5_to_60_s_jittered() -> None:
    sel = _sel()
    waits = [sel.punched(100.0, P, "failed") for _ in range(7)]
    expected = [5, 10, 20, 40, 60, 60, 60]
    for w, e in zip(waits, expected, strict=True):
        assert w is not None
        assert e * (1 - JITTER) <= w - 100.0 <= e * (1 + JITTER)
    assert len({round(w or 0, 6) for w in waits}) == len(waits)  # jittered, not fixed
    assert sel.punched(200.0, P, "succeeded") is None
    assert sel.last_punch(210.0, P) == ("succeeded", 10.0)
    assert sel.counters["path_punch_failed"] == 7


def test_no_rendezvous_backs_off_like_a_failure() -> None:
    sel = _sel()
    w = sel.punched(0.0, P, "no rendezvous")
    assert w is not None and BASE_BACKOFF * (1 - JITTER) <= w <= BASE_BACKOFF * (1 + JITTER)
    assert sel.last_punch(1.0, P) == ("no rendezvous", 1.0)


def test_a_record_change_while_relayed_resets_the_backoff() -> None:
    sel = _sel()
    assert sel.observe(0.0, P, "relayed", 1.0, 10, 10, FP).punch_at is None
    for _ in range(4):
        sel.punched(1.0, P, "failed")  # the backoff is at 40 s now
    assert sel.observe(2.0, P, "relayed", 1.0, 10, 10, FP).punch_at is None  # unchanged
    moved = (FP[0], 3, FP[2], FP[3])  # the peer's NAT type changed
    at = sel.observe(3.0, P, "relayed", 1.0, 10, 10, moved).punch_at
    assert at is not None and 3.0 + RESET_DELAY * (1 - JITTER) <= at <= 3.0 + RESET_DELAY * 1.3
    nxt = sel.punched(5.0, P, "failed")  # the next failure waits the base again
    assert nxt is not None and nxt - 5.0 <= BASE_BACKOFF * (1 + JITTER)
    ours = (moved[0], moved[1], (("203.0.113.21", 40000),), True)  # our own endpoint moved
    assert sel.observe(6.0, P, "relayed", 1.0, 10, 10, ours).punch_at is not None
    assert sel.counters["path_punch_reset"] == 2


def test_a_record_change_while_direct_starts_no_punch() -> None:
    sel = _sel()
    sel.observe(0.0, P, "direct", 1.0, 10, 10, FP)
    moved = (FP[0], 3, FP[2], FP[3])
    assert sel.observe(1.0, P, "direct", 1.0, 11, 10, moved).punch_at is None


def _silent_peer(sel: PathSelector, until: float, answer_probe: bool = False
                 ) -> list[tuple[float, Decision]]:
    """The peer answers until t=10, then we send 200 B per 0.5 s and get nothing back (or
    only the handshake answering our probe)."""
    out: list[tuple[float, Decision]] = []
    rx, tx, hs = 0, 0, 1.0
    probed = False
    t = 0.0
    while t <= until:
        tx += 200
        if t <= 10.0:
            rx += 200
        if answer_probe and probed:
            hs, probed = hs + 1.0, False
        for d in sel.observe(t, P, "direct", hs, rx, tx, FP).decisions:
            out.append((t, d))
            probed = probed or d is Decision.PROBE
        t = round(t + 0.5, 6)
    return out


def test_a_dead_direct_path_is_probed_then_given_up_within_10_s() -> None:
    sel = _sel()
    got = _silent_peer(sel, 30.0)
    probes = [t for t, d in got if d is Decision.PROBE]
    dead = [t for t, d in got if d is Decision.FALL_BACK]
    # the first unanswered send is seen at 10.5
    assert probes and probes[0] == 10.5 + PROBE_AFTER
    assert dead and dead[0] == 10.5 + DEAD_AFTER and dead[0] - 10.0 < 10.0
    assert sel.counters["path_direct_dead"] >= 1 and sel.counters["path_probes_sent"] >= 1


def test_a_one_way_flow_answered_by_the_probe_is_not_dead() -> None:
    sel = _sel()
    got = _silent_peer(sel, 40.0, answer_probe=True)
    assert [d for _, d in got if d is Decision.FALL_BACK] == []
    probes = [t for t, d in got if d is Decision.PROBE]
    assert probes and all(b - a >= 5.0 for a, b in itertools.pairwise(probes))


def test_keepalives_alone_raise_no_suspicion() -> None:
    sel = _sel()
    for i in range(60):  # one 32-byte keepalive per 25 s, nothing received for 30 s
        t = i * 0.5
        assert sel.observe(t, P, "direct", 1.0, 100, 100 + 32 * (i // 50), FP).decisions == ()


def test_relayed_peers_are_not_watched() -> None:
    sel = _sel()
    for i in range(40):
        assert sel.observe(i * 0.5, P, "relayed", 1.0, 0, 200 * i, FP).decisions == ()


def test_grace_after_going_direct_and_transition_counters() -> None:
    sel = _sel()
    sel.observe(0.0, P, "relayed", 1.0, 0, 0, FP)
    assert sel.counters["path_first_relayed"] == 1
    sel.moved(10.0, P, "direct", "hole punch succeeded")
    assert sel.counters["path_relay_to_direct"] == 1
    assert sel.in_grace(10.0 + GRACE - 0.1, P) and not sel.in_grace(10.0 + GRACE, P)
    assert sel.state(P) == ("direct", "hole punch succeeded", 10.0)
    sel.observe(20.0, P, "relayed", 1.0, 0, 0, FP)  # roamed back by authenticated traffic
    assert sel.counters["path_direct_to_relay"] == 1
    st = sel.state(P)
    assert st is not None and st[0] == "relayed" and "relay" in st[1]
    assert not sel.in_grace(20.0, P)


def test_a_stable_direct_path_resets_the_backoff_a_flaky_one_does_not() -> None:
    sel = _sel()
    sel.observe(0.0, P, "relayed", 1.0, 0, 0, FP)
    for _ in range(3):
        sel.punched(0.0, P, "failed")  # 20 s
    sel.moved(1.0, P, "direct", "punched")
    sel.observe(2.0, P, "direct", 1.0, 1, 0, FP)
    flaky = sel.after_fallback(3.0, P)  # died after 2 s: no reset, the backoff doubles
    assert flaky - 3.0 >= 40 * (1 - JITTER)
    sel.moved(4.0, P, "direct", "punched")
    sel.observe(4.0 + STABLE, P, "direct", 1.0, 2, 0, FP)
    stable = sel.after_fallback(5.0 + STABLE, P)
    assert stable - (5.0 + STABLE) <= BASE_BACKOFF * (1 + JITTER)
    assert MAX_BACKOFF == 60.0


def test_endpoints_rank_lan_first() -> None:
    own = (("203.0.113.21", 51821), ("192.168.10.2", 51821))
    theirs = (("203.0.113.21", 40000), ("10.1.2.3", 51821), ("192.168.10.3", 51821),
              ("203.0.113.21", 40000))
    assert order_endpoints(theirs, own) == (("192.168.10.3", 51821), ("10.1.2.3", 51821),
                                             ("203.0.113.21", 40000))
    assert not is_lan("203.0.113.21") and is_lan("fd00::1") and is_lan("172.16.0.9")
    assert not is_lan("not an address")


def test_first_handshake_goes_to_the_lan_only_behind_our_own_nat() -> None:
    own = (("203.0.113.21", 51821), ("192.168.10.2", 51821))
    same_nat = (("203.0.113.21", 40000), ("192.168.10.3", 51821))
    assert first_endpoint(same_nat, own, same_nat[0]) == ("192.168.10.3", 51821)
    # another home with the same private subnet, behind another NAT: the record's endpoint
    other_nat = (("198.51.100.7", 51821), ("192.168.10.3", 51821))
    assert first_endpoint(other_nat, own, other_nat[0]) == other_nat[0]
    # a LAN-only member (no public endpoint) in our subnet: its LAN address
    lan_only = (("192.168.10.4", 51821),)
    assert first_endpoint(lan_only, own, lan_only[0]) == lan_only[0]
    # not in one of our subnets: the record's endpoint
    far = (("203.0.113.21", 40000), ("10.9.9.9", 51821))
    assert first_endpoint(far, own, far[0]) == far[0]
    assert first_endpoint(same_nat, (), same_nat[0]) == same_nat[0]  # no own endpoints yet
