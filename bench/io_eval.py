#!/usr/bin/env python3
"""I/O evaluation: epoll + read/write + recvmmsg/sendmmsg vs io_uring vs multi-queue TUN.

Run as root, under the namespace lock (one traffic kind per run keeps the hold short):

    flock /tmp/meshguard-netns.lock .venv/bin/python bench/io_eval.py --traffic tcp1
    flock /tmp/meshguard-netns.lock .venv/bin/python bench/io_eval.py --traffic udp [--json]

Compiles bench/io_eval.c (gcc, OpenSSL's libcrypto; io_uring through raw syscalls, no
liburing) into a temporary directory, builds two network namespaces joined by a veth pair
(unique names, removed on exit, Ctrl-C or failure) and runs one `io_eval` tunnel end in each:
TUN (IFF_VNET_HDR, checksum/TSO offloads) <-> UDP (GSO/GRO) over the veth, both directions
in one process as in the data path, with a ChaCha20-Poly1305 seal/open per packet (OpenSSL
EVP) or without it (`--crypto off`: framing only). iperf3 drives it: a TCP flow (`tcp1`),
four (`tcp4`), or a UDP flood of `--udp-len`-byte datagrams (`udp`).

Variants (bench/io_eval.c says what each does):
  epoll        one thread: epoll, read/write on the TUN, sendmmsg (GSO runs) / recvmmsg (GRO)
  uring        one thread: io_uring, a multishot read on the TUN and a multishot recvmsg on
               the socket (provided-buffer rings), sendmsg/write submissions batched (one
               io_uring_enter per round)
  uring-fixed  uring with registered write buffers (WRITE_FIXED)
  uring-d4/d32 uring with 4 or 32 plain TUN reads kept in flight instead of the multishot read
  mq1, mq2     epoll with an IFF_MULTI_QUEUE TUN: 1 or 2 queues, a thread, socket and epoll each
               (each thread's socket on its own port: two UDP flows between the ends)
  mq2-1port    mq2 with all sockets on one port (SO_REUSEPORT), as with one WireGuard peer:
               the peer's datagrams all reach one socket, so one thread receives them all
  uring-mq2    uring with 2 queues/threads

For each variant, traffic kind and crypto setting it reports, as the median of `--runs` runs:
Gbit/s and packets/s through the tunnel (inner bytes and messages the receiving end opened,
over iperf3's receiver time), iperf3's own goodput (lower for the UDP flood, where iperf3's
socket drops what the loaded machine cannot read in time), and CPU seconds per Gbit through
the tunnel of the two tunnel processes (utime+stime of all their threads, io_uring workers
included, over the iperf3 run), also split into the sending end (TUN -> UDP) and the
receiving end (UDP -> TUN), plus data-path syscalls per 1000 packets and the io_uring
worker threads (iou-wrk) seen mid-run. Not part of the test suite; docs/performance.md
("io_uring and multi-queue TUN: measured") has the numbers and the verdict.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "io_eval.c"
TUN_MTU = 1420
VETH_NET = "10.241.0.{}"
TUN_NET = "10.242.0.{}"
UDP_PORT = 51900
IPERF_PORT = 5211

def _variant(mode: str, queues: int = 1, mq: bool = False, fixed: bool = False,
             depth: int = 0, shared_port: bool = False) -> dict[str, str]:
    return {"mode": mode, "queues": str(queues), "mq": str(int(mq or queues > 1)),
            "fixed": str(int(fixed)), "depth": str(depth), "shared_port": str(int(shared_port))}


VARIANTS: dict[str, dict[str, str]] = {
    "epoll": _variant("epoll"),
    "uring": _variant("uring"),
    "uring-fixed": _variant("uring", fixed=True),
    "uring-d4": _variant("uring", depth=4),
    "uring-d32": _variant("uring", depth=32),
    "mq1": _variant("epoll", mq=True),
    "mq2": _variant("epoll", queues=2),
    "mq2-1port": _variant("epoll", queues=2, shared_port=True),
    "uring-mq2": _variant("uring", queues=2),
}
DEFAULT_VARIANTS = ["epoll", "uring", "uring-fixed", "uring-d4", "uring-d32", "mq1", "mq2"]
TRAFFIC = {"tcp1": 1, "tcp4": 4, "udp": 0}  # kind -> iperf3 TCP streams (0: UDP flood)
CRYPTO = {"on": "1", "off": "0"}


# --- pure parts (tests/test_io_eval_driver.py) -------------------------------------


def _list_arg(value: str, allowed: Sequence[str], what: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if not items or bad:
        raise argparse.ArgumentTypeError(
            f"{what}: {', '.join(bad) or 'none given'} not in {', '.join(allowed)}")
    return list(dict.fromkeys(items))


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--variants", type=lambda v: _list_arg(v, list(VARIANTS), "variants"),
                   default=DEFAULT_VARIANTS, help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--traffic", type=lambda v: _list_arg(v, list(TRAFFIC), "traffic"),
                   default=list(TRAFFIC), help=f"comma list of {', '.join(TRAFFIC)}")
    p.add_argument("--crypto", type=lambda v: _list_arg(v, list(CRYPTO), "crypto"),
                   default=list(CRYPTO), help="on, off or on,off")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--duration", type=float, default=5.0, help="seconds per iperf3 run")
    p.add_argument("--udp-len", type=int, default=1372, help="UDP flood payload bytes")
    p.add_argument("--json", action="store_true", help="print the samples as JSON too")
    args = p.parse_args(list(argv))
    if args.runs < 1:
        p.error("--runs must be at least 1")
    if not 1.0 <= args.duration <= 120.0:
        p.error("--duration must be within 1-120 s")
    if not 18 <= args.udp_len <= TUN_MTU - 28:
        p.error(f"--udp-len must be within 18-{TUN_MTU - 28}")
    return args


def io_eval_argv(binary: str, variant: str, crypto: str, tun: str, peer: str) -> list[str]:
    """The command line of one tunnel end."""
    v = VARIANTS[variant]
    return [binary, "--mode", v["mode"], "--tun", tun, "--peer", peer, "--port", str(UDP_PORT),
            "--queues", v["queues"], "--mq", v["mq"], "--shared-port", v["shared_port"],
            "--crypto", CRYPTO[crypto],
            "--depth", v["depth"], "--fixed", v["fixed"]]


def iperf_argv(traffic: str, server: str, duration: float, udp_len: int) -> list[str]:
    """The iperf3 client command for a traffic kind."""
    base = ["iperf3", "-c", server, "-p", str(IPERF_PORT), "-t", f"{duration:g}", "-J"]
    streams = TRAFFIC[traffic]
    if streams == 0:
        return [*base, "-u", "-b", "0", "-l", str(udp_len)]
    return [*base, "-P", str(streams)]


@dataclass(frozen=True)
class IperfResult:
    bits_per_second: float
    bytes: int
    seconds: float
    packets: int | None  # UDP: datagrams received


def parse_iperf_server(text: str) -> IperfResult:
    """The receiver's totals from `iperf3 -s -1 -J` output (TCP or UDP)."""
    doc = json.loads(text)
    if "error" in doc and "end" not in doc:
        raise ValueError(f"iperf3: {doc['error']}")
    end = doc["end"]
    if "sum_received" in end:
        s = end["sum_received"]
        return IperfResult(float(s["bits_per_second"]), int(s["bytes"]), float(s["seconds"]),
                           None)
    s = end["sum"]
    packets = int(s["packets"]) - int(s.get("lost_packets", 0))
    return IperfResult(float(s["bits_per_second"]), int(s["bytes"]), float(s["seconds"]),
                       packets)


