"""`meshguard up/down/status` failure paths and background mode, for real (marked netns).

Every failed `up` must print one line, exit 1 and leave no interface and no control socket.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshguard.testing.netns import netns_skip_reason, wait_until

from .helpers import kernel_wireguard, wait_for_stun
from .meshnet import MeshLan, Node, run_cli, trust_all

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(netns_skip_reason() is not None, reason=str(netns_skip_reason())),
]


@pytest.fixture
def lan(tmp_path: Path) -> Iterator[MeshLan]:
    with MeshLan(tmp_path) as lan:
        yield lan


def assert_clean_failure(node: Node, res: subprocess.CompletedProcess[str], text: str) -> None:
    assert res.returncode == 1, (res.stdout, res.stderr)
    assert text in res.stderr, res.stderr
    assert res.stderr.startswith("meshguard: error: ") and res.stderr.count("\n") == 1, res.stderr
    assert node.ns.run(["ip", "link", "show", node.iface], check=False).returncode != 0
    assert not node.sock.exists()


def up(node: Node, *extra: str) -> subprocess.CompletedProcess[str]:
    return node.cli("up", "-f", "--interface", node.iface, "--port", str(node.port), *extra,
                    timeout=30)


def test_refusals(lan: MeshLan) -> None:
    a = lan.add_node("a")
    # empty trust store
    assert_clean_failure(a, up(a), "trust store")
    # missing identity
    nokey = lan.add_node("nokey", keys=False)
    assert_clean_failure(nokey, up(nokey, "--open"), "keygen")
    # (an unresolvable seed name is a warning, not a refusal: test_seeds_netns.py)
    # busy port
    holder = a.ns.popen([sys.executable, "-c",
                         "import socket,time;s=socket.socket(socket.AF_INET6,socket.SOCK_DGRAM);"
                         f"s.bind(('::',{a.port}));time.sleep(60)"])
    wait_until(lambda: f":{a.port}" in a.ns.run(["ss", "-uln"]).stdout, 10, "port held")
    assert_clean_failure(a, up(a, "--open"), "already in use")
    # the same failure in background mode reaches the terminal through the readiness socket
    bg = a.cli("up", "--interface", a.iface, "--open", timeout=30)
    assert_clean_failure(a, bg, "already in use")
    a.ns.stop(holder)


def test_kernel_mode(lan: MeshLan) -> None:
    """Kernel mode for real where the kernel has WireGuard, its refusal where it has not: the
    decision is kernel_wireguard()'s, shared with test_kernel_wg.py."""
    a = lan.add_node("a")
    if not kernel_wireguard().available:
        assert_clean_failure(a, up(a, "--open", "--kernel"), "no WireGuard module")
        return
    k = lan.add_node("k")
    trust_all([a, k])
    a.up()
    k.up([a], "--kernel")
    link = json.loads(k.ns.run(["ip", "-d", "-j", "link", "show", k.iface]).stdout)
    assert link[0]["linkinfo"]["info_kind"] == "wireguard", link
    assert k.status()["self"]["gossip_port"] == 51822
    lan.wait(lambda: a.tunnel_to(k) and k.tunnel_to(a), "a <-> k tunnels", 20)
    for x, y in ((a, k), (k, a)):
        lan.wait(lambda x=x, y=y: x.ping(y), f"{x.name} ping {y.name}", 20)
    assert k.proc is not None
    k.ns.stop(k.proc)
    lan.wait(lambda: k.ns.run(["ip", "link", "show", k.iface], check=False).returncode != 0,
             "the kernel link removed on shutdown", 10)


def test_up_twice_and_seed_by_host_name(lan: MeshLan) -> None:
    a = lan.add_node("a")
    b = lan.add_node("b")
    trust_all([a, b])
    a.up()
    res = up(a)
    assert res.returncode == 1 and "already running" in res.stderr, res.stderr
    assert a.alive_and_answering()  # the first one is unharmed
    # a seed given by host name: `ip netns exec` mounts /etc/netns/<ns>/hosts over /etc/hosts
    etc = Path("/etc/netns") / b.ns.name
    etc.mkdir(parents=True)
    try:
        (etc / "hosts").write_text(f"127.0.0.1 localhost\n{a.ip} seed-a.test\n")
        b.up([], "--seed", "seed-a.test:51821", announce=False)
        lan.wait(lambda: b.tunnel_to(a) and a.tunnel_to(b), "b joined a by name", 20)
        # without --announce, b advertises the address it reaches the seed from
        assert (a.member(b) or {}).get("endpoint") == f"{b.ip}:51821"
    finally:
        shutil.rmtree(etc, ignore_errors=True)


