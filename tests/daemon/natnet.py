"""Real daemons behind nftables NATs on one emulated internet (marked netns by its users).

    with NatLan(tmp_path) as lan:
        s = lan.add_public("s", "203.0.113.10")           # on the "internet" bridge
        a = lan.add_behind_nat("a", "203.0.113.21", "192.168.10")       # cone NAT
        b = lan.add_behind_nat("b", "203.0.113.22", "192.168.20", SYMMETRIC)
        c = lan.add_behind_existing_nat("c", "a", "192.168.10.3")     # a's LAN, a's NAT
        lan.start_stun(s)                                  # coturn on s, port 3478
        lan.set_nat("a", SYMMETRIC)                        # swap a's NAT rules in place
        lan.start_miniupnpd("b")                           # PCP, NAT-PMP, UPnP-IGD on b's router
        lan.port_mappings("b")                             # the DNAT rules miniupnpd added
        pair(a, b, *stun_args)        # `meshguard connect --generate` on a, `--join` on b
        lan.cut("a", "203.0.113.22")          # router a drops all traffic to/from that host
        lan.uncut("a")                        # and lets it through again
        with Pinger(a, b, lan.tmp / "ping.log") as p: ...  # 5 pings/s; p.lost_after(t)

Topology (every name carries a random suffix; everything is removed at the end):

    hub: bridge br0 (the "internet", 203.0.113.0/24)
      ├─ public node   203.0.113.x
      └─ router        203.0.113.y   nftables NAT ── bridge lan ── host(s) 192.168.z.2, .3, ...

The NAT rules are those of the NAT lab guide (docs/nat-testbed.md#base-ruleset):
`CONE` is endpoint-independent, port-preserving mapping with address-and-port-dependent
filtering; `SYMMETRIC` maps every destination to a fresh random port. Unsolicited inbound
packets are dropped in INPUT so they leave no conntrack state.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from meshguard.identity import keygen
from meshguard.rng import SystemRng
from meshguard.testing.netns import Namespace, netns_skip_reason, unique_name, wait_until

from .helpers import wait_for_stun
from .meshnet import MeshLan, Node, trust_all

# the marks of a test module that runs daemons in the NAT lab (STUN from coturn)
NAT_LAB_MARKS = [
    pytest.mark.netns,
    pytest.mark.skipif(netns_skip_reason() is not None, reason=str(netns_skip_reason())),
    pytest.mark.skipif(shutil.which("nft") is None, reason="needs nft"),
    pytest.mark.skipif(shutil.which("turnserver") is None, reason="needs coturn (turnserver)"),
]

PUB = "203.0.113.10"
STUN_PORT = 3478
CONE = "masquerade"
SYMMETRIC = "masquerade random"
ROUTABLE = "11.0.113."  # an "internet" prefix miniupnpd takes for a public one

# miniupnpd's own table, beside the lab's: its chains only add (DNAT and accept rules for the
# mapped ports), every other packet goes on to the lab's NAT and filter tables
MINIUPNPD_TABLE = """
table inet miniupnpd {
  chain forward { type filter hook forward priority filter - 1; policy accept;
    jump miniupnpd; }
  chain miniupnpd { }
  chain prerouting { type nat hook prerouting priority dstnat; policy accept;
    jump prerouting_miniupnpd; }
  chain postrouting { type nat hook postrouting priority srcnat - 1; policy accept;
    jump postrouting_miniupnpd; }
  chain prerouting_miniupnpd { }
  chain postrouting_miniupnpd { }
}
"""

MINIUPNPD_CONF = """ext_ifname=wan
listening_ip=lan
http_port=0
enable_natpmp=yes
enable_upnp=yes
secure_mode=yes
system_uptime=no
upnp_table_name=miniupnpd
upnp_nat_table_name=miniupnpd
upnp_forward_chain=miniupnpd
upnp_nat_chain=prerouting_miniupnpd
upnp_nat_postrouting_chain=postrouting_miniupnpd
uuid=UUID
allow 1024-65535 LAN.0/24 1024-65535
deny 0-65535 0.0.0.0/0 0-65535
"""

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
    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp)
        self.routers: dict[str, Namespace] = {}
        self._lan_prefix: dict[str, str] = {}

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

    def add_behind_nat(self, name: str, wan_ip: str, lan: str, masq: str = CONE) -> Node:
        """A router namespace `name` with NAT rules `masq` between the hub and a LAN bridge
        `lan`.0/24, and a host at `lan`.2 behind it."""
        self.add_router(name, wan_ip, lan, masq)
        return self.add_behind_existing_nat(name, name, f"{lan}.2")

    def add_router(self, name: str, wan_ip: str, lan: str, masq: str = CONE) -> Namespace:
        """A NAT router `name` (as add_behind_nat) with nobody behind it yet."""
        router = self._stack.enter_context(Namespace.create(f"mgr{name}"))
        self.routers[name] = router
        self._lan_prefix[name] = lan
        self._on_hub(router, wan_ip)
        router.run(["ip", "link", "add", "lan", "type", "bridge"])
        router.add_address("lan", f"{lan}.1/24")
        router.link_up("lan")
        router.run(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1",
                    "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"])
        # with br_netfilter loaded, frames bridged between two LAN hosts would meet the
        # forward chain's drop policy, which a home router's switch never applies
        router.run(["sysctl", "-q", "-w", "net.bridge.bridge-nf-call-iptables=0",
                    "net.bridge.bridge-nf-call-ip6tables=0"], check=False)
        self.set_nat(name, masq)
        return router

    def add_behind_existing_nat(self, name: str, router_name: str, ip: str) -> Node:
        """Another host at `ip` on the LAN of the router made by add_behind_nat(router_name)."""
        node = self._new_node(name)
        self.plug(node, router_name, ip, "eth0")
        node.ns.run(["ip", "route", "add", "default", "via",
                     f"{self._lan_prefix[router_name]}.1"])
        node.ip = ip
        node.lan_if = "eth0"
        return node

    def plug(self, node: Node, router_name: str, ip: str, ifname: str = "eth1") -> str:
        """A new link `ifname` with address `ip` from `node` into a router's LAN (no route
        through it yet: the caller moves the default route); returns `ifname`."""
        router = self.routers[router_name]
        port = unique_name("vl")
        self._veth(router, port, node.ns, ifname)
        router.run(["ip", "link", "set", port, "master", "lan"])
        router.link_up(port)
        node.ns.add_address(ifname, f"{ip}/24")
        node.ns.link_up(ifname)
        return ifname

    def set_nat(self, router_name: str, masq: str) -> None:
        """Replace the NAT rules of a router (`CONE`, `SYMMETRIC` or any nft masquerade
        statement); the router's conntrack table is flushed, so old mappings are gone."""
        router = self.routers[router_name]
        router.run(["nft", "flush", "ruleset"])
        router.run(["nft", "-f", "-"], input=NAT_RULES.replace("MASQ", masq))
        router.run([sys.executable, "-c",
                    "from pyroute2 import NFCTSocket; s = NFCTSocket(); s.flush(); s.close()"])

    def start_miniupnpd(self, router_name: str, allow: bool = True) -> None:
        """miniupnpd on a router (made by add_behind_nat with a `ROUTABLE` WAN address):
        PCP and NAT-PMP on port 5351 and UPnP-IGD on the LAN side, mapping only for LAN
        hosts, each only their own address (secure mode); with `allow` False it refuses
        every mapping. Returns once it serves."""
        router = self.routers[router_name]
        router.run(["nft", "-f", "-"], input=MINIUPNPD_TABLE)
        conf = self.tmp / f"miniupnpd-{router_name}.conf"
        text = MINIUPNPD_CONF.replace("LAN", self._lan_prefix[router_name])
        if not allow:
            text = "\n".join(x for x in text.splitlines() if not x.startswith("allow")) + "\n"
        conf.write_text(text.replace("UUID", str(uuid.uuid4())))
        log = self.tmp / f"miniupnpd-{router_name}.log"
        with open(log, "ab") as f:
            router.popen(["miniupnpd", "-d", "-f", str(conf),
                          "-P", str(self.tmp / f"miniupnpd-{router_name}.pid")],
                         stdout=f, stderr=f)
        wait_until(lambda: "Listening for NAT-PMP/PCP" in log.read_text(errors="replace"),
                   10, f"miniupnpd on {router_name}")

    def port_mappings(self, router_name: str) -> list[str]:
        """The DNAT rules miniupnpd holds on a router, e.g. `udp 51821 -> 192.168.10.2:51821`."""
        out = self.routers[router_name].run(
            ["nft", "list", "chain", "inet", "miniupnpd", "prerouting_miniupnpd"]).stdout
        rules = []
        for line in out.splitlines():
            m = re.search(r"th dport (\d+) dnat ip to (\S+)", line)
            if m:
                rules.append(f"udp {m.group(1)} -> {m.group(2)}")
        return rules

    def cut(self, router_name: str, peer_ip: str) -> None:
        """Cut the path between a router's hosts and `peer_ip` (the rest still works)."""
        self.routers[router_name].run(["nft", "-f", "-"], input=cut_rules(peer_ip))

    def uncut(self, router_name: str) -> None:
        """Undo `cut`."""
        self.routers[router_name].run(["nft", "delete", "table", "ip", "cut"])

    def set_router_mtu(self, router_name: str, mtu: int) -> None:
        """Narrow both links of a router (towards the hub and its LAN) to `mtu`: a routed hop
        that drops, per segment, whatever is bigger (with an ICMP the nodes may ignore);
        the hosts' own interfaces keep theirs."""
        router = self.routers[router_name]
        for link in ("wan", "lan"):
            router.run(["ip", "link", "set", link, "mtu", str(mtu)])

    def start_stun(self, node: Node, port: int = STUN_PORT) -> list[str]:
        """coturn (STUN only) on a public node; returns the `--stun` arguments for `up`."""
        node.ns.popen(["turnserver", "-n", "--stun-only", "-L", node.ip, "-p", str(port),
                       "--no-cli", "--no-tls", "--no-dtls", "--log-file", "stdout",
                       "--simple-log", "--pidfile", str(self.tmp / f"turn-{node.name}.pid")])
        wait_for_stun(node.ns, node.ip, port)  # the nodes' first query must find it serving
        return ["--stun", f"{node.ip}:{port}"]


