"""Real daemons in network namespaces: join, trust, tunnels, leave, death (marked netns).

One module-scoped LAN of five namespaces, used in order: a seed, two nodes trusted by key, one
node admitted only through an org certificate, and an outsider nobody trusts.
"""

from __future__ import annotations

import itertools
import signal
import sys
import time
from collections.abc import Iterator

import pytest

from meshguard.daemon.control_client import socket_is_live
from meshguard.identity import keygen, store
from meshguard.rng import SystemRng
from meshguard.testing.netns import netns_skip_reason

from .meshnet import MeshLan, Node, status_json, trust_all

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(netns_skip_reason() is not None, reason=str(netns_skip_reason())),
]


class Mesh:
    def __init__(self, lan: MeshLan, seed: Node, b: Node, c: Node, d: Node, x: Node) -> None:
        self.lan, self.seed, self.b, self.c, self.d, self.x = lan, seed, b, c, d, x
        self.members = [seed, b, c, d]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("mesh")
    with MeshLan(tmp) as lan:
        seed, b, c = lan.add_node("seed"), lan.add_node("b"), lan.add_node("c")
        d, x = lan.add_node("d"), lan.add_node("x")
        trust_all([seed, b, c])
        # d holds an org certificate; seed, b and c trust only the org, not d's key
        org_dir = tmp / "orgadmin"
        org = keygen.generate_org_key(org_dir, SystemRng(), force=False)
        keygen.issue_certificate_file(org_dir, d.identity, "dnode", d.cfg / store.NODE_CERT,
                                      time.time())
        for n in (seed, b, c):
            p = n.cfg / store.TRUSTED_ORGS / "fleet.org"
            p.parent.mkdir(mode=0o700, exist_ok=True)
            p.write_text(store.public_key_file(org.public_key.raw).decode())
        for n in (seed, b, c):
            d.trust(n)
        # the outsider trusts everybody; nobody trusts it
        for n in (seed, b, c, d):
            x.trust(n)
        seed.up()
        for n in (b, c, d, x):
            n.up([seed], wait=False)
        for n in (b, c, d, x):
            lan.wait(n.alive_and_answering, f"{n.name} up", 20)
        yield Mesh(lan, seed, b, c, d, x)


def test_all_members_ping_each_other_v4_and_v6(mesh: Mesh) -> None:
    lan = mesh.lan
    for a, b in itertools.permutations(mesh.members, 2):
        lan.wait(lambda a=a, b=b: a.tunnel_to(b), f"{a.name} -> {b.name} tunnel", 25)
    for a, b in itertools.permutations(mesh.members, 2):
        lan.wait(lambda a=a, b=b: a.ping(b), f"{a.name} ping {b.name} v4", 10)
        assert a.ping(b, v6=True), f"{a.name} ping6 {b.name}\n{lan.logs()}"
    st = status_json(mesh.b)
    assert st["schema_version"] == 1 and st["interface"] == mesh.b.iface
    m = mesh.b.member(mesh.d)
    assert m is not None and m["name"] == "dnode" and m["state"] == "alive"
    assert m["last_handshake"] and m["rx_bytes"] > 0 and m["tx_bytes"] > 0
    assert m["mesh_ipv4"] == mesh.d.mesh_v4 and m["endpoint"] == f"{mesh.d.ip}:51821"
    table = mesh.b.cli("status", "--interface", mesh.b.iface).stdout
    assert "dnode" in table and "ago" in table
    # the standard tool reads the same interface over UAPI (read-only)
    import base64

    wg = mesh.b.ns.run(["wg", "show", mesh.b.iface, "peers"]).stdout.split()
    assert sorted(wg) == sorted(base64.b64encode(n.wg_pub).decode()
                                for n in (mesh.seed, mesh.c, mesh.d))
    port = mesh.b.ns.run(["wg", "show", mesh.b.iface, "listen-port"]).stdout.strip()
    assert port == str(mesh.b.port)
    res = mesh.b.ns.run(["wg", "set", mesh.b.iface, "listen-port", "1"], check=False)
    assert res.returncode != 0


