"""Two devices through an in-memory link: handshake, data, rekey, keepalives, failures."""

from __future__ import annotations

import itertools
import random

import pytest

from meshguard.testing.rng import SeededRng
from meshguard.wire import wireguard as w
from meshguard.wireguard.actions import (
    HandshakeCompleted,
    HandshakeGaveUp,
    PeerKeysExpired,
    SendDatagram,
)
from meshguard.wireguard.constants import (
    KEEPALIVE_TIMEOUT,
    MAX_HANDSHAKE_ATTEMPTS,
    REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME,
    REKEY_TIMEOUT,
    REKEY_TIMEOUT_JITTER_MAX,
    ZERO_KEYS_AFTER,
)
from meshguard.wireguard.device import Device, DeviceError

from .sim import A_EP, A_IP, B_EP, B_IP, Node, SimNet, ipv4_packet, ipv6_packet, make_key, make_pair


def _completed(node: Node) -> int:
    return sum(isinstance(e, HandshakeCompleted) for e in node.events)


def _types(node: Node) -> list[int]:
    return [w.message_type(d) for d in node.sent]


def test_handshake_and_data_both_ways() -> None:
    net, a, b, pb, pa = make_pair()
    p1 = ipv4_packet(A_IP, B_IP, b"hello")
    net.send(a, p1)
    net.run_for(1.0)
    assert b.tun == [p1]
    assert _completed(a) == 1 and _completed(b) == 1
    p2 = ipv4_packet(B_IP, A_IP, b"world")
    net.send(b, p2)
    p3 = ipv6_packet(
        bytes.fromhex("fd00" + "00" * 13 + "02"), bytes.fromhex("fd00" + "00" * 13 + "01"), b"v6"
    )
    net.send(b, p3)
    net.run_for(1.0)
    assert a.tun == [p2, p3]
    assert pa.endpoint == A_EP  # learned from the initiation
    assert pb.last_handshake_wall > 1e9 and pa.last_handshake_wall > 1e9
    assert pb.tx_bytes > 0 and pa.rx_bytes == pb.tx_bytes
    assert a.device.counters.dropped() == 0 and b.device.counters.dropped() == 0
    # wire sizes: initiation 148, response 92, transport 32 + padded payload
    assert a.sent[0][:1] == b"\x01" and len(a.sent[0]) == 148
    assert b.sent[0][:1] == b"\x02" and len(b.sent[0]) == 92
    assert len(a.sent[1]) == 32 + w.padded_length(len(p1))


def test_loss_and_reordering() -> None:
    net, a, b, _, _ = make_pair(seed=7, loss=0.1, jitter=0.05)
    sent_ab, sent_ba = [], []
    for i in range(300):
        p = ipv4_packet(A_IP, B_IP, i.to_bytes(4, "big"), ident=i)
        sent_ab.append(p)
        net.send(a, p)
        if _completed(b):
            q = ipv4_packet(B_IP, A_IP, i.to_bytes(4, "big"), ident=i)
            sent_ba.append(q)
            net.send(b, q)
        net.run_for(0.02)
    net.run_for(2.0)
    assert _completed(a) >= 1
    # reordered: arrival order differs from send order, and nothing arrives twice
    assert b.tun != sorted(b.tun, key=sent_ab.index)
    assert len(set(b.tun)) == len(b.tun) and set(b.tun) <= set(sent_ab)
    assert len(b.tun) > 0.75 * len(sent_ab) and len(a.tun) > 0.75 * len(sent_ba)
    for node in (a, b):
        c = node.device.counters
        assert c.replay == c.bad_auth == c.unknown_index == c.bad_source == 0


def _chat(net: SimNet, a: Node, b: Node, seconds: float, period: float = 0.5) -> tuple[int, int]:
    n = 0
    t_end = net.clock.now + seconds
    while net.clock.now < t_end:
        net.send(a, ipv4_packet(A_IP, B_IP, b"ping", ident=n & 0xFFFF))
        net.send(b, ipv4_packet(B_IP, A_IP, b"pong", ident=n & 0xFFFF))
        n += 1
        net.run_for(period)
    net.run_for(1.0)
    return n, n


