"""Subnet routes and exit nodes with real daemons (docs/policy.md#routes; marked netns).

Every member holds a certificate of one org, whose admin (x) signs the policy that grants the
routes; the first serial is placed in every config dir's policies/ before start, later ones
spread by gossip from x. The time from signing a serial without the grants to the client's
routes gone is printed. The hosts behind the router and the exit node have no route to the
mesh: a reply proves the masquerade.
"""

from __future__ import annotations

import base64
import signal
import time
from collections.abc import Iterator

import pytest

from meshguard.identity import keygen, store
from meshguard.rng import SystemRng
from meshguard.testing.netns import Namespace, netns_skip_reason

from .meshnet import MeshLan, Node

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(netns_skip_reason() is not None, reason=str(netns_skip_reason())),
]

LAN_HOST = "10.20.0.2"  # behind x, the subnet router
LAN_HOST6 = "fd00:20::2"
NET_HOST = "198.51.100.2"  # "on the internet" behind e, the exit node
NET_HOST6 = "2001:db8:51::2"


GRANTS = ("route 10.20.0.0/16 via node-x\nroute fd00:20::/64 via node-x\n"
          "exit via node-e\n")


def sign(admin: Node, text: str, serial: int) -> float:
    """The org admin signs a policy; its running daemon takes it and spreads it."""
    f = admin.lan.tmp / f"routes-{serial}.policy"
    f.write_text(text)
    t0 = time.monotonic()
    res = admin.cli("org-policy", "sign", str(f), "--serial", str(serial))
    assert res.returncode == 0, res.stderr
    return t0


def sh(node: Node | Namespace, *argv: str) -> str:
    ns = node.ns if isinstance(node, Node) else node
    return ns.run(list(argv), check=False).stdout


def forwarding(node: Node) -> str:
    return sh(node, "cat", "/proc/sys/net/ipv4/ip_forward").strip()


def nat_table(node: Node) -> str:
    return sh(node, "nft", "list", "table", "inet", f"meshguard-{node.iface}")


def route_dev(node: Node, dst: str) -> str:
    """The device `ip route get` picks for dst in node's namespace."""
    words = sh(node, "ip", "route", "get", dst).split()
    return words[words.index("dev") + 1] if "dev" in words else ""


class Lab:
    def __init__(self, lan: MeshLan, nodes: list[Node], bystander: Node) -> None:
        self.lan = lan
        self.x, self.e, self.y, self.z, self.w = nodes
        self.bystander = bystander  # on the LAN, not a member


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    tmp = tmp_path_factory.mktemp("routes")
    with MeshLan(tmp) as lan:
        nodes = [lan.add_node(n) for n in ("x", "e", "y", "z", "w")]
        x, e, y, z, w = nodes
        bystander = lan.add_node("p", keys=False)
        org = keygen.generate_org_key(x.cfg, SystemRng(), force=False)
        for n in nodes:
            keygen.issue_certificate_file(x.cfg, n.identity, f"node-{n.name}",
                                          n.cfg / store.NODE_CERT, time.time())
            p = n.cfg / store.TRUSTED_ORGS / "fleet.org"
            p.parent.mkdir(mode=0o700, exist_ok=True)
            p.write_text(store.public_key_file(org.public_key.raw).decode())
        sign(x, GRANTS, 1)
        for n in (e, y, z, w):  # the first serial is in every config dir before start
            (n.cfg / "policies").mkdir(mode=0o700)
            for f in (x.cfg / "policies").iterdir():
                (n.cfg / "policies" / f.name).write_bytes(f.read_bytes())
        lan.add_host_behind(x, "lan", "10.20.0", "fd00:20::")
        lan.add_host_behind(e, "net", "198.51.100", "2001:db8:51::")
        x.up(None, "--advertise-routes", "10.20.0.0/24,fd00:20::/64")
        e.up([x], "--advertise-exit-node")
        y.up([x], "--accept-routes", "--exit-node", "node-e")
        z.up([x])
        w.up([x], "--exit-node", base64.b64encode(e.identity).decode(),
             "--exit-node-allow-lan-access")
        for a in (y, z, w):
            for b in (x, e):
                lan.wait(lambda a=a, b=b: a.tunnel_to(b), f"{a.name}'s tunnel to {b.name}")
        yield Lab(lan, nodes, bystander)


