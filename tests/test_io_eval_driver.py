"""bench/io_eval.py's pure parts: arguments, command lines, result parsing, medians (the
evaluation itself is a benchmark that needs root and namespaces, not a test)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

DRIVER = Path(__file__).resolve().parents[1] / "bench" / "io_eval.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("io_eval_driver", DRIVER)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is made
    spec.loader.exec_module(mod)
    return mod


io_eval = _load()


def _counters(mode: str = "epoll", **kw: int) -> dict[str, Any]:
    base: dict[str, Any] = {k: 0 for k in io_eval.COUNTER_KEYS}
    base["mode"] = mode
    base.update(kw)
    return base


def test_arguments_default_dedupe_and_reject() -> None:
    args = io_eval.parse_args([])
    assert args.variants == io_eval.DEFAULT_VARIANTS
    assert args.traffic == ["tcp1", "tcp4", "udp"] and args.crypto == ["on", "off"]
    args = io_eval.parse_args(["--variants", "mq2, epoll,mq2", "--crypto", "off"])
    assert args.variants == ["mq2", "epoll"] and args.crypto == ["off"]
    for bad in (["--variants", "epoll,kqueue"], ["--traffic", ""], ["--runs", "0"],
                ["--udp-len", "1400"], ["--duration", "0.5"]):
        with pytest.raises(SystemExit):
            io_eval.parse_args(bad)


def test_command_lines() -> None:
    argv = io_eval.io_eval_argv("/x/io_eval", "mq2", "off", "tunA", "10.0.0.2")
    opts = dict(zip(argv[1::2], argv[2::2], strict=True))
    assert argv[0] == "/x/io_eval"
    assert opts == {"--mode": "epoll", "--tun": "tunA", "--peer": "10.0.0.2",
                    "--port": str(io_eval.UDP_PORT), "--queues": "2", "--mq": "1",
                    "--shared-port": "0", "--crypto": "0", "--depth": "0", "--fixed": "0"}
    opts = dict(zip(*[iter(io_eval.io_eval_argv("b", "uring-d32", "on", "t", "p")[1:])] * 2,
                    strict=True))
    assert (opts["--mode"], opts["--depth"], opts["--crypto"]) == ("uring", "32", "1")
    assert opts["--mq"] == "0" and io_eval.VARIANTS["mq1"]["mq"] == "1"
    assert io_eval.VARIANTS["mq2-1port"]["shared_port"] == "1"
    udp = io_eval.iperf_argv("udp", "10.1.0.2", 5, 1372)
    assert udp[-5:] == ["-u", "-b", "0", "-l", "1372"] and "-P" not in udp
    assert io_eval.iperf_argv("tcp4", "10.1.0.2", 2.5, 64)[-2:] == ["-P", "4"]
    assert "2.5" in io_eval.iperf_argv("tcp1", "h", 2.5, 64)


def test_parse_iperf_server_tcp_udp_and_error() -> None:
    tcp = {"end": {"sum_received": {"bits_per_second": 2.5e9, "bytes": 3125000000,
                                    "seconds": 10.0}}}
    r = io_eval.parse_iperf_server(json.dumps(tcp))
    assert (r.bits_per_second, r.bytes, r.seconds, r.packets) == (2.5e9, 3125000000, 10.0, None)
    udp = {"end": {"sum": {"bits_per_second": 4e8, "bytes": 500000000, "seconds": 5.0,
                           "packets": 400000, "lost_packets": 25000}}}
    assert io_eval.parse_iperf_server(json.dumps(udp)).packets == 375000
    with pytest.raises(ValueError, match="busy"):
        io_eval.parse_iperf_server(json.dumps({"error": "the server is busy"}))


def test_parse_counters_merges_lines_and_rejects_incomplete() -> None:
    totals = _counters("uring", opened=7, enters=3)
    out = "ready\n" + json.dumps(totals) + "\n" + '{"queue_opened": [3, 4]}\n'
    doc = io_eval.parse_counters(out)
    assert doc["opened"] == 7 and doc["queue_opened"] == [3, 4] and doc["mode"] == "uring"
    del totals["opened_bytes"]
    with pytest.raises(ValueError, match="opened_bytes"):
        io_eval.parse_counters("ready\n" + json.dumps(totals) + "\n")
    with pytest.raises(ValueError):
        io_eval.parse_counters("ready\n")


def test_syscall_count_per_mode() -> None:
    ep = _counters("epoll", tun_reads=10, tun_writes=5, send_calls=2, recv_calls=3, waits=4,
                   enters=99)
    assert io_eval.syscalls(ep) == 24
    assert io_eval.syscalls(_counters("uring", tun_reads=10, waits=4, enters=6)) == 6


def test_samples_and_medians() -> None:
    res = io_eval.IperfResult(1.9e9, 10**9, 4.0, None)

    def sample(cpu: float, opened_bytes: int) -> Any:
        send = _counters(tun_reads=100, send_calls=100)
        recv = _counters(opened=1000, opened_bytes=opened_bytes)
        return io_eval.make_sample("epoll", "tcp1", "on", res, cpu, cpu / 2, send, recv, 0)

    s = sample(1.0, 10**9)
    assert s.gbit == 8.0 and s.gbps == 2.0 and s.goodput == pytest.approx(1.9)
    assert s.kpps == 0.25 and s.syscalls_per_kpkt == 200.0
    rows = io_eval.summarize([sample(1.0, 10**9), sample(4.0, 10**9), sample(2.0, 2 * 10**9)])
    (row,) = rows
    assert row.runs == 3 and row.gbps == 2.0
    # per sample: 1.5/8, 6/8, 3/16 s/Gbit; the median is 1.5/8
    assert row.cpu_per_gbit == pytest.approx(0.1875)
    assert row.send_per_gbit == pytest.approx(0.125) and row.recv_per_gbit == pytest.approx(0.0625)
    assert "epoll" in io_eval.format_table(rows)