def test_background_mode_status_and_down(lan: MeshLan) -> None:
    a = lan.add_node("a")
    b = lan.add_node("b")
    trust_all([a, b])
    res = a.cli("up", "--interface", a.iface, "--announce", a.ip, timeout=40)
    assert res.returncode == 0, res.stderr
    assert "is up" in res.stdout and a.sock.exists()
    res = b.cli("up", "--interface", b.iface, "--announce", b.ip, "--seed", f"{a.ip}:51821",
                timeout=40)
    assert res.returncode == 0, res.stderr
    assert "joined" in res.stdout, res.stdout  # READY only once joined through the seed
    # two daemons share the run dir: status lists both, down asks which
    res = a.cli("status")
    assert res.returncode == 0 and a.iface in res.stdout and b.iface in res.stdout
    res = a.cli("down")
    assert res.returncode == 1 and "choose one with --interface" in res.stderr
    for n in (a, b):
        res = n.cli("down", "--interface", n.iface)
        assert res.returncode == 0, res.stderr
        assert not n.sock.exists()
        assert n.ns.run(["ip", "link", "show", n.iface], check=False).returncode != 0
    res = a.cli("status")
    assert res.returncode == 1 and "not running" in res.stderr


def test_interface_name_validation(tmp_path: Path) -> None:
    res = run_cli(["up", "-f", "--interface", "bad/name"],
                  {"MESHGUARD_CONFIG_DIR": str(tmp_path), "MESHGUARD_RUN_DIR": str(tmp_path)})
    assert res.returncode == 1 and "invalid interface name" in res.stderr


def test_stun_discovery_against_coturn(lan: MeshLan) -> None:
    if shutil.which("turnserver") is None:
        pytest.skip("coturn (turnserver) is not installed")
    a = lan.add_node("a")
    b = lan.add_node("b")
    trust_all([a, b])
    a.ns.popen(["turnserver", "-n", "--listening-ip", a.ip, "--listening-port", "3478",
                "--stun-only", "--no-tls", "--no-dtls", "--no-cli", "--no-tcp"])
    wait_for_stun(a.ns, a.ip, 3478)
    a.up()
    b.up([a], "--stun", a.ip)
    lan.wait(lambda: b.log is not None and "STUN: public endpoint" in b.log.read_text(),
             "b's STUN discovery", 15)
    assert f"public endpoint {b.ip}:{b.port}, NAT public" in b.log.read_text()
    assert b.status()["counters"]["stun_rx"] >= 1
    lan.wait(lambda: a.tunnel_to(b), "the mesh still forms", 15)


def test_ipv6_underlay(lan: MeshLan) -> None:
    a, b, c = lan.add_node("a"), lan.add_node("b"), lan.add_node("c")
    trust_all([a, b, c])
    a.up(v6=True)
    b.up([a], v6=True)
    c.up([a], v6=True)
    for x, y in ((b, c), (c, b), (a, c)):
        lan.wait(lambda x=x, y=y: x.ping(y), f"{x.name} ping {y.name} over an IPv6 underlay", 20)
        assert x.ping(y, v6=True)
    m = b.member(c)
    assert m is not None and m["endpoint"] == f"[{c.ip6}]:51821"


def test_split_port_node_interoperates_with_single_port_nodes(lan: MeshLan) -> None:
    """The kernel-mode port layout (WireGuard on PORT, gossip on PORT+1, flagged in the signed
    record), run in userspace because this kernel has no WireGuard module, meshes with ordinary
    single-port nodes in both directions: as a joiner and as the seed."""
    a, k, c = lan.add_node("a"), lan.add_node("k"), lan.add_node("c")
    trust_all([a, k, c])
    a.up()
    k.up([a], "--split-port")
    lan.wait(lambda: a.tunnel_to(k) and k.tunnel_to(a), "a <-> k tunnels", 20)
    m = a.member(k)
    assert m is not None and m["endpoint"] == f"{k.ip}:51821"  # WireGuard port, not gossip's
    assert k.status()["self"]["gossip_port"] == 51822
    # c joins through the split-port node (its gossip port)
    c.up([], "--seed", f"{k.ip}:51822")
    for x, y in ((a, k), (k, a), (c, k), (k, c), (a, c)):
        lan.wait(lambda x=x, y=y: x.ping(y), f"{x.name} ping {y.name}", 20)
        assert x.ping(y, v6=True)
    # gossip really uses 51822 on k and WireGuard 51821
    ss = k.ns.run(["ss", "-uln"]).stdout
    assert ":51821" in ss and ":51822" in ss