COUNTER_KEYS = ("tun_reads", "sealed", "sent_msgs", "send_calls", "opened", "opened_bytes",
                "tun_writes", "recv_calls", "waits", "enters")


def parse_counters(stdout: str) -> dict[str, Any]:
    """The counters io_eval prints on exit: JSON object lines after "ready", merged (totals,
    then per-queue lists); ValueError when the totals are missing or incomplete."""
    doc: dict[str, Any] = {}
    for line in stdout.splitlines():
        if line.startswith("{"):
            part = json.loads(line)
            if not isinstance(part, dict):
                raise ValueError(f"io_eval printed a non-object: {line!r}")
            doc.update(part)
    missing = [k for k in (*COUNTER_KEYS, "mode") if k not in doc]
    if missing:
        raise ValueError(f"io_eval counters incomplete (no {', '.join(missing)})")
    return doc


def syscalls(c: dict[str, Any]) -> int:
    """System calls an end made on the data path: one per read/write/sendmmsg/recvmmsg and
    wait in epoll mode; io_uring_enter calls in uring mode."""
    if c["mode"] == "uring":
        return int(c["enters"])
    return int(c["tun_reads"]) + int(c["tun_writes"]) + int(c["send_calls"]) + int(
        c["recv_calls"]) + int(c["waits"])


@dataclass(frozen=True)
class Sample:
    variant: str
    traffic: str
    crypto: str
    gbps: float  # through the tunnel: inner bytes opened by the receiving end
    gbit: float  # gigabits through the tunnel over the run
    goodput: float  # iperf3's receiver, Gbit/s (UDP: below gbps when iperf3 itself drops)
    kpps: float
    cpu_send: float  # CPU seconds of the sending end (TUN -> UDP) over the run
    cpu_recv: float  # of the receiving end (UDP -> TUN)
    syscalls_per_kpkt: float
    uring_workers: int
    send_counters: dict[str, Any] = field(default_factory=dict, compare=False)
    recv_counters: dict[str, Any] = field(default_factory=dict, compare=False)


