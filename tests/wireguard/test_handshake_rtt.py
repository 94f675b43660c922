"""The end-to-end RTT measured on handshakes (wireguard/handshake_rtt.py): over a link with a
known one-way delay both ends sample exactly twice that delay; replayed or forged handshake
and transport messages make no sample."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from meshguard.wire import wireguard as w
from meshguard.wireguard.actions import Action, SendDatagram
from meshguard.wireguard.handshake_rtt import MAX_SAMPLE, HandshakeRtt

from .sim import A_EP, A_IP, B_EP, B_IP, Node, Peer, SimNet, ipv4_packet, make_pair

DELAY = 0.037  # one way


def _handshaken() -> tuple[SimNet, Node, Node, Peer, Peer]:
    net, a, b, pb, pa = make_pair(seed=5)
    net.latency = DELAY
    net.send(a, ipv4_packet(A_IP, B_IP, b"hello"))
    net.run_for(1.0)
    assert [p[20:] for p in b.tun] == [b"hello"]
    return net, a, b, pb, pa


def _first(node: Node, kind: int) -> bytes:
    return next(d for d in node.sent if w.message_type(d) == kind)


def test_both_ends_sample_twice_the_one_way_delay() -> None:
    _, _, _, pb, pa = _handshaken()
    # A (initiator): initiation -> response; B (responder): response -> A's first message
    for rtt in (pb.rtt, pa.rtt):
        assert rtt.samples == 1
        assert rtt.last == pytest.approx(2 * DELAY)
        assert rtt.smoothed == pytest.approx(2 * DELAY)


def test_a_re_key_over_a_slower_path_moves_the_smoothed_value() -> None:
    net, a, _, pb, pa = _handshaken()
    net.latency = 3 * DELAY  # e.g. the peer is relayed now
    pb.last_initiation_sent = float("-inf")
    net.handle(a, a.device.initiate_handshake(net.clock.now, net.clock.wall(), pb))
    net.run_for(1.0)
    for rtt in (pb.rtt, pa.rtt):
        assert rtt.samples == 2
        assert rtt.last == pytest.approx(6 * DELAY)
        assert rtt.smoothed == pytest.approx(0.75 * 2 * DELAY + 0.25 * 6 * DELAY)


def test_replayed_response_makes_no_sample() -> None:
    net, a, b, pb, _ = _handshaken()
    response = _first(b, w.MESSAGE_RESPONSE)
    stale = a.device.counters.stale_response
    net.inject(response, B_EP, A_EP)
    net.run_for(1.0)
    assert a.device.counters.stale_response == stale + 1
    assert pb.rtt.samples == 1
    # and while a new initiation of A is in flight (the old response names the old index)
    pb.last_initiation_sent = float("-inf")
    net.blocked.add(B_EP)  # the new initiation is never answered
    net.handle(a, a.device.initiate_handshake(net.clock.now, net.clock.wall(), pb))
    net.clock.advance(2.0)
    net.inject(response, B_EP, A_EP)
    net.run_for(0.5)
    assert a.device.counters.stale_response == stale + 2
    assert pb.rtt.samples == 1 and pb.rtt.last == pytest.approx(2 * DELAY)


def test_forged_response_makes_no_sample() -> None:
    net, a, b, pb, _ = _handshaken()
    pb.last_initiation_sent = float("-inf")
    net.blocked.add(B_EP)
    net.handle(a, a.device.initiate_handshake(net.clock.now, net.clock.wall(), pb))
    init = w.Initiation.decode(a.sent[-1])
    # a response naming the initiation in flight, from someone without B's keys
    old = w.Response.decode(_first(b, w.MESSAGE_RESPONSE))
    forged = w.Response(old.sender, init.sender, old.ephemeral, old.encrypted_empty).encode()
    bad = a.device.counters.bad_handshake + a.device.counters.bad_mac1
    net.inject(forged, B_EP, A_EP, delay=DELAY)
    net.run_for(0.5)
    assert a.device.counters.bad_handshake + a.device.counters.bad_mac1 == bad + 1
    assert pb.rtt.samples == 1


def test_replayed_first_message_makes_no_sample() -> None:
    net, a, b, _, pa = _handshaken()
    first = _first(a, w.MESSAGE_TRANSPORT)  # the message that promoted B's session
    replays = b.device.counters.replay
    net.inject(first, A_EP, B_EP)
    net.run_for(1.0)
    assert b.device.counters.replay == replays + 1
    assert pa.rtt.samples == 1


def test_replayed_initiation_makes_no_sample() -> None:
    net, a, b, _, pa = _handshaken()
    init = _first(a, w.MESSAGE_INITIATION)
    net.clock.advance(3.0)
    responses = b.device.counters.responses_sent
    net.inject(init, A_EP, B_EP)
    net.run_for(1.0)
    assert b.device.counters.handshake_replay == 1
    assert b.device.counters.responses_sent == responses
    assert pa.rtt.samples == 1


def _datagrams(actions: Sequence[Action]) -> list[bytes]:
    return [x.data for x in actions if isinstance(x, SendDatagram)]


def test_a_lost_first_message_is_no_round_trip() -> None:
    _, a, b, pb, pa = make_pair(seed=6)
    da, db = a.device, b.device
    t, wall = 1000.0, 1_700_000_000.0
    (init,) = _datagrams(da.send_packet(t, wall, ipv4_packet(A_IP, B_IP, b"queued")))
    (resp,) = _datagrams(db.receive(t + DELAY, wall + DELAY, init, A_EP))
    lost = _datagrams(da.receive(t + 2 * DELAY, wall + 2 * DELAY, resp, B_EP))
    assert [w.message_type(d) for d in lost] == [w.MESSAGE_TRANSPORT]  # never arrives
    assert pb.rtt.samples == 1
    later = t + MAX_SAMPLE + 1.0
    (data,) = _datagrams(da.send_packet(later, wall + later - t, ipv4_packet(A_IP, B_IP, b"x")))
    db.receive(later + DELAY, wall + later - t + DELAY, data, A_EP)
    assert pa.keypairs.current is not None and pa.keypairs.next is None  # taken, promoted
    assert pa.rtt.samples == 0 and pa.rtt.smoothed is None


@pytest.mark.parametrize("value", [-0.001, MAX_SAMPLE + 0.001, float("inf"), float("nan")])
def test_no_sample_out_of_range(value: float) -> None:
    r = HandshakeRtt()
    assert not r.sample(value)
    assert r.samples == 0 and r.smoothed is None