def test_rekey_keeps_traffic_flowing_without_loss() -> None:
    net, a, b, pb, _ = make_pair(seed=3, jitter=0.03)
    net.send(a, ipv4_packet(A_IP, B_IP, b"start"))
    net.run_for(1.0)
    first = pb.keypairs.current
    assert first is not None
    sent_a, sent_b = _chat(net, a, b, 3 * REKEY_AFTER_TIME + 20)
    assert len(b.tun) == sent_a + 1 and len(a.tun) == sent_b
    assert _completed(a) >= 3 and _completed(b) >= 3
    assert pb.keypairs.current is not first
    for node in (a, b):
        assert node.device.counters.dropped() == 0, node.device.counters
        # old keypairs leave the index table: at most previous, current, next + a handshake
        assert len(node.device._indices) <= 4


def test_rekey_on_receive_only() -> None:
    """Only the responder sends data: the initiator re-keys before REJECT_AFTER_TIME."""
    net, a, b, _, pa = make_pair(seed=4)
    net.send(a, ipv4_packet(A_IP, B_IP, b"start"))
    net.run_for(1.0)
    n = 0
    while net.clock.now < 1000 + 2 * REJECT_AFTER_TIME + 30:
        net.send(b, ipv4_packet(B_IP, A_IP, b"data"))
        n += 1
        net.run_for(1.0)
    assert len(a.tun) == n
    assert _completed(b) >= 3
    assert a.device.counters.dropped() == 0 and b.device.counters.dropped() == 0
    assert pa.keypairs.current is not None


def test_passive_keepalive() -> None:
    net, a, b, _, _ = make_pair()
    net.send(a, ipv4_packet(A_IP, B_IP, b"x"))
    net.run_for(KEEPALIVE_TIMEOUT + 1.0)
    # B got data and had nothing to say: it sent exactly one keepalive after KEEPALIVE_TIMEOUT
    assert b.device.counters.keepalives_sent == 1
    assert a.device.counters.keepalives_received == 1
    assert len(b.sent[-1]) == 32  # header + tag, empty payload
    assert a.tun == []  # keepalives are not written to the TUN
    # the keepalive told A that B is alive, so no new handshake 15 s after A's data
    net.run_for(30.0)
    assert a.device.counters.initiations_sent == 1
    assert b.device.counters.keepalives_sent == 1


def test_new_handshake_when_peer_goes_silent() -> None:
    net, a, _b, _, _ = make_pair()
    net.send(a, ipv4_packet(A_IP, B_IP, b"x"))
    net.run_for(1.0)
    net.blocked.add(B_EP)
    t_data = a.sent_at[1]  # the first data packet, sent after the last packet heard from B
    net.send(a, ipv4_packet(A_IP, B_IP, b"y"))
    net.run_for(16.0)
    # data sent and nothing heard back for KEEPALIVE_TIMEOUT + REKEY_TIMEOUT: re-handshake
    assert a.device.counters.initiations_sent == 2
    assert abs(a.sent_at[-1] - t_data - (KEEPALIVE_TIMEOUT + REKEY_TIMEOUT)) < 1e-6


def test_persistent_keepalive() -> None:
    net, a, b, pb, _ = make_pair()
    pb.persistent_keepalive = 25
    net.send(a, ipv4_packet(A_IP, B_IP, b"x"))
    net.run_for(1.0)
    assert a.device.counters.keepalives_sent == 0
    net.run_for(100.0)
    ka = [t for t, d in zip(a.sent_at, a.sent, strict=True) if len(d) == 32]
    # B's passive keepalive (10 s after A's data) restarted A's 25 s interval
    assert len(ka) == 3 == a.device.counters.keepalives_sent
    assert all(abs(y - x - 25) < 1e-6 for x, y in itertools.pairwise(ka))
    assert b.device.counters.keepalives_received == 3


