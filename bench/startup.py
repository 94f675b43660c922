#!/usr/bin/env python3
"""What start-up spends: import costs, CLI wall times, and the daemon's start-up timeline.

Run as root, under the shared lock:
    flock /tmp/meshguard-netns.lock .venv/bin/python bench/startup.py [--rounds 3]

1. `python -X importtime`: the modules each command loads, by cumulative import time (the
   cost of the command's imports alone, measured in a fresh interpreter each).
2. wall time of `meshguard --help`, `meshguard wireguard --help`, `meshguard up --help`
   (median of 5).
3. timeline of `meshguard wireguard` and of two `meshguard up` nodes in the namespaces of
   bench/run.py (its Testbed and its start->1st ping procedures, so the numbers compare):
   each process writes marks to $MESHGUARD_STARTUP_TRACE (meshguard/daemon/startup_trace.py)
   on CLOCK_MONOTONIC, printed here in ms since the bench started the processes:
   interpreter (cli main entered) -> imports (the command's modules loaded) -> tun / udp /
   uapi (TUN created, UDP port bound, UAPI socket listening) -> configured (first `wg set`)
   -> handshake (first completed); for `up` also keys loaded, preflight, control, join sent,
   joined, peer (first WireGuard peer configured); then bench/run.py's own start-up numbers
   (start->1st ping, and for `up` start->joined and joined->1st ping).
Prints medians over the rounds. Not part of the test suite; the machine is shared, so compare
numbers from one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as tunnel_bench

TRACE_ENV = "MESHGUARD_STARTUP_TRACE"
COMMAND_IMPORTS = {
    "meshguard --help": ["-m", "meshguard", "--help"],
    "meshguard wireguard --help": ["-m", "meshguard", "wireguard", "--help"],
    "meshguard up --help": ["-m", "meshguard", "up", "--help"],
    "wireguard's run (wg_interface)": ["-c", "import meshguard.daemon.wg_interface"],
    "up's run (mesh_daemon)": ["-c", "import meshguard.daemon.mesh_daemon"],
}


def importtime(args: list[str], top: int) -> tuple[float, list[tuple[float, str]]]:
    """Total import time (ms, meshguard's and its dependencies') and the largest entries."""
    r = subprocess.run([sys.executable, "-X", "importtime", *args], capture_output=True,
                       text=True, timeout=60)
    rows: list[tuple[float, int, str]] = []
    for line in r.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line or "cumulative" in line:
            continue
        _, cum_us, field = line[len("import time:"):].split("|")
        depth = (len(field) - len(field.lstrip()) - 1) // 2
        name = field.strip()
        rows.append((int(cum_us) / 1000, depth, name))
    total = sum(ms for ms, depth, _ in rows if depth == 0)
    tops = sorted(((ms, name) for ms, depth, name in rows if depth == 0), reverse=True)
    return total, tops[:top]


def wall_ms(args: list[str], n: int = 5) -> float:
    times = []
    for _ in range(n):
        t0 = time.monotonic()
        subprocess.run([sys.executable, *args], capture_output=True, timeout=60)
        times.append((time.monotonic() - t0) * 1000)
    return statistics.median(times)


def read_trace(path: Path) -> dict[int, dict[str, float]]:
    marks: dict[int, dict[str, float]] = defaultdict(dict)
    if path.exists():
        for line in path.read_text().splitlines():
            t, pid, name = line.split(" ", 2)
            marks[int(pid)].setdefault(name, float(t))
    return marks


@dataclass
class TimedTestbed(tunnel_bench.Testbed):
    """bench/run.py's Testbed, noting when it starts each process (CLOCK_MONOTONIC)."""

    spawned_at: list[float] = field(default_factory=list)

    def spawn(self, cmd: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        self.spawned_at.append(time.monotonic())
        return super().spawn(cmd, **kw)


def start_path(tb: TimedTestbed, path: str) -> tunnel_bench.Tunnel:
    if path == "wireguard-go":
        return tunnel_bench.up_wireguard_go(tb, tunnel_bench.WireguardGo.find(None))
    return tunnel_bench.UPS[path](tb)


def timeline(tb: TimedTestbed, path: str) -> dict[str, float]:
    """One start of `path` (a bench/run.py path); marks in ms since its first process was
    started, with bench/run.py's own start-up numbers (start->1st ping, joined->1st ping...)."""
    fd, name = tempfile.mkstemp(prefix="meshguard-trace-")
    os.close(fd)
    trace = Path(name)
    trace.unlink()
    os.environ[TRACE_ENV] = str(trace)
    tb.spawned_at.clear()
    try:
        tun = start_path(tb, path)
        try:
            t0 = tb.spawned_at[0]
            marks = read_trace(trace)
        finally:
            tun.teardown()
    finally:
        del os.environ[TRACE_ENV]
        trace.unlink(missing_ok=True)
    out: dict[str, float] = {}
    for i, pid in enumerate(tun.pids):
        node = "AB"[i] if len(tun.pids) > 1 else ""
        for mark, t in marks.get(pid, {}).items():
            out[f"{node} {mark}".strip()] = (t - t0) * 1000
    for key, title in (("first_ping", "1st ping (run.py)"),
                       ("start_to_joined", "joined (run.py)"),
                       ("joined_ping", "joined->1st ping (run.py)")):
        value = tun.startup.get(key)
        if value is not None:
            out[title] = value
    return out


def print_timeline(title: str, runs: list[dict[str, float]]) -> None:
    print(f"\n{title}: ms since the processes were started (median of {len(runs)})")
    keys = sorted({k for r in runs for k in r}, key=lambda k: statistics.median(
        [r[k] for r in runs if k in r]))
    for k in keys:
        vals = [r[k] for r in runs if k in r]
        spread = f"  ({min(vals):.0f}-{max(vals):.0f})" if len(vals) > 1 else ""
        print(f"  {k:24} {statistics.median(vals):8.1f}{spread}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--top", type=int, default=8, help="import entries listed per command")
    ap.add_argument("--paths", default="wireguard-go,meshguard-wg,meshguard-up",
                    help="bench/run.py paths to take the timeline of")
    args = ap.parse_args(argv)
    tunnel_bench.compile_package()
    print("imports (python -X importtime, ms; top-level entries by cumulative time)")
    for title, cmd in COMMAND_IMPORTS.items():
        total, tops = importtime(cmd, args.top)
        print(f"  {title}: {total:.0f} ms")
        print("    " + ", ".join(f"{n} {ms:.0f}" for ms, n in tops))
    print("\nwall time, median of 5 (ms)")
    for title, cmd in list(COMMAND_IMPORTS.items())[:3]:
        print(f"  {title:30} {wall_ms(cmd):6.0f}")
    print(f"  {'python -c pass':30} {wall_ms(['-c', 'pass']):6.0f}")
    if os.geteuid() != 0:
        print("\nbench/startup.py: the timelines need root (namespaces, TUN)", file=sys.stderr)
        return 1
    paths = [p for p in args.paths.split(",") if p]
    tb = TimedTestbed()
    runs: dict[str, list[dict[str, float]]] = {p: [] for p in paths}
    try:
        tb.build()
        for r in range(args.rounds):
            for p in paths:
                print(f"round {r + 1}/{args.rounds}: {p} ...", file=sys.stderr, flush=True)
                try:
                    runs[p].append(timeline(tb, p))
                except (tunnel_bench.NotAvailable, RuntimeError) as exc:
                    print(f"  {p}: {exc}", file=sys.stderr)
    finally:
        tb.destroy()
    for p in paths:
        if runs[p]:
            print_timeline(p, runs[p])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
