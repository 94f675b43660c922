"""When seeds are looked up again (discovery/seed_schedule.py), on the manual clock: the
refresh interval, low TTLs, the retry backoff of a failing name, and the rescue of a node
that has no live member."""

from __future__ import annotations

from meshguard.discovery.seed_schedule import (
    ADDRESS,
    DNS,
    HOST,
    MDNS,
    MIN_REFRESH,
    REFRESH,
    RETRY_MAX,
    SeedSchedule,
    SeedSource,
)
from meshguard.testing.clock import ManualClock

NAME = SeedSource(HOST, "seed.test:51821", "seed.test", 51821)
LIT = SeedSource(ADDRESS, "192.0.2.9:51821", "192.0.2.9", 51821)
TXT = SeedSource(DNS, "example.test")


def _sched(*sources: SeedSource) -> tuple[SeedSchedule, ManualClock]:
    c = ManualClock()
    return SeedSchedule(list(sources), c.monotonic(), c.wall()), c


def test_names_are_due_at_start_and_literals_never() -> None:
    s, c = _sched(LIT, NAME, TXT)
    assert s.due(c.now) == [NAME, TXT]
    assert s.due(c.now) == []  # in flight until answered
    assert s.addresses() == [("192.0.2.9", 51821)]
    assert s.has_lookups()
    assert not _sched(LIT)[0].has_lookups()


def test_refresh_after_success_and_low_ttl_is_honoured() -> None:
    s, c = _sched(NAME, TXT)
    s.due(c.now)
    assert s.resolved(c.now, c.wall(), NAME, [("10.0.0.1", 51821)])
    assert s.resolved(c.now, c.wall(), TXT, [("10.0.0.2", 51821)], ttl=30)
    assert s.addresses() == [("10.0.0.1", 51821), ("10.0.0.2", 51821)]
    s.note_connected(c.now, True)
    c.advance(29.9)
    assert s.due(c.now) == []
    c.advance(0.2)
    assert s.due(c.now) == [TXT]
    assert not s.resolved(c.now, c.wall(), TXT, [("10.0.0.2", 51821)], ttl=0)  # unchanged
    assert s.next_deadline() == c.now + MIN_REFRESH  # a TTL of 0 is read as MIN_REFRESH
    c.advance(REFRESH - 30)
    assert NAME in s.due(c.now)


def test_failed_lookup_backs_off_to_the_cap_and_keeps_old_addresses() -> None:
    s, c = _sched(NAME)
    s.due(c.now)
    s.resolved(c.now, c.wall(), NAME, [("10.0.0.1", 51821)])
    s.note_connected(c.now, True)
    c.advance(REFRESH)
    waits = []
    for _ in range(8):
        assert s.due(c.now) == [NAME]
        s.failed(c.now, c.wall(), NAME, "no such name")
        waits.append(s.next_deadline() - c.now)
        c.advance(waits[-1])
    assert waits == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    assert s.addresses() == [("10.0.0.1", 51821)]  # a resolver hiccup drops no seed
    st = s.status(c.now, c.wall()).sources[0]
    assert st.error == "no such name" and st.addresses == ("10.0.0.1:51821",)
    s.due(c.now)
    s.resolved(c.now, c.wall(), NAME, [("10.0.0.3", 51821)])
    assert s.next_deadline() == c.now + REFRESH  # a success resets the backoff
    assert s.status(c.now, c.wall()).sources[0].error is None


def test_a_node_alone_looks_every_name_up_again_with_backoff() -> None:
    s, c = _sched(NAME, TXT)
    for src in s.due(c.now):
        s.resolved(c.now, c.wall(), src, [("10.0.0.1", 51821)])
    s.note_connected(c.now, True)
    c.advance(100)
    s.note_connected(c.now, False)  # every member is gone: the seed moved
    rescues = []
    start = c.now
    while c.now - start < 400:
        c.advance(0.5)
        s.note_connected(c.now, False)
        due = s.due(c.now)
        if due:
            assert due == [NAME, TXT]
            rescues.append(round(c.now - start, 1))
            for src in due:
                s.resolved(c.now, c.wall(), src, [("10.0.0.1", 51821)])
    gaps = [b - a for a, b in zip([0.0, *rescues], rescues, strict=False)]
    assert gaps[:6] == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0]
    assert max(gaps) <= RETRY_MAX
    rep = s.status(c.now, c.wall())
    assert rep.connected is False and rep.next_retry is not None
    s.note_connected(c.now, True)
    assert s.status(c.now, c.wall()).next_retry is None
    c.advance(1)
    s.note_connected(c.now, False)  # alone again: the backoff starts over
    c.advance(2.0)
    assert s.due(c.now) == [NAME, TXT]


def test_mdns_addresses_are_pushed_and_bounded() -> None:
    src = SeedSource(MDNS, "_meshguard._udp.local")
    s, c = _sched(src)
    assert not s.has_lookups() and s.due(c.now) == []
    many = [(f"10.1.0.{i}", 51821) for i in range(1, 100)]
    assert s.discovered(c.wall(), src, many)
    assert len(s.addresses()) == 16
    assert not s.discovered(c.wall(), src, many)
    assert s.discovered(c.wall(), src, [])
    assert s.addresses() == []


def test_duplicate_addresses_across_sources_are_joined_once() -> None:
    s, c = _sched(LIT, NAME)
    s.due(c.now)
    s.resolved(c.now, c.wall(), NAME, [("192.0.2.9", 51821), ("192.0.2.9", 51821)])
    assert s.addresses() == [("192.0.2.9", 51821)]


def test_set_sources_keeps_known_state_and_looks_new_names_up_at_once() -> None:
    s, c = _sched(LIT, NAME)
    assert s.due(c.now) == [NAME]
    s.resolved(c.now, c.wall(), NAME, [("192.0.2.7", 51821)], ttl=600)
    other = SeedSource(ADDRESS, "192.0.2.8:51821", "192.0.2.8", 51821)
    assert s.set_sources([NAME, other, TXT], c.now, c.wall())
    assert s.addresses() == [("192.0.2.7", 51821), ("192.0.2.8", 51821)]  # LIT dropped
    assert s.due(c.now) == [TXT]  # NAME keeps its refresh time
    # an answer for a source a reload dropped is ignored
    assert not s.set_sources([NAME], c.now, c.wall())
    assert not s.resolved(c.now, c.wall(), TXT, [("192.0.2.99", 1)])
    s.failed(c.now, c.wall(), TXT, "gone")
    assert s.addresses() == [("192.0.2.7", 51821)]
