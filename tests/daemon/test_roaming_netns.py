"""Real daemons follow a member whose underlay address changes (marked netns).

Three nodes on one LAN bridge (tests/daemon/meshnet.py): A (the seed) and C announce fixed
addresses, B advertises whatever its route towards the seed says. B's address is then
replaced as a DHCP renew would do it (old address deleted, new one added, default route
added again). B notices it (netlink, daemon/underlay_watch.py), signs a new record and reaches
out to every peer; A's and C's status must show B's new endpoint and the mesh must carry
pings to B again within 10 s (docs/architecture.md#roaming).

The NAT variants (tests/daemon/natnet.py) move B from behind one cone NAT to behind another
(Wi-Fi to LTE: a new LAN address and a new public mapping), and give B a new LAN address behind
the same NAT (whose old mappings still hold the port, so B gets a new public port): B's STUN
run finds the new mapping, and A, behind its own cone NAT, follows.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from meshguard.testing.netns import netns_skip_reason

from .meshnet import MeshLan, Node, trust_all
from .natnet import CONE, PUB, NatLan

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(netns_skip_reason() is not None, reason=str(netns_skip_reason())),
]

FOLLOW_LIMIT = 10.0  # seconds: the bound for peers to follow a moved member


def move_address(node: Node, new_ip: str, prefix: int, gateway: str) -> None:
    """Replace the node's underlay IPv4 address as a DHCP renew does."""
    node.ns.run(["ip", "addr", "del", f"{node.ip}/{prefix}", "dev", node.lan_if])
    node.ns.run(["ip", "addr", "add", f"{new_ip}/{prefix}", "dev", node.lan_if])
    node.ns.run(["ip", "route", "replace", "default", "via", gateway, "dev", node.lan_if])
    node.ip = new_ip


def endpoint_host(viewer: Node, member: Node) -> str:
    m = viewer.member(member)
    return "" if m is None else str(m["endpoint"]).rsplit(":", 1)[0]


def follow(lan: MeshLan, moved: Node, viewers: list[Node], host: str, t0: float
           ) -> tuple[float, float]:
    """Seconds from t0 until every viewer's status shows `host` for `moved`, and until a
    ping from every viewer to `moved` over the mesh comes back."""
    lan.wait(lambda: all(endpoint_host(v, moved) == host for v in viewers),
             f"the peers' status to show {host}", FOLLOW_LIMIT)
    t_status = time.monotonic() - t0
    pending = list(viewers)

    def pings() -> bool:
        pending[:] = [v for v in pending if not v.ns.ping(moved.mesh_v4, wait=0.5)]
        return not pending

    lan.wait(pings, "pings to the moved node", FOLLOW_LIMIT)
    return t_status, time.monotonic() - t0


def nated_pair(lan: NatLan) -> tuple[Node, Node, Node]:
    """A public seed S with STUN; A and B behind their own cone NATs, B advertising whatever
    its routes say; returns once A and B have a direct tunnel that carries pings."""
    s = lan.add_public("s", PUB)
    a = lan.add_behind_nat("a", "203.0.113.21", "192.168.10", CONE)
    b = lan.add_behind_nat("b", "203.0.113.22", "192.168.20", CONE)
    trust_all([s, a, b])
    stun = lan.start_stun(s)
    s.up(None, *stun)
    a.up([s], *stun)
    b.up([s], *stun, announce=False)

    def direct() -> bool:
        ma, mb = a.member(b), b.member(a)
        return bool(ma and mb and ma["last_handshake"] and mb["last_handshake"]
                    and ma["path"] == "direct" and mb["path"] == "direct")

    lan.wait(direct, "a direct tunnel between A and B", 40)
    lan.wait(lambda: a.ping(b), "pings before the move", 20)
    return s, a, b


