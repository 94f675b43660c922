#!/usr/bin/env python3
"""Mesh scale benchmark: N real `meshguard up` daemons on this machine, one namespace each.

Run as root:  PYTHONPATH=src .venv/bin/python bench/mesh_scale.py [--nodes 50] [--seeds 1]
                  [--idle 30] [--json FILE]

Builds N network namespaces on one bridge (meshguard.testing.daemon_mesh: unique names,
everything removed on exit, Ctrl-C or failure), every node trusting every other by key, the
first --seeds nodes as seeds; starts every daemon at once and measures, from that moment:
  - every daemon answering on its control socket;
  - every node seeing every other as an alive member (status over the control socket, the
    document `meshguard status --json` prints), and having a tunnel (a WireGuard peer) to it;
  - the first round in which every node's ping sample succeeds (each round every node pings
    --sample random others' mesh IPv4 addresses, `ping -c1 -W1`, all in parallel);
  - a full N x (N-1) `ping -c1 -W1` check once all of that holds (failed pairs are retried
    until --timeout; the first attempt's failures are reported).
Then, idle (no polling, no pings) for --idle seconds: per daemon CPU (utime+stime per second
of wall time, % of one core), VmRSS, open file descriptors; gossip traffic per node: packets
received (the `gossip_rx` status counter; status has no byte counters) and bytes in and out
counted by nftables in each node's namespace (UDP on the mesh port whose payload carries the
gossip magic "MG" at bytes 1-2, IP and UDP headers included), plus all UDP on the port
(gossip and WireGuard keepalives). Prints a short table; --json FILE writes everything.
meshguard is byte-compiled first (as `pip install` does). The machine is shared and noisy:
one run is one sample. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from meshguard.testing.daemon_mesh import PORT, DaemonMesh, Member, MemberView, Pair

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import cpu_seconds, rss_mib  # bench/ is not a package: run.py is beside us

NFT_TABLE = "mgscale"
NFT_RULES = f"""
table inet {NFT_TABLE} {{
  counter gossip_in {{}}
  counter gossip_out {{}}
  counter udp_in {{}}
  counter udp_out {{}}
  chain input {{
    type filter hook input priority 0; policy accept;
    udp dport {PORT} @th,72,16 0x4d47 counter name gossip_in
    udp dport {PORT} counter name udp_in
  }}
  chain output {{
    type filter hook output priority 0; policy accept;
    udp sport {PORT} @th,72,16 0x4d47 counter name gossip_out
    udp sport {PORT} counter name udp_out
  }}
}}
"""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def mem_available_mib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def nft_install(m: Member) -> None:
    subprocess.run(m.ns.argv(["nft", "-f", "-"]), input=NFT_RULES, text=True, check=True,
                   capture_output=True, timeout=30)


def nft_counters(m: Member) -> dict[str, int]:
    """Bytes per counter of the node's table."""
    res = subprocess.run(m.ns.argv(["nft", "-j", "list", "counters", "table", "inet",
                                    NFT_TABLE]), capture_output=True, text=True, timeout=30,
                         check=True)
    out: dict[str, int] = {}
    for item in json.loads(res.stdout).get("nftables", []):
        c = item.get("counter")
        if c:
            out[str(c["name"])] = int(c["bytes"])
    return out


def stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"median": None, "max": None}
    return {"median": statistics.median(values), "max": max(values)}