def start_mesh(lan: NatLan, masq: str, masq_b: str | None = None, *extra: str
               ) -> tuple[Node, Node, Node]:
    """A public seed S with STUN, A behind NAT `masq`, B behind `masq_b` (default: the same),
    all trusting each other and up (with `extra` arguments); returns once A and B have
    handshaken."""
    s = lan.add_public("s", PUB)
    a = lan.add_behind_nat("a", "203.0.113.21", "192.168.10", masq)
    b = lan.add_behind_nat("b", "203.0.113.22", "192.168.20", masq_b or masq)
    trust_all([s, a, b])
    stun = lan.start_stun(s)
    s.up(None, *stun, *extra)
    a.up([s], *stun, *extra)
    b.up([s], *stun, *extra)
    lan.wait(lambda: a.tunnel_to(b) and b.tunnel_to(a), "tunnels configured", 30)

    def handshake() -> bool:
        ma, mb = a.member(b), b.member(a)
        return bool(ma and mb and ma["last_handshake"] and mb["last_handshake"])

    lan.wait(handshake, "a handshake between A and B", 40)
    return s, a, b


@dataclass
class Pairing:
    """What `meshguard connect --generate` on one node and `--join` on another printed."""

    generated: str
    joined: str
    join_started: float  # time.monotonic() when --join was started
    proven: float  # when the generating side printed its proof
    punched: float  # when both had exited


