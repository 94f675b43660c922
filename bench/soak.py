#!/usr/bin/env python3
"""Soak: N real daemons in network namespaces for a while, with churn.

    .venv/bin/python bench/soak.py --nodes 20 --minutes 10

Churn, one event every --churn-every seconds, at random:
- restart: kill -9 a daemon and start it again;
- link cut: drop all of a node's traffic (nftables in its namespace) for --cut seconds;
- trust change: one node stops trusting another (its authorized_keys file is removed), then
  trusts it again after --cut seconds;
- key rotation: stop a daemon, `meshguard rotate-wg-key`, start it again.

Every --sample seconds it prints, per sample: the daemons' RSS (min/median/max MiB) and open
fds (min/max), and the tunnel state: the pairs that should be up (neither end churned right
now) and how many of those are healthy (both ends list a tunnel, and either a handshake since
both ends last started, younger than 200 s, or a ping over the tunnel is answered).
At the end the churn stops, and every pair must be healthy again within --settle
seconds; the longest time any pair stayed broken outside a churn window is reported. RSS and
fd counts must be flat: the last sample is compared with the first after the mesh formed.

Exit status 0 when every pair healed and RSS/fds stayed within the printed bounds.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.daemon.meshnet import MeshLan, Node, trust_all

HANDSHAKE_FRESH = 200.0


@dataclass
class Churn:
    kind: str
    node: int
    other: int = -1
    until: float = 0.0


@dataclass
class Soak:
    lan: MeshLan
    nodes: list[Node]
    seeds: list[Node]
    rng: random.Random
    cut: float
    active: list[Churn] = field(default_factory=list)
    broken_since: dict[tuple[int, int], float] = field(default_factory=dict)
    worst_broken: float = 0.0
    events: int = 0
    started: dict[int, float] = field(default_factory=dict)  # node -> wall time of its start

    def start(self, i: int) -> None:
        n = self.nodes[i]
        seeds = [s for s in self.seeds if s is not n]
        self.started[i] = time.time()
        n.up(seeds=seeds, wait=True)

    def ping_all(self) -> list[tuple[int, int]]:
        """Pairs whose ping over the tunnel (a to b) gets no answer."""
        return [(a, b) for a in range(len(self.nodes)) for b in range(a + 1, len(self.nodes))
                if not self.nodes[a].ns.ping(self.nodes[b].mesh_v4, count=2, wait=1.0)]

    def busy(self) -> set[int]:
        out: set[int] = set()
        for c in self.active:
            out.add(c.node)
            if c.other >= 0:
                out.add(c.other)
        return out

    def churn(self, now: float) -> None:
        free = [i for i in range(len(self.nodes)) if i not in self.busy()]
        if len(free) < 2:
            return
        i = self.rng.choice(free)
        kind = self.rng.choice(["restart", "cut", "trust", "rotate"])
        n = self.nodes[i]
        self.events += 1
        print(f"  churn: {kind} {n.name}", flush=True)
        if kind == "restart":
            n.kill()
            with contextlib.suppress(FileNotFoundError):
                n.sock.unlink()  # the killed daemon's control socket is left behind
            self.start(i)
            self.active.append(Churn(kind, i, until=now + self.cut))
        elif kind == "cut":
            n.ns.run(["nft", "add table inet soak; add chain inet soak i { type filter hook input"
                      " priority 0; policy drop; }; add chain inet soak o { type filter hook"
                      " output priority 0; policy drop; }"])
            self.active.append(Churn(kind, i, until=now + self.cut))
        elif kind == "trust":
            j = self.rng.choice([x for x in free if x != i])
            path = n.cfg / "authorized_keys" / f"{self.nodes[j].name}.pub"
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            self.active.append(Churn(kind, i, j, until=now + self.cut))
        else:
            assert n.proc is not None
            n.ns.stop(n.proc, timeout=5)
            res = n.cli("rotate-wg-key")
            if res.returncode != 0:
                raise RuntimeError(f"rotate-wg-key failed: {res.stderr}")
            self.start(i)
            self.active.append(Churn(kind, i, until=now + self.cut))

    def settle_churn(self, now: float, force: bool = False) -> None:
        for c in list(self.active):
            if not force and c.until > now:
                continue
            if c.kind == "cut":
                self.nodes[c.node].ns.run(["nft", "delete table inet soak"])
            elif c.kind == "trust":
                self.nodes[c.node].trust(self.nodes[c.other])
            self.active.remove(c)

    def healthy_pairs(self, now: float) -> tuple[int, int, list[tuple[int, int]]]:
        """(pairs expected up, pairs healthy, the broken ones)."""
        views: dict[int, dict[str, dict[str, object]]] = {}
        for i, n in enumerate(self.nodes):
            try:
                views[i] = {str(m["identity_key"]): m for m in n.status()["members"]}
            except Exception:
                views[i] = {}
        busy = self.busy()
        expected = healthy = 0
        broken: list[tuple[int, int]] = []
        wall = time.time()
        for a in range(len(self.nodes)):
            for b in range(a + 1, len(self.nodes)):
                if a in busy or b in busy:
                    self.broken_since.pop((a, b), None)
                    continue
                expected += 1
                # both ends list a tunnel, and a ping over it (which handshakes if need be)
                # is answered; a handshake since both ends last started proves it as well
                since = max(self.started.get(a, 0.0), self.started.get(b, 0.0))
                ok = fresh = True
                for x, y in ((a, b), (b, a)):
                    m = views[x].get(base64.b64encode(self.nodes[y].identity).decode())
                    hs = m.get("last_handshake") if m else None
                    if not (m and m.get("tunnel")):
                        ok = False
                    if not (isinstance(hs, int | float) and since <= hs
                            and wall - hs < HANDSHAKE_FRESH):
                        fresh = False
                if ok and not fresh:
                    ok = self.nodes[a].ns.ping(self.nodes[b].mesh_v4, count=2, wait=1.0)
                if ok:
                    healthy += 1
                    t0 = self.broken_since.pop((a, b), None)
                    if t0 is not None:
                        self.worst_broken = max(self.worst_broken, now - t0)
                else:
                    broken.append((a, b))
                    self.broken_since.setdefault((a, b), now)
        return expected, healthy, broken

    def resources(self) -> tuple[list[float], list[int]]:
        rss: list[float] = []
        fds: list[int] = []
        for n in self.nodes:
            if n.proc is None or n.proc.poll() is not None:
                continue
            try:
                status = Path(f"/proc/{n.proc.pid}/status").read_text()
                kb = next(int(line.split()[1]) for line in status.splitlines()
                          if line.startswith("VmRSS:"))
                rss.append(kb / 1024)
                fds.append(len(os.listdir(f"/proc/{n.proc.pid}/fd")))
            except (OSError, StopIteration):
                continue
        return rss, fds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=20)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--churn-every", type=float, default=15.0)
    ap.add_argument("--cut", type=float, default=20.0, help="seconds a cut or untrust lasts")
    ap.add_argument("--sample", type=float, default=30.0)
    ap.add_argument("--settle", type=float, default=180.0)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("soak: run as root (network namespaces)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="mgsoak") as tmp, MeshLan(Path(tmp)) as lan:
        nodes = [lan.add_node(f"s{i}") for i in range(args.nodes)]
        trust_all(nodes)
        soak = Soak(lan, nodes, nodes[:2], random.Random(args.seed), args.cut)
        t_start = time.monotonic()
        soak.started[0] = time.time()
        nodes[0].up()
        for i in range(1, len(nodes)):
            soak.start(i)
        def formed_all() -> bool:
            exp, ok, _ = soak.healthy_pairs(0)
            return ok == exp

        lan.wait(formed_all, "mesh formed", 300)
        formed = time.monotonic() - t_start
        print(f"{args.nodes} daemons meshed in {formed:.1f} s; churn for {args.minutes} min")
        print(f"{'t/s':>6} {'events':>6} {'RSS min/med/max MiB':>22} {'fds min/max':>12} "
              f"{'pairs ok/expected':>18}")
        first: tuple[list[float], list[int]] | None = None
        t0 = time.monotonic()
        next_churn = t0 + args.churn_every
        next_sample = t0
        end = t0 + args.minutes * 60
        samples: list[tuple[float, float, int]] = []
        while time.monotonic() < end:
            now = time.monotonic()
            soak.settle_churn(now)
            if now >= next_churn:
                soak.churn(now)
                next_churn = now + args.churn_every
            if now >= next_sample:
                next_sample = now + args.sample
                rss, fds = soak.resources()
                exp, ok, bad = soak.healthy_pairs(now)
                if first is None:
                    first = (rss, fds)
                samples.append((now - t0, max(rss), max(fds)))
                print(f"{now - t0:6.0f} {soak.events:6d} "
                      f"{min(rss):6.1f}/{statistics.median(rss):5.1f}/{max(rss):5.1f}      "
                      f"{min(fds):4d}/{max(fds):<4d}    {ok:6d}/{exp:<6d}"
                      + (f" broken: {[(nodes[a].name, nodes[b].name) for a, b in bad]}"
                         if bad else ""), flush=True)
            time.sleep(0.5)
        soak.settle_churn(time.monotonic(), force=True)
        t_heal = time.monotonic()
        healed = False
        broken: list[tuple[int, int]] = []
        while time.monotonic() - t_heal < args.settle:
            exp, ok, broken = soak.healthy_pairs(time.monotonic())
            if ok == exp:
                healed = True
                break
            time.sleep(2)
        silent = soak.ping_all() if healed else []
        healed = healed and not silent
        rss, fds = soak.resources()
        assert first is not None
        print(f"churn events: {soak.events}; longest break of an unchurned pair: "
              f"{soak.worst_broken:.1f} s")
        print(f"after churn: {'all pairs healthy' if healed else 'BROKEN ' + repr(broken)} "
              f"in {time.monotonic() - t_heal:.1f} s"
              + (f"; no ping answer: {silent}" if silent else "; every pair answers a ping"))
        rss_growth = max(rss) - max(first[0])
        fd_growth = max(fds) - max(first[1])
        print(f"RSS max {max(first[0]):.1f} -> {max(rss):.1f} MiB ({rss_growth:+.1f}); "
              f"fds max {max(first[1])} -> {max(fds)} ({fd_growth:+d})")
        flat = rss_growth < 8.0 and fd_growth <= 4
        return 0 if healed and flat else 1


if __name__ == "__main__":
    sys.exit(main())