def converge(mesh: DaemonMesh, t0: float, timeout: float, sample: int, interval: float,
             rng: random.Random) -> dict[str, Any]:
    """Poll status and ping samples until every node knows every other, has a tunnel to it,
    and one round of samples all succeeded (or `timeout`). Times are seconds after t0."""
    n = mesh.n
    first_up: dict[int, float] = {}
    first_alive: dict[int, float] = {}
    first_tunnels: dict[int, float] = {}
    t_sample_ok: float | None = None
    rounds = 0
    last_views: dict[int, MemberView] = {}
    deadline = t0 + timeout
    next_report = time.monotonic() + 10
    while time.monotonic() < deadline:
        start = time.monotonic()
        rounds += 1
        k = min(sample, n - 1)
        pairs: list[Pair] = [(a, b) for a in range(n)
                             for b in rng.sample(sorted(mesh.others(a)), k)]
        views = mesh.views()
        last_views.update(views)
        for i, v in views.items():
            first_up.setdefault(i, v.at - t0)
            if len(v.alive) == n - 1:
                first_alive.setdefault(i, v.at - t0)
            if len(v.tunnels) == n - 1:
                first_tunnels.setdefault(i, v.at - t0)
        if t_sample_ok is None:
            failed = mesh.ping_pairs(pairs)
            if not failed:
                t_sample_ok = time.monotonic() - t0
        dead = mesh.exited()
        if dead:
            raise RuntimeError(f"{', '.join(m.name for m in dead)} exited\n"
                               + mesh.logs(members=dead))
        if len(first_alive) == n and len(first_tunnels) == n and t_sample_ok is not None:
            break
        if time.monotonic() >= next_report:
            next_report += 10
            log(f"  t={time.monotonic() - t0:5.1f}s answering {len(views)}/{n}, all alive on "
                f"{len(first_alive)}, all tunnels on {len(first_tunnels)}, samples "
                f"{'ok' if t_sample_ok is not None else 'failing'}")
        time.sleep(max(0.0, interval - (time.monotonic() - start)))
    return {
        "rounds": rounds,
        "mean_round_s": (time.monotonic() - t0) / max(rounds, 1),
        "converged": len(first_alive) == n and len(first_tunnels) == n,
        "all_answering_s": max(first_up.values()) if len(first_up) == n else None,
        "all_members_s": max(first_alive.values()) if len(first_alive) == n else None,
        "all_tunnels_s": max(first_tunnels.values()) if len(first_tunnels) == n else None,
        "median_node_members_s": statistics.median(first_alive.values()) if first_alive
        else None,
        "first_sample_ok_s": t_sample_ok,
        "views": last_views,
    }


def pair_names(pairs: list[Pair], limit: int = 50) -> list[str]:
    return [f"m{a}->m{b}" for a, b in pairs[:limit]]


def full_check(mesh: DaemonMesh, t0: float, deadline: float) -> dict[str, Any]:
    """All N x (N-1) pairs at once; failed pairs again until every pair answered or the
    deadline."""
    pairs = mesh.all_pairs()
    t = time.monotonic()
    failed = mesh.ping_pairs(pairs)
    first = {"pairs": len(pairs), "first_failed": len(failed),
             "first_check_s": time.monotonic() - t, "first_failed_pairs": pair_names(failed)}
    while failed and time.monotonic() < deadline:
        time.sleep(1.0)
        failed = mesh.ping_pairs(failed)
    first["still_failed"] = len(failed)
    first["still_failed_pairs"] = pair_names(failed)
    first["all_ping_s"] = None if failed else time.monotonic() - t0
    return first


def idle(mesh: DaemonMesh, seconds: float) -> dict[str, Any]:
    pids = {m.index: m.proc.pid for m in mesh.members if m.proc is not None}
    v0 = mesh.views()
    nft0 = {m.index: nft_counters(m) for m in mesh.members}
    cpu0 = {i: cpu_seconds(p) for i, p in pids.items()}
    w0 = time.monotonic()
    time.sleep(seconds)
    w1 = time.monotonic()
    cpu1 = {i: cpu_seconds(p) for i, p in pids.items()}
    nft1 = {m.index: nft_counters(m) for m in mesh.members}
    v1 = mesh.views()
    wall = w1 - w0
    cpu_pct = [100 * (cpu1[i] - cpu0[i]) / wall for i in pids]
    rss = [rss_mib(p) for p in pids.values()]
    fds = [float(open_fds(p)) for p in pids.values()]

    def rate(name: str) -> list[float]:
        return [(nft1[i].get(name, 0) - nft0[i].get(name, 0)) / wall for i in nft0]

    gossip = [a + b for a, b in zip(rate("gossip_in"), rate("gossip_out"), strict=True)]
    udp = [a + b for a, b in zip(rate("udp_in"), rate("udp_out"), strict=True)]
    rx_pkts = [(v1[i].counters.get("gossip_rx", 0) - v0[i].counters.get("gossip_rx", 0)) / wall
               for i in v0 if i in v1]
    return {
        "seconds": wall,
        "cpu_pct": stats(cpu_pct),
        "cpu_pct_total": sum(cpu_pct),
        "rss_mib": stats(rss),
        "rss_mib_total": sum(rss),
        "open_fds": stats(fds),
        "gossip_bytes_per_s": stats(gossip),
        "gossip_in_bytes_per_s": stats(rate("gossip_in")),
        "gossip_out_bytes_per_s": stats(rate("gossip_out")),
        "udp_bytes_per_s": stats(udp),
        "gossip_rx_pkts_per_s": stats(rx_pkts),
    }


