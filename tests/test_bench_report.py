"""bench/run.py's pure parts: percentiles, medians and ratios over rounds, the issue-11 goal
verdicts, the table, and its command line (no namespaces, nothing measured)."""

from __future__ import annotations

import importlib.util
import statistics
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


report = _load("tunnel_report")


def test_percentile_interpolates_between_ranks() -> None:
    assert report.percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert report.percentile([4.0, 1.0, 3.0, 2.0], 0) == 1.0
    assert report.percentile([4.0, 1.0, 3.0, 2.0], 100) == 4.0
    assert report.percentile([7.0], 99) == 7.0
    # 200 pings: p99 sits between the 2nd- and the 3rd-slowest
    rtts = [float(i) for i in range(1, 201)]
    assert report.percentile(reversed(rtts), 99) == pytest.approx(198.01)


def test_percentile_50_is_the_median() -> None:
    vals = [0.31, 0.29, 2.5, 0.30, 0.33, 0.28, 9.1]
    assert report.percentile(vals, 50) == statistics.median(vals)
    assert report.percentile(vals[:-1], 50) == statistics.median(vals[:-1])


def test_percentile_refuses_nothing_and_out_of_range() -> None:
    with pytest.raises(ValueError):
        report.percentile([], 50)
    with pytest.raises(ValueError):
        report.percentile([1.0], 101)


def test_ping_summary_counts_lost_echoes() -> None:
    s = report.ping_summary([1.0, 2.0, 3.0], 5)
    assert s == {"ping_p50": 2.0, "ping_p99": pytest.approx(2.98), "ping_lost": 2.0}
    assert report.ping_summary([], 200) == {"ping_p50": None, "ping_p99": None,
                                            "ping_lost": 200.0}


def _summary(**paths: list[dict[str, float | None]] | str) -> dict[str, Any]:
    return dict(report.summarize({k.replace("_", "-"): v for k, v in paths.items()}))


def test_summarize_takes_medians_over_rounds_and_ratios_to_wireguard_go() -> None:
    s = _summary(wireguard_go=[{"tcp1": 2.0, "rss": 10.0}, {"tcp1": 4.0, "rss": 10.0},
                               {"tcp1": 3.0, "rss": None}],
                 meshguard_wg=[{"tcp1": 6.0, "rss": 30.0}, {"tcp1": None, "rss": 40.0}],
                 meshguard_up="failed: no ping reply")
    assert s["wireguard-go"]["median"] == {"tcp1": 3.0, "rss": 10.0}
    assert s["meshguard-wg"]["median"] == {"tcp1": 6.0, "rss": 35.0}
    assert s["meshguard-wg"]["ratio_to_wireguard_go"] == {"tcp1": 2.0, "rss": 3.5}
    assert s["meshguard-wg"]["rounds"][1] == {"tcp1": None, "rss": 40.0}
    assert s["meshguard-up"] == {"status": "failed: no ping reply"}


def test_summarize_without_the_reference_has_no_ratios() -> None:
    s = _summary(meshguard_wg=[{"tcp1": 6.0}])
    assert "ratio_to_wireguard_go" not in s["meshguard-wg"]


def _verdicts(summary: dict[str, Any]) -> dict[tuple[str, str], bool | None]:
    return {(v["path"], v["key"]): v["met"] for v in report.goal_verdicts(summary)}


def test_goal_verdicts_compare_ratios_and_absolutes_at_their_bounds() -> None:
    ref = {"tcp1": 1.0, "tcp4": 1.0, "cpu_per_gbit": 1.0, "ping_p50": 1.0, "ping_p99": 1.0,
           "first_ping": 50.0, "udp64": 10.0, "rss": 500.0}
    wg = {"tcp1": 1.3, "tcp4": 1.29, "cpu_per_gbit": 0.8, "ping_p50": 1.0, "ping_p99": 1.01,
          "first_ping": 49.0, "udp64": 20.0, "rss": 64.0}
    up = {"joined_ping": 99.9, "rss": 63.9}
    v = _verdicts(_summary(wireguard_go=[ref], meshguard_wg=[wg], meshguard_up=[up]))
    assert v == {
        ("meshguard-wg", "tcp1"): True,  # >= 1.3x, exactly
        ("meshguard-wg", "tcp4"): False,
        ("meshguard-wg", "cpu_per_gbit"): True,  # <= 0.8x, exactly
        ("meshguard-wg", "ping_p50"): True,
        ("meshguard-wg", "ping_p99"): False,
        ("meshguard-wg", "first_ping"): True,
        ("meshguard-up", "joined_ping"): True,
        ("meshguard-wg", "udp64"): True,  # >= 2x, exactly
        ("meshguard-wg", "rss"): False,  # < 64 MiB: 64 is not under it
        ("meshguard-up", "rss"): True,
    }
    up_late = _verdicts(_summary(meshguard_up=[{"joined_ping": 100.0}]))
    assert up_late[("meshguard-up", "joined_ping")] is False


def test_goal_verdicts_say_unknown_when_the_run_has_no_number() -> None:
    # no reference: no ratio goal can be judged; a failed path judges nothing
    v = _verdicts(_summary(meshguard_wg=[{"tcp1": 5.0, "rss": 30.0}],
                           meshguard_up="failed: timeout"))
    assert v[("meshguard-wg", "tcp1")] is None
    assert v[("meshguard-wg", "rss")] is True
    assert v[("meshguard-up", "joined_ping")] is None
    assert v[("meshguard-up", "rss")] is None
    # --quick: no throughput measured, latency goals still judged
    v = _verdicts(_summary(wireguard_go=[{"ping_p50": 1.0}], meshguard_wg=[{"ping_p50": 0.9}]))
    assert v[("meshguard-wg", "ping_p50")] is True
    assert v[("meshguard-wg", "tcp1")] is None


def test_goals_and_table_print_what_was_measured() -> None:
    s = _summary(wireguard_go=[{"tcp1": 2.0, "ping_p50": 0.5}],
                 meshguard_wg=[{"tcp1": 3.0, "ping_p50": 0.4}],
                 meshguard_up="not available (`meshguard up` not available)")
    goals = report.format_goals(report.goal_verdicts(s))
    assert "met      meshguard-wg TCP 1 stream >= 1.3x wireguard-go: x1.50" in goals
    assert "n/a      meshguard-wg UDP 64 B >= 2x wireguard-go: not measured" in goals
    table = report.format_table(s, 1, 5.0, "wireguard-go = /x/wireguard-go (v1)")
    assert "ratio to wireguard-go = /x/wireguard-go (v1)" in table
    row = next(line for line in table.splitlines() if line.startswith("TCP 1 stream"))
    # wireguard-go has no ratio; the path that did not run has a dash
    assert row.split()[-4:] == ["2.00", "3.00", "(x1.50)", "-"]
    assert not any(line.startswith("UDP 64 B") for line in table.splitlines())
    assert "meshguard-up: not available" in table


def test_command_line_keeps_json_to_stdout_and_takes_a_file() -> None:
    parser = _load("run").build_parser()
    assert parser.parse_args([]).json is None
    assert parser.parse_args(["--json"]).json == "-"
    assert parser.parse_args(["--json", "--quick"]).json == "-"
    args = parser.parse_args(["--json", "/tmp/r.json", "--wireguard-go", "./wireguard-go",
                              "--rounds", "1", "--duration", "5", "--paths", "veth"])
    assert (args.json, args.wireguard_go, args.rounds, args.duration, args.paths) == (
        "/tmp/r.json", "./wireguard-go", 1, 5.0, "veth")
    assert parser.parse_args([]).wireguard_go is None
