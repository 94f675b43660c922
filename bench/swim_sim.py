"""SWIM in the deterministic simulator: join, steady state, crash detection, partition healing.

One cluster of --nodes members goes through the scenarios in order (meshguard.testing.
swim_scale, which tests/swim/test_scale.py runs at a small N); each prints one line: the
measured virtual time next to its SwimConfig bound, the gossip bandwidth per node meanwhile,
the peak resident memory so far and the wall time. Usage:

    .venv/bin/python bench/swim_sim.py [--nodes 1000] [--seed 1] [--preset lan|wan|local]
        [--steady 60] [--settle S] [--hold 300] [--skip-detect] [--skip-heal] [--skip-loss]
        [--json FILE]

Bandwidth is SWIM payload bytes sent (MAC included, no IP/UDP headers) per node per virtual
second. Memory is ru_maxrss, the peak resident set of the whole process (interpreter included).
All nodes share one CryptoCache (a pure-function memo of Ed25519 verification, record parsing
and X25519 pair keys), so each record is verified once per run; every node still performs
every check. Virtual time, so the figures do not depend on the load of the machine; only the
wall and CPU figures do. The loss scenario (--skip-loss) runs its own 200-node cluster.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from typing import Any

from meshguard.swim.config import PRESETS, SwimConfig
from meshguard.testing.simnet import SwimCluster
from meshguard.testing.swim_scale import Outcome, ScaleRun


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


class Report:
    def __init__(self, n: int) -> None:
        self.n = n
        self.rows: list[dict[str, Any]] = []
        self._t = time.perf_counter()
        self._cpu = time.process_time()

    def line(self, o: Outcome, bounded: bool = True) -> None:
        wall = time.perf_counter() - self._t
        cpu = time.process_time() - self._cpu
        self._t = time.perf_counter()
        self._cpu = time.process_time()
        tr = o.traffic
        avg = tr.bytes / tr.packets if tr.packets else 0.0
        if bounded:
            fig = f"{o.measured:6.1f} s (bound {o.bound:5.1f} s, {'ok' if o.within else 'OVER'})"
        else:
            fig = f"{o.measured:6.1f} s" + " " * 25
        print(
            f"{o.scenario:6s} n={self.n:5d}: {fig} | {tr.bytes_per_node_s:7.0f} B/s/node "
            f"{tr.packets_per_node_s:5.1f} pkt/s/node {avg:4.0f} B/pkt | {o.note} | "
            f"peak RSS {peak_rss_mb():.0f} MB"
            f" | wall {wall:.1f} s (CPU {cpu:.1f} s)",
            flush=True,
        )
        self.rows.append(
            {
                "scenario": o.scenario,
                "measured_s": round(o.measured, 2),
                "bound_s": round(o.bound, 2) if bounded else None,
                "within_bound": o.within if bounded else None,
                "bytes_per_node_s": round(tr.bytes_per_node_s, 1),
                "packets_per_node_s": round(tr.packets_per_node_s, 2),
                "bytes_per_packet": round(avg, 1),
                "window_s": round(tr.seconds, 2),
                "note": o.note,
                "peak_rss_mb": round(peak_rss_mb(), 1),
                "wall_s": round(wall, 2),
                "cpu_s": round(cpu, 2),
            }
        )


def lossy(n: int, seed: int, minutes: float, loss: float, cfg: SwimConfig) -> dict[str, Any]:
    t0 = time.perf_counter()
    c = SwimCluster(n, seed, config=cfg, loss=loss)
    c.start(join_window=1.0)
    c.run_until_true(lambda: c.converged(range(n), strict=False), limit=300.0, step=1.0)
    c.net.run_until(c.net.now + minutes * 60)
    dead = sum(1 for e in c.down_events if e[3] == "dead")
    susp = c.total("probe_failed")
    ref = c.total("refuted")
    ok = c.converged(range(n), strict=False)
    wall = time.perf_counter() - t0
    print(
        f"loss   n={n:5d}: {loss:.0%} loss for {minutes:.0f} min: false deaths {dead}, "
        f"suspicions {susp}, refutations {ref}, converged at end {ok} | wall {wall:.1f} s",
        flush=True,
    )
    return {"scenario": "loss", "nodes": n, "loss": loss, "minutes": minutes,
            "false_deaths": dead, "suspicions": susp, "refutations": ref,
            "converged": ok, "wall_s": round(wall, 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="lan")
    ap.add_argument("--steady", type=float, default=60.0,
                    help="virtual seconds of steady state (measured after 3 sync intervals)")
    ap.add_argument("--settle", type=float, default=None,
                    help="virtual seconds after the join before the steady window "
                    "(default 3 sync intervals)")
    ap.add_argument("--hold", type=float, default=300.0,
                    help="virtual seconds the 50/50 partition lasts")
    ap.add_argument("--skip-detect", action="store_true")
    ap.add_argument("--skip-heal", action="store_true")
    ap.add_argument("--skip-loss", action="store_true")
    ap.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    args = ap.parse_args()
    cfg = PRESETS[args.preset]()
    n = args.nodes
    wall0 = time.perf_counter()
    cpu0 = time.process_time()
    rep = Report(n)
    run = ScaleRun(n, args.seed, cfg)
    rep.line(run.join())
    c = run.cluster
    print(
        f"         {c.net.stats.sent} packets, max packet {c.net.stats.max_packet} B, "
        f"Ed25519 verifications {c.cache.verifications}, X25519 {c.cache.dh_computations}",
        flush=True,
    )
    if args.steady > 0:
        rep.line(run.steady(args.steady, args.settle), bounded=False)
    if not args.skip_detect:
        rep.line(run.crash(victim=n // 2))
    if not args.skip_heal:
        rep.line(run.partition(args.hold), bounded=False)
        rep.line(run.heal())
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0
    print(
        f"total  n={n:5d}: wall {wall:.1f} s (CPU {cpu:.1f} s), virtual {c.net.now:.0f} s, "
        f"{c.net.stats.sent} packets, peak RSS {peak_rss_mb():.0f} MB (ru_maxrss)",
        flush=True,
    )
    extra: list[dict[str, Any]] = []
    if not args.skip_loss:
        extra.append(lossy(200, args.seed, minutes=10, loss=0.10, cfg=cfg))
    if args.json:
        doc = {
            "nodes": n, "seed": args.seed, "preset": args.preset, "steady_s": args.steady,
            "settle_s": args.settle,
            "hold_s": args.hold, "scenarios": rep.rows, "wall_s": round(wall, 2),
            "cpu_s": round(cpu, 2), "virtual_s": round(c.net.now, 2),
            "packets": c.net.stats.sent, "max_packet": c.net.stats.max_packet,
            "peak_rss_mb": round(peak_rss_mb(), 1), "memory_measure": "ru_maxrss",
            "loss": extra,
        }
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
