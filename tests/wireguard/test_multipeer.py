"""One device with many peers: handshakes routed by the initiator's static key, cryptokey
routing by allowed IPs in both directions, peer removal."""

from __future__ import annotations

import pytest

from meshguard.testing.clock import ManualClock
from meshguard.testing.rng import SeededRng
from meshguard.wireguard.actions import HandshakeCompleted
from meshguard.wireguard.device import Device

from .sim import Node, SimNet, ipv4_packet, ipv6_packet, make_key

N = 12


def _star(seed: int = 1, loss: float = 0.0) -> tuple[SimNet, Node, list[Node]]:
    clock = ManualClock()
    net = SimNet(clock, seed=seed, loss=loss, jitter=0.02 if loss else 0.0)
    hk = make_key(1000)
    hub = net.add(Device(SeededRng(1000), hk), ("192.0.2.100", 51820))
    spokes = []
    for i in range(N):
        k = make_key(2000 + i)
        dev = Device(SeededRng(2000 + i), k)
        ep = (f"192.0.2.{i + 1}", 51820)
        ph = dev.add_peer(hk.public_key)
        ph.endpoint = hub.endpoint
        dev.set_allowed_ips(ph, ["10.0.0.0/16", "fd00::/64"])  # everything via the hub
        ps = hub.device.add_peer(k.public_key)
        hub.device.set_allowed_ips(ps, [f"10.0.{i + 1}.0/24", f"fd00::{i + 1:x}/128"])
        spokes.append(net.add(dev, ep))
    return net, hub, spokes


def _v6(i: int) -> bytes:
    return bytes.fromhex("fd00" + "00" * 12 + f"{i:04x}")


def test_star_routes_each_spoke() -> None:
    net, hub, spokes = _star()
    for i, s in enumerate(spokes):
        net.send(s, ipv4_packet(f"10.0.{i + 1}.7", "10.0.0.1", bytes([i])))
    net.run_for(1.0)
    assert sorted(p[20] for p in hub.tun) == list(range(N))
    assert sum(isinstance(e, HandshakeCompleted) for e in hub.events) == N
    for i in range(N):
        net.send(hub, ipv4_packet("10.0.0.1", f"10.0.{i + 1}.9", bytes([100 + i])))
        net.send(hub, ipv6_packet(_v6(0xFFFF), _v6(i + 1), bytes([200 + i])))
    net.run_for(1.0)
    for i, s in enumerate(spokes):
        assert [p[-1] for p in s.tun] == [100 + i, 200 + i]
    # a spoke cannot send with another spoke's address
    net.send(spokes[0], ipv4_packet("10.0.2.7", "10.0.0.1", b"spoof"))
    net.run_for(1.0)
    assert hub.device.counters.bad_source == 1


def test_removed_peer_is_refused() -> None:
    net, hub, spokes = _star()
    net.send(spokes[3], ipv4_packet("10.0.4.1", "10.0.0.1", b"x"))
    net.run_for(1.0)
    assert len(hub.tun) == 1
    pub = spokes[3].device.public_key
    assert pub is not None
    hub.device.remove_peer(pub)
    assert hub.device.route(bytes([10, 0, 4, 1])) is None
    net.send(spokes[3], ipv4_packet("10.0.4.1", "10.0.0.1", b"y"))
    net.run_for(1.0)
    assert len(hub.tun) == 1
    assert hub.device.counters.unknown_index == 1  # its keypair is gone
    net.run_for(30.0)  # the spoke re-handshakes: the hub no longer knows its key
    assert hub.device.counters.unknown_peer >= 1


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_star_under_loss_and_reordering(seed: int) -> None:
    net, hub, spokes = _star(seed=seed, loss=0.15)
    sent = 0
    for rnd in range(40):
        for i, s in enumerate(spokes):
            net.send(s, ipv4_packet(f"10.0.{i + 1}.7", "10.0.0.1", bytes([i, rnd])))
            sent += 1
        net.run_for(0.5)
    net.run_for(20.0)
    got = {(p[20], p[21]) for p in hub.tun}
    assert len(got) == len(hub.tun)  # no duplicates
    assert len(got) > 0.7 * sent
    for i in range(N):  # every spoke eventually got through
        assert any(g[0] == i for g in got)
    c = hub.device.counters
    assert c.replay == c.bad_auth == c.bad_source == 0
