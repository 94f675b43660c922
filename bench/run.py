#!/usr/bin/env python3
"""Tunnel benchmark: raw veth vs wireguard-go vs meshguard, in two network namespaces.

Run as root:  .venv/bin/python bench/run.py [--rounds 3] [--duration 10] [--json]

Builds two namespaces joined by a veth pair (unique names, everything removed on exit, Ctrl-C
or failure), then for each round and each path brings the path up, measures, and tears it down:
  - iperf3 TCP throughput, 1 stream and 4 streams (-J)
  - 64-byte UDP packets per second received (iperf3 -u -l 64 -b 0)
  - ping RTT median (ping -c 20 -i 0.05)
  - time from starting the tunnel processes to the first ping reply through the tunnel
  - CPU seconds per gigabit of the tunnel processes (utime+stime from /proc/PID/stat, over the
    1-stream TCP test; n/a for kernel paths) and their resident memory (VmRSS, largest daemon)
Paths: veth (the wire), wireguard-go (Debian's), meshguard-wg (`meshguard wireguard IFNAME`:
the engine with its default offloads and the C fast path), meshguard-wg-python (the same with
the pure Python fast path, MESHGUARD_PURE_PYTHON=1), meshguard-up (two `meshguard up` nodes
that trust each other); optional: meshguard-wg-nooffload (MESHGUARD_NO_OFFLOAD=1: one packet
per syscall, as before the offloads). Tunnel MTU 1420.
meshguard's byte code is compiled first (`python -m compileall`, as `pip install` does), so
start-up is measured as installed even when PYTHONDONTWRITEBYTECODE is set.
Prints medians and ratios to wireguard-go. The machine is shared: trust medians and ratios from
one run, never a lone absolute number. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MESHGUARD = REPO / ".venv" / "bin" / "meshguard"
TUN_MTU = 1420
VETH_NET = "10.231.{}.{}"
TUN_NET = "10.232.{}.{}"
WG_PORT = 51820
PATHS = ["veth", "wireguard-go", "meshguard-wg", "meshguard-wg-python", "meshguard-up"]
EXTRA_PATHS = ["meshguard-wg-nooffload"]
METRICS = [
    # key, title, unit, higher is better
    ("tcp1", "TCP 1 stream", "Gbit/s", True),
    ("tcp4", "TCP 4 streams", "Gbit/s", True),
    ("udp64", "UDP 64 B", "kpps", True),
    ("ping", "ping RTT", "ms", False),
    ("first_ping", "start->1st ping", "ms", False),
    ("cpu_per_gbit", "CPU", "s/Gbit", False),
    ("rss", "RSS", "MiB", False),
]


class NotAvailable(Exception):
    """This path cannot run on this machine / in this build."""


def sh(*cmd: str, check: bool = True, timeout: float = 60, capture: bool = True) -> str:
    r = subprocess.run(cmd, capture_output=capture, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {r.returncode}: {(r.stderr or '').strip()}")
    return r.stdout or ""


def ns(netns: str, *cmd: str) -> list[str]:
    return ["ip", "netns", "exec", netns, *cmd]


def cpu_seconds(pid: int) -> float:
    """utime+stime of a process (all its threads) in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Testbed:
    """Two namespaces, a veth pair between them; tracks every process it starts."""

    sfx: str = field(default_factory=lambda: secrets.token_hex(3))
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    netns: list[str] = field(default_factory=list)
    socks: list[Path] = field(default_factory=list)

    @property
    def a(self) -> str:
        return f"mgbA{self.sfx}"

    @property
    def b(self) -> str:
        return f"mgbB{self.sfx}"

    def build(self) -> None:
        for n in (self.a, self.b):
            sh("ip", "netns", "add", n)
            self.netns.append(n)
            sh(*ns(n, "ip", "link", "set", "lo", "up"))
        va, vb = f"mgva{self.sfx}", f"mgvb{self.sfx}"
        sh("ip", "link", "add", va, "netns", self.a, "type", "veth", "peer", "name", vb,
           "netns", self.b)
        for n, dev, host in ((self.a, va, 1), (self.b, vb, 2)):
            sh(*ns(n, "ip", "addr", "add", f"{VETH_NET.format(0, host)}/24", "dev", dev))
            sh(*ns(n, "ip", "link", "set", dev, "up"))

    def spawn(self, cmd: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             start_new_session=True, **kw)
        self.procs.append(p)
        return p

    def stop(self, p: subprocess.Popen[bytes]) -> None:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        if p in self.procs:
            self.procs.remove(p)

    def destroy(self) -> None:
        for p in list(self.procs):
            self.stop(p)
        for n in self.netns:
            subprocess.run(["ip", "netns", "del", n], capture_output=True)
        self.netns.clear()
        for s in self.socks:
            with contextlib.suppress(FileNotFoundError):
                s.unlink()


