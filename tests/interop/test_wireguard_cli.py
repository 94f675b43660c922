"""`meshguard wireguard IFNAME [-f]`: daemonizing, foreground, signals, one-line errors."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from meshguard.testing.netns import (
    Namespace,
    netns_skip_reason,
    start_userspace_wg,
    uapi_socket_path,
    unique_name,
    wait_until,
)

pytestmark = pytest.mark.netns
CMD = [sys.executable, "-m", "meshguard", "wireguard"]
ENV = {"WG_PROCESS_FOREGROUND": ""}


@pytest.fixture
def ns() -> Iterator[Namespace]:
    reason = netns_skip_reason()
    if reason:
        pytest.skip(reason)
    with Namespace.create("mgcli") as n:
        yield n


def _gone(ns: Namespace, ifname: str) -> bool:
    no_link = ns.run(["ip", "link", "show", ifname], check=False).returncode != 0
    return no_link and not os.path.exists(uapi_socket_path(ifname))


def test_daemonizes_ready_then_sigterm_cleans_up(ns: Namespace) -> None:
    ifname = unique_name("mgd")
    res = ns.run([*CMD, ifname], env=ENV, check=False, timeout=30)
    assert res.returncode == 0, res.stderr
    # ready means ready: no waiting needed after the parent exits
    assert os.path.exists(uapi_socket_path(ifname))
    assert ns.run(["ip", "link", "show", ifname], check=False).returncode == 0
    assert "listening port" in ns.run(["wg", "show", ifname]).stdout
    pids = ns.pids()
    assert len(pids) == 1  # the daemon (parent and first child are gone)
    # the same name again: one clear line, exit 1
    again = ns.run([*CMD, ifname], env=ENV, check=False, timeout=30)
    assert again.returncode == 1
    assert again.stderr.strip() == f"meshguard: error: interface {ifname} already exists"
    os.kill(pids[0], signal.SIGTERM)
    wait_until(lambda: _gone(ns, ifname) and not ns.pids(), 10, "daemon cleanup")


def test_foreground_sigint_exits_zero_and_cleans_up(ns: Namespace) -> None:
    ifname = unique_name("mgf")
    proc = start_userspace_wg(ns, ifname, argv=[*CMD, ifname, "-f"])
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(10) == 0
    assert _gone(ns, ifname)


def test_exits_when_the_interface_is_deleted(ns: Namespace) -> None:
    # as wireguard-go does; and no busy loop on the dead TUN descriptor
    ifname = unique_name("mgz")
    proc = start_userspace_wg(ns, ifname, argv=[*CMD, ifname, "-f"])
    ns.run(["ip", "link", "del", ifname])
    assert proc.wait(10) == 0
    assert _gone(ns, ifname)


def test_foreground_startup_error_is_one_line(ns: Namespace) -> None:
    ifname = unique_name("mgx")
    ns.run(["ip", "link", "add", ifname, "type", "veth", "peer", "name", unique_name("mgy")])
    res = ns.run([*CMD, ifname, "-f"], check=False, timeout=30)
    assert res.returncode == 1
    assert res.stderr == f"meshguard: error: interface {ifname} already exists\n"
    res = ns.run([*CMD, "x" * 16, "-f"], check=False, timeout=30)
    assert res.returncode == 1 and res.stderr.count("\n") == 1
    assert "invalid interface name" in res.stderr


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv")
def test_not_root_is_one_line(ns: Namespace) -> None:
    argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *CMD, "mgnr0"]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd="/")
    assert res.returncode == 1
    assert res.stderr.startswith("meshguard: error: must run as root")
    assert res.stderr.count("\n") == 1
