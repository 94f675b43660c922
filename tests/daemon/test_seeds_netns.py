"""Seeds without a fixed IP, with real daemons in namespaces (marked netns; docs/seeds.md):
a seed host name whose address changes, TXT seeds from `--dns`, and a LAN of `--mdns` nodes
that need no seed at all. The DNS server is dnsmasq in a namespace of its own."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time

import pytest

from meshguard.discovery.mdns_info import instance_name
from meshguard.testing.netns import netns_skip_reason

from .helpers import REPO, run_in_namespace
from .meshnet import LanDns, MeshLan, Node, move_node, status_json, trust_all

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(netns_skip_reason() is not None, reason=str(netns_skip_reason())),
]


def _joined_at(node: Node, other: Node, ip: str) -> bool:
    m = node.member(other)
    return (m is not None and m["state"] == "alive" and bool(m["tunnel"])
            and m["endpoint"] == f"{ip}:{other.port}")


def test_seed_name_whose_address_changes(tmp_path: pytest.TempPathFactory) -> None:
    with MeshLan(tmp_path) as lan:  # type: ignore[arg-type]
        # a TTL of 5 minutes: only "every seed has failed" can make the node look again soon
        dns = LanDns(lan, ttl=300)
        seed, node = lan.add_node("seed"), lan.add_node("node")
        trust_all([seed, node])
        node.extra_env.update(dns.env)
        dns.set_host("seed.test", seed.ip)
        seed.up()
        node.up(None, "--seed", "seed.test:51821", "--seed", "nowhere.test:51821")
        lan.wait(lambda: _joined_at(node, seed, seed.ip), "node to join seed.test", 20)
        assert node.ping(seed, count=1)
        old_ip = seed.ip
        # the seed moves: it leaves, its host gets another address, the name follows
        assert seed.proc is not None
        seed.ns.stop(seed.proc)
        move_node(seed, "10.210.0.50")
        dns.set_host("seed.test", seed.ip)
        t0 = time.monotonic()
        seed.up()  # the seed has no seeds of its own: only the node can find it again
        lan.wait(lambda: _joined_at(node, seed, seed.ip), "node to rejoin at the new address",
                 45)
        rejoin = time.monotonic() - t0
        lan.wait(lambda: node.ping(seed, count=1), "a ping over the rejoined tunnel", 10)
        seeds = status_json(node)["seeds"]
        by_name = {s["name"]: s for s in seeds["sources"]}
        assert by_name["seed.test:51821"]["addresses"] == [f"{seed.ip}:51821"]
        assert old_ip != seed.ip
        # the unresolvable name is a warning with the name, and a source that keeps retrying
        bad = by_name["nowhere.test:51821"]
        assert bad["addresses"] == [] and "nowhere.test" in bad["error"]
        assert bad["next_lookup"] is not None
        assert "nowhere.test" in (node.log.read_text() if node.log else "")
        text = node.cli("status", "--interface", node.iface).stdout
        assert "host seed.test:51821: 10.210.0.50:51821" in text
        print(f"rejoin after the seed moved: {rejoin:.1f} s")


def test_txt_seed(tmp_path: pytest.TempPathFactory) -> None:
    with MeshLan(tmp_path) as lan:  # type: ignore[arg-type]
        seed, node = lan.add_node("seed"), lan.add_node("node")
        dns = LanDns(lan, [("_meshguard._udp.example.test", f"meshguard={seed.ip}:51821"),
                           ("_meshguard._udp.example.test", "meshguard=not-an-address"),
                           ("_meshguard._udp.example.test", "meshguard=[fd00:210::99]:51821"),
                           ("_meshguard._udp.empty.test", "v=spf1 -all")])
        trust_all([seed, node])
        node.extra_env.update(dns.env)
        seed.up()
        node.up(None, "--dns", "example.test", "--dns", "empty.test", "--dns", "nx.test")
        lan.wait(lambda: _joined_at(node, seed, seed.ip), "node to join through TXT", 20)
        assert node.ping(seed, count=1)
        by_name = {s["name"]: s for s in status_json(node)["seeds"]["sources"]}
        good = by_name["example.test"]
        assert good["source"] == "dns"
        assert sorted(good["addresses"]) == sorted([f"{seed.ip}:51821", "[fd00:210::99]:51821"])
        assert any("meshguard=not-an-address" in w for w in good["warnings"])
        assert "no meshguard=IP:PORT record" in by_name["empty.test"]["error"]
        assert "NXDOMAIN" in by_name["nx.test"]["error"]
        log = node.log.read_text() if node.log else ""
        assert "empty.test" in log and "nx.test" in log and "not-an-address" in log
        assert node.proc is not None and node.proc.poll() is None


def test_mdns_only_lan(tmp_path: pytest.TempPathFactory) -> None:
    with MeshLan(tmp_path) as lan:  # type: ignore[arg-type]
        nodes = [lan.add_node(n) for n in ("a", "b", "c")]
        x = lan.add_node("x")  # advertises itself too, but nobody trusts it
        zig = lan.add_node("zig", keys=False)  # asks as the original meshguard asks
        trust_all(nodes)
        for n in nodes:
            x.trust(n)
        a = nodes[0]
        # a host on the LAN already holds a's instance name, advertising a bogus address
        squatter = zig.ns.popen(
            [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
             "from tests.daemon import helpers; helpers.mdns_squat(*sys.argv[2:])",
             str(REPO), zig.ip, instance_name(None, a.identity), "10.210.0.99:51821"],
            stdout=subprocess.PIPE)
        assert squatter.stdout is not None and b"registered" in squatter.stdout.readline()
        t0 = time.monotonic()
        for n in [*nodes, x]:
            n.up(None, "--mdns", wait=False)
        for n in [*nodes, x]:
            lan.wait(n.alive_and_answering, f"{n.name} to come up", 20)
        pairs = list(itertools.permutations(nodes, 2))
        lan.wait(lambda: all(a.tunnel_to(b) for a, b in pairs), "a full mesh by mDNS", 40)
        formed = time.monotonic() - t0
        for p, q in pairs:
            lan.wait(lambda p=p, q=q: p.ping(q, count=1), f"{p.name} -> {q.name} ping", 10)

        def mdns_addresses(n: Node) -> list[str]:
            st = status_json(n)
            return [a for s in st["seeds"]["sources"] if s["source"] == "mdns"
                    for a in s["addresses"]]

        # x is found and joined, and so is the squatter's bogus address...
        lan.wait(lambda: {f"{x.ip}:51821", "10.210.0.99:51821"} <= set(mdns_addresses(a)),
                 "a to find x and the squatter", 20)
        time.sleep(1.0)
        for n in nodes:  # ...but an advertisement admits no one
            m = n.member(x)
            assert m is None or (not m["trusted"] and not m["tunnel"]), m
        # the clash is a warning, and a's service lives on under a new name
        renamed = f"{instance_name(None, a.identity)}-2._meshguard"
        lan.wait(lambda: renamed in (a.log.read_text() if a.log else ""), "a's rename", 10)
        assert "is taken on this LAN; registered as" in (a.log.read_text() if a.log else "")
        # the original's seed query is answered by every node with its seed record
        answers = run_in_namespace(zig.ns, "mdns_seed_query", zig.ip)
        want = sorted(f"meshguard={n.ip}:51821" for n in [*nodes, x])
        assert answers == want, answers
        print(f"mDNS mesh of 3 formed in {formed:.1f} s")


def test_mdns_port_held_by_another_responder(tmp_path: pytest.TempPathFactory) -> None:
    with MeshLan(tmp_path) as lan:  # type: ignore[arg-type]
        a = lan.add_node("a")
        holder = a.ns.popen([sys.executable, "-c",
                             "import socket,time;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
                             "s.bind(('0.0.0.0',5353));print('held',flush=True);time.sleep(60)"],
                            stdout=subprocess.PIPE)
        assert holder.stdout is not None and b"held" in holder.stdout.readline()
        a.up(None, "--mdns", "--open")
        log = a.log.read_text() if a.log else ""
        assert "mDNS: cannot" in log, log
        assert a.proc is not None and a.proc.poll() is None
