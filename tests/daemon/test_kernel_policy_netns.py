"""Kernel mode enforces the policy with nftables (daemon/kernel_policy.py, policy/nft_rules.py)
on a real WireGuard interface. This machine has no WireGuard module, so wireguard-go stands in
for the kernel device (as in test_kernel_punch_netns.py): nftables filters its interface as it
would the kernel's. The kernel-mode node is A's `KernelRunner` (its kernel device recorded,
its policy applied for real with nft inside A's namespace); the tunnel itself is set up with
`wg set` as the runner would over netlink.

    LAN 10.97.0.2 ── veth ── A (wgA 10.99.0.1, fd99::1) ── veth ── B (wgB 10.99.0.2, fd99::2)

A's policy for B: allow tcp 8080, deny tcp 8081, allow udp 7000, default deny. B reaches 8080
and not 8081 over IPv4 and IPv6, ping passes, datagrams larger than the tunnel's MTU arrive as
fragments and are judged whole, what A forwards to its LAN is judged as what it receives, and
A's own connections to B's port 9000 get their replies. The
counters move, B's packets are judged by another chain once its allowed IPs leave the device,
and closing the runner's policy leaves no nft table behind.
"""

from __future__ import annotations

import base64
import ipaddress
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from meshguard.clock import SystemClock
from meshguard.daemon.daemon_config import DaemonConfig
from meshguard.daemon.kernel_policy import KernelPolicy
from meshguard.daemon.kernel_runner import KernelRunner
from meshguard.dataplane.policy_filter import PolicyCounters
from meshguard.mesh.actions import PeerConfig, PeerDown, PeerUp
from meshguard.policy.nft_rules import table_name
from meshguard.policy.table import (
    ALLOW_ALL,
    PROTO_TCP,
    PROTO_UDP,
    Chain,
    FlatRule,
    PolicyTable,
    RuleInfo,
)
from meshguard.testing.netns import (
    Namespace,
    netns_skip_reason,
    start_userspace_wg,
    unique_name,
    veth_pair,
)

from .helpers import RecordingKernel

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(netns_skip_reason() is not None, reason=str(netns_skip_reason())),
    pytest.mark.skipif(shutil.which("nft") is None, reason="needs nft"),
    pytest.mark.skipif(shutil.which("wireguard-go") is None or shutil.which("wg") is None,
                       reason="needs wireguard-go and wg"),
]

ALLOWED, DENIED, B_SERVICE = 8080, 8081, 9000
ECHO = 8082  # a long-lived connection B opens to A
UDP_ALLOWED, UDP_DENIED = 7000, 7001  # 7001 falls to the default
A4, B4, A6, B6 = "10.99.0.1", "10.99.0.2", "fd99::1", "fd99::2"
LAN_NET, LAN_HOST = "10.97.0.0/24", "10.97.0.2"  # behind A

SERVER = """
import socket, sys, selectors
sel = selectors.DefaultSelector()
for port in map(int, sys.argv[1:]):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", port)); s.listen(16); sel.register(s, selectors.EVENT_READ)
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        c, _ = key.fileobj.accept(); c.sendall(b"ok"); c.close()
"""

UDP_SERVER = """
import socket, sys, selectors
sel = selectors.DefaultSelector()
for port in map(int, sys.argv[1:]):
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port)); sel.register(s, selectors.EVENT_READ)
while True:
    for key, _ in sel.select():
        data, peer = key.fileobj.recvfrom(65535); key.fileobj.sendto(str(len(data)).encode(), peer)
"""

UDP_CLIENT = """
import socket, sys
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM); s.settimeout(1.0)
s.sendto(b"x" * int(sys.argv[3]), (sys.argv[1], int(sys.argv[2])))
try:
    print(s.recv(16).decode())
except socket.timeout:
    print("timeout")
"""

CLIENT = """
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1.0)
    print(s.recv(2).decode() or "empty")
except socket.timeout:
    print("timeout")
except OSError as e:
    print(type(e).__name__)
"""


def datagram(ns: Namespace, host: str, port: int, size: int) -> str:
    """Send one UDP datagram of `size` bytes; the length the server saw, or "timeout"."""
    argv = [sys.executable, "-c", UDP_CLIENT, host, str(port), str(size)]
    return ns.run(argv, timeout=20).stdout.strip()


ECHO_SERVER = """
import socket, sys, threading
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(4)
def echo(c):
    while (data := c.recv(64)):
        c.sendall(data)
while True:
    c, _ = s.accept(); threading.Thread(target=echo, args=(c,), daemon=True).start()
"""

LONG_CLIENT = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1.5)
for line in sys.stdin:
    s.sendall(b"x")
    try:
        print(s.recv(1).decode() or "closed", flush=True)
    except socket.timeout:
        print("timeout", flush=True)