@dataclass
class Tunnel:
    """The address to reach through a path and the processes that carry it."""

    server_ip: str
    pids: list[int]
    first_ping_ms: float | None
    teardown: Callable[[], None]


def wait_ping(tb: Testbed, ip: str, deadline_s: float = 20.0) -> None:
    end = time.monotonic() + deadline_s
    tries = 0
    while time.monotonic() < end:
        tries += 1
        r = subprocess.run(ns(tb.a, "ping", "-c", "1", "-W", "0.2", "-n", ip),
                           capture_output=True)
        if r.returncode == 0:
            if tries > 1 and os.environ.get("BENCH_DEBUG"):
                print(f"  first ping: {tries} tries", file=sys.stderr)
            return
    raise RuntimeError(f"no ping reply from {ip} within {deadline_s} s")


def up_veth(tb: Testbed) -> Tunnel:
    return Tunnel(VETH_NET.format(0, 2), [], None, lambda: None)


def up_userspace_wg(tb: Testbed, argv: Callable[[str], list[str]],
                    extra_env: dict[str, str] | None = None) -> Tunnel:
    """Two userspace WireGuard interfaces (wireguard-go-compatible CLI and UAPI), one per
    namespace, configured with `wg`, peered over the veth."""
    base = f"mgw{secrets.token_hex(3)}"
    ifnames = [base + "a", base + "b"]  # the UAPI socket directory is shared by all netns
    keys = []
    for _ in range(2):
        priv = sh("wg", "genkey").strip()
        pub = subprocess.run(["wg", "pubkey"], input=priv, capture_output=True, text=True,
                             check=True).stdout.strip()
        keys.append((priv, pub))
    env = {**os.environ, "WG_PROCESS_FOREGROUND": "1", "LOG_LEVEL": "error", **(extra_env or {})}
    procs = []
    socks = [Path(f"/var/run/wireguard/{ifn}.sock") for ifn in ifnames]
    tb.socks.extend(socks)
    t0 = time.monotonic()
    for n, ifn in zip((tb.a, tb.b), ifnames, strict=True):
        procs.append(tb.spawn(ns(n, *argv(ifn)), env=env))

    def teardown() -> None:
        for p in procs:
            tb.stop(p)

    try:
        for i, n in enumerate((tb.a, tb.b)):
            ifname, sock = ifnames[i], socks[i]
            end = time.monotonic() + 15
            while True:
                link = subprocess.run(ns(n, "ip", "link", "show", ifname), capture_output=True)
                if link.returncode == 0 and sock.exists():
                    try:
                        sh(*ns(n, "wg", "show", ifname))
                        break
                    except RuntimeError:
                        pass
                if procs[i].poll() is not None:
                    err = procs[i].stderr.read().decode(errors="replace") if procs[i].stderr else ""
                    raise RuntimeError(f"{argv(ifname)[0]} exited: {err.strip()[-300:]}")
                if time.monotonic() > end:
                    raise RuntimeError(f"{ifname} did not appear in {n}")
                time.sleep(0.01)
            other = 1 - i
            keyfile = Path(f"/tmp/{ifname}-{i}.key")
            keyfile.write_text(keys[i][0] + "\n")
            keyfile.chmod(0o600)
            try:
                sh(*ns(n, "wg", "set", ifname, "private-key", str(keyfile),
                       "listen-port", str(WG_PORT), "peer", keys[other][1],
                       "endpoint", f"{VETH_NET.format(0, other + 1)}:{WG_PORT}",
                       "allowed-ips", f"{TUN_NET.format(0, other + 1)}/32"))
            finally:
                keyfile.unlink()
            sh(*ns(n, "ip", "addr", "add", f"{TUN_NET.format(0, i + 1)}/24", "dev", ifname))
            sh(*ns(n, "ip", "link", "set", ifname, "mtu", str(TUN_MTU), "up"))
        ip = TUN_NET.format(0, 2)
        wait_ping(tb, ip)
        first = (time.monotonic() - t0) * 1000
    except BaseException:
        teardown()
        raise
    return Tunnel(ip, [p.pid for p in procs], first, teardown)