def test_handshake_retry_and_give_up_then_zeroing() -> None:
    net, a, b, pb, _ = make_pair()
    net.blocked.add(B_EP)
    net.send(a, ipv4_packet(A_IP, B_IP, b"lost"))
    net.send(a, ipv4_packet(A_IP, B_IP, b"lost2"))
    net.run_for(200.0)
    times = [t for t, d in zip(a.sent_at, a.sent, strict=True) if w.message_type(d) == 1]
    assert len(times) == MAX_HANDSHAKE_ATTEMPTS
    gaps = [y - x for x, y in itertools.pairwise(times)]
    assert all(REKEY_TIMEOUT <= g <= REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX for g in gaps)
    assert len({round(g, 6) for g in gaps}) > 1  # jittered
    assert any(isinstance(e, HandshakeGaveUp) for e in a.events)
    assert a.device.counters.handshake_gave_up == 2 and not pb.staged
    gave_up_at = times[-1] + REKEY_TIMEOUT
    # nothing more is sent until new traffic
    assert a.device.counters.initiations_sent == MAX_HANDSHAKE_ATTEMPTS
    net.run_for(gave_up_at + ZERO_KEYS_AFTER + 1 - net.clock.now)
    assert any(isinstance(e, PeerKeysExpired) for e in a.events)
    # new traffic after giving up starts over, and works once the link is back
    net.blocked.clear()
    net.send(a, ipv4_packet(A_IP, B_IP, b"again"))
    net.run_for(1.0)
    assert [p[20:] for p in b.tun] == [b"again"]


def test_keys_zeroed_after_three_reject_after_time() -> None:
    net, a, b, pb, pa = make_pair()
    net.send(a, ipv4_packet(A_IP, B_IP, b"x"))
    net.run_for(1.0)
    kp = pb.keypairs.current
    assert kp is not None and a.device.keypair_for_receive(kp.local_index) is kp
    net.run_for(ZERO_KEYS_AFTER - 20)
    assert pb.keypairs.current is kp  # not yet
    assert a.device.keypair_for_receive(kp.local_index, net.clock.now) is None  # expired
    net.run_for(30)
    assert any(isinstance(e, PeerKeysExpired) for e in a.events)
    assert any(isinstance(e, PeerKeysExpired) for e in b.events)
    assert pb.keypairs.all() == [] and pa.keypairs.all() == []
    assert a.device.keypair_for_receive(kp.local_index) is None
    net.send(b, ipv4_packet(B_IP, A_IP, b"fresh"))
    net.run_for(1.0)
    assert [p[20:] for p in a.tun] == [b"fresh"]


def test_expired_keys_trigger_handshake_and_queued_packets_follow() -> None:
    net, a, b, _, pa = make_pair()
    net.send(a, ipv4_packet(A_IP, B_IP, b"x"))
    net.run_for(REJECT_AFTER_TIME + 5)
    old = pa.keypairs.current
    assert old is not None and old.send_expired(net.clock.now)
    net.send(b, ipv4_packet(B_IP, A_IP, b"q1"))
    net.send(b, ipv4_packet(B_IP, A_IP, b"q2"))
    assert len(pa.staged) == 2
    net.run_for(1.0)
    assert [p[20:] for p in a.tun] == [b"q1", b"q2"]
    assert pa.keypairs.current is not old


def test_rekey_after_messages() -> None:
    net, a, b, pb, _ = make_pair()
    net.send(a, ipv4_packet(A_IP, B_IP, b"x"))
    net.run_for(1.0)
    kp = pb.keypairs.current
    assert kp is not None
    net.run_for(REKEY_TIMEOUT)
    kp.send_counter = REKEY_AFTER_MESSAGES
    before = a.device.counters.initiations_sent
    net.send(a, ipv4_packet(A_IP, B_IP, b"y"))
    assert a.device.counters.initiations_sent == before + 1
    net.run_for(1.0)
    assert pb.keypairs.current is not kp
    assert [p[20:] for p in b.tun] == [b"x", b"y"]


def test_roaming_endpoint_follows_authenticated_packets() -> None:
    net, a, b, _, pa = make_pair()
    net.send(a, ipv4_packet(A_IP, B_IP, b"x"))
    net.run_for(1.0)
    new_ep = ("203.0.113.9", 41000)
    net.rewrite[A_EP] = new_ep
    net.nodes[new_ep] = a
    # garbage from elsewhere does not move the endpoint
    net.inject(
        w.transport_header(pa.keypairs.current.local_index, 99) + bytes(32),
        ("198.51.100.66", 9),
        B_EP,
    )  # type: ignore[union-attr]
    net.run_for(0.5)
    assert pa.endpoint == A_EP
    net.send(a, ipv4_packet(A_IP, B_IP, b"moved"))
    net.run_for(0.5)
    assert pa.endpoint == new_ep
    net.send(b, ipv4_packet(B_IP, A_IP, b"reply"))
    net.run_for(0.5)
    assert [p[20:] for p in a.tun] == [b"reply"]
    assert b.device.counters.bad_auth == 1