def make_sample(variant: str, traffic: str, crypto: str, res: IperfResult, cpu_send: float,
                cpu_recv: float, send: dict[str, Any], recv: dict[str, Any],
                workers: int) -> Sample:
    packets = int(recv["opened"])
    gbit = int(recv["opened_bytes"]) * 8 / 1e9
    secs = res.seconds if res.seconds > 0 else float("nan")
    calls = syscalls(send) + syscalls(recv)
    per_kpkt = calls / packets * 1e3 if packets else float("nan")
    return Sample(variant, traffic, crypto, gbit / secs, gbit, res.bits_per_second / 1e9,
                  packets / secs / 1e3, cpu_send, cpu_recv, per_kpkt, workers, send, recv)


@dataclass(frozen=True)
class Summary:
    variant: str
    traffic: str
    crypto: str
    runs: int
    gbps: float
    goodput: float
    kpps: float
    cpu_per_gbit: float  # both ends
    send_per_gbit: float
    recv_per_gbit: float
    syscalls_per_kpkt: float
    uring_workers: int


def _per_gbit(cpu: float, s: Sample) -> float:
    return cpu / s.gbit if s.gbit > 0 else float("nan")


def summarize(samples: Sequence[Sample]) -> list[Summary]:
    """Medians per (variant, traffic, crypto), in the order the keys first appear. CPU per
    Gbit is taken per sample (its CPU over its own gigabits), then the median."""
    keys: dict[tuple[str, str, str], list[Sample]] = {}
    for s in samples:
        keys.setdefault((s.variant, s.traffic, s.crypto), []).append(s)
    out = []
    med = statistics.median
    for (variant, traffic, crypto), ss in keys.items():
        out.append(Summary(
            variant, traffic, crypto, len(ss),
            med(s.gbps for s in ss), med(s.goodput for s in ss), med(s.kpps for s in ss),
            med(_per_gbit(s.cpu_send + s.cpu_recv, s) for s in ss),
            med(_per_gbit(s.cpu_send, s) for s in ss),
            med(_per_gbit(s.cpu_recv, s) for s in ss),
            med(s.syscalls_per_kpkt for s in ss),
            max(s.uring_workers for s in ss)))
    return out


def format_table(rows: Sequence[Summary]) -> str:
    head = (f"{'traffic':7} {'crypto':6} {'variant':12} {'Gbit/s':>7} {'iperf3':>7} {'kpps':>7} "
            f"{'CPU s/Gbit':>10} {'send':>6} {'recv':>6} {'sysc/kpkt':>9} {'iou-wrk':>7}")
    lines = [head, "-" * len(head)]
    for r in sorted(rows, key=lambda r: (list(TRAFFIC).index(r.traffic),
                                         list(CRYPTO).index(r.crypto),
                                         list(VARIANTS).index(r.variant))):
        lines.append(
            f"{r.traffic:7} {r.crypto:6} {r.variant:12} {r.gbps:7.2f} {r.goodput:7.2f} "
            f"{r.kpps:7.1f} "
            f"{r.cpu_per_gbit:10.3f} {r.send_per_gbit:6.3f} {r.recv_per_gbit:6.3f} "
            f"{r.syscalls_per_kpkt:9.1f} {r.uring_workers:7d}")
    return "\n".join(lines)


# --- the testbed ---------------------------------------------------------------------------


def sh(*cmd: str, timeout: float = 30) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {r.returncode}: {r.stderr.strip()}")
    return r.stdout


def ns(netns: str, *cmd: str) -> list[str]:
    return ["ip", "netns", "exec", netns, *cmd]