def up_wireguard_go(tb: Testbed) -> Tunnel:
    if not shutil.which("wireguard-go"):
        raise NotAvailable("wireguard-go not installed")
    return up_userspace_wg(tb, lambda ifn: ["wireguard-go", "-f", ifn])


def _meshguard_wg(tb: Testbed, extra_env: dict[str, str] | None = None) -> Tunnel:
    exe = str(MESHGUARD) if MESHGUARD.exists() else shutil.which("meshguard")
    if not exe or subprocess.run([exe, "wireguard", "--help"],
                                 capture_output=True).returncode != 0:
        raise NotAvailable("`meshguard wireguard` not available")
    return up_userspace_wg(tb, lambda ifn: [exe, "wireguard", "-f", ifn], extra_env)


def up_meshguard_wg(tb: Testbed) -> Tunnel:
    return _meshguard_wg(tb)


def up_meshguard_wg_python(tb: Testbed) -> Tunnel:
    """The engine with its pure Python fast path (no C extension)."""
    return _meshguard_wg(tb, {"MESHGUARD_PURE_PYTHON": "1"})


def up_meshguard_wg_nooffload(tb: Testbed) -> Tunnel:
    """The engine without TUN/UDP offloads: one packet per read/send syscall."""
    return _meshguard_wg(tb, {"MESHGUARD_NO_OFFLOAD": "1"})


def up_meshguard_up(tb: Testbed) -> Tunnel:
    """Two `meshguard up` nodes that trust each other; B joins through A's veth address.
    Throughput is measured between their mesh IPv4 addresses."""
    exe = str(MESHGUARD) if MESHGUARD.exists() else shutil.which("meshguard")
    if not exe or subprocess.run([exe, "up", "--help"], capture_output=True).returncode != 0:
        raise NotAvailable("`meshguard up` not available")
    import base64
    import tempfile

    from meshguard.identity.addressing import mesh_ipv4

    work = Path(tempfile.mkdtemp(prefix=f"mgbench-{tb.sfx}-"))
    base = f"mgu{secrets.token_hex(3)}"
    envs, pubs = [], []
    for i in range(2):
        env = {**os.environ, "MESHGUARD_CONFIG_DIR": str(work / f"conf{i}"),
               "MESHGUARD_RUN_DIR": str(work / f"run{i}")}
        subprocess.run([exe, "keygen"], env=env, check=True, capture_output=True)
        pub = subprocess.run([exe, "export"], env=env, check=True, capture_output=True,
                             text=True).stdout.strip().split()[-1]
        envs.append(env)
        pubs.append(pub)
    for i in range(2):
        subprocess.run([exe, "trust", "--name", f"node{1 - i}", pubs[1 - i]], env=envs[i],
                       check=True, capture_output=True)
    server_ip = str(mesh_ipv4(base64.b64decode(pubs[1])))
    procs = []
    t0 = time.monotonic()
    for i, n in enumerate((tb.a, tb.b)):
        argv = [exe, "up", "-f", "-i", f"{base}{i}", "--port", "51821",
                "--announce", VETH_NET.format(0, i + 1), "--log-level", "error"]
        if i == 1:
            argv += ["--seed", f"{VETH_NET.format(0, 1)}:51821"]
        procs.append(tb.spawn(ns(n, *argv), env=envs[i]))

    def teardown() -> None:
        for p in procs:
            tb.stop(p)
        shutil.rmtree(work, ignore_errors=True)

    try:
        end = time.monotonic() + 30
        while True:
            for p in procs:
                if p.poll() is not None:
                    err = p.stderr.read().decode(errors="replace") if p.stderr else ""
                    raise RuntimeError(f"meshguard up exited: {err.strip()[-300:]}")
            r = subprocess.run(ns(tb.a, "ping", "-c", "1", "-W", "0.2", "-n", server_ip),
                               capture_output=True)
            if r.returncode == 0:
                break
            if time.monotonic() > end:
                raise RuntimeError(f"no ping reply from {server_ip} within 30 s")
        first = (time.monotonic() - t0) * 1000
    except BaseException:
        teardown()
        raise
    return Tunnel(server_ip, [p.pid for p in procs], first, teardown)


