"""The `seeds` section of the status document (wire/seed_status.py) survives the control
socket's JSON, and a malformed one is a WireFormatError, not a crash of `meshguard status`."""

from __future__ import annotations

import json

import pytest

from meshguard.cli.seeds_view import format_seeds
from meshguard.discovery.seed_schedule import ADDRESS, HOST, SeedSchedule, SeedSource
from meshguard.errors import WireFormatError
from meshguard.testing.clock import ManualClock
from meshguard.wire.control import SelfStatus, StatusReport
from meshguard.wire.seed_status import SeedsStatus

NAME = SeedSource(HOST, "seed.test:51821", "seed.test", 51821)
LIT = SeedSource(ADDRESS, "[2001:db8::1]:51821", "2001:db8::1", 51821)


def _report(seeds: SeedsStatus | None) -> StatusReport:
    me = SelfStatus(None, "k", "w", "10.99.1.1", "fd99:6d67::1", 51821, 51821)
    return StatusReport("mg0", "userspace", 1, 0.0, me, (), {}, seeds=seeds)


def test_round_trip_and_text() -> None:
    c = ManualClock()
    s = SeedSchedule([NAME, LIT], c.monotonic(), c.wall())
    s.due(c.now)
    s.failed(c.now, c.wall(), NAME, "cannot resolve seed seed.test: no such name (NXDOMAIN)")
    s.note_connected(c.now, False)
    st = s.status(c.now, c.wall())
    doc = json.loads(json.dumps(_report(st).to_json()))
    back = StatusReport.from_json(doc)
    assert back.seeds == st
    assert back.seeds is not None and back.seeds.sources[1].addresses == ("[2001:db8::1]:51821",)
    text = "\n".join(format_seeds(back.seeds, c.wall()))
    assert "no member reachable yet; retrying in 2s" in text
    assert "host seed.test:51821: no address (failed 0s ago: cannot resolve seed" in text
    assert "address [2001:db8::1]:51821: [2001:db8::1]:51821" in text


def test_no_sources_no_section() -> None:
    doc = _report(None).to_json()
    assert "seeds" not in doc
    assert StatusReport.from_json(doc).seeds is None


@pytest.mark.parametrize("bad", [
    [], {"connected": "yes", "next_retry": None, "sources": []},
    {"connected": True, "next_retry": "soon", "sources": []},
    {"connected": True, "next_retry": None, "sources": [{"source": "host"}]},
    {"connected": True, "next_retry": None, "sources": [
        {"source": "host", "name": "x", "addresses": "x", "last_success": None,
         "last_failure": None, "error": None, "next_lookup": None}]},
])
def test_malformed_section(bad: object) -> None:
    doc = _report(None).to_json()
    doc["seeds"] = bad
    with pytest.raises(WireFormatError):
        StatusReport.from_json(doc)