def cpu_seconds(pid: int) -> float:
    """utime+stime of a process, all its threads, in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def uring_workers(pid: int) -> int:
    """io_uring worker threads (iou-wrk-*) of a process right now."""
    n = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            if (task / "comm").read_text().startswith("iou-wrk"):
                n += 1
    return n


def build(out_dir: Path) -> str:
    binary = out_dir / "io_eval"
    sh("gcc", "-O2", "-Wall", "-o", str(binary), str(SOURCE), "-lcrypto", "-lpthread",
       timeout=120)
    return str(binary)


@contextlib.contextmanager
def testbed() -> Iterator[tuple[str, str]]:
    """Two namespaces (sender A, receiver B) joined by a veth pair; removed on exit."""
    sfx = secrets.token_hex(3)
    a, b = f"mgioA{sfx}", f"mgioB{sfx}"
    made: list[str] = []
    try:
        for n in (a, b):
            sh("ip", "netns", "add", n)
            made.append(n)
            sh(*ns(n, "ip", "link", "set", "lo", "up"))
        sh("ip", "link", "add", f"mgiva{sfx}", "netns", a, "type", "veth", "peer", "name",
           f"mgivb{sfx}", "netns", b)
        for n, dev, host in ((a, f"mgiva{sfx}", 1), (b, f"mgivb{sfx}", 2)):
            sh(*ns(n, "ip", "addr", "add", f"{VETH_NET.format(host)}/24", "dev", dev))
            sh(*ns(n, "ip", "link", "set", dev, "up"))
        yield a, b
    finally:
        for n in made:
            subprocess.run(["ip", "netns", "del", n], capture_output=True)


class End:
    """One io_eval process in a namespace, with its TUN configured."""

    def __init__(self, netns: str, argv: list[str], tun: str, host: int) -> None:
        self.proc = subprocess.Popen(ns(netns, *argv), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            err = self.proc.stderr.read() if self.proc.stderr else ""
            self.proc.wait(5)
            raise RuntimeError(f"io_eval did not start: {line!r} {err.strip()}")
        sh(*ns(netns, "ip", "addr", "add", f"{TUN_NET.format(host)}/24", "dev", tun))
        sh(*ns(netns, "ip", "link", "set", tun, "mtu", str(TUN_MTU), "up"))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def finish(self) -> dict[str, Any]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, err = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate(timeout=5)
        if self.proc.returncode != 0:
            raise RuntimeError(f"io_eval exit {self.proc.returncode}: {err.strip()}")
        return parse_counters(out)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def run_one(a: str, b: str, binary: str, variant: str, traffic: str, crypto: str,
            args: argparse.Namespace) -> Sample:
    sfx = secrets.token_hex(3)
    tun_a, tun_b = f"mgitA{sfx}", f"mgitB{sfx}"
    ends: list[End] = []
    server: subprocess.Popen[str] | None = None
    try:
        ends.append(End(a, io_eval_argv(binary, variant, crypto, tun_a, VETH_NET.format(2)),
                        tun_a, 1))
        ends.append(End(b, io_eval_argv(binary, variant, crypto, tun_b, VETH_NET.format(1)),
                        tun_b, 2))
        server = subprocess.Popen(
            ns(b, "iperf3", "-s", "-1", "-J", "-B", TUN_NET.format(2), "-p", str(IPERF_PORT)),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        time.sleep(0.3)
        cpu0 = [cpu_seconds(e.pid) for e in ends]
        client = subprocess.Popen(ns(a, *iperf_argv(traffic, TUN_NET.format(2), args.duration,
                                                    args.udp_len)),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        workers = [0]

        def watch() -> None:
            time.sleep(args.duration / 2)
            with contextlib.suppress(OSError):
                workers[0] = sum(uring_workers(e.pid) for e in ends)

        t = threading.Thread(target=watch, daemon=True)
        t.start()
        cout, cerr = client.communicate(timeout=args.duration + 30)
        cpu1 = [cpu_seconds(e.pid) for e in ends]
        t.join()
        sout, _serr = server.communicate(timeout=15)
        if client.returncode != 0:
            raise RuntimeError(f"iperf3 client: {cout[-300:]} {cerr.strip()}")
        res = parse_iperf_server(sout)
        send, recv = (e.finish() for e in ends)
        return make_sample(variant, traffic, crypto, res, cpu1[0] - cpu0[0], cpu1[1] - cpu0[1],
                           send, recv, workers[0])
    finally:
        if server is not None and server.poll() is None:
            server.kill()
            server.wait(5)
        for e in ends:
            e.kill()


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("io_eval.py: run as root (network namespaces, TUN devices)", file=sys.stderr)
        return 2
    for tool in ("gcc", "iperf3", "ip"):
        if shutil.which(tool) is None:
            print(f"io_eval.py: {tool} not found", file=sys.stderr)
            return 2
    samples: list[Sample] = []
    with tempfile.TemporaryDirectory(prefix="io_eval.") as tmp, testbed() as (a, b):
        binary = build(Path(tmp))
        for run in range(args.runs):
            for traffic in args.traffic:
                for crypto in args.crypto:
                    for variant in args.variants:
                        s = run_one(a, b, binary, variant, traffic, crypto, args)
                        samples.append(s)
                        print(f"run {run + 1}/{args.runs} {traffic} crypto={crypto} "
                              f"{variant}: {s.gbps:.2f} Gbit/s {s.kpps:.1f} kpps "
                              f"cpu {s.cpu_send:.2f}+{s.cpu_recv:.2f} s", file=sys.stderr)
    rows = summarize(samples)
    print(f"medians of {args.runs} runs, {args.duration:g} s each; CPU = utime+stime of both "
          f"tunnel ends (send: TUN->UDP end, recv: UDP->TUN end)")
    print(format_table(rows))
    if args.json:
        print(json.dumps({"samples": [asdict(s) for s in samples],
                          "summary": [asdict(r) for r in rows]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