UPS: dict[str, Callable[[Testbed], Tunnel]] = {
    "veth": up_veth,
    "wireguard-go": up_wireguard_go,
    "meshguard-wg": up_meshguard_wg,
    "meshguard-wg-python": up_meshguard_wg_python,
    "meshguard-wg-nooffload": up_meshguard_wg_nooffload,
    "meshguard-up": up_meshguard_up,
}


@contextlib.contextmanager
def iperf_server(tb: Testbed, ip: str) -> Iterator[None]:
    p = tb.spawn(ns(tb.b, "iperf3", "-s", "-B", ip, "-p", "5201"))
    end = time.monotonic() + 10
    while True:  # wait for the listener
        out = sh(*ns(tb.b, "ss", "-ltnH", "sport", "=", ":5201"), check=False)
        if out.strip():
            break
        if p.poll() is not None or time.monotonic() > end:
            raise RuntimeError("iperf3 server did not start")
        time.sleep(0.02)
    try:
        yield
    finally:
        tb.stop(p)


def iperf(tb: Testbed, ip: str, duration: float, *args: str) -> dict[str, Any]:
    out = sh(*ns(tb.a, "iperf3", "-c", ip, "-p", "5201", "-t", str(duration), "-J", *args),
             check=False, timeout=duration + 60)
    data: dict[str, Any] = json.loads(out)
    if "error" in data:
        raise RuntimeError(f"iperf3: {data['error']}")
    return data


def measure(tb: Testbed, path: str, duration: float,
            quick: bool = False) -> dict[str, float | None]:
    tun = UPS[path](tb)
    res: dict[str, float | None] = {"first_ping": tun.first_ping_ms}
    try:
        out = sh(*ns(tb.a, "ping", "-c", "20", "-i", "0.05", "-n", tun.server_ip), check=False)
        rtts = [float(x) for x in re.findall(r"time=([\d.]+) ms", out)]
        res["ping"] = statistics.median(rtts) if rtts else None
        if quick:
            out = sh(*ns(tb.a, "ping", "-c", "200", "-i", "0.01", "-n", tun.server_ip),
                     check=False)
            rtts = [float(x) for x in re.findall(r"time=([\d.]+) ms", out)]
            res["ping200"] = statistics.median(rtts) if rtts else None
            res["rss"] = max((rss_mib(p) for p in tun.pids), default=None)
            return res
        with iperf_server(tb, tun.server_ip):
            cpu0 = sum(cpu_seconds(p) for p in tun.pids)
            d = iperf(tb, tun.server_ip, duration)
            cpu1 = sum(cpu_seconds(p) for p in tun.pids)
            recv = d["end"]["sum_received"]
            res["tcp1"] = recv["bits_per_second"] / 1e9
            res["retrans1"] = float(d["end"]["sum_sent"].get("retransmits", 0))
            gbits = recv["bytes"] * 8 / 1e9
            res["cpu_per_gbit"] = (cpu1 - cpu0) / gbits if tun.pids and gbits else None
            d = iperf(tb, tun.server_ip, duration, "-P", "4")
            res["tcp4"] = d["end"]["sum_received"]["bits_per_second"] / 1e9
            d = iperf(tb, tun.server_ip, duration, "-u", "-l", "64", "-b", "0")
            s = d["end"]["sum"]
            res["udp64"] = (s["packets"] - s["lost_packets"]) / s["seconds"] / 1e3
            res["udp64_loss_pct"] = float(s.get("lost_percent", 0.0))
        res["rss"] = max((rss_mib(p) for p in tun.pids), default=None)
    finally:
        tun.teardown()
    return res


def fmt(v: float | None, key: str) -> str:
    if v is None:
        return "n/a"
    if key in ("tcp1", "tcp4"):
        return f"{v:.2f}"
    if key == "ping":
        return f"{v:.3f}"
    return f"{v:.1f}" if key != "cpu_per_gbit" else f"{v:.2f}"