@pytest.mark.timeout(90)
def test_peers_follow_an_address_change_within_10_s(tmp_path: Path) -> None:
    with MeshLan(tmp_path) as lan:
        a, b, c = (lan.add_node(n) for n in "abc")
        trust_all([a, b, c])
        b.ns.run(["ip", "route", "add", "default", "via", a.ip, "dev", b.lan_if])
        a.up()
        b.up([a], announce=False)
        c.up([a])
        for x, y in ((a, b), (c, b), (a, c)):
            lan.wait(lambda x=x, y=y: x.tunnel_to(y) and y.tunnel_to(x), "tunnels", 20)
        lan.wait(lambda: a.ping(b) and c.ping(b), "pings before the move", 20)
        old = b.ip
        assert endpoint_host(a, b) == old
        new = old.rsplit(".", 1)[0] + ".102"
        t0 = time.monotonic()
        move_address(b, new, 24, a.ip)
        t_status, t_ping = follow(lan, b, [a, c], new, t0)
        print(f"\naddress change {old} -> {new}: peers' status {t_status:.2f} s, "
              f"pings {t_ping:.2f} s")
        assert t_ping < FOLLOW_LIMIT
        assert b.status()["counters"].get("underlay_changes") == 1, lan.logs()
        assert b.log is not None
        assert f"underlay address changed: {old} -> {new}; re-announcing" in \
            b.log.read_text(), lan.logs()
        # B's own view of its peers is unchanged, and the mesh works both ways
        assert b.ping(a) and b.ping(c), lan.logs()


@pytest.mark.timeout(90)
@pytest.mark.skipif(shutil.which("nft") is None, reason="needs nft")
@pytest.mark.skipif(shutil.which("turnserver") is None, reason="needs coturn (turnserver)")
def test_a_nated_node_moving_to_another_nat_is_followed(tmp_path: Path) -> None:
    with NatLan(tmp_path) as lan:
        lan.add_router("lte", "203.0.113.23", "192.168.30", CONE)
        s, a, b = nated_pair(lan)
        assert endpoint_host(a, b) == "203.0.113.22"
        # B leaves its Wi-Fi (the old link goes down) for the LTE router's LAN
        lte_if = lan.plug(b, "lte", "192.168.30.2")
        t0 = time.monotonic()
        b.ns.run(["ip", "link", "set", b.lan_if, "down"])
        b.lan_if = lte_if
        b.ns.run(["ip", "route", "replace", "default", "via", "192.168.30.1", "dev", lte_if])
        t_status, t_ping = follow(lan, b, [a, s], "203.0.113.23", t0)
        print(f"\nNATed move 203.0.113.22 -> 203.0.113.23: peers' status {t_status:.2f} s, "
              f"pings {t_ping:.2f} s")
        assert t_ping < FOLLOW_LIMIT
        ma = a.member(b)
        assert ma is not None and ma["path"] == "direct", ma
        cb = b.status()["counters"]
        assert cb.get("underlay_changes") == 1 and cb.get("relay_tx", 0) == 0, cb


@pytest.mark.timeout(90)
@pytest.mark.skipif(shutil.which("nft") is None, reason="needs nft")
@pytest.mark.skipif(shutil.which("turnserver") is None, reason="needs coturn (turnserver)")
def test_a_new_lan_address_behind_the_same_nat_is_followed(tmp_path: Path) -> None:
    with NatLan(tmp_path) as lan:
        _s, a, b = nated_pair(lan)
        before = a.member(b)
        assert before is not None
        t0 = time.monotonic()
        move_address(b, "192.168.20.7", 24, "192.168.20.1")

        def moved() -> bool:
            m = a.member(b)
            return m is not None and m["endpoint"] != before["endpoint"]

        lan.wait(moved, "A to see B's new mapping", FOLLOW_LIMIT)
        t_status = time.monotonic() - t0
        lan.wait(lambda: a.ns.ping(b.mesh_v4, wait=0.5), "pings to B", FOLLOW_LIMIT)
        t_ping = time.monotonic() - t0
        m = a.member(b)
        print(f"\nLAN address change behind one NAT ({before['endpoint']} -> "
              f"{m and m['endpoint']}): peers' status {t_status:.2f} s, pings {t_ping:.2f} s")
        assert t_ping < FOLLOW_LIMIT
        assert b.status()["counters"].get("underlay_changes") == 1
