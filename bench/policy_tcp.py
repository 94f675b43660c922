#!/usr/bin/env python3
"""Policy cost benchmark: TCP throughput through `meshguard wireguard` with no policy and with
a 50-rule policy whose match is the last rule, in one run (issue 13: within 10 %).

Run as root:  .venv/bin/python bench/policy_tcp.py [--rounds 3] [--duration 10] [--rules 50]
              [--json]
Or, without root: .venv/bin/python bench/policy_tcp.py --micro (the C filter's cost per
packet, no namespaces).

Two namespaces joined by a veth (bench/run.py's Testbed); per round and per case two
`meshguard wireguard` daemons are brought up, iperf3 runs one TCP stream from A to B (TCP1),
and the daemons are torn down. The cases alternate (none, policy, policy, none, ...), so load
from the shared machine falls on both alike. With the policy both daemons enforce one chain
of `--rules` rules: the first ones allow TCP/UDP ports nothing uses, the last allows TCP 5201
(iperf3), the default denies. So on B every data packet walks the whole chain; on A every
ACK is a reply found by connection tracking (A opened the flow). The table is set through the
engine directly (Engine.set_policy, called as the daemon's engine starts): the policy files
and the daemon's wiring are tested elsewhere, this measures the data plane.

Prints each round, the medians, and the ratio policy / none. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "src"))

from bench.run import (  # noqa: E402
    Testbed,
    compile_package,
    iperf,
    iperf_server,
    up_userspace_wg,
)

IPERF_PORT = 5201
GOAL = 0.90  # policy throughput / no-policy throughput


def policy_table(n_rules: int, port: int = IPERF_PORT) -> object:
    """One fallback chain: n_rules - 1 rules for ports nothing uses, then allow tcp `port`."""
    from meshguard.policy.table import (
        PROTO_TCP,
        PROTO_UDP,
        Chain,
        FlatRule,
        PolicyTable,
        RuleInfo,
    )

    rules: list[FlatRule] = []
    for i in range(n_rules - 1):
        proto = PROTO_TCP if i % 2 else PROTO_UDP
        rules.append(FlatRule(True, proto, 10000 + 10 * i, 10000 + 10 * i + 5, i))
    rules.append(FlatRule(True, PROTO_TCP, port, port, n_rules - 1))
    infos = tuple(RuleInfo("bench", i + 1, f"rule {i}") for i in range(n_rules))
    infos += (RuleInfo("bench", 0, "deny (default)"),)
    return PolicyTable(True, (Chain(tuple(rules), False, n_rules),), {}, 0, infos)


def daemon(n_rules: int, port: int, ifname: str) -> None:  # pragma: no cover - the daemons' process
    """`meshguard wireguard -f IFNAME` whose engine enforces the bench policy from its start."""
    from meshguard.cli.main import main
    from meshguard.dataplane.engine import Engine
    from meshguard.policy.table import PolicyTable

    if n_rules > 0:
        table = policy_table(n_rules, port)
        assert isinstance(table, PolicyTable)
        start = Engine.start

        def start_with_policy(self: Engine, loop: object = None) -> None:
            start(self, loop)  # type: ignore[arg-type]
            self.set_policy(table)
            if os.environ.get("BENCH_DEBUG"):
                atexit.register(dump, self, ifname)

        Engine.start = start_with_policy  # type: ignore[method-assign]
    sys.exit(main(["wireguard", "-f", ifname]))


def dump(engine: object, ifname: str) -> None:  # pragma: no cover - the daemons' process
    """BENCH_DEBUG: the daemon's policy counters and engine stats at exit, to /tmp."""
    from meshguard.dataplane.engine import Engine

    assert isinstance(engine, Engine)
    c = engine.policy_counters()
    st = {k: v for k, v in vars(engine.stats).items() if isinstance(v, int) and v}
    Path(f"/tmp/policy_tcp.{ifname}.json").write_text(json.dumps(
        {"rule_packets": [n for n in c.rule_packets if n], "reasons": c.reasons,
         "evicted": c.evicted, "stats": st}))


