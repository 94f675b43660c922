"""Real daemons behind two port-restricted cone NATs punch a direct tunnel (marked netns).

Topology (every name carries a random suffix; everything is removed at the end):

    hub: bridge br0 (the "internet", 203.0.113.0/24)
      ├─ pub   203.0.113.10   seed S (public) + coturn STUN :3478
      ├─ natA  203.0.113.21   nftables masquerade, INPUT drop ── hostA 192.168.10.2 (node A)
      └─ natB  203.0.113.22   nftables masquerade, INPUT drop ── hostB 192.168.20.2 (node B)

The NAT rules are those of the NAT lab guide (docs/nat-testbed.md#base-ruleset, type `cone`):
endpoint-independent, port-preserving mapping; address-and-port-dependent filtering, and
unsolicited inbound packets dropped in INPUT so they leave no conntrack state.

A and B learn their public mappings through STUN and gossip them through S. Both initiate a
WireGuard handshake to the other's mapping as soon as the tunnel is configured (the lower key
2 s before the other), so the first initiation opens its sender's NAT and the second one gets
through: the handshakes are their own hole punch. Where they do not get through in time, A or
B asks S (the public member) to mediate a hole punch (the punch protocol itself is tested in
`tests/nat/`). The test ends when both have a direct tunnel to the other's public mapping,
nothing went through S, and they ping each other over mesh addresses. With A behind a
symmetric NAT (`masquerade random`) the punch fails and A and B relay through S instead.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from meshguard.identity import keygen
from meshguard.rng import SystemRng
from meshguard.testing.netns import Namespace, netns_skip_reason, unique_name

from .helpers import wait_for_stun
from .meshnet import MeshLan, Node

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(netns_skip_reason() is not None, reason=str(netns_skip_reason())),
    pytest.mark.skipif(shutil.which("nft") is None, reason="needs nft"),
    pytest.mark.skipif(shutil.which("turnserver") is None, reason="needs coturn (turnserver)"),
]

PUB = "203.0.113.10"

NAT_RULES = """
table ip nat {
  chain post { type nat hook postrouting priority srcnat; oifname "wan" MASQ; }
}
table ip filter {
  chain in { type filter hook input priority 0; policy drop;
    ct state established,related accept; iifname != "wan" accept; meta l4proto icmp accept; }
  chain filt { type filter hook forward priority 0; policy drop;
    ct state established,related accept; ct status dnat accept;
    iifname "lan" oifname "wan" accept; }
}
"""


class NatLan(MeshLan):
    def _veth(self, a: Namespace, a_if: str, b: Namespace, b_if: str) -> None:
        tmp_a, tmp_b = unique_name("va"), unique_name("vb")
        subprocess.run(["ip", "link", "add", tmp_a, "netns", a.name, "type", "veth", "peer",
                        "name", tmp_b, "netns", b.name], check=True, timeout=30)
        a.run(["ip", "link", "set", tmp_a, "name", a_if])
        b.run(["ip", "link", "set", tmp_b, "name", b_if])

    def _on_hub(self, ns: Namespace, ip: str) -> None:
        hub_if = unique_name("vh")
        self._veth(self.hub, hub_if, ns, "wan")
        self.hub.run(["ip", "link", "set", hub_if, "master", "br0"])
        self.hub.link_up(hub_if)
        ns.add_address("wan", f"{ip}/24")
        ns.link_up("wan")

    def _new_node(self, name: str) -> Node:
        ns = self._stack.enter_context(Namespace.create(f"mgn{name}"))
        cfg = self.tmp / name
        node = Node(self, name, ns, cfg, "", unique_name("mg"))
        k = keygen.generate_node_keys(cfg, SystemRng(), time.time(), force=False)
        node.identity = k.identity.public_key.raw
        node.wg_pub = k.wireguard.public_key.raw
        self.nodes.append(node)
        return node

    def add_public(self, name: str, ip: str) -> Node:
        node = self._new_node(name)
        self._on_hub(node.ns, ip)
        node.ip = ip
        return node

    def add_behind_nat(self, name: str, wan_ip: str, lan: str, masq: str = "masquerade"
                       ) -> Node:
        router = self._stack.enter_context(Namespace.create(f"mgr{name}"))
        self._on_hub(router, wan_ip)
        node = self._new_node(name)
        self._veth(router, "lan", node.ns, "eth0")
        router.add_address("lan", f"{lan}.1/24")
        router.link_up("lan")
        router.run(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1",
                    "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"])
        router.run(["nft", "-f", "-"], input=NAT_RULES.replace("MASQ", masq))
        node.ns.add_address("eth0", f"{lan}.2/24")
        node.ns.link_up("eth0")
        node.ns.run(["ip", "route", "add", "default", "via", f"{lan}.1"])
        node.ip = f"{lan}.2"
        return node


def start_mesh(lan: NatLan, tmp_path: Path, masq: str, masq_b: str | None = None
               ) -> tuple[Node, Node, Node]:
    s = lan.add_public("s", PUB)
    a = lan.add_behind_nat("a", "203.0.113.21", "192.168.10", masq)
    b = lan.add_behind_nat("b", "203.0.113.22", "192.168.20", masq_b or masq)
    for x in (s, a, b):
        for y in (s, a, b):
            if x is not y:
                x.trust(y)
    s.ns.popen(["turnserver", "-n", "--stun-only", "-L", PUB, "-p", "3478", "--no-cli",
                "--no-tls", "--no-dtls", "--log-file", "stdout", "--simple-log",
                "--pidfile", str(tmp_path / "turn.pid")])
    wait_for_stun(s.ns, PUB, 3478)  # the nodes' first STUN query must find it serving
    stun = ["--stun", f"{PUB}:3478"]
    s.up(None, *stun)
    a.up([s], *stun)
    b.up([s], *stun)
    lan.wait(lambda: a.tunnel_to(b) and b.tunnel_to(a), "tunnels configured", 30)

    def handshake() -> bool:
        ma, mb = a.member(b), b.member(a)
        return bool(ma and mb and ma["last_handshake"] and mb["last_handshake"])

    lan.wait(handshake, "a handshake between A and B", 40)
    return s, a, b


@pytest.mark.timeout(90)
def test_two_cone_nats_punch_a_direct_tunnel(tmp_path: Path) -> None:
    with NatLan(tmp_path) as lan:
        s, a, b = start_mesh(lan, tmp_path, "masquerade")
        assert a.ping(b, count=2) and b.ping(a, count=2), lan.logs()
        ma, mb = a.member(b), b.member(a)
        assert ma is not None and mb is not None
        assert ma["path"] == "direct" and mb["path"] == "direct"
        # the tunnel goes to the NAT's public mapping, not through the seed
        assert ma["endpoint"].startswith("203.0.113.22:"), ma
        assert mb["endpoint"].startswith("203.0.113.21:"), mb
        ca, cb, cs = (x.status()["counters"] for x in (a, b, s))
        # Both ends initiate to the other's STUN mapping as soon as the tunnel is configured,
        # so the crossing handshakes usually open both NATs before a punch is due. A punch,
        # when one was asked for, went through the seed and succeeded; nothing was relayed.
        asked = ca.get("punch_requests_sent", 0) + cb.get("punch_requests_sent", 0)
        if asked:
            assert ca.get("punch_succeeded", 0) + cb.get("punch_succeeded", 0) >= 1, (ca, cb)
            assert cs.get("punch_forwarded", 0) >= 2, cs
        assert cs.get("relay_forwarded", 0) == 0, cs
        assert ca.get("relay_tx", 0) == 0 and cb.get("relay_tx", 0) == 0, (ca, cb)
        assert cs.get("punch_requests_sent", 0) == 0  # the public seed never needs to ask


@pytest.mark.timeout(90)
@pytest.mark.parametrize("masq_b", ["masquerade random", "masquerade"],
                         ids=["symmetric-symmetric", "symmetric-cone"])
def test_symmetric_nat_relays_through_the_public_member(tmp_path: Path, masq_b: str) -> None:
    with NatLan(tmp_path) as lan:
        s, a, b = start_mesh(lan, tmp_path, "masquerade random", masq_b)
        assert a.ping(b, count=2) and b.ping(a, count=2), lan.logs()
        ma, mb = a.member(b), b.member(a)
        assert ma is not None and mb is not None
        assert ma["path"] == "relayed" and mb["path"] == "relayed", (ma, mb)
        assert ma["endpoint"] == f"{PUB}:51821" and mb["endpoint"] == f"{PUB}:51821"
        ca, cb, cs = (x.status()["counters"] for x in (a, b, s))
        assert ca.get("punch_failed", 0) + cb.get("punch_failed", 0) >= 1, (ca, cb)
        assert ca.get("relay_rtt_samples", 0) >= 1 and cb.get("relay_rtt_samples", 0) >= 1
        assert cs.get("relay_forwarded", 0) >= 4, cs  # handshake both ways + pings
        assert ca.get("relay_bad_mac", 0) == cb.get("relay_bad_mac", 0) == 0
