#!/usr/bin/env python3
"""Flood benchmark: a stranger floods a daemon's port; is the tunnel still usable?

Run as root:  .venv/bin/python bench/flood.py [--seconds 10] [--rate 20000]
              [--initiation-rate 140000] [--senders 2] [--wireguard-go PATH] [--only KIND]
              [--targets meshguard,wireguard-go,meshguard-up] [--v6] [--json]

For each target and flood type, fresh daemons in network namespaces (tests/daemon/floodnet.py):
the stranger sends the flood from its own namespace (a paced sendmmsg sender, several
processes with --senders) while a client pings the target through its tunnel (every 0.1 s);
for userspace WireGuard targets a legitimate peer starts its first handshake 0.3 s into the
flood; for meshguard-up the initiation flood goes on --rejoin s more, during which the member is
restarted (hs s: from its restart until its tunnel to the seed works again). Reported per
run: datagrams/s sent, pings answered, median and p99 RTT, seconds until the legitimate peer's
handshake completed (-: not during the flood), datagrams the target's socket took and the
kernel dropped at it (RcvbufErrors), replies the stranger got, and (meshguard-up) the daemon's
counters that grew most.

Targets: meshguard (`meshguard wireguard`, C fast path), meshguard-python (the same with
MESHGUARD_PURE_PYTHON=1), wireguard-go (the binary named by --wireguard-go, default the one on
PATH), wireguard-go@PATH (another build, labelled by its folder), meshguard-up (two
`meshguard up` nodes; every flood type). Flood types: initiation (valid mac1), cookie (cookie
replies for random indices), transport (transport messages for random indices), garbage; for
meshguard-up also org (OrgCertRevoke from a trusted org key, random signatures), holepunch
(0x33/0x34), relay (0x31), join (0x05). The WireGuard-typed floods run at --initiation-rate,
the others at --rate. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.daemon.floodnet import (  # noqa: E402
    MESH_FLOODS,
    USERSPACE_FLOODS,
    FloodResult,
    mesh_flood,
    mesh_lan,
    userspace_flood,
    userspace_lan,
)


def _fmt(v: float | None, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def table(results: list[FloodResult]) -> str:
    head = (f"{'target':<19}{'flood':<11}{'sent/s':>9}{'pings':>8}{'med ms':>8}{'p99 ms':>8}"
            f"{'hs s':>6}{'rx/s':>9}{'drop/s':>9}{'reply/s':>9}")
    lines = [head, "-" * len(head)]
    for r in results:
        sec = r.seconds or 1
        lines.append(
            f"{r.target:<19}{r.flood:<11}{r.pps:>9.0f}{r.answered_pct:>7.0f}%"
            f"{_fmt(r.median_rtt):>8}{_fmt(r.p99_rtt):>8}{_fmt(r.handshake_after, '.1f'):>6}"
            f"{r.rx_datagrams / sec:>9.0f}{r.rx_dropped / sec:>9.0f}{r.replies / sec:>9.0f}"
            + (f"  {r.note}" if r.note else ""))
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rate", type=float, default=20_000,
                    help="packets/s of the garbage and mesh-message floods")
    ap.add_argument("--initiation-rate", type=float, default=140_000,
                    help="packets/s of the WireGuard-typed floods (initiation, cookie, transport)")
    ap.add_argument("--senders", type=int, default=2, help="flooding processes")
    ap.add_argument("--wireguard-go", default="wireguard-go", help="wireguard-go binary")
    ap.add_argument("--targets", default="meshguard,wireguard-go,meshguard-up")
    ap.add_argument("--only", default="", help="comma-separated flood types")
    ap.add_argument("--rejoin", type=float, default=15.0,
                    help="meshguard-up initiation flood: s more, with the member restarted")
    ap.add_argument("--v6", action="store_true", help="userspace targets over IPv6 outside")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    only = set(filter(None, args.only.split(",")))
    targets = [t for t in args.targets.split(",") if t]
    results: list[FloodResult] = []

    def rate(kind: str) -> float:
        wg_typed = kind in ("initiation", "cookie", "transport")
        return float(args.initiation_rate if wg_typed else args.rate)

    userspace = [t for t in targets if t != "meshguard-up"]
    if userspace:
        with userspace_lan() as lan:
            for kind in USERSPACE_FLOODS:
                if only and kind not in only:
                    continue
                for t in userspace:
                    r = userspace_flood(lan, t, kind, rate(kind), args.seconds,
                                        args.wireguard_go, args.senders, args.v6)
                    results.append(r)
                    print(table([r]).splitlines()[-1], file=sys.stderr, flush=True)
    if "meshguard-up" in targets:
        with tempfile.TemporaryDirectory(prefix="mgflood-") as tmp, mesh_lan(Path(tmp)) as bed:
            for kind in MESH_FLOODS:
                if only and kind not in only:
                    continue
                r = mesh_flood(bed, kind, rate(kind), args.seconds, args.senders,
                               rejoin=args.rejoin if kind == "initiation" else 0.0)
                results.append(r)
                print(table([r]).splitlines()[-1], file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps([asdict(r) | {"answered_pct": r.answered_pct,
                                       "median_rtt": r.median_rtt, "p99_rtt": r.p99_rtt}
                          for r in results], indent=2))
    else:
        print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