def test_inner_source_check() -> None:
    net, a, b, _, _ = make_pair()
    net.send(a, ipv4_packet(A_IP, B_IP, b"ok"))
    net.send(a, ipv4_packet("10.0.0.77", B_IP, b"spoofed"))
    net.run_for(1.0)
    assert [p[20:] for p in b.tun] == [b"ok"]
    assert b.device.counters.bad_source == 1


def test_wrong_key_refused() -> None:
    # A believes B has another key: B cannot verify mac1 and drops the initiation.
    net, a, b, pb, _ = make_pair()
    da = a.device
    da.remove_peer(pb.public_key)
    wrong = da.add_peer(make_key(99).public_key)
    da.set_allowed_ips(wrong, [B_IP + "/32"])
    wrong.endpoint = B_EP
    net.send(a, ipv4_packet(A_IP, B_IP, b"x"))
    net.run_for(1.0)
    assert b.device.counters.bad_mac1 == 1 and b.tun == []
    # B does not know A at all: the initiation authenticates but no peer matches
    net2, a2, b2, _, pa2 = make_pair(seed=5)
    b2.device.remove_peer(pa2.public_key)
    net2.send(a2, ipv4_packet(A_IP, B_IP, b"x"))
    net2.run_for(1.0)
    assert b2.device.counters.unknown_peer == 1 and _completed(a2) == 0


def test_psk_match_and_mismatch() -> None:
    psk = bytes(range(32))
    net, a, b, _, _ = make_pair(psk_a=psk, psk_b=psk)
    net.send(a, ipv4_packet(A_IP, B_IP, b"x"))
    net.run_for(1.0)
    assert [p[20:] for p in b.tun] == [b"x"]
    net2, a2, b2, _, _ = make_pair(psk_a=psk, psk_b=bytes(32))
    net2.send(a2, ipv4_packet(A_IP, B_IP, b"x"))
    net2.run_for(1.0)
    assert _completed(a2) == 0 and b2.tun == []
    assert a2.device.counters.bad_handshake == 1


def test_replays_are_dropped() -> None:
    net, a, b, _, _ = make_pair()
    net.send(a, ipv4_packet(A_IP, B_IP, b"x"))
    net.run_for(1.0)
    initiation, transport = a.sent[0], a.sent[1]
    net.inject(transport, A_EP, B_EP)
    net.inject(initiation, A_EP, B_EP)
    net.run_for(1.0)
    c = b.device.counters
    assert c.replay == 1 and c.handshake_replay == 1
    assert len(b.tun) == 1 and _completed(b) == 1


def test_initiation_flood_from_one_peer_limited() -> None:
    net, a, b, pb, _ = make_pair()
    da = a.device
    now, wall = net.clock.now, net.clock.wall()
    first = [x for x in da.initiate_handshake(now, wall, pb) if isinstance(x, SendDatagram)]
    pb.last_initiation_sent = float("-inf")  # bypass our own rate limit to forge a burst
    second = [x for x in da.initiate_handshake(now, wall + 0.1, pb) if isinstance(x, SendDatagram)]
    net.inject(first[0].data, A_EP, B_EP)
    net.inject(second[0].data, A_EP, B_EP, delay=0.001)
    net.run_for(0.5)
    assert b.device.counters.responses_sent == 1
    assert b.device.counters.handshake_flood == 1


def _forged_initiation(rng: random.Random, responder_pub: bytes) -> bytes:
    from meshguard.wireguard.cookie import CookieGenerator

    body = w.Initiation(
        rng.getrandbits(32), rng.randbytes(32), rng.randbytes(48), rng.randbytes(28)
    )
    return CookieGenerator(responder_pub).add_macs(0.0, body.encode(), w.INITIATION_MAC1_OFFSET)