def test_a_lan_behind_a_router_is_reachable_with_accept_routes_only(lab: Lab) -> None:
    x, y, z = lab.x, lab.y, lab.z
    lab.lan.wait(lambda: y.ns.ping(LAN_HOST), "y to reach the LAN host behind x")
    assert y.ns.ping(LAN_HOST6)
    assert "10.20.0.0/24 dev" in sh(y, "ip", "route", "show", "proto", "109")
    assert "fd00:20::/64 dev" in sh(y, "ip", "-6", "route", "show", "proto", "109")
    assert not z.ns.ping(LAN_HOST, wait=0.5)
    assert sh(z, "ip", "route", "show", "proto", "109") == ""
    assert forwarding(x) == "1" and "ip daddr 10.20.0.0/24 masquerade" in nat_table(x)
    assert "ip6 daddr fd00:20::/64 masquerade" in nat_table(x)
    # nobody routes what x offers beyond its grant, nor what nobody granted
    assert "10.20.0.0/24" in sh(y, "wg", "show", y.iface, "allowed-ips")
    # `status` says which prefixes go through x: y uses them, z (no --accept-routes) does not
    seen_y, seen_z = y.member(x), z.member(x)
    assert seen_y is not None and seen_z is not None
    assert set(seen_y["routes_in_use"]) == {"10.20.0.0/24", "fd00:20::/64"}
    assert set(seen_z["routes_offered"]) == {"10.20.0.0/24", "fd00:20::/64"}
    assert seen_z["routes_in_use"] == []


def test_an_exit_node_carries_the_default_route_and_masquerades(lab: Lab) -> None:
    e, y = lab.e, lab.y
    lab.lan.wait(lambda: y.ns.ping(NET_HOST), "y to reach the internet host through e")
    assert y.ns.ping(NET_HOST6)
    table = sh(y, "ip", "route", "show", "table", str(y.port))
    assert "default dev " + y.iface in table and f"throw {e.ip}" in table
    assert f"not from all fwmark {y.port:#x} lookup {y.port}" in sh(y, "ip", "rule")
    assert forwarding(e) == "1" and "masquerade" in nat_table(e)
    assert y.ping(e)  # the tunnel itself stays direct (its packets carry the mark)
    assert not lab.z.ns.ping(NET_HOST, wait=0.5)
    # the LAN: members stay direct; a LAN host goes through the exit node, unless w asked
    # to keep the LAN (the exit node named by its key)
    assert route_dev(y, e.ip) == route_dev(y, lab.x.ip) == y.lan_if
    assert route_dev(y, lab.bystander.ip) == y.iface
    w = lab.w
    lab.lan.wait(lambda: w.ns.ping(NET_HOST), "w to reach the internet host through e")
    assert route_dev(w, lab.bystander.ip) == w.lan_if
    assert route_dev(w, NET_HOST) == w.iface


def test_a_withdrawn_grant_removes_routes_everywhere(lab: Lab) -> None:
    x, e, y = lab.x, lab.e, lab.y
    assert y.ns.ping(NET_HOST) and y.ns.ping(LAN_HOST)
    t0 = sign(x, "route 10.30.0.0/24 via node-x\n", 2)  # a new serial without the grants

    def gone() -> bool:
        return (sh(y, "ip", "route", "show", "proto", "109") == ""
                and sh(y, "ip", "-6", "route", "show", "proto", "109") == ""
                and "fwmark" not in sh(y, "ip", "rule")
                and "0.0.0.0/0" not in sh(y, "wg", "show", y.iface, "allowed-ips"))
    lab.lan.wait(gone, "y's routes and allowed IPs to go")
    took = time.monotonic() - t0
    print(f"a serial without the grants: y's routes and allowed IPs gone {took:.2f} s after "
          "it was signed")
    assert sh(y, "ip", "route", "show", "table", str(y.port)) == ""
    lab.lan.wait(lambda: "fwmark" not in sh(lab.w, "ip", "rule"), "w's exit rule to go")
    assert not y.ns.ping(NET_HOST, wait=0.5) and not y.ns.ping(LAN_HOST, wait=0.5)
    lab.lan.wait(lambda: forwarding(x) == "0" and forwarding(e) == "0",
                 "x and e to restore forwarding")
    assert nat_table(x) == "" and nat_table(e) == ""
    assert y.ping(x) and y.ping(e)  # the mesh itself is untouched
    t1 = sign(x, "route 10.20.0.0/24 via node-x\nexit via node-e\n", 3)
    lab.lan.wait(lambda: y.ns.ping(LAN_HOST) and y.ns.ping(NET_HOST), "the grants back")
    print(f"the grants signed again and used on y {time.monotonic() - t1:.2f} s later")
    # `down` removes everything; so does the next start after a daemon was killed
    assert y.cli("down", "--interface", y.iface).returncode == 0
    assert x.proc is not None and e.proc is not None and y.proc is not None
    x.ns.stop(x.proc, timeout=10)
    y.proc.wait(10)
    assert sh(y, "ip", "route", "show", "table", str(y.port)) == ""
    assert "fwmark" not in sh(y, "ip", "rule") and "fwmark" not in sh(y, "ip", "-6", "rule")
    assert forwarding(x) == "0" and nat_table(x) == ""
    assert not (lab.lan.run / f"{y.iface}.routes").exists()
    e.kill(signal.SIGKILL)
    assert forwarding(e) == "1" and "masquerade" in nat_table(e)
    sh(e, "ip", "link", "del", e.iface)  # as the start-up error asks after a crash
    e.up([x])  # no route flags: it only undoes what the killed one left
    assert forwarding(e) == "0" and nat_table(e) == ""
    assert not (lab.lan.run / f"{e.iface}.routes").exists()
