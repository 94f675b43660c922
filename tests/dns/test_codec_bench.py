"""bench/dns_codec.py stays a fair comparison: its dnspython resolver gives the same headers
(rcode, flags, section counts) as the mesh resolver for every case it times, and it runs."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from meshguard.dns.resolver import Resolver

BENCH = Path(__file__).resolve().parents[2] / "bench" / "dns_codec.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_dns_codec", BENCH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_both_sides_answer_alike_and_are_timed() -> None:
    bench = _load()
    names = bench.table()
    ours = Resolver(names)
    theirs = bench.DnspythonResolver(names, serial=ours.serial)
    cases = bench.cases()
    for label in ("A", "AAAA", "NXDOMAIN"):
        bench.same_answers(ours.handle, theirs.handle, cases[label])
    rates = bench.rates([ours.handle, theirs.handle], cases["garbage"], 1, 64)
    assert len(rates) == 2 and all(r > 0 for r in rates)