def test_cookie_flood_legitimate_peer_completes_via_mac2() -> None:
    net, a, b, _, pa = make_pair(seed=11)
    db = b.device
    db.load.threshold = 100
    bpub = db.public_key
    assert bpub is not None
    r = random.Random(1)
    # 1000 forged initiations (valid mac1: the attacker knows B's public key) over 8 s
    for i in range(1000):
        src = (f"198.51.{r.randrange(256)}.{r.randrange(256)}", r.randrange(1024, 65536))
        net.inject(_forged_initiation(r, bpub.raw), src, B_EP, delay=i * 0.008)
    net.run_for(1.5)
    assert db.load.under_load(net.clock.now)
    dh_before_load = db.counters.bad_handshake
    assert dh_before_load <= db.load.threshold + 1
    # the legitimate peer starts while the flood goes on
    net.send(a, ipv4_packet(A_IP, B_IP, b"legit"))
    net.run_for(0.1)
    assert a.device.counters.cookies_received == 1
    assert db.counters.cookie_replies_sent >= 1 and _completed(a) == 0
    net.run_for(REKEY_TIMEOUT + 0.5)  # the retransmission carries mac2
    assert db.load.under_load(net.clock.now)
    assert _completed(a) == 1
    inits = [d for d in a.sent if w.message_type(d) == w.MESSAGE_INITIATION]
    assert len(inits) == 2
    assert inits[0][w.INITIATION_MAC2_OFFSET :] == bytes(16)
    assert inits[1][w.INITIATION_MAC2_OFFSET :] != bytes(16)
    assert [p[20:] for p in b.tun] == [b"legit"]
    net.run_for(2.0)  # the rest of the flood
    c = db.counters
    # every forged initiation was refused, almost all without any DH work
    assert c.bad_handshake == dh_before_load
    assert c.bad_mac2 >= 1000 - dh_before_load
    assert c.bad_mac2 + c.bad_handshake == 1000 + 1  # + A's first attempt without mac2
    assert pa.keypairs.current is not None


def test_garbage_never_raises_and_device_still_works() -> None:
    net, a, b, _pb, _ = make_pair()
    net.send(a, ipv4_packet(A_IP, B_IP, b"x"))
    net.run_for(1.0)
    samples = list(a.sent) + list(b.sent)
    r = random.Random(2)
    db = b.device
    now, wall = net.clock.now, net.clock.wall()
    n = 0
    for _ in range(3000):
        kind = r.randrange(4)
        s = r.choice(samples)
        if kind == 0:
            data = r.randbytes(r.randrange(0, 200))
        elif kind == 1:
            data = s[: r.randrange(len(s))]
        elif kind == 2:
            i = r.randrange(len(s))
            data = s[:i] + bytes([s[i] ^ (1 << r.randrange(8))]) + s[i + 1 :]
        else:
            data = s + r.randbytes(r.randrange(1, 2000))  # oversized
        db.receive(now, wall, data, ("203.0.113.1", 1))
        n += 1
    c = db.counters
    assert c.dropped() >= n * 0.9
    assert c.bad_type > 0 and c.bad_length > 0 and c.bad_mac1 > 0 and c.bad_auth > 0
    net.send(a, ipv4_packet(A_IP, B_IP, b"after"))
    net.run_for(1.0)
    assert b.tun[-1][20:] == b"after"


def test_no_route_and_no_endpoint() -> None:
    net, a, b, pb, _pa = make_pair(endpoint_b_known=False)
    net.send(a, ipv4_packet(A_IP, "10.9.9.9", b"x"))
    assert a.device.counters.no_route == 1
    net.send(a, ipv4_packet(A_IP, B_IP, b"x"))
    assert a.device.counters.no_endpoint == 1 and len(pb.staged) == 1
    pb.endpoint = B_EP
    net.handle(a, a.device.initiate_handshake(net.clock.now, net.clock.wall(), pb))
    net.run_for(1.0)
    assert [p[20:] for p in b.tun] == [b"x"]


def test_private_key_change_drops_sessions() -> None:
    net, a, _b, pb, _pa = make_pair()
    net.send(a, ipv4_packet(A_IP, B_IP, b"x"))
    net.run_for(1.0)
    assert pb.keypairs.current is not None
    a.device.set_private_key(make_key(1234))
    assert pb.keypairs.all() == []
    dev = Device(a.device.rng)
    assert dev.public_key is None
    assert dev.receive(0.0, 0.0, a.sent[0], A_EP) == []
    assert dev.counters.no_private_key == 1