"""


def counts(w: World) -> PolicyCounters:
    c = w.runner.policy_counters()
    assert c is not None, "the policy is not in force"
    return c


def connect(ns: Namespace, host: str, port: int) -> str:
    return ns.run([sys.executable, "-c", CLIENT, host, str(port)], timeout=20).stdout.strip()


@dataclass
class World:
    a: Namespace
    b: Namespace
    wg_a: str
    b_key: bytes
    runner: KernelRunner
    table: PolicyTable

    def nft_tables(self) -> str:
        return self.a.run(["nft", "list", "tables"]).stdout

    def b_up(self) -> None:
        nets = (ipaddress.ip_network(f"{B4}/32"), ipaddress.ip_network(f"{B6}/128"))
        self.runner.peers_changed([PeerUp(PeerConfig(self.b_key, b"\x02" * 32, None, nets, 0))])


def _wg(ns: Namespace, ifname: str, addr4: str, addr6: str) -> str:
    start_userspace_wg(ns, ifname)
    priv = ns.run(["wg", "genkey"]).stdout.strip()
    pub = ns.run(["wg", "pubkey"], input=priv + "\n").stdout.strip()
    ns.run(["wg", "set", ifname, "private-key", "/dev/stdin", "listen-port", "51821"],
           input=priv + "\n")
    ns.add_address(ifname, f"{addr4}/24")
    ns.add_address(ifname, f"{addr6}/64")
    ns.link_up(ifname)
    return pub


def policy_for(b_key: bytes) -> PolicyTable:
    """B: allow tcp 8080, deny tcp 8081, allow udp 7000, default deny; everyone else (the
    fallback): deny."""
    for_b = Chain((FlatRule(True, PROTO_TCP, ALLOWED, ALLOWED, 0),
                   FlatRule(False, PROTO_TCP, DENIED, DENIED, 1),
                   FlatRule(True, PROTO_UDP, UDP_ALLOWED, UDP_ALLOWED, 2)), False, 3)
    others = Chain((), False, 4)
    rules = (RuleInfo("services/peer/b.policy", 1, f"allow tcp {ALLOWED}"),
             RuleInfo("services/peer/b.policy", 2, f"deny tcp {DENIED}"),
             RuleInfo("services/peer/b.policy", 3, f"allow udp {UDP_ALLOWED}"),
             RuleInfo("services/default", 0, "deny"), RuleInfo("services/default", 0, "deny"))
    return PolicyTable(True, (others, for_b), {b_key: 1}, 0, rules)


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with Namespace.create("mgkp") as a, Namespace.create("mgkp") as b, \
            Namespace.create("mgkp") as lan:
        link = veth_pair(a, b, "10.98.0.0/24", "fd98::/64")
        lan_link = veth_pair(a, lan, f"{LAN_NET}", "fd97::/64")  # A routes for the LAN
        a.run(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
        lan.run(["ip", "route", "add", "default", "via", str(lan_link.a_ipv4)])
        wg_a, wg_b = unique_name("wgA"), unique_name("wgB")
        pub_a, pub_b = _wg(a, wg_a, A4, A6), _wg(b, wg_b, B4, B6)
        a.run(["wg", "set", wg_a, "peer", pub_b, "endpoint", f"{link.b_ipv4}:51821",
               "allowed-ips", f"{B4}/32,{B6}/128"])
        b.run(["wg", "set", wg_b, "peer", pub_a, "endpoint", f"{link.a_ipv4}:51821",
               "allowed-ips", f"{A4}/32,{A6}/128,{LAN_NET}"])
        b.run(["ip", "route", "add", LAN_NET, "dev", wg_b])
        a.popen([sys.executable, "-c", SERVER, str(ALLOWED), str(DENIED)])
        a.popen([sys.executable, "-c", UDP_SERVER, str(UDP_ALLOWED), str(UDP_DENIED)])
        b.popen([sys.executable, "-c", SERVER, str(B_SERVICE)])
        lan.popen([sys.executable, "-c", SERVER, str(ALLOWED), str(DENIED)])
        runner = KernelRunner(DaemonConfig(wg_a, 51821, [], kernel=True, env={}),
                              SystemClock(), lambda actions: None)
        runner.kernel = RecordingKernel(wg_a)
        runner.policy = KernelPolicy(wg_a, nft=a.argv(["nft"]))
        b_key = base64.b64decode(pub_b)
        w = World(a, b, wg_a, b_key, runner, policy_for(b_key))
        assert a.ping(B4, wait=2.0) and b.ping(A6, wait=2.0)  # the tunnel works, no policy
        w.b_up()
        runner.set_policy(w.table)
        try:
            yield w
        finally:
            runner.policy.close()


def test_one_port_passes_and_another_is_dropped_v4_and_v6(world: World) -> None:
    assert table_name(world.wg_a) in world.nft_tables()
    for host in (A4, A6):
        assert connect(world.b, host, ALLOWED) == "ok", host
        assert connect(world.b, host, DENIED) == "timeout", host
        assert world.b.ping(host), host  # ICMP passes


def test_what_the_node_forwards_is_judged_too(world: World) -> None:
    # B reaches the LAN behind A through A (a route A carries): the forward hook's rules
    assert connect(world.b, LAN_HOST, ALLOWED) == "ok"
    assert connect(world.b, LAN_HOST, DENIED) == "timeout"


def test_fragmented_datagrams_are_judged_whole(world: World) -> None:
    # 4000 bytes leave B's tunnel as fragments; conntrack reassembles them before the rules
    for host in (A4, A6):
        assert datagram(world.b, host, UDP_ALLOWED, 4000) == "4000", host
        assert datagram(world.b, host, UDP_DENIED, 4000) == "timeout", host
        assert datagram(world.b, host, UDP_DENIED, 100) == "timeout", host


def test_replies_to_flows_the_node_opened_pass(world: World) -> None:
    # B's port 9000 is no service of A's: only as replies do its packets pass
    for host in (B4, B6):
        assert connect(world.a, host, B_SERVICE) == "ok", host
    assert connect(world.b, A4, B_SERVICE) != "ok"  # nor does B open a flow to A on it


def test_the_counters_move(world: World) -> None:
    before = counts(world)
    assert connect(world.b, A4, ALLOWED) == "ok"
    assert connect(world.b, A6, DENIED) == "timeout"
    assert connect(world.a, B4, B_SERVICE) == "ok"
    after = counts(world)
    assert len(after.rule_packets) == len(world.table.rules)
    assert after.rule_packets[0] > before.rule_packets[0]  # allow tcp 8080
    assert after.rule_packets[1] > before.rule_packets[1]  # deny tcp 8081: B's SYNs
    assert after.reasons["reply"] > before.reasons["reply"]
    assert after.reasons["policy"] > before.reasons["policy"]
    assert after.reasons["allowed"] > before.reasons["allowed"]
    assert after.rule_packets[4] == before.rule_packets[4]  # nobody else spoke


def test_the_source_names_the_peer_and_counters_survive_a_new_set_of_sources(
        world: World) -> None:
    before = counts(world)
    world.runner.peers_changed([PeerDown(world.b_key, b"\x02" * 32, "gone")])
    # B's address is in no peer's sources now: the fallback chain (deny) judges it
    assert connect(world.b, A4, ALLOWED) == "timeout"
    mid = counts(world)
    assert mid.rule_packets[0] >= before.rule_packets[0]  # carried over the replacement
    assert mid.rule_packets[4] > before.rule_packets[4]
    world.b_up()
    assert connect(world.b, A4, ALLOWED) == "ok"


def test_a_flow_the_peer_opened_ends_when_the_rules_stop_allowing_it(world: World) -> None:
    # as in userspace mode: only replies to flows this node opened pass whatever the rules
    # say; B's own connection is judged on every packet (an `established` accept would let it
    # live on after the deny)
    def table(allow: bool) -> PolicyTable:
        verb = "allow" if allow else "deny"
        rules = (RuleInfo("services/peer/b.policy", 1, f"{verb} tcp {ECHO}"),
                 RuleInfo("services/default", 0, "deny"))
        return PolicyTable(True, (Chain((), False, 1),
                                  Chain((FlatRule(allow, PROTO_TCP, ECHO, ECHO, 0),), False, 1)),
                           {world.b_key: 1}, 0, rules)

    world.a.popen([sys.executable, "-c", ECHO_SERVER, str(ECHO)])
    world.runner.set_policy(table(True))
    client = world.b.popen([sys.executable, "-c", LONG_CLIENT, A4, str(ECHO)],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert client.stdin is not None and client.stdout is not None

    def exchange() -> str:
        assert client.stdin is not None and client.stdout is not None
        client.stdin.write(b"\n")
        client.stdin.flush()
        return client.stdout.readline().decode().strip()

    try:
        for _ in range(50):  # the echo server may not listen yet: the client then exits
            if client.poll() is None and exchange() == "x":
                break
            client = world.b.popen([sys.executable, "-c", LONG_CLIENT, A4, str(ECHO)],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            time.sleep(0.1)
        assert exchange() == "x"
        world.runner.set_policy(table(False))
        assert exchange() == "timeout"
    finally:
        client.kill()
        world.runner.set_policy(world.table)


def test_no_policy_and_close_leave_no_table(world: World) -> None:
    name = table_name(world.wg_a)
    world.runner.set_policy(ALLOW_ALL)
    assert name not in world.nft_tables()
    assert connect(world.b, A4, DENIED) == "ok"  # no policy: everything passes
    world.runner.set_policy(world.table)
    assert name in world.nft_tables()
    # a daemon that was killed leaves its table; the next one's start removes it
    KernelPolicy(world.wg_a, nft=world.a.argv(["nft"])).close()
    assert name not in world.nft_tables()
    world.runner.set_policy(world.table)
    assert name in world.nft_tables()
    world.runner._policy_close("the policy table")  # what `down` runs
    assert name not in world.nft_tables()
    assert not world.runner.policy.installed