def test_outsider_never_gets_a_tunnel(mesh: Mesh) -> None:
    x = mesh.x
    for n in mesh.members:
        m = n.member(x)
        assert m is None or not m["tunnel"], f"{n.name} has a tunnel to the outsider"
        assert not x.tunnel_to(n)
    assert not x.ns.ping(mesh.seed.mesh_v4, wait=0.5)
    assert not mesh.seed.ns.ping(x.mesh_v4, wait=0.5)


def test_garbage_on_the_port_is_counted_and_dropped(mesh: Mesh) -> None:
    seed = mesh.seed
    before = status_json(seed)["counters"].get("garbage_dropped", 0)
    code = ("import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
            f"[s.sendto(p,('{seed.ip}',51821)) for p in (b'\\xff'*40,b'',b'\\xfe'*9,b'\\x7fzz')]")
    mesh.b.ns.run([sys.executable, "-c", code])
    mesh.lan.wait(lambda: status_json(seed)["counters"].get("garbage_dropped", 0) >= before + 4,
                  "garbage counted", 5)
    assert seed.ping(mesh.b)  # still working


def test_removing_a_key_tears_the_tunnel_down(mesh: Mesh) -> None:
    c, b = mesh.c, mesh.b
    assert c.tunnel_to(b)
    (c.cfg / store.AUTHORIZED_KEYS / f"{b.name}.pub").unlink()
    mesh.lan.wait(lambda: not c.tunnel_to(b), "c drops b's tunnel after the key is removed", 10)
    assert not c.ping(b)
    assert c.ping(mesh.seed)  # the others are untouched
    # trusting it again brings the tunnel back, still without a restart
    c.trust(b)
    assert c.proc is not None
    c.proc.send_signal(signal.SIGHUP)  # an explicit reload, as `systemctl reload` sends
    mesh.lan.wait(lambda: c.log is not None and "reloaded (SIGHUP)" in c.log.read_text(),
                  "SIGHUP reload", 10)
    mesh.lan.wait(lambda: c.tunnel_to(b) or c.ping(b), "c re-admits b", 25)


def test_down_leaves_cleanly(mesh: Mesh) -> None:
    x = mesh.x
    res = x.cli("down", "--interface", x.iface)
    assert res.returncode == 0, res.stderr
    assert x.proc is not None and x.proc.wait(10) == 0
    assert not x.sock.exists()
    assert x.ns.run(["ip", "link", "show", x.iface], check=False).returncode != 0
    res = x.cli("down", "--interface", x.iface)
    assert res.returncode == 1 and "not running" in res.stderr
    assert res.stderr.count("\n") == 1


def test_stopped_node_is_reported_dead_and_removed(mesh: Mesh) -> None:
    d = mesh.d
    d.kill()
    saw: set[str] = set()  # each lists d as dead for DEAD_GRACE (mesh/swim_port.py), then not

    def both_saw_it_dead() -> bool:
        saw.update(n.name for n in (mesh.seed, mesh.b)
                   if (n.member(d) or {}).get("state") == "dead")
        return len(saw) == 2

    mesh.lan.wait(both_saw_it_dead, "seed and b see d dead", 45)
    for n in (mesh.seed, mesh.b):
        assert not n.tunnel_to(d)
    assert not d.sock.exists() or not socket_is_live(d.sock)


def test_graceful_leave_is_seen_as_left(mesh: Mesh) -> None:
    c = mesh.c
    assert c.proc is not None
    c.kill(signal.SIGTERM)
    assert c.proc.returncode == 0
    mesh.lan.wait(lambda: (mesh.seed.member(c) or {}).get("state") == "left",
                  "seed sees c left", 10)
    assert not mesh.seed.tunnel_to(c)