def test_initiation_rate_limit_one_per_rekey_timeout() -> None:
    net, a, _, pb, _ = make_pair()
    net.blocked.add(B_EP)
    for i in range(10):
        net.send(a, ipv4_packet(A_IP, B_IP, bytes([i])))
        net.run_for(0.4)
    assert a.device.counters.initiations_sent == 1
    assert len(pb.staged) == 10
    net.run_for(REKEY_TIMEOUT)
    assert a.device.counters.initiations_sent == 2  # the retransmission timer


def test_simultaneous_initiation_resolves() -> None:
    net, a, b, _pb, pa = make_pair(seed=8)
    pa.endpoint = A_EP
    net.send(a, ipv4_packet(A_IP, B_IP, b"from a"))
    net.send(b, ipv4_packet(B_IP, A_IP, b"from b"))
    net.run_for(2 * REKEY_TIMEOUT + 2)
    assert [p[20:] for p in b.tun] == [b"from a"]
    assert [p[20:] for p in a.tun] == [b"from b"]


def test_under_load_mac2_holders_are_rate_limited_per_source() -> None:
    """A host that can receive cookies still cannot make the responder do unbounded DH."""
    net, a, b, _, _ = make_pair(seed=12)
    db = b.device
    db.load.threshold = 0  # always under load
    attacker = ("198.51.100.9", 5000)
    from meshguard.wireguard.cookie import CookieGenerator

    bpub = db.public_key
    assert bpub is not None
    gen = CookieGenerator(bpub.raw)
    r = random.Random(3)

    def forged() -> bytes:
        body = w.Initiation(1, r.randbytes(32), r.randbytes(48), r.randbytes(28)).encode()
        return gen.add_macs(net.clock.now, body, w.INITIATION_MAC1_OFFSET)

    reply = db.receive(net.clock.now, net.clock.wall(), forged(), attacker)
    assert isinstance(reply[0], SendDatagram)
    assert gen.consume_reply(net.clock.now, w.CookieReply.decode(reply[0].data))
    for _ in range(100):
        db.receive(net.clock.now, net.clock.wall(), forged(), attacker)
    c = db.counters
    assert c.bad_handshake == 5 and c.rate_limited == 95  # the burst, then nothing
    # the legitimate peer from its own address is unaffected
    net.send(a, ipv4_packet(A_IP, B_IP, b"ok"))
    net.run_for(REKEY_TIMEOUT + 1)
    assert [p[20:] for p in b.tun] == [b"ok"]


def test_next_deadline_is_never_late() -> None:
    """The cached deadline is at most the true earliest timer, and exact after a tick."""
    net, a, b, pb, pa = make_pair(seed=13, loss=0.2, jitter=0.02)
    pb.persistent_keepalive = 7
    r = random.Random(5)
    for _ in range(400):
        if r.random() < 0.5:
            net.send(a, ipv4_packet(A_IP, B_IP, b"a"))
        if r.random() < 0.3:
            net.send(b, ipv4_packet(B_IP, A_IP, b"b"))
        net.run_for(r.uniform(0.0, 3.0))
        for node, peer in ((a, pb), (b, pa)):
            true = peer.timers.next_deadline()
            got = node.device.next_deadline()
            if true is not None:  # (a stale early value when nothing is armed is harmless)
                assert got is not None and got <= true
    for node, peer in ((a, pb), (b, pa)):
        node.device.tick(net.clock.now, net.clock.wall())
        assert node.device.next_deadline() == peer.timers.next_deadline()


def test_rekey_after_time_is_a_device_option() -> None:
    """rekey_after_time (a Device option) re-keys the initiator's session at that age, and
    only on that device: the module's REKEY_AFTER_TIME is untouched."""
    net, a, b, pb, _ = make_pair(seed=5)
    a.device.rekey_after_time = 10.0
    net.send(a, ipv4_packet(A_IP, B_IP, b"start"))
    net.run_for(1.0)
    first = pb.keypairs.current
    assert first is not None and first.rekey_after_time == 10.0
    sent_a, sent_b = _chat(net, a, b, 25.0)
    assert len(b.tun) == sent_a + 1 and len(a.tun) == sent_b
    assert _completed(a) >= 2  # re-keyed well before REKEY_AFTER_TIME
    assert pb.keypairs.current is not first
    assert REKEY_AFTER_TIME == 120.0


def test_rekey_after_time_must_be_positive() -> None:
    with pytest.raises(DeviceError):
        Device(SeededRng(1), make_key(1), rekey_after_time=0)
