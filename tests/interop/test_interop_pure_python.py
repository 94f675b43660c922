"""meshguard on the pure Python fast path (MESHGUARD_PURE_PYTHON=1) against wireguard-go.

The same daemon as in test_interop, started with the variable set, on side `a`; side `b` is
Debian's wireguard-go, or meshguard on the default path. The daemon's start-up log line names
the active fast path, so the test knows the pure path really carried the traffic; the default
start is checked to say `c` when the C extension is built, so the check can tell the two apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest
from wgpair import Node, add_peer, genkey, impl_argv, transfer

from meshguard.dataplane import fastpath
from meshguard.testing.netns import Testbed, start_userspace_wg, unique_name, wait_until

pytestmark = pytest.mark.netns

PURE = {"MESHGUARD_PURE_PYTHON": "1"}

def _start(tb: Testbed, side: str, impl: str, log: Path, env: Mapping[str, str]) -> Node:
    """Like wgpair.start_node, with the daemon's log kept in `log`."""
    ns = tb.a if side == "a" else tb.b
    n = 1 if side == "a" else 2
    ifname = unique_name(f"p{impl[0]}{side}")
    with log.open("wb") as f:
        proc = start_userspace_wg(
            ns, ifname, argv=impl_argv(impl, ifname), env=dict(env), stderr=f.fileno()
        )
    priv, pub = genkey(ns)
    link = tb.link
    node = Node(
        ns=ns, impl=impl, ifname=ifname, priv=priv, pub=pub, port=51100 + n,
        inner4=f"10.78.0.{n}", inner6=f"fd78::{n}",
        outer4=str(link.a_ipv4 if side == "a" else link.b_ipv4),
        outer6=str(link.a_ipv6 if side == "a" else link.b_ipv6),
        proc=proc,
    )  # fmt: skip
    node.wg("set", ifname, "private-key", "/dev/stdin", "listen-port", str(node.port),
            input=priv + "\n")  # fmt: skip
    ns.add_address(ifname, f"{node.inner4}/24")
    ns.add_address(ifname, f"{node.inner6}/64")
    ns.link_up(ifname)
    return node


def _active_fastpath(log: Path) -> str:
    """The fast path the daemon logged at start (`... (fastpath=NAME tun=...)`)."""
    for line in log.read_text(errors="replace").splitlines():
        if " up, UAPI at " in line and "fastpath=" in line:
            return line.split("fastpath=", 1)[1].split()[0]
    raise AssertionError(f"no start-up line in {log}: {log.read_text(errors='replace')!r}")


@pytest.mark.parametrize("impl_b", ["wireguard-go", "meshguard"])
def test_pure_python_path_interoperates(tb: Testbed, tmp_path: Path, impl_b: str) -> None:
    """Side b is wireguard-go, or meshguard on the default (C when built) path."""
    log = tmp_path / "meshguard.log"
    a = _start(tb, "a", "meshguard", log, {**PURE, "LOG_LEVEL": "info"})
    b_log = tmp_path / "b.log"
    b = _start(tb, "b", impl_b, b_log, {"LOG_LEVEL": "info"} if impl_b == "meshguard" else {})
    assert _active_fastpath(log) == "python"
    if impl_b == "meshguard":
        assert _active_fastpath(b_log) == fastpath.IMPLEMENTATION
    add_peer(a, b)
    add_peer(b, a)
    wait_until(lambda: a.ping(b), 10, f"ping meshguard(pure) -> {impl_b}")
    assert b.ping(a, v6=True, count=3)
    assert a.handshake_time(b) > 0 and b.handshake_time(a) > 0
    # bulk both ways: TUN offload splitting, sealing and opening all in Python on side a
    transfer(a, b, b.inner4, 4 << 20)
    transfer(b, a, a.inner6, 4 << 20)


@pytest.mark.skipif(fastpath.c_impl() is None, reason="the C extension is not built")
def test_default_start_reports_the_c_path(tb: Testbed, tmp_path: Path) -> None:
    log = tmp_path / "meshguard.log"
    _start(tb, "a", "meshguard", log, {"LOG_LEVEL": "info", "MESHGUARD_PURE_PYTHON": "0"})
    assert _active_fastpath(log) == "c"
