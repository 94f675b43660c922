"""bench/run.py's numbers: percentiles, medians over rounds, ratios, the issue-11 goals, the table.

Pure functions (no namespaces, no processes), so tests/test_bench_report.py checks them.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

REFERENCE = "wireguard-go"  # the path every ratio is to


@dataclass(frozen=True)
class Metric:
    key: str
    title: str
    unit: str
    higher_is_better: bool
    digits: int


METRICS = [
    Metric("tcp1", "TCP 1 stream", "Gbit/s", True, 2),
    Metric("tcp4", "TCP 4 streams", "Gbit/s", True, 2),
    Metric("udp64", "UDP 64 B", "kpps", True, 1),
    Metric("ping_p50", "ping RTT p50", "ms", False, 3),
    Metric("ping_p99", "ping RTT p99", "ms", False, 3),
    Metric("first_ping", "start->1st ping", "ms", False, 1),
    Metric("joined_ping", "joined->1st ping", "ms", False, 1),
    Metric("cpu_per_gbit", "CPU both daemons", "s/Gbit", False, 2),
    Metric("cpu_send_per_gbit", "CPU sender", "s/Gbit", False, 2),
    Metric("cpu_recv_per_gbit", "CPU receiver", "s/Gbit", False, 2),
    Metric("rss", "RSS (largest)", "MiB", False, 1),
]
METRIC = {m.key: m for m in METRICS}


def percentile(values: Iterable[float], p: float) -> float:
    """The p-th percentile (0..100), interpolating linearly between the two closest ranks
    (numpy's default), so percentile(v, 50) is the median."""
    s = sorted(values)
    if not s:
        raise ValueError("percentile of no values")
    if not 0 <= p <= 100:
        raise ValueError(f"percentile {p} outside 0..100")
    pos = (len(s) - 1) * p / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def ping_summary(rtts_ms: Sequence[float], sent: int) -> dict[str, float | None]:
    """p50 and p99 of the replies' RTTs, and how many of `sent` echoes got no reply."""
    if not rtts_ms:
        return {"ping_p50": None, "ping_p99": None, "ping_lost": float(sent)}
    return {"ping_p50": percentile(rtts_ms, 50), "ping_p99": percentile(rtts_ms, 99),
            "ping_lost": float(sent - len(rtts_ms))}


Rounds = list[dict[str, float | None]]


def summarize(results: Mapping[str, Rounds | str]) -> dict[str, Any]:
    """Per path: its status, every round's raw numbers, the median of each number over the
    rounds, and (when the reference ran) each median's ratio to the reference's median."""
    summary: dict[str, Any] = {}
    for path, runs in results.items():
        if isinstance(runs, str):
            summary[path] = {"status": runs}
            continue
        med: dict[str, float | None] = {}
        for k in sorted({k for r in runs for k in r}):
            vals = [v for r in runs if (v := r.get(k)) is not None]
            med[k] = statistics.median(vals) if vals else None
        summary[path] = {"status": "ok", "median": med, "rounds": runs}
    ref = summary.get(REFERENCE, {}).get("median")
    if ref:
        for s in summary.values():
            if s.get("status") == "ok":
                s["ratio_to_wireguard_go"] = {
                    k: (v / ref[k] if v is not None and ref.get(k) else None)
                    for k, v in s["median"].items()
                }
    return summary


@dataclass(frozen=True)
class Goal:
    """One issue-11 goal: `path`'s `key` against `limit`, as a ratio to the reference
    (ratio=True) or as an absolute number in the metric's unit."""

    path: str
    key: str
    op: str  # ">=", "<=", "<"
    limit: float
    ratio: bool

    def describe(self) -> str:
        m = METRIC[self.key]
        target = f"{self.limit:g}x {REFERENCE}" if self.ratio else f"{self.limit:g} {m.unit}"
        return f"{self.path} {m.title} {self.op} {target}"


GOALS = [
    Goal("meshguard-wg", "tcp1", ">=", 1.3, True),
    Goal("meshguard-wg", "tcp4", ">=", 1.3, True),
    Goal("meshguard-wg", "cpu_per_gbit", "<=", 0.8, True),
    Goal("meshguard-wg", "ping_p50", "<=", 1.0, True),
    Goal("meshguard-wg", "ping_p99", "<=", 1.0, True),
    Goal("meshguard-wg", "first_ping", "<=", 1.0, True),
    Goal("meshguard-up", "joined_ping", "<", 100.0, False),
    Goal("meshguard-wg", "udp64", ">=", 2.0, True),
    Goal("meshguard-wg", "rss", "<", 64.0, False),
    Goal("meshguard-up", "rss", "<", 64.0, False),
]

_OPS = {">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, "<": lambda a, b: a < b}


def goal_verdicts(summary: Mapping[str, Any],
                  goals: Sequence[Goal] = GOALS) -> list[dict[str, Any]]:
    """Each goal with the value this run measured for it and met: True, False, or None when
    the run has no such number (path not run or failed, metric not measured, no reference)."""
    out = []
    for g in goals:
        s = summary.get(g.path, {})
        table = s.get("ratio_to_wireguard_go" if g.ratio else "median") or {}
        value = table.get(g.key) if s.get("status") == "ok" else None
        met = None if value is None else bool(_OPS[g.op](value, g.limit))
        out.append({"goal": g.describe(), "path": g.path, "key": g.key, "op": g.op,
                    "limit": g.limit, "ratio": g.ratio, "value": value, "met": met})
    return out


def fmt(v: float | None, key: str) -> str:
    if v is None:
        return "n/a"
    m = METRIC.get(key)
    return f"{v:.{m.digits if m else 1}f}"


def format_table(summary: Mapping[str, Any], rounds: int, duration: float | None,
                 reference: str) -> str:
    """Metrics as rows, paths as columns; each cell the median, (xN) its ratio to the
    reference. `reference` names the wireguard-go build measured; duration None: no iperf3."""
    paths = list(summary)
    each = f"{duration:g} s" if duration is not None else "latency only"
    lines = [f"medians of {rounds} rounds x {each}; (xN) = ratio to {reference}",
             "shared noisy machine: compare ratios from one run, not absolutes"]
    width = [max(len(p), 15) for p in paths]
    label = max(len(f"{m.title} [{m.unit}]") for m in METRICS)
    lines.append(f"{'':{label}}" + "".join(f"  {p:>{w}}" for p, w in zip(paths, width,
                                                                          strict=True)))
    for m in METRICS:
        if not any(s.get("status") == "ok" and s["median"].get(m.key) is not None
                   for s in summary.values()):
            continue  # not measured in this run (--quick, kernel paths only)
        cells = []
        for p, w in zip(paths, width, strict=True):
            s = summary[p]
            if s.get("status") != "ok":
                cells.append(f"  {'-':>{w}}")
                continue
            cell = fmt(s["median"].get(m.key), m.key)
            ratio = s.get("ratio_to_wireguard_go", {}).get(m.key)
            if ratio is not None and p != REFERENCE:
                cell += f" (x{ratio:.2f})"
            cells.append(f"  {cell:>{w}}")
        lines.append(f"{m.title + ' [' + m.unit + ']':{label}}" + "".join(cells))
    for p, s in summary.items():
        if s.get("status") != "ok":
            lines.append(f"  {p}: {s['status']}")
        elif s["median"].get("retrans1") is not None:
            lines.append(f"  {p}: TCP retransmits (1 stream, median) "
                         f"{s['median']['retrans1']:.0f}, UDP 64 B loss "
                         f"{s['median'].get('udp64_loss_pct') or 0:.1f} %, ping lost "
                         f"{s['median'].get('ping_lost') or 0:.0f}")
    return "\n".join(lines)


def format_goals(verdicts: Sequence[Mapping[str, Any]]) -> str:
    lines = ["issue-11 goals (this run):"]
    for v in verdicts:
        if v["met"] is None:
            state, value = "n/a", "not measured"
        else:
            state = "met" if v["met"] else "NOT met"
            digits = 2 if v["ratio"] else METRIC[v["key"]].digits
            value = f"x{v['value']:.2f}" if v["ratio"] else f"{v['value']:.{digits}f}"
        lines.append(f"  {state:8} {v['goal']}: {value}")
    return "\n".join(lines)
