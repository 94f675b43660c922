"""Two devices through an in-memory link: handshake, data, rekey, keepalives, failures."""

from __future__ import annotations

from meshguard.wireguard.actions import HandshakeCompleted

from .sim import A_IP, B_IP, ipv4_packet, make_pair


def test_handshake_and_data_both_ways() -> None:
    net, a, b, pb, pa = make_pair()
    p1 = ipv4_packet(A_IP, B_IP, b"hello")
    net.send(a, p1)
    net.run_for(1.0)
    assert b.tun == [p1]
    assert any(isinstance(e, HandshakeCompleted) for e in a.events)
    assert any(isinstance(e, HandshakeCompleted) for e in b.events)
    p2 = ipv4_packet(B_IP, A_IP, b"world")
    net.send(b, p2)
    net.run_for(1.0)
    assert a.tun == [p2]
    assert pa.endpoint == a.endpoint
    assert pb.last_handshake_wall > 0 and pa.last_handshake_wall > 0
    assert a.device.counters.dropped() == 0
    assert b.device.counters.dropped() == 0
