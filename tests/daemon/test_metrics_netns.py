"""`up --metrics`: real daemons in network namespaces scraped over HTTP during real traffic,
the text parsed with prometheus_client's own parser (marked netns; docs/metrics.md).

One module-scoped LAN of three daemons, all with `--metrics 9586`. In b's namespace another
process holds 127.0.0.1:9586 before b starts: b warns once and runs on without metrics.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from prometheus_client.parser import text_string_to_metric_families

from meshguard.testing.netns import netns_skip_reason

from .meshnet import PY, MeshLan, Node, trust_all

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(netns_skip_reason() is not None, reason=str(netns_skip_reason())),
]

PORT = 9586
BUSY_LINE = f"metrics: cannot listen on 127.0.0.1:{PORT}: address in use; metrics are off"
SCRAPE = ("import sys, urllib.request\n"
          "r = urllib.request.urlopen(sys.argv[1], timeout=5)\n"
          "sys.stdout.write(r.headers['Content-Type'] + '\\n' + r.read().decode())\n")
HOLD = ("import socket, sys, time\n"
        "s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen()\n"
        "time.sleep(600)\n")
SINK = ("import socket, sys\n"
        "s = socket.socket(); s.bind((sys.argv[1], 7001)); s.listen(); c, _ = s.accept()\n"
        "while c.recv(65536): pass\n")
SEND = ("import socket, sys, time\n"
        "for _ in range(50):\n"
        "    try:\n"
        "        c = socket.create_connection((sys.argv[1], 7001), timeout=5); break\n"
        "    except OSError: time.sleep(0.1)\n"
        "c.sendall(b'x' * int(sys.argv[2])); c.close()\n")
GARBAGE = ("import socket, sys\n"
           "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
           "for i in range(int(sys.argv[3])): s.sendto(b'\\xff' * 64, (sys.argv[1], "
           "int(sys.argv[2])))\n")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass
class Mesh:
    lan: MeshLan
    a: Node
    b: Node
    c: Node


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    with MeshLan(tmp_path_factory.mktemp("metrics")) as lan:
        a, b, c = lan.add_node("a"), lan.add_node("b"), lan.add_node("c")
        trust_all([a, b, c])
        b.ns.popen([PY, "-c", HOLD, str(PORT)])  # killed when the namespace closes
        lan.wait(lambda: f"127.0.0.1:{PORT}" in b.ns.run(["ss", "-ltn"]).stdout,
                 "the port holder to listen", 10)
        a.up(None, "--metrics", str(PORT))
        b.up([a], "--metrics", str(PORT), wait=False)
        c.up([a], "--metrics", f"127.0.0.1:{PORT}", wait=False)
        for n in (b, c):
            lan.wait(n.alive_and_answering, f"{n.name} up", 20)
        for x, y in itertools.permutations((a, b, c), 2):
            lan.wait(lambda x=x, y=y: x.tunnel_to(y), f"{x.name} -> {y.name} tunnel", 25)
        yield Mesh(lan, a, b, c)


def scrape(node: Node) -> Samples:
    res = node.ns.run([PY, "-c", SCRAPE, f"http://127.0.0.1:{PORT}/metrics"], timeout=20)
    content_type, _, text = res.stdout.partition("\n")
    assert content_type.startswith("text/plain"), content_type
    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(got: Samples, name: str, **labels: str) -> float:
    return got[(name, frozenset(labels.items()))]


def peer_value(got: Samples, name: str, peer: str) -> float:
    vals = [v for (n, lab), v in got.items() if n == name and ("peer", peer) in lab]
    assert len(vals) == 1, f"{name}{{peer={peer}}}: {vals}"
    return vals[0]


def total(got: Samples, name: str) -> float:
    return sum(v for (n, _), v in got.items() if n == name)


def test_members_tunnels_handshakes_and_gossip_by_type(mesh: Mesh) -> None:
    got = scrape(mesh.a)
    assert value(got, "meshguard_members", state="alive") == 2
    assert value(got, "meshguard_members", state="dead") == 0
    assert value(got, "meshguard_peers", path="direct") == 2
    assert value(got, "meshguard_peers", path="relayed") == 0
    info = {dict(lab)["peer"]: dict(lab) for (n, lab), _ in got.items()
            if n == "meshguard_peer_info"}
    assert set(info) == {"b", "c"} and info["b"]["mesh_ipv4"] == mesh.b.mesh_v4
    assert info["b"]["state"] == "alive" and info["b"]["path"] == "direct"
    assert 0 <= peer_value(got, "meshguard_peer_handshake_age_seconds", "b") < 120
    build = next(dict(lab) for (n, lab), _ in got.items() if n == "meshguard_build_info")
    assert build["mode"] == "userspace" and build["interface"] == mesh.a.iface
    rx, tx = "meshguard_gossip_messages_received_total", "meshguard_gossip_messages_sent_total"
    assert value(got, rx, type="join") == 2  # b and c joined through a
    assert value(got, tx, type="join_ack") == 2
    # probes flow both ways (every SWIM period a Ping, answered by an Ack)
    mesh.lan.wait(lambda: min(value(g := scrape(mesh.a), rx, type="ping"),
                              value(g, rx, type="ack"), value(g, tx, type="ping"),
                              value(g, tx, type="ack")) > 0, "pings and acks counted", 15)
    assert value(scrape(mesh.c), tx, type="join") >= 1


def test_bytes_grow_with_ping_and_tcp_and_agree_with_status(mesh: Mesh) -> None:
    a, c = mesh.a, mesh.c  # (b serves no metrics)
    tx0 = peer_value(scrape(a), "meshguard_peer_transmit_bytes_total", "c")
    rx0 = peer_value(scrape(c), "meshguard_peer_receive_bytes_total", "a")
    assert a.ping(c, count=3)
    sink = c.ns.popen([PY, "-c", SINK, c.mesh_v4])
    size = 1 << 20
    a.ns.run([PY, "-c", SEND, c.mesh_v4, str(size)], timeout=30)
    sink.wait(20)
    mesh.lan.wait(lambda: peer_value(scrape(a), "meshguard_peer_transmit_bytes_total", "c")
                  >= tx0 + size, "a's bytes to c to grow by the TCP transfer", 10)
    mesh.lan.wait(lambda: peer_value(scrape(c), "meshguard_peer_receive_bytes_total", "a")
                  >= rx0 + size, "c's bytes from a to grow by the TCP transfer", 10)
    got = scrape(a)
    m = a.member(c)  # asked after the scrape: status can only be ahead
    assert m is not None
    sent = peer_value(got, "meshguard_peer_transmit_bytes_total", "c")
    assert sent <= m["tx_bytes"] < sent + size
    assert m["rx_bytes"] >= peer_value(got, "meshguard_peer_receive_bytes_total", "c")


def test_garbage_is_counted_as_drops_and_the_tunnels_carry_on(mesh: Mesh) -> None:
    a, b = mesh.a, mesh.b
    before = scrape(a)
    b.ns.run([PY, "-c", GARBAGE, a.ip, str(a.port), "25"])
    mesh.lan.wait(lambda: total(scrape(a), "meshguard_drops_total")
                  >= total(before, "meshguard_drops_total") + 25, "25 drops counted", 10)
    got = scrape(a)
    grown = {dict(lab)["reason"] for (n, lab), v in got.items() if n == "meshguard_drops_total"
             and v > before.get((n, lab), 0)}
    assert "garbage_dropped" in grown, grown
    assert b.ping(a) and a.ping(b)


def test_a_busy_metrics_port_is_one_warning_and_the_daemon_runs_on(mesh: Mesh) -> None:
    a, b = mesh.a, mesh.b
    assert b.log is not None
    lines = [ln for ln in b.log.read_text(errors="replace").splitlines() if "metrics" in ln]
    assert len(lines) == 1 and lines[0].endswith(BUSY_LINE), lines
    assert b.proc is not None and b.proc.poll() is None
    assert b.alive_and_answering()
    assert b.ping(a) and a.ping(b) and b.ping(mesh.c, v6=True)
