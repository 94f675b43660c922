"""Crossing initiations: both Devices start a handshake at once, each with a packet queued.

Both sessions must come out valid and both queued packets must be delivered after one round of
message exchange (initiations cross, responses cross, data follows), without any timer firing.
"""

from __future__ import annotations

from meshguard.wire import wireguard as w
from meshguard.wireguard.actions import HandshakeCompleted, SendDatagram, WriteTun
from meshguard.wireguard.constants import REKEY_TIMEOUT

from .sim import A_EP, A_IP, B_EP, B_IP, Node, SimNet, ipv4_packet, make_pair


def _sent(node: Node) -> list[int]:
    return [w.message_type(d) for d in node.sent]


def _crossed_pair() -> tuple[SimNet, Node, Node]:
    net, a, b, _pb, pa = make_pair(seed=8)
    pa.endpoint = A_EP  # both know each other's endpoint: both can initiate
    net.send(a, ipv4_packet(A_IP, B_IP, b"from a"))
    net.send(b, ipv4_packet(B_IP, A_IP, b"from b"))
    assert _sent(a) == [w.MESSAGE_INITIATION] and _sent(b) == [w.MESSAGE_INITIATION]
    return net, a, b


def test_crossing_initiations_deliver_both_queued_packets_in_one_round() -> None:
    net, a, b = _crossed_pair()
    # latency 10 ms: initiations arrive at 10 ms, responses at 20 ms, data at 30 ms
    net.run_for(0.05)
    assert [p[20:] for p in b.tun] == [b"from a"]
    assert [p[20:] for p in a.tun] == [b"from b"]
    for node in (a, b):
        assert _sent(node) == [w.MESSAGE_INITIATION, w.MESSAGE_RESPONSE, w.MESSAGE_TRANSPORT]
        assert node.device.counters.stale_response == 0
        assert node.device.counters.initiations_sent == 1  # no retransmission
        assert any(isinstance(e, HandshakeCompleted) for e in node.events)


def test_crossing_initiations_leave_both_sessions_usable() -> None:
    net, a, b = _crossed_pair()
    start = net.clock.now
    net.run_for(0.05)
    # more traffic both ways, long before any timer: nothing is queued, nothing dropped
    for i in range(3):
        net.send(a, ipv4_packet(A_IP, B_IP, b"a%d" % i))
        net.send(b, ipv4_packet(B_IP, A_IP, b"b%d" % i))
    net.run_for(0.05)
    assert [p[20:] for p in b.tun] == [b"from a", b"a0", b"a1", b"a2"]
    assert [p[20:] for p in a.tun] == [b"from b", b"b0", b"b1", b"b2"]
    for node in (a, b):
        assert node.device.counters.dropped() == 0
        assert all(not p.staged for p in node.device.peers)
        assert node.device.counters.initiations_sent == 1
    assert net.clock.now - start < REKEY_TIMEOUT


def test_response_overtaking_the_crossing_initiation() -> None:
    """A's initiation reaches B first; B, with a packet of its own, answers and initiates too;
    A sees B's response before B's initiation. Both packets arrive in that one round."""
    net, a, b, _pb, pa = make_pair(seed=9)
    pa.endpoint = A_EP
    now, wall = net.clock.now, net.clock.wall()
    (init_a,) = a.device.send_packet(now, wall, ipv4_packet(A_IP, B_IP, b"from a"))
    (init_b,) = b.device.send_packet(now, wall, ipv4_packet(B_IP, A_IP, b"from b"))
    assert isinstance(init_a, SendDatagram) and isinstance(init_b, SendDatagram)
    (resp_b,) = b.device.receive(now, wall, init_a.data, A_EP)
    assert isinstance(resp_b, SendDatagram)
    # the response overtakes B's initiation: A completes and sends its queued packet
    out_a = a.device.receive(now, wall, resp_b.data, B_EP)
    data_a = [x for x in out_a if isinstance(x, SendDatagram)]
    assert [w.message_type(x.data) for x in data_a] == [w.MESSAGE_TRANSPORT]
    (resp_a,) = a.device.receive(now, wall, init_b.data, B_EP)
    assert isinstance(resp_a, SendDatagram)
    # B gets A's data (on the session B answered), then A's response to its own initiation
    out_b = b.device.receive(now, wall, data_a[0].data, A_EP)
    assert [x.packet[20:] for x in out_b if isinstance(x, WriteTun)] == [b"from a"]
    sent_b = [x for x in out_b if isinstance(x, SendDatagram)]
    assert [w.message_type(x.data) for x in sent_b] == [w.MESSAGE_TRANSPORT]
    out_b2 = b.device.receive(now, wall, resp_a.data, A_EP)
    assert b.device.counters.stale_response == 0
    delivered: list[bytes] = []
    for x in sent_b + [y for y in out_b2 if isinstance(y, SendDatagram)]:
        delivered += [t.packet[20:] for t in a.device.receive(now, wall, x.data, B_EP)
                      if isinstance(t, WriteTun)]
    assert delivered == [b"from b"]
    assert all(not p.staged for p in a.device.peers + b.device.peers)
