"""Path MTU discovery and MSS clamping between two real daemons with a 1280-byte routed hop
between them (public A; B behind a cone NAT router whose two links are at 1280, while both
nodes' own interfaces stay at 1500, and the daemons ignore the router's ICMP, so only the path
probes can find the limit): the prober finds 1280, `meshguard ping` and `status` show it, and
a 10 MB TCP transfer over the mesh addresses completes (IPv4 one way, IPv6 the other), on
each data path (the C thread, the engine's loop, pure Python). With the clamp off
(MESHGUARD_MSS_CLAMP=0) the same transfer stalls (marked netns)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from meshguard.testing.netns import netns_skip_reason

from .meshnet import PY, Node, status_json, trust_all
from .natnet import CONE, PUB, NatLan

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(netns_skip_reason() is not None, reason=str(netns_skip_reason())),
]

HOP_MTU = 1280
SIZE = 10 * 1024 * 1024
PORT = 5399

SERVER = """
import socket, sys
fam = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
print('ready', flush=True)
c, _ = s.accept()
n = 0
while True:
    d = c.recv(1 << 16)
    if not d:
        break
    n += len(d)
c.sendall(str(n).encode())
c.close()
"""

CLIENT = """
import socket, sys, time
fam = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET
c = socket.socket(fam, socket.SOCK_STREAM)
c.settimeout(float(sys.argv[4]))
c.connect((sys.argv[1], int(sys.argv[2])))
t = time.monotonic()
c.sendall(b'x' * int(sys.argv[3]))
c.shutdown(socket.SHUT_WR)
got = c.recv(64)
print(got.decode(), round(time.monotonic() - t, 3), flush=True)
"""


def transfer(src: Node, dst: Node, v6: bool, timeout: float) -> tuple[int, float] | None:
    """Bytes the receiver counted and seconds taken, or None when it did not finish."""
    addr = dst.mesh_v6 if v6 else dst.mesh_v4
    port = PORT + (1 if v6 else 0)
    server = dst.ns.popen([PY, "-c", SERVER, addr, str(port)], stdout=-1)
    try:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == b"ready"
        res = src.ns.run([PY, "-c", CLIENT, addr, str(port), str(SIZE), str(timeout)],
                         check=False, timeout=timeout + 10)
        if res.returncode != 0:
            return None
        n, secs = res.stdout.split()
        return int(n), float(secs)
    finally:
        dst.ns.stop(server, timeout=2)


def pair(lan: NatLan, **env: str) -> tuple[Node, Node]:
    a = lan.add_public("a", PUB)
    b = lan.add_behind_nat("b", "203.0.113.22", "192.168.20", CONE)
    lan.set_router_mtu("b", HOP_MTU)
    for n in (a, b):
        n.extra_env.update(env)
    trust_all([a, b])
    a.up()
    b.up([a])
    lan.wait(lambda: a.tunnel_to(b) and b.tunnel_to(a), "tunnels both ways", 30)
    lan.wait(lambda: b.ping(a, count=1), "b's ping to a over the mesh", 30)
    return a, b


@pytest.fixture
def lan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatLan]:
    with NatLan(tmp_path_factory.mktemp("pmtu")) as lan:
        yield lan


def _mtu(a: Node, b: Node) -> object:
    m = a.member(b)
    return None if m is None else m.get("mtu")


@pytest.mark.parametrize("datapath", [
    pytest.param({}, id="c-thread"),
    pytest.param({"MESHGUARD_DATAPATH_THREAD": "0"}, id="engine-loop"),
    pytest.param({"MESHGUARD_PURE_PYTHON": "1"}, id="pure-python"),
])
def test_path_mtu_found_and_tcp_completes(lan: NatLan, datapath: dict[str, str],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    a, b = pair(lan, **datapath)
    t0 = time.monotonic()
    lan.wait(lambda: _mtu(a, b) == HOP_MTU and _mtu(b, a) == HOP_MTU,
             "both sides to find the 1280-byte path MTU", 20)
    converge = time.monotonic() - t0
    res = a.cli("ping", b.mesh_v4, "-c", "2", "--interval", "0.2", "--interface", a.iface)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "direct 203.0.113.22:" in res.stdout and "rtt" in res.stdout
    assert f"path MTU: {HOP_MTU}" in res.stdout
    member = next(m for m in status_json(a)["members"] if m["mesh_ipv4"] == b.mesh_v4)
    assert member["mtu"] == HOP_MTU and member["rtt_ms"] is not None
    table = a.cli("status", "--interface", a.iface).stdout
    assert "MTU" in table.splitlines()[4] and str(HOP_MTU) in table
    for name in ("b", "b.mesh", b.mesh_v6):  # trust name, DNS name, mesh IPv6
        one = a.cli("ping", name, "-c", "1", "--interface", a.iface)
        assert one.returncode == 0 and "rtt" in one.stdout, one.stdout + one.stderr
    bad = a.cli("ping", "nobody.mesh", "--interface", a.iface)
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    done4 = transfer(a, b, v6=False, timeout=40)
    assert done4 is not None and done4[0] == SIZE, lan.logs()
    done6 = transfer(b, a, v6=True, timeout=40)
    assert done6 is not None and done6[0] == SIZE, lan.logs()
    with capsys.disabled():
        print(f"\n{datapath or 'C thread'}: path MTU {HOP_MTU} found {converge:.1f} s after "
              f"the tunnels came up; 10 MB over IPv4 in {done4[1]:.2f} s, "
              f"over IPv6 (other way) in {done6[1]:.2f} s")


def test_without_the_clamp_tcp_stalls(lan: NatLan) -> None:
    a, b = pair(lan, MESHGUARD_MSS_CLAMP="0")
    lan.wait(lambda: _mtu(a, b) == HOP_MTU, "a to find the path MTU", 20)
    assert transfer(a, b, v6=False, timeout=6) is None