def fmt(v: float | None, unit: str = "", nd: int = 1) -> str:
    return "n/a" if v is None else f"{v:.{nd}f}{unit}"


def print_table(res: dict[str, Any]) -> None:
    c, f, i = res["convergence"], res["full_check"], res.get("idle")
    print(f"\nmesh_scale: {res['nodes']} meshguard up daemons, {res['seeds']} seed(s), "
          f"{res['nproc']} CPUs (one run: one sample on a shared machine)")
    rows = [
        ("build (namespaces, keys, trust)", fmt(res["build_s"], " s")),
        ("all daemons answering status", fmt(c["all_answering_s"], " s")
         + f"  (status and samples every {fmt(c['mean_round_s'], ' s')} on average)"),
        ("all members alive on every node", fmt(c["all_members_s"], " s")
         + f"  (median node {fmt(c['median_node_members_s'], ' s')})"),
        ("all tunnels on every node", fmt(c["all_tunnels_s"], " s")),
        ("first all-success ping sample", fmt(c["first_sample_ok_s"], " s")),
        (f"full ping check ({f['pairs']} pairs)",
         f"{f['pairs'] - f['first_failed']}/{f['pairs']} on first try in "
         f"{fmt(f['first_check_s'], ' s')}; all by {fmt(f['all_ping_s'], ' s')}"
         + (f"; {f['still_failed']} never" if f["still_failed"] else "")),
    ]
    if i:
        def mm(key: str, unit: str, nd: int = 1) -> str:
            return f"median {fmt(i[key]['median'], unit, nd)}, max {fmt(i[key]['max'], unit, nd)}"

        rows += [
            (f"idle CPU per daemon ({i['seconds']:.0f} s)",
             f"{mm('cpu_pct', ' %', 2)} of a core; all {fmt(i['cpu_pct_total'], ' %')}"),
            ("RSS per daemon",
             f"{mm('rss_mib', ' MiB')}; all {fmt(i['rss_mib_total'], ' MiB', 0)}"),
            ("open fds per daemon", mm("open_fds", "", 0)),
            ("gossip per node (in+out)", f"{mm('gossip_bytes_per_s', ' B/s', 0)}; received "
             f"{fmt(i['gossip_rx_pkts_per_s']['median'], ' pkt/s')} (median)"),
            ("all UDP on the port per node", mm("udp_bytes_per_s", " B/s", 0)),
        ]
    width = max(len(r[0]) for r in rows)
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")


def compile_package() -> None:
    """Byte-compile meshguard, so 50 daemons do not each compile it from source when
    PYTHONDONTWRITEBYTECODE is set (the caches are gitignored)."""
    import meshguard

    subprocess.run([sys.executable, "-m", "compileall", "-q",
                    str(Path(meshguard.__file__).parent)], capture_output=True, check=False)


