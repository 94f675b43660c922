"""SWIM in the deterministic simulator: convergence, failure detection, partition healing.

Prints measured figures next to the bounds derived from SwimConfig. Usage:
    .venv/bin/python bench/swim_sim.py [--nodes 1000] [--seed 1] [--preset lan|wan|local]
        [--skip-detect] [--skip-loss] [--skip-heal]

All runs share one CryptoCache across the simulated nodes (a pure-function memo of Ed25519
verification, record parsing and X25519 pair keys), so each record is verified once per run;
every node still performs every check. Virtual time, so the figures do not depend on the load
of the machine; only the "wall" figures do.
"""

from __future__ import annotations

import argparse
import time

from meshguard.swim.config import PRESETS, SwimConfig
from meshguard.testing.simnet import SwimCluster


def converge(n: int, seed: int, window: float, cfg: SwimConfig) -> SwimCluster:
    c = SwimCluster(n, seed, config=cfg)
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    c.start(join_window=window)
    everyone = range(n)
    t = c.run_until_true(lambda: c.converged(everyone), limit=300.0, step=0.5)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    bound = convergence_bound(cfg, n, window)
    st = c.net.stats
    print(
        f"join     n={n:5d} seed={seed}: all {n} nodes know all others at t={t:.1f} s "
        f"(joins spread over {window:.0f} s; bound {bound:.0f} s = "
        f"{bound / cfg.probe_interval:.0f} periods) wall {wall:.1f} s (CPU {cpu:.1f} s), "
        f"{st.sent} packets ({st.sent / n:.0f}/node), max packet {st.max_packet} B, "
        f"Ed25519 verifications {c.cache.verifications}, X25519 {c.cache.dh_computations}"
    )
    false = [e for e in c.down_events if e[3] == "dead"]
    print(f"         false deaths during join: {len(false)}")
    return c


def convergence_bound(cfg: SwimConfig, n: int, window: float) -> float:
    return window + cfg.join_bound(n)


def detect(c: SwimCluster, victim: int) -> None:
    cfg = c.config
    n = c.n
    c.crash(victim)
    t0 = c.net.now
    others = [i for i in range(n) if i != victim]
    first: list[float] = []

    def all_gone() -> bool:
        if not first and any(c.nodes[i].state_of(c.ids[victim]) == "dead" for i in others):
            first.append(c.net.now)
        return c.all_see_gone(victim, others)

    bound = cfg.detection_bound(n) + cfg.spread_bound(n)
    t = c.run_until_true(all_gone, limit=bound + 60, step=0.25)
    print(
        f"detect   n={n:5d}: crash declared dead first after {first[0] - t0:.1f} s, by all "
        f"after {t - t0:.1f} s (bound {bound:.0f} s = 2T + suspicion_max "
        f"{cfg.suspicion_max(n):.0f} s + spread {cfg.spread_bound(n):.0f} s)"
    )


def lossy(n: int, seed: int, minutes: float, loss: float, cfg: SwimConfig) -> None:
    c = SwimCluster(n, seed, config=cfg, loss=loss)
    c.start(join_window=1.0)
    c.run_until_true(lambda: c.converged(range(n), strict=False), limit=300.0, step=1.0)
    t0 = time.perf_counter()
    start = c.net.now
    c.net.run_until(start + minutes * 60)
    dead = [e for e in c.down_events if e[3] == "dead"]
    susp = sum(nd.stats["probe_failed"] for nd in c.nodes)
    ref = sum(nd.stats["refuted"] for nd in c.nodes)
    print(
        f"loss     n={n:5d} loss={loss:.0%} for {minutes:.0f} min: false deaths {len(dead)}, "
        f"suspicions {susp}, refutations {ref}, "
        f"converged at end: {c.converged(range(n), strict=False)} "
        f"(wall {time.perf_counter() - t0:.1f} s)"
    )


def heal(n: int, seed: int, hold: float, cfg: SwimConfig) -> None:
    c = SwimCluster(n, seed, config=cfg)
    c.start(join_window=1.0)
    c.run_until_true(lambda: c.converged(range(n)), limit=300.0, step=1.0)
    half_a = [c.eps[i] for i in range(0, n, 2)]
    half_b = [c.eps[i] for i in range(1, n, 2)]
    c.net.partition([half_a, half_b])
    t_part = c.net.now
    a = list(range(0, n, 2))
    b = list(range(1, n, 2))
    c.run_until_true(lambda: c.converged(a) and c.converged(b), limit=hold, step=1.0)
    split = c.net.now - t_part
    c.net.run_until(t_part + hold)
    c.net.heal()
    t_heal = c.net.now
    cfg = c.config
    bound = heal_bound(cfg, n)
    t = c.run_until_true(lambda: c.converged(range(n)), limit=bound + 120, step=1.0)
    print(
        f"heal     n={n:5d}: 50/50 partition, each side agreed on its half after {split:.0f} s; "
        f"held {hold:.0f} s; whole mesh again {t - t_heal:.1f} s after the heal "
        f"(bound {bound:.0f} s)"
    )


def heal_bound(cfg: SwimConfig, n: int) -> float:
    return cfg.heal_bound(n)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="lan")
    ap.add_argument("--skip-detect", action="store_true")
    ap.add_argument("--skip-loss", action="store_true")
    ap.add_argument("--skip-heal", action="store_true")
    args = ap.parse_args()
    cfg = PRESETS[args.preset]()
    c = converge(args.nodes, args.seed, window=2.0, cfg=cfg)
    if not args.skip_detect:
        detect(c, victim=args.nodes // 2)
    if not args.skip_loss:
        lossy(200, args.seed, minutes=10, loss=0.10, cfg=cfg)
    if not args.skip_heal:
        heal(200, args.seed, hold=300.0, cfg=cfg)


if __name__ == "__main__":
    main()
