"""Long fuzz runs: every codec and the composed node's receive path (meshguard/testing/fuzz.py).

    nice -n 10 .venv/bin/python bench/fuzz.py [--runs 1000000] [--targets gossip,node,...]
                                             [--engine atheris|mutate] [--seed 1] [--out DIR]

Each target runs in its own process, one after the other. With `--engine atheris` (the default
when atheris is installed) the meshguard modules are instrumented and libFuzzer mutates the
seed corpus guided by coverage; `--engine mutate` uses the harness's own seeded mutator. The
harness catches what the target may raise (its documented error) and records anything else
(an uncaught exception) with its input in DIR/<target>/; a process that dies (a signal,
libFuzzer's timeout or memory limit) is a crash. One line per target:

    target inputs accepted rejected exceptions (unique) crashes log-lines max-RSS seconds cov

(cov: the instrumented code edges libFuzzer reached, atheris only.)

Exit status 1 if any target had an exception or a crash. Reproduce a recorded input with
`--replay FILE --targets NAME`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
STATS_EVERY = 10_000


def have_atheris() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


def _targets(names: list[str] | None) -> dict[str, Any]:
    from meshguard.testing import fuzz as harness

    targets = harness.all_targets() if names is None or any(
        n.startswith("node") for n in names) else harness.codec_targets()
    if names is None:
        return targets
    missing = [n for n in names if n not in targets]
    if missing:
        raise SystemExit(f"unknown targets: {', '.join(missing)}; known: {', '.join(targets)}")
    return {n: targets[n] for n in names}


def _write_stats(path: Path, stats: Any, started: float, done: bool) -> None:
    doc = {
        "target": stats.target, "inputs": stats.inputs, "accepted": stats.accepted,
        "rejected": stats.rejected, "exceptions": stats.exceptions,
        "unique": stats.unique(), "log_records": stats.log_records,
        "elapsed": time.perf_counter() - started, "done": done,
        "max_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "failures": [{"error": f.error, "where": f.where, "input": f.data.hex()}
                     for f in stats.failures],
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, path)


def _save_failure(out: Path, f: Any) -> None:
    name = f"exception-{abs(hash(f.signature)) & 0xFFFFFFFF:08x}"
    (out / name).write_bytes(f.data)
    (out / f"{name}.txt").write_text(f"{f.error}\n{f.where}\n")


def worker(name: str, runs: int, engine: str, seed: int, out: Path) -> None:
    """One target in this process; stats go to out/stats.json as the run goes."""
    out.mkdir(parents=True, exist_ok=True)
    stats_path = out / "stats.json"
    if engine == "atheris":
        import atheris

        # building the target inside the block instruments what it imports on the way too
        with atheris.instrument_imports(include=["meshguard"]):
            from meshguard.testing import fuzz as harness

            target = _targets([name])[name]
    else:
        from meshguard.testing import fuzz as harness

        target = _targets([name])[name]
    stats = harness.FuzzStats(name)
    started = time.perf_counter()
    logs_cm = harness.counted_logs()
    logs = logs_cm.__enter__()
    if engine == "mutate":
        import random

        for s in target.seeds:
            harness.check_one(target, s, stats)
        mut = harness.Mutator(random.Random(seed), target.seeds, target.max_len)
        for i in range(runs):
            if target.reset is not None and target.reset_every and i and \
                    i % target.reset_every == 0:
                target.reset()
            f = harness.check_one(target, harness.prepare(target, mut.mutate()), stats)
            if f is not None and len(stats.failures) and f is stats.failures[-1]:
                _save_failure(out, f)
            if stats.inputs % STATS_EVERY == 0:
                stats.log_records = logs.count
                _write_stats(stats_path, stats, started, False)
        stats.log_records = logs.count
        _write_stats(stats_path, stats, started, True)
        return
    corpus = out / "corpus"
    corpus.mkdir(exist_ok=True)
    for i, s in enumerate(target.seeds):
        (corpus / f"seed-{i:04d}").write_bytes(s)
    count = [0]

    def one(data: bytes) -> None:
        n = count[0]
        if target.reset is not None and target.reset_every and n and \
                n % target.reset_every == 0:
            target.reset()
        f = harness.check_one(target, harness.prepare(target, data), stats)
        if f is not None and f is stats.failures[-1]:
            _save_failure(out, f)
        count[0] = n + 1
        if count[0] % STATS_EVERY == 0 or count[0] >= runs:
            stats.log_records = logs.count
            done = count[0] >= runs
            _write_stats(stats_path, stats, started, done)
            if done:
                sys.stdout.flush()
                os._exit(0)

    args = [sys.argv[0], str(corpus), f"-runs={runs * 2 + 1000}", f"-seed={seed}",
            f"-max_len={target.max_len}", "-timeout=20", "-rss_limit_mb=3072",
            f"-artifact_prefix={out}/", "-print_final_stats=0", "-close_fd_mask=1"]
    atheris.Setup(args, one)
    atheris.Fuzz()


def replay(name: str, path: Path) -> None:
    from meshguard.testing import fuzz as harness

    target = _targets([name])[name]
    stats = harness.FuzzStats(name)
    f = harness.check_one(target, path.read_bytes(), stats)
    print("no failure" if f is None else f"{f.error}\n{f.where}")
    if f is not None:
        import traceback

        try:
            target.run(path.read_bytes())
        except Exception:
            traceback.print_exc()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=1_000_000, help="inputs per target")
    ap.add_argument("--targets", help="comma-separated names (default: all)")
    ap.add_argument("--engine", choices=("atheris", "mutate"),
                    default="atheris" if have_atheris() else "mutate")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("/tmp/meshguard-fuzz"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--replay", type=Path, help="run one input file against --targets NAME")
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.runs, args.engine, args.seed, args.out)
        return 0
    names = args.targets.split(",") if args.targets else None
    if args.replay:
        if not names or len(names) != 1:
            raise SystemExit("--replay needs exactly one --targets NAME")
        replay(names[0], args.replay)
        return 0
    all_names = list(_targets(names))
    print(f"engine {args.engine}, {args.runs} inputs per target, seed {args.seed}, "
          f"output in {args.out}", flush=True)
    print(f"{'target':14s} {'inputs':>9s} {'accepted':>9s} {'rejected':>9s} "
          f"{'exceptions':>10s} {'unique':>6s} {'crashes':>7s} {'logs':>6s} {'maxRSS':>7s} "
          f"{'seconds':>8s} {'cov':>6s}", flush=True)
    bad = False
    total = time.perf_counter()
    for name in all_names:
        out = args.out / name
        out.mkdir(parents=True, exist_ok=True)
        for old in out.glob("*"):
            if old.is_file():
                old.unlink()
        t0 = time.perf_counter()
        with open(out / "worker.log", "wb") as log:
            proc = subprocess.run(
                [sys.executable, __file__, "--worker", name, "--runs", str(args.runs),
                 "--engine", args.engine, "--seed", str(args.seed), "--out", str(out)],
                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log, check=False)
        elapsed = time.perf_counter() - t0
        try:
            doc = json.loads((out / "stats.json").read_text())
        except (OSError, ValueError):
            doc = {"inputs": 0, "accepted": 0, "rejected": 0, "exceptions": 0, "unique": 0,
                   "log_records": 0, "done": False, "failures": [], "max_rss_kb": 0}
        cov = re.findall(rb"cov: (\d+)", (out / "worker.log").read_bytes())
        artifacts = [p for p in out.iterdir()
                     if p.name.startswith(("crash-", "timeout-", "oom-", "leak-"))]
        crashes = len(artifacts) + (1 if proc.returncode != 0 and not artifacts else 0)
        if not doc["done"] and crashes == 0:
            crashes = 1
        bad |= bool(doc["exceptions"] or crashes)
        print(f"{name:14s} {doc['inputs']:9d} {doc['accepted']:9d} {doc['rejected']:9d} "
              f"{doc['exceptions']:10d} {doc['unique']:6d} {crashes:7d} "
              f"{doc['log_records']:6d} {doc['max_rss_kb'] // 1024:5d}MB {elapsed:8.1f} "
              f"{int(cov[-1]) if cov else '-':>6}", flush=True)
        for f in doc["failures"]:
            print(f"    {f['error'][:160]}  at {f['where']}", flush=True)
        if crashes:
            print(f"    worker exit {proc.returncode}; see {out}/worker.log "
                  f"{' '.join(p.name for p in artifacts)}", flush=True)
    print(f"total {time.perf_counter() - total:.0f} s", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