def run(args: argparse.Namespace, work: Path) -> tuple[int, dict[str, Any]]:
    res: dict[str, Any] = {"nodes": args.nodes, "seeds": args.seeds, "nproc": os.cpu_count(),
                           "mem_available_before_mib": mem_available_mib()}
    rng = random.Random(args.random_seed)
    t = time.monotonic()
    with DaemonMesh(args.nodes, work, seeds=args.seeds, log_level=args.log_level) as mesh:
        for m in mesh.members:
            nft_install(m)
        res["build_s"] = time.monotonic() - t
        log(f"built {args.nodes} namespaces in {res['build_s']:.1f} s (tag {mesh.tag}); "
            f"starting every daemon")
        t0 = mesh.start()
        try:
            conv = converge(mesh, t0, args.timeout, args.sample, args.interval, rng)
        except RuntimeError as exc:
            log(f"mesh_scale: {exc}")
            return 1, res
        views: dict[int, MemberView] = conv.pop("views")
        res["convergence"] = conv
        if not conv["converged"]:
            lack_alive = mesh.missing(views, "alive")
            lack_tun = mesh.missing(views, "tunnels")
            res["missing_members"] = {mesh.members[i].name: sorted(s)
                                      for i, s in lack_alive.items()}
            res["missing_tunnels"] = {mesh.members[i].name: sorted(s)
                                      for i, s in lack_tun.items()}
            log(f"not converged after {args.timeout:g} s: {len(lack_alive)} nodes miss members,"
                f" {len(lack_tun)} miss tunnels")
            worst = sorted(lack_tun, key=lambda i: -len(lack_tun[i]))[:3]
            log(mesh.logs(tail=20, members=[mesh.members[i] for i in worst]))
        log(f"  converged in {fmt(conv['all_tunnels_s'], ' s')}; full ping check")
        res["full_check"] = full_check(mesh, t0, time.monotonic() + 30)
        res["mem_available_converged_mib"] = mem_available_mib()
        if args.idle > 0:
            log(f"  idle {args.idle:g} s")
            res["idle"] = idle(mesh, args.idle)
        lost = mesh.missing(mesh.views(), "tunnels")
        res["tunnels_missing_after_idle"] = sum(len(s) for s in lost.values())
        if args.keep_logs:
            res["logs"] = str(work)
    ok = conv["converged"] and not res["full_check"]["still_failed"]
    return (0 if ok else 1), res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[1])
    ap.add_argument("--nodes", type=int, default=50)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--idle", type=float, default=30.0,
                    help="seconds of idle measurement after convergence (0: none)")
    ap.add_argument("--json", type=Path, help="write every result to this file")
    ap.add_argument("--timeout", type=float, default=300.0,
                    help="seconds to wait for convergence")
    ap.add_argument("--sample", type=int, default=3,
                    help="random others each node pings per round")
    ap.add_argument("--interval", type=float, default=0.5, help="seconds per polling round")
    ap.add_argument("--log-level", default="info",
                    choices=["debug", "info", "warning", "error"])
    ap.add_argument("--random-seed", type=int, default=None)
    ap.add_argument("--keep-logs", action="store_true",
                    help="keep the work directory (daemon logs, configs) and print its path")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        log("bench/mesh_scale.py: run me as root (namespaces, TUN)")
        return 1
    for tool in ("ip", "ping", "nft", "sh"):
        if not shutil.which(tool):
            log(f"bench/mesh_scale.py: {tool} is missing")
            return 1
    if args.nodes < 2 or not 1 <= args.seeds <= args.nodes:
        ap.error("need --nodes >= 2 and 1 <= --seeds <= --nodes")

    def on_signal(signum: int, frame: object) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # cleanup runs undisturbed
            signal.signal(sig, signal.SIG_IGN)
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    compile_package()
    work = Path(tempfile.mkdtemp(prefix="mgscale-"))
    code, res = 1, dict[str, Any]()
    try:
        code, res = run(args, work)
    except KeyboardInterrupt:
        log("interrupted; cleaned up")
        return 130
    finally:
        if args.keep_logs:
            log(f"logs and configs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if "convergence" in res and "full_check" in res:
        print_table(res)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2, default=str) + "\n")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
