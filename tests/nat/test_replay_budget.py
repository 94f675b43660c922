"""The replay windows (nat/replay.py) and source budgets (nat/budget.py) the NAT cores use."""

from __future__ import annotations

from meshguard.nat.budget import SourceBudget, TokenBucket
from meshguard.nat.replay import WINDOW, CounterWindow, Windows


def test_window_accepts_each_counter_once_and_tolerates_reordering() -> None:
    w = CounterWindow()
    assert w.accept(100) and not w.accept(100)
    assert w.accept(105) and w.accept(101) and w.accept(104)
    assert not w.accept(101) and not w.check(104) and w.check(103)
    assert w.accept(100 + WINDOW + 50)
    assert not w.check(100 + 50)  # fell out of the window: refused as too old
    assert w.check(100 + WINDOW + 49) and w.accept(100 + WINDOW + 49)
    assert w.accept(10**18) and not w.check(10**18 - WINDOW)


def test_forgotten_windows_do_not_let_old_counters_in() -> None:
    ws = Windows(max_keys=2)
    a, b, c, t = b"A" * 32, b"B" * 32, b"C" * 32, b"T" * 32
    assert ws.accept((a, t), 500)
    assert ws.accept((b, t), 10)
    assert ws.accept((c, t), 7)  # evicts (a, t)
    assert len(ws) == 2
    assert not ws.check((a, t), 500) and not ws.accept((a, t), 499)  # A's floor
    assert ws.accept((a, t), 501)
    # the floor is A's alone: B and C are not held to A's counters
    assert ws.accept((c, b), 8) and ws.accept((b, c), 11)


def test_token_bucket() -> None:
    b = TokenBucket(10.0, 3.0)
    assert [b.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert b.take(0.1) and not b.take(0.1)


def test_source_budget_per_source_then_global() -> None:
    sb = SourceBudget(1.0, 2.0, 10.0, 5.0)
    assert [sb.take(0.0, "a") for _ in range(3)] == [None, None, "source_limited"]
    assert [sb.take(0.0, h) for h in "bcd"] == [None, None, None]
    assert sb.take(0.0, "e") == "global_limited"
    assert sb.take(1.0, "a") is None  # both refilled
    # idle buckets are forgotten; the table stays bounded
    sb.take(100.0, "z")
    assert len(sb) == 1
    small = SourceBudget(1.0, 1.0, 1e9, 1e9, max_sources=100)
    for i in range(1000):
        small.take(0.5, f"10.0.{i >> 8}.{i & 255}")
    assert len(small) <= 100
