"""Metrics of a simulated mesh (real SWIM cores and WireGuard Devices, virtual time): the
report is daemon/status.py's `build_status`, as the daemon builds it, rendered by the
exporter (daemon/metrics_exporter.py) and parsed with prometheus_client's parser. Tunnels and
bytes agree with `status`, bytes grow with traffic, gossip is counted by type both ways, and
forged gossip is a drop that changes nothing (docs/metrics.md)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from meshguard.daemon.daemon_config import DaemonConfig
from meshguard.daemon.metrics_exporter import MetricsExporter
from meshguard.daemon.status import build_status
from meshguard.mesh.swim_port import SwimPort
from meshguard.wire.control import StatusReport
from meshguard.wire.gossip import PING

from .helpers import Net, SimNode

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def status_of(net: Net, sn: SimNode) -> StatusReport:
    port = sn.node.membership
    assert isinstance(port, SwimPort)
    c = net.clock
    return build_status(cfg=DaemonConfig("mg0", 51821, []), node=sn.node, membership=port,
                        name=sn.name, started_at=c.wall(), wall=c.wall(), kernel_stats=None,
                        runner_counters={}, dns_counters=None, now=c.monotonic())


def scrape(net: Net, sn: SimNode) -> tuple[Samples, StatusReport]:
    rep = status_of(net, sn)

    async def source() -> StatusReport:
        return rep

    text = asyncio.run(MetricsExporter(source, net.clock).render()).decode()
    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out, rep


def value(got: Samples, name: str, default: float | None = None, **labels: str) -> float:
    v = got.get((name, frozenset(labels.items())), default)
    assert v is not None, f"no {name}{labels}"
    return v


def labels_of(sn: SimNode) -> dict[str, str]:
    """The (peer, key) labels of a member without a name in the others' trust stores."""
    short = base64.b64encode(sn.key).decode()[:8]
    return {"peer": short, "key": short}


@pytest.fixture(scope="module")
def mesh() -> Iterator[tuple[Net, list[SimNode]]]:
    net = Net(11)
    nodes = [net.add(n, f"192.0.2.{i + 1}") for i, n in enumerate(("a", "b", "c"))]
    for x in nodes:
        x.trust.keys.update(y.key for y in nodes if y is not x)
    net.join(nodes[0], [])
    for n in nodes[1:]:
        net.join(n, [nodes[0]])
    net.run(8.0)
    yield net, nodes


def test_tunnels_and_bytes_agree_with_status_and_grow_with_traffic(
        mesh: tuple[Net, list[SimNode]]) -> None:
    net, (a, b, _c) = mesh
    for _ in range(5):
        net.send_ip(a, b)
        net.send_ip(b, a)
    net.run(1.0)
    got, rep = scrape(net, a)
    assert value(got, "meshguard_members", state="alive") == 2
    assert value(got, "meshguard_peers", path="direct") == 2
    for m in rep.members:  # the same numbers as `status`
        lab = {"peer": m.name or m.identity_key[:8], "key": m.identity_key[:8]}
        assert value(got, "meshguard_peer_receive_bytes_total", **lab) == m.rx_bytes
        assert value(got, "meshguard_peer_transmit_bytes_total", **lab) == m.tx_bytes
    to_b = labels_of(b)
    before = value(got, "meshguard_peer_transmit_bytes_total", **to_b)
    age = value(got, "meshguard_peer_handshake_age_seconds", **to_b)
    hs = next(m.last_handshake for m in rep.members if m.identity_key.startswith(to_b["key"]))
    assert before > 0 and hs is not None and age == pytest.approx(net.clock.wall() - hs)
    for _ in range(20):
        net.send_ip(a, b)
    net.run(1.0)
    after, _ = scrape(net, a)
    assert value(after, "meshguard_peer_transmit_bytes_total", **to_b) >= before + 20 * 32


def test_gossip_is_counted_by_type_both_ways(mesh: tuple[Net, list[SimNode]]) -> None:
    net, nodes = mesh
    rx = {t: 0.0 for t in ("ping", "ack", "join", "join_ack", "sync_req")}
    tx = dict(rx)
    for sn in nodes:
        got, _ = scrape(net, sn)
        for t in rx:
            rx[t] += value(got, "meshguard_gossip_messages_received_total", type=t)
            tx[t] += value(got, "meshguard_gossip_messages_sent_total", type=t)
    # no loss in the simulation: what was accepted was sent, and the steady traffic flows
    assert all(rx[t] <= tx[t] for t in rx), (rx, tx)
    assert rx["ping"] > 10 and rx["ack"] > 10 and tx["join"] == 2 and rx["join"] == 2
    assert rx["join_ack"] == 2


def test_forged_gossip_is_a_drop_and_changes_nothing(mesh: tuple[Net, list[SimNode]]) -> None:
    net, (a, b, _c) = mesh
    ping = None
    for _ in range(400):  # catch one Ping from a to b on the wire
        net.step()
        ping = next((d for dst, d, src in net.queue
                     if src == a.ep and dst == b.ep and d[0] == PING), None)
        if ping is not None:
            break
    assert ping is not None
    net.run(1.0)
    before, rep_before = scrape(net, b)
    c = net.clock
    forged = ping[:-1] + bytes([ping[-1] ^ 1])  # the MAC no longer matches
    assert b.node.receive(c.monotonic(), c.wall(), forged, a.ep) == []
    after, rep_after = scrape(net, b)
    assert value(after, "meshguard_drops_total", 0, reason="swim_bad_mac") == value(
        before, "meshguard_drops_total", 0, reason="swim_bad_mac") + 1
    assert value(after, "meshguard_gossip_messages_received_total", type="ping") == value(
        before, "meshguard_gossip_messages_received_total", type="ping")
    assert [(m.identity_key, m.state) for m in rep_after.members] == [
        (m.identity_key, m.state) for m in rep_before.members]