def summarize(results: dict[str, list[dict[str, float | None]] | str]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for path, runs in results.items():
        if isinstance(runs, str):
            summary[path] = {"status": runs}
            continue
        med: dict[str, float | None] = {}
        keys = {k for r in runs for k in r}
        for k in sorted(keys):
            vals = [v for r in runs if (v := r.get(k)) is not None]
            med[k] = statistics.median(vals) if vals else None
        summary[path] = {"status": "ok", "median": med, "rounds": runs}
    ref = summary.get("wireguard-go", {}).get("median")
    if ref:
        for s in summary.values():
            if s.get("status") == "ok":
                s["ratio_to_wireguard_go"] = {
                    k: (v / ref[k] if v is not None and ref.get(k) else None)
                    for k, v in s["median"].items()
                }
    return summary


def print_table(summary: dict[str, Any], rounds: int, duration: float) -> None:
    print(f"\nmedians of {rounds} rounds x {duration:g} s; (xN) = ratio to wireguard-go; "
          f"shared noisy machine: compare ratios, not absolutes")
    cols = [f"{title} [{unit}]" for _, title, unit, _ in METRICS]
    width = [max(len(c), 16) for c in cols]
    print(f"{'path':21}" + "".join(f" {c:>{w}}" for c, w in zip(cols, width, strict=True)))
    for path, s in summary.items():
        if s["status"] != "ok":
            print(f"{path:21} {s['status']}")
            continue
        cells = []
        for (key, _, _, _), w in zip(METRICS, width, strict=True):
            v = s["median"].get(key)
            cell = fmt(v, key)
            ratio = s.get("ratio_to_wireguard_go", {}).get(key)
            if ratio is not None and path != "wireguard-go":
                cell += f" (x{ratio:.2f})"
            cells.append(f" {cell:>{w}}")
        print(f"{path:21}" + "".join(cells))
    for path, s in summary.items():
        if s["status"] == "ok" and s["median"].get("retrans1") is not None:
            print(f"  {path}: TCP retransmits (1 stream, median) {s['median']['retrans1']:.0f}, "
                  f"UDP 64 B loss {s['median'].get('udp64_loss_pct') or 0:.1f} %")


def compile_package() -> None:
    """Byte-compile meshguard (as an install does), so start-up does not include compiling
    it from source when PYTHONDONTWRITEBYTECODE is set (the caches are gitignored)."""
    import importlib.util

    spec = importlib.util.find_spec("meshguard")
    if spec is None or not spec.submodule_search_locations:
        return
    for loc in spec.submodule_search_locations:
        subprocess.run([sys.executable, "-m", "compileall", "-q", loc], capture_output=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per iperf3 test")
    ap.add_argument("--paths", default=",".join(PATHS),
                    help=f"comma list of {PATHS + EXTRA_PATHS}")
    ap.add_argument("--json", action="store_true", help="print the results as JSON too")
    ap.add_argument("--quick", action="store_true",
                    help="latency only: start->1st ping, ping RTT (20 x 50 ms, and 200 x 10 ms "
                    "as ping200 in the JSON), no iperf3")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/run.py: run me as root (namespaces, TUN)", file=sys.stderr)
        return 1
    for tool in ("iperf3", "ping", "wg", "ip", "ss"):
        if not shutil.which(tool):
            print(f"bench/run.py: {tool} is missing", file=sys.stderr)
            return 1
    paths = [p for p in args.paths.split(",") if p]
    unknown = set(paths) - set(PATHS) - set(EXTRA_PATHS)
    if unknown:
        ap.error(f"unknown paths {sorted(unknown)}")

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    if any(p.startswith("meshguard") for p in paths):
        compile_package()
    tb = Testbed()
    results: dict[str, list[dict[str, float | None]] | str] = {p: [] for p in paths}
    try:
        tb.build()
        for r in range(args.rounds):
            for path in paths:
                if isinstance(results[path], str):
                    continue
                print(f"round {r + 1}/{args.rounds}: {path} ...", file=sys.stderr, flush=True)
                try:
                    res = measure(tb, path, args.duration, args.quick)
                except NotAvailable as exc:
                    results[path] = f"not available ({exc})"
                    continue
                except (RuntimeError, subprocess.TimeoutExpired, KeyError, ValueError) as exc:
                    print(f"  {path} failed: {exc}", file=sys.stderr)
                    results[path] = f"failed: {str(exc)[:120]}"
                    continue
                runs = results[path]
                assert isinstance(runs, list)
                runs.append(res)
                print(f"  {json.dumps({k: v and round(v, 3) for k, v in res.items()})}",
                      file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print("interrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        tb.destroy()
    summary = summarize(results)
    print_table(summary, args.rounds, args.duration)
    if args.json:
        print(json.dumps({"rounds": args.rounds, "duration": args.duration, "mtu": TUN_MTU,
                          "nproc": os.cpu_count(), "results": summary}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
