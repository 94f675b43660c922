"""Replay window (RFC 6479 style) against a reference set model."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from meshguard.wireguard.constants import REJECT_AFTER_MESSAGES, REPLAY_WINDOW
from meshguard.wireguard.keypair import ReplayWindow


class Model:
    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.last = -1

    def accept(self, c: int) -> bool:
        if c >= REJECT_AFTER_MESSAGES or c in self.seen:
            return False
        if c <= self.last and self.last - c >= REPLAY_WINDOW:
            return False
        self.seen.add(c)
        self.last = max(self.last, c)
        return True


def test_window_at_least_2048() -> None:
    assert REPLAY_WINDOW >= 2048


def test_basic() -> None:
    w = ReplayWindow()
    assert w.accept(0) and not w.accept(0)
    assert w.accept(5) and w.accept(3) and not w.accept(3)
    assert w.accept(5 + REPLAY_WINDOW)
    assert not w.check(5) and not w.accept(5)  # fell out of the window
    assert w.accept(6)  # the oldest counter still inside
    assert not w.accept(REJECT_AFTER_MESSAGES)
    assert w.accept(REJECT_AFTER_MESSAGES - 1)


def test_far_jump_clears_ring() -> None:
    w = ReplayWindow()
    for c in range(3000):
        assert w.accept(c)
    assert w.accept(10**9)
    # counters just below the new top were never seen, so they are accepted once
    assert w.accept(10**9 - 1) and not w.accept(10**9 - 1)


near = st.integers(0, 3 * REPLAY_WINDOW)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(near, st.integers(0, 20_000), st.integers(0, 2**64 - 1)), max_size=300))
def test_matches_model(counters: list[int]) -> None:
    w, m = ReplayWindow(), Model()
    for c in counters:
        expected = m.accept(c)
        assert w.check(c) == expected
        assert w.accept(c) == expected, c


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(-64, 64), min_size=1, max_size=400))
def test_matches_model_sliding(steps: list[int]) -> None:
    """Mostly-increasing counters with local reordering, as a real link produces."""
    w, m = ReplayWindow(), Model()
    base = 0
    for s in steps:
        base = max(0, base + 40)
        c = max(0, base + s)
        assert w.accept(c) == m.accept(c), c