def _token_line(proc: subprocess.Popen[bytes], what: str, seen: list[str]) -> str:
    """Read the process's output up to its token line (kept in `seen`); the token."""
    assert proc.stdout is not None
    while True:
        line = proc.stdout.readline().decode()
        if not line:
            raise AssertionError(f"no {what} token; printed:\n{''.join(seen)}")
        seen.append(line)
        if "mg://" in line:
            return line.split()[-1]


def pair(gen: Node, join: Node, *extra: str, minutes: float = 0.15,
         timeout: float = 45) -> Pairing:
    """`connect --generate --in MINUTES` on `gen`, `connect --join` with its token on `join`,
    the reply token pasted into the generator's stdin; returns once both succeeded."""
    deadline = time.monotonic() + timeout
    env = {**os.environ, **gen.env}
    g = gen.ns.popen([sys.executable, "-m", "meshguard", "connect", "--generate", "--in",
                      str(minutes), *extra], env=env, stdin=subprocess.PIPE,
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen_g: list[str] = []
    seen_j: list[str] = []
    offer = _token_line(g, "offer", seen_g)
    started = time.monotonic()
    j = join.ns.popen([sys.executable, "-m", "meshguard", "connect", "--join", offer, *extra],
                      env={**os.environ, **join.env}, stdout=subprocess.PIPE,
                      stderr=subprocess.PIPE)
    reply = _token_line(j, "reply", seen_j)
    assert g.stdin is not None and g.stdout is not None
    g.stdin.write(reply.encode() + b"\n")
    g.stdin.flush()
    proven = 0.0
    for raw in g.stdout:  # live, to time the proof
        seen_g.append(raw.decode())
        if "path proven" in seen_g[-1]:
            proven = time.monotonic()
    out_g, err_g = g.communicate(timeout=max(1.0, deadline - time.monotonic()))
    out_j, err_j = j.communicate(timeout=max(1.0, deadline - time.monotonic()))
    done = time.monotonic()
    assert g.returncode == 0 and j.returncode == 0, (err_g.decode(), err_j.decode(),
                                                     out_g.decode(), out_j.decode())
    return Pairing("".join(seen_g) + out_g.decode(), "".join(seen_j) + out_j.decode(), started,
                   proven, done)


def cut_rules(peer_ip: str) -> str:
    """nftables rules for a router that drop every packet to or from `peer_ip` (before
    connection tracking on the way in, before NAT on the way out)."""
    return (f"table ip cut {{\n"
            f"  chain cut_in {{ type filter hook prerouting priority -300;\n"
            f"    ip saddr {peer_ip} drop; }}\n"
            f"  chain cut_out {{ type filter hook forward priority -10;\n"
            f"    ip daddr {peer_ip} drop; }}\n"
            f"}}\n")


_REPLY = re.compile(r"^\[(\d+\.\d+)\].*icmp_seq=(\d+)")


@dataclass
class Pinger:
    """A continuous ping (5 per second) from one node to another's mesh IPv4; the replies
    are read at the end: `replies` maps a sequence number to the time (unix) of its reply."""

    src: Node
    dst: Node
    log: Path
    interval: float = 0.2
    started: float = 0.0
    replies: dict[int, float] = field(default_factory=dict)
    # seq -> when ping said "no answer yet" for it (-O prints it as it sends the next one)
    unanswered: dict[int, float] = field(default_factory=dict)
    sent: int = 0
    _proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Pinger:
        self.started = time.time()
        with open(self.log, "wb") as out:
            self._proc = self.src.ns.popen(
                ["ping", "-n", "-D", "-O", "-W", "1", "-i", str(self.interval),
                 self.dst.mesh_v4], stdout=out)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self._proc is None:
            return
        self.src.ns.stop(self._proc)
        self._proc = None
        for line in self.log.read_text().splitlines():
            m = _REPLY.match(line)
            if m is None:
                continue
            seq = int(m.group(2))
            self.sent = max(self.sent, seq)
            if "bytes from" in line:
                self.replies[seq] = float(m.group(1))
            elif "no answer yet" in line:
                self.unanswered[seq] = float(m.group(1))

    def sent_at(self, seq: int) -> float:
        """When ping sent `seq`: one `interval` before its "no answer yet" line if it has one
        (on a loaded machine ping falls behind its schedule), else one every `interval` from
        the start."""
        if seq in self.unanswered:
            return self.unanswered[seq] - self.interval
        return self.started + (seq - 1) * self.interval

    def lost(self, since: float = 0.0, until: float = float("inf")) -> list[int]:
        """Sequence numbers sent in [since, until] that got no reply (the last second of
        pings, still in flight when ping stopped, is left out)."""
        last = self.sent - int(1 / self.interval)
        return [q for q in range(1, last + 1)
                if since <= self.sent_at(q) <= until and q not in self.replies]
