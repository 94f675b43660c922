#!/usr/bin/env python3
"""Tunnel benchmark: raw veth vs wireguard-go vs meshguard, in two network namespaces.

Run as root:  .venv/bin/python bench/run.py [--rounds 3] [--duration 10] [--paths P,Q]
              [--wireguard-go PATH] [--json [FILE]] [--quick]

Builds two namespaces joined by a veth pair (unique names, everything removed on exit, Ctrl-C
or failure), then for each round and each path brings the path up, measures, and tears it down:
  - iperf3 TCP throughput, 1 stream and 4 streams (-J); namespace A runs the client (sends)
  - 64-byte UDP packets per second received (iperf3 -u -l 64 -b 0)
  - ping RTT p50 and p99 (ping -c 200 -i 0.01)
  - start->1st ping: from starting the tunnel processes to the first echo reply through the
    tunnel (echoes every 10 ms from the bench's own raw socket in namespace A, bench/icmp_echo.py)
  - joined->1st ping (meshguard-up): from both daemons listing each other as members with a
    tunnel (their `status` over the control socket, polled every 5 ms, as the namespace tests
    wait) to the first echo reply; the first echo usually needs the handshake
  - CPU seconds per gigabit (utime+stime from /proc/PID/stat, over the 1-stream TCP test) of
    both tunnel processes, of the sender's (namespace A) and of the receiver's; n/a for
    kernel paths; resident memory (VmRSS, largest daemon)
Paths: veth (the wire), wireguard-go (--wireguard-go PATH, default the first on PATH; the
table and the JSON name its path and --version), meshguard-wg (`meshguard wireguard IFNAME`:
the engine with its default offloads and the C fast path), meshguard-wg-python (the same with
the pure Python fast path, MESHGUARD_PURE_PYTHON=1), meshguard-up (two `meshguard up` nodes
that trust each other); optional: meshguard-wg-nooffload (MESHGUARD_NO_OFFLOAD=1: one packet
per syscall, as before the offloads). Tunnel MTU 1420.
meshguard's byte code is compiled first (`python -m compileall`, as `pip install` does), so
start-up is measured as installed even when PYTHONDONTWRITEBYTECODE is set.
Prints medians and ratios to wireguard-go, then the issue-11 goals met or not in this run
(bench/tunnel_report.py); --json prints a record of the run, --json FILE writes it to FILE.
The machine is shared: trust medians and ratios from one run, never a lone absolute number.
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.icmp_echo import EchoProbe  # noqa: E402
from bench.tunnel_report import (  # noqa: E402
    format_goals,
    format_table,
    goal_verdicts,
    ping_summary,
    summarize,
)

TUN_MTU = 1420
VETH_NET = "10.231.{}.{}"
TUN_NET = "10.232.{}.{}"
WG_PORT = 51820
PING_COUNT, PING_INTERVAL = 200, 0.01  # enough replies for a p99 (the 2nd-slowest of 200)
ECHO_RESEND = 0.01  # s between echoes while waiting for a new tunnel's first reply
JOIN_POLL = 0.005  # s between `status` requests while waiting for two daemons to list each other
PATHS = ["veth", "wireguard-go", "meshguard-wg", "meshguard-wg-python", "meshguard-up"]
EXTRA_PATHS = ["meshguard-wg-nooffload"]


def meshguard_exe() -> str | None:
    """The tree's own venv's `meshguard`, else the one beside this interpreter, else PATH's.
    (It imports meshguard as this interpreter does: PYTHONPATH picks the source tree.)"""
    for exe in (REPO / ".venv" / "bin" / "meshguard", Path(sys.executable).with_name("meshguard")):
        if exe.exists():
            return str(exe)
    return shutil.which("meshguard")


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
    """The address to reach through a path and the processes that carry it: pids[0] runs in
    namespace A (the iperf3 client's: the sender), pids[1] in B (the receiver). `startup`
    holds the start-up numbers (first_ping, and joined_ping etc. where the path has them)."""

    server_ip: str
    pids: list[int]
    startup: dict[str, float | None]
    teardown: Callable[[], None]


def first_echo(probe: EchoProbe, t0: float,
               check: Callable[[], None] | None = None) -> dict[str, float | None]:
    """Wait for the first echo reply through a new tunnel; ms since t0, and which echo."""
    reply = probe.first_reply(20.0, ECHO_RESEND, check)
    if os.environ.get("BENCH_DEBUG"):
        print(f"  first reply: echo #{reply.seq}, its RTT {reply.rtt_ms:.1f} ms",
              file=sys.stderr)
    return {"first_ping": (reply.at - t0) * 1000, "first_echo_seq": float(reply.seq),
            "first_echo_rtt": reply.rtt_ms}


def up_veth(tb: Testbed) -> Tunnel:
    return Tunnel(VETH_NET.format(0, 2), [], {"first_ping": None}, lambda: None)


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
    ip = TUN_NET.format(0, 2)
    probe = EchoProbe(tb.a, ip)
    t0 = time.monotonic()
    for n, ifn in zip((tb.a, tb.b), ifnames, strict=True):
        procs.append(tb.spawn(ns(n, *argv(ifn)), env=env))

    def teardown() -> None:
        probe.close()
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
                    pipe = procs[i].stderr
                    err = pipe.read().decode(errors="replace") if pipe else ""
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
        startup = first_echo(probe, t0)
    except BaseException:
        teardown()
        raise
    probe.close()
    return Tunnel(ip, [p.pid for p in procs], startup, teardown)


@dataclass(frozen=True)
class WireguardGo:
    """The wireguard-go build the run compares with."""

    path: str | None
    version: str | None

    @classmethod
    def find(cls, path: str | None) -> WireguardGo:
        """`path` (a file, or a name to look up on PATH), default the first on PATH."""
        found = shutil.which(path or "wireguard-go")
        if found is None:
            return cls(path, None)
        found = str(Path(found).resolve())
        r = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=10)
        lines = (r.stdout or r.stderr).strip().splitlines()
        return cls(found, lines[0] if lines else None)

    def label(self) -> str:
        if self.path is None or self.version is None:
            return "wireguard-go (not found)"
        return f"{self.path} ({self.version})"


def up_wireguard_go(tb: Testbed, wg: WireguardGo) -> Tunnel:
    exe = wg.path
    if exe is None or wg.version is None:
        raise NotAvailable(f"wireguard-go not found ({wg.path or 'not on PATH'})")
    return up_userspace_wg(tb, lambda ifn: [exe, "-f", ifn])


def _meshguard_wg(tb: Testbed, extra_env: dict[str, str] | None = None) -> Tunnel:
    exe = meshguard_exe()
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


def lists_alive_peer(sock: Path, iface: str, other: str) -> bool:
    """Whether the daemon on `sock` lists member `other` (identity key, base64) alive and with
    a tunnel (its WireGuard peer configured): its `status` over the control socket, as the
    namespace tests wait (tests/daemon/meshnet.py, Node.tunnel_to)."""
    from meshguard.daemon.control_client import ControlClient
    from meshguard.errors import MeshguardError

    try:
        status = ControlClient(sock, iface, timeout=2).request("status")
    except MeshguardError:
        return False  # not listening yet
    members = status.get("members")
    return isinstance(members, list) and any(
        isinstance(m, dict) and m.get("identity_key") == other and m.get("state") == "alive"
        and bool(m.get("tunnel")) for m in members)


def wait_joined(notify: socket.socket, seed_lists_joiner: Callable[[], bool], deadline: float,
                check: Callable[[], None]) -> tuple[float, float]:
    """When the two nodes have joined each other: the later of the joiner's READY=1 on the
    sd_notify socket (sent once it joined through the seed; `meshguard up` waits for the
    same, src/meshguard/cli/up_command.py) and the start of the first `status` request
    (one every JOIN_POLL s from the start) in which the seed lists the joiner. Returns
    (joined, ms from READY to that request: negative when the seed listed the joiner first).
    When the seed is seen only after READY, the first echo waits for that request's answer
    (a millisecond or two), which then counts in joined->1st ping."""
    ready_at: float | None = None
    seed_at: float | None = None
    while time.monotonic() < deadline:
        check()
        asked = time.monotonic()
        if seed_at is None and seed_lists_joiner():
            seed_at = asked
        if ready_at is None:
            ready, _, _ = select.select([notify], [], [], JOIN_POLL)
            if ready:
                at = time.monotonic()
                if "READY=1" in notify.recv(4096).decode("utf-8", "replace").splitlines():
                    ready_at = at
        elif seed_at is None:
            time.sleep(JOIN_POLL)
        if ready_at is not None and seed_at is not None:
            return max(ready_at, seed_at), (seed_at - ready_at) * 1000
    raise RuntimeError("the two nodes did not join each other within 30 s")


def up_meshguard_up(tb: Testbed) -> Tunnel:
    """Two `meshguard up` nodes that trust each other; B joins through A's veth address.
    Throughput is measured between their mesh IPv4 addresses. Start-up: start->joined
    (wait_joined), joined->1st ping (the first echo is sent at once) and start->1st ping."""
    exe = meshguard_exe()
    if not exe or subprocess.run([exe, "up", "--help"], capture_output=True).returncode != 0:
        raise NotAvailable("`meshguard up` not available")
    import base64
    import tempfile

    from meshguard.daemon.runtime import socket_path
    from meshguard.identity.addressing import mesh_ipv4

    work = Path(tempfile.mkdtemp(prefix=f"mgbench-{tb.sfx}-"))
    base = f"mgu{secrets.token_hex(3)}"
    ifaces = [f"{base}{i}" for i in range(2)]
    socks = [socket_path(ifaces[i], work / f"run{i}") for i in range(2)]
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
    probe = EchoProbe(tb.a, server_ip)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(work / "notify"))  # a path: reachable from every network namespace
    envs[1]["NOTIFY_SOCKET"] = str(work / "notify")
    procs = []
    t0 = time.monotonic()
    for i, n in enumerate((tb.a, tb.b)):
        argv = [exe, "up", "-f", "-i", ifaces[i], "--port", "51821",
                "--announce", VETH_NET.format(0, i + 1), "--log-level", "error"]
        if i == 1:
            argv += ["--seed", f"{VETH_NET.format(0, 1)}:51821"]
        procs.append(tb.spawn(ns(n, *argv), env=envs[i]))

    def teardown() -> None:
        probe.close()
        notify.close()
        for p in procs:
            tb.stop(p)
        shutil.rmtree(work, ignore_errors=True)

    def check_alive() -> None:
        for p in procs:
            if p.poll() is not None:
                err = p.stderr.read().decode(errors="replace") if p.stderr else ""
                raise RuntimeError(f"meshguard up exited: {err.strip()[-300:]}")

    try:
        joined, seed_after_ready = wait_joined(
            notify, lambda: lists_alive_peer(socks[0], ifaces[0], pubs[1]),
            time.monotonic() + 30, check_alive)
        startup = first_echo(probe, t0, check_alive)
        reply_at = t0 + (startup["first_ping"] or 0) / 1000
        startup["joined_ping"] = (reply_at - joined) * 1000
        startup["start_to_joined"] = (joined - t0) * 1000
        startup["seed_listed_after_ready"] = seed_after_ready
    except BaseException:
        teardown()
        raise
    probe.close()
    notify.close()
    return Tunnel(server_ip, [p.pid for p in procs], startup, teardown)


UPS: dict[str, Callable[[Testbed], Tunnel]] = {
    "veth": up_veth,
    "meshguard-wg": up_meshguard_wg,
    "meshguard-wg-python": up_meshguard_wg_python,
    "meshguard-wg-nooffload": up_meshguard_wg_nooffload,
    "meshguard-up": up_meshguard_up,
}  # and "wireguard-go": up_wireguard_go with the chosen build (main)


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


def ping_rtts(tb: Testbed, ip: str) -> dict[str, float | None]:
    out = sh(*ns(tb.a, "ping", "-c", str(PING_COUNT), "-i", str(PING_INTERVAL), "-n", ip),
             check=False, timeout=PING_COUNT * PING_INTERVAL + 30)
    rtts = [float(x) for x in re.findall(r"time=([\d.]+) ms", out)]
    return ping_summary(rtts, PING_COUNT)


def measure(tb: Testbed, up: Callable[[Testbed], Tunnel], duration: float,
            quick: bool = False) -> dict[str, float | None]:
    tun = up(tb)
    res: dict[str, float | None] = dict(tun.startup)
    try:
        res.update(ping_rtts(tb, tun.server_ip))
        if quick:
            res["rss"] = max((rss_mib(p) for p in tun.pids), default=None)
            return res
        with iperf_server(tb, tun.server_ip):
            cpu0 = [cpu_seconds(p) for p in tun.pids]
            d = iperf(tb, tun.server_ip, duration)
            cpu = [c1 - c0 for c0, c1 in zip(cpu0, (cpu_seconds(p) for p in tun.pids),
                                              strict=True)]
            recv = d["end"]["sum_received"]
            res["tcp1"] = recv["bits_per_second"] / 1e9
            res["retrans1"] = float(d["end"]["sum_sent"].get("retransmits", 0))
            gbits = recv["bytes"] * 8 / 1e9
            if cpu and gbits:
                res["cpu_per_gbit"] = sum(cpu) / gbits
                res["cpu_send_per_gbit"] = cpu[0] / gbits  # namespace A: the iperf3 client
                res["cpu_recv_per_gbit"] = cpu[1] / gbits
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


def git(*args: str) -> str | None:
    r = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else None


def host_facts() -> dict[str, Any]:
    cpu = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"kernel": platform.release(), "cpu_model": cpu, "nproc": os.cpu_count(),
            "python": platform.python_version()}


def tree_facts() -> dict[str, Any]:
    """The commit of the tree bench/run.py is in, and where meshguard was imported from."""
    import importlib.util

    spec = importlib.util.find_spec("meshguard")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"path": str(REPO), "commit": git("rev-parse", "HEAD"),
            "branch": git("rev-parse", "--abbrev-ref", "HEAD"),
            "dirty": bool(status) if status is not None else None,
            "meshguard_imported_from": spec.origin if spec else None}


def compile_package() -> None:
    """Byte-compile meshguard (as an install does), so start-up does not include compiling
    it from source when PYTHONDONTWRITEBYTECODE is set (the caches are gitignored)."""
    import importlib.util

    spec = importlib.util.find_spec("meshguard")
    if spec is None or not spec.submodule_search_locations:
        return
    for loc in spec.submodule_search_locations:
        subprocess.run([sys.executable, "-m", "compileall", "-q", loc], capture_output=True)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[1])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per iperf3 test")
    ap.add_argument("--paths", default=",".join(PATHS),
                    help=f"comma list of {PATHS + EXTRA_PATHS}")
    ap.add_argument("--wireguard-go", metavar="PATH", default=None,
                    help="the wireguard-go binary to compare with (default: the first "
                    "`wireguard-go` on PATH); every ratio is to it")
    ap.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE",
                    help="a record of the run (host, commit, arguments, every round, medians, "
                    "ratios, goals) as JSON: to FILE, or printed after the table without one")
    ap.add_argument("--quick", action="store_true",
                    help=f"latency only: start->1st ping, joined->1st ping, ping RTT "
                    f"({PING_COUNT} x {PING_INTERVAL * 1000:g} ms), RSS; no iperf3")
    return ap


def record(args: argparse.Namespace, wg: WireguardGo, summary: dict[str, Any],
           goals: list[dict[str, Any]], started: datetime.datetime) -> dict[str, Any]:
    """The run as a record to keep (the stdout form of --json has always had rounds,
    duration, mtu, nproc and results; the rest came with --json FILE)."""
    return {
        "date": started.isoformat(timespec="seconds"),
        "host": host_facts(),
        "tree": tree_facts(),
        "argv": sys.argv[1:],
        "args": vars(args),
        "wireguard_go": asdict(wg),
        "rounds": args.rounds, "duration": args.duration, "mtu": TUN_MTU,
        "nproc": os.cpu_count(),
        "ping": {"count": PING_COUNT, "interval_s": PING_INTERVAL},
        "results": summary,
        "goals": goals,
    }


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    started = datetime.datetime.now(datetime.UTC)
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
    wg = WireguardGo.find(args.wireguard_go)
    if args.wireguard_go and wg.version is None:
        ap.error(f"--wireguard-go {args.wireguard_go}: not an executable wireguard-go")
    ups = {**UPS, "wireguard-go": lambda tb: up_wireguard_go(tb, wg)}
    print(f"wireguard-go: {wg.label()}", file=sys.stderr)

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
                    res = measure(tb, ups[path], args.duration, args.quick)
                except NotAvailable as exc:
                    results[path] = f"not available ({exc})"
                    continue
                except (RuntimeError, OSError, subprocess.TimeoutExpired, KeyError,
                        ValueError) as exc:
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
    goals = goal_verdicts(summary)
    print()
    print(format_table(summary, args.rounds, None if args.quick else args.duration,
                       f"wireguard-go = {wg.label()}"))
    print()
    print(format_goals(goals))
    if args.json is not None:
        text = json.dumps(record(args, wg, summary, goals, started), indent=2)
        if args.json == "-":
            print(text)
        else:
            out = Path(args.json)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text + "\n")
            print(f"record written to {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