def micro(n_rules: int, loops: int = 20000) -> None:
    """--micro: the C filter's cost per packet, no namespaces (64 TCP packets of 1420 bytes
    per call, from one flow and from 64 flows; a tracked flow's replies; tracking)."""
    import struct
    import time

    from meshguard.dataplane import fastpath
    from meshguard.dataplane.policy_filter import table_args

    cls = fastpath.C_POLICY_FILTER
    if cls is None:
        print("policy_tcp: the C module is not built", file=sys.stderr)
        return
    pf = cls(seed=1)
    pf.set_table(*table_args(policy_table(n_rules)))  # type: ignore[arg-type]
    a, b = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])

    def tcp(src: bytes, dst: bytes, sport: int, dport: int) -> bytes:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 1420, 1, 0x4000, 64, 6, 0, src, dst)
        return ip + struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 0x50, 0x10, 1000, 0, 0) + bytes(
            1380)

    def per_packet(pkts: list[bytes]) -> float:
        t0 = time.perf_counter()
        for _ in range(loops):
            pf.filter(None, list(pkts), 0, 1.0)
        t1 = time.perf_counter()
        for _ in range(loops):
            list(pkts)
        t2 = time.perf_counter()
        return ((t1 - t0) - (t2 - t1)) / loops / len(pkts) * 1e9

    one = [tcp(a, b, 40000, IPERF_PORT)] * 64
    many = [tcp(a, b, 40000 + i, IPERF_PORT) for i in range(64)]
    print(f"{n_rules} rules, the last matching: {per_packet(one):.0f} ns/packet (one flow), "
          f"{per_packet(many):.0f} ns/packet (64 flows)")
    outbound = [tcp(b, a, 80, 40000 + i) for i in range(64)]
    t0 = time.perf_counter()
    for _ in range(loops):
        pf.track(outbound, 0, 1.0)
    track = (time.perf_counter() - t0) / loops / 64 * 1e9
    replies = [tcp(a, b, 40000 + i, 80) for i in range(64)]
    print(f"replies (denied by the rules, tracked): {per_packet([replies[0]] * 64):.0f} "
          f"ns/packet (one flow), {per_packet(replies):.0f} ns/packet (64 flows); "
          f"track {track:.0f} ns/read")


def tcp1(tb: Testbed, n_rules: int, duration: float, port: int = IPERF_PORT) -> float:
    """TCP1 in Gbit/s; 0.0 when iperf3 cannot connect (the policy denies it)."""
    env = {"PYTHONPATH": str(REPO / "src")}
    tun = up_userspace_wg(
        tb, lambda ifn: [sys.executable, str(Path(__file__).resolve()), "--daemon",
                         str(n_rules), str(port), ifn], env)
    try:
        with iperf_server(tb, tun.server_ip):
            try:
                d = iperf(tb, tun.server_ip, duration, "--connect-timeout", "3000")
            except (RuntimeError, ValueError):
                return 0.0
        return float(d["end"]["sum_received"]["bits_per_second"]) / 1e9
    finally:
        tun.teardown()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--rules", type=int, default=50)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--micro", action="store_true",
                    help="only the filter's cost per packet (no root, no namespaces)")
    args = ap.parse_args(argv)
    if args.micro:
        micro(max(args.rules, 1))
        return 0
    if os.geteuid() != 0:
        print("policy_tcp: needs root (network namespaces)", file=sys.stderr)
        return 2
    if args.rules < 1 or args.rounds < 1:
        print("policy_tcp: --rules and --rounds must be at least 1", file=sys.stderr)
        return 2
    compile_package()
    tb = Testbed()
    results: dict[str, list[float]] = {"none": [], "policy": []}
    try:
        tb.build()
        cases = [("none", 0), ("policy", args.rules)]
        for r in range(args.rounds):
            # the order alternates too: the second case of a round has nothing on its side
            for case, n in cases if r % 2 == 0 else cases[::-1]:
                gbps = tcp1(tb, n, args.duration)
                results[case].append(gbps)
                print(f"round {r + 1} {case:6s} TCP1 {gbps:6.3f} Gbit/s", flush=True)
        # the same policy with its last rule on another port: iperf3 must not get through
        denied = tcp1(tb, args.rules, 2.0, IPERF_PORT + 1)
        print(f"check  denied TCP1 {denied:6.3f} Gbit/s (the policy is enforced: "
              f"{'yes' if denied == 0.0 else 'NO'})", flush=True)
    finally:
        tb.destroy()
    none, pol = statistics.median(results["none"]), statistics.median(results["policy"])
    ratio = pol / none if none else 0.0
    verdict = "met" if ratio >= GOAL else "NOT met"
    print(f"median TCP1: no policy {none:.3f} Gbit/s, {args.rules}-rule policy {pol:.3f} "
          f"Gbit/s, ratio {ratio:.3f} (goal >= {GOAL:.2f}: {verdict})")
    if args.json:
        print(json.dumps({"rules": args.rules, "duration": args.duration, "rounds": results,
                          "denied_check": denied,
                          "median_none": none, "median_policy": pol, "ratio": ratio}))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--daemon"]:
        daemon(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    else:
        sys.exit(main())
