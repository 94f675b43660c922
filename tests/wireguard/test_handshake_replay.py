"""Handshake replay protection survives removing and re-adding a peer: the greatest TAI64N
timestamp seen from a public key is remembered (bounded), so an initiation captured before
the peer was removed is refused after it is added again (the mesh removes and re-adds peers
whenever a member dies or loses trust and comes back)."""

from __future__ import annotations

from meshguard.wire import wireguard as w
from meshguard.wireguard import device as device_mod
from meshguard.wireguard.actions import HandshakeCompleted

from .sim import A_EP, A_IP, B_EP, B_IP, ipv4_packet, make_key, make_pair


def test_old_initiation_is_refused_after_remove_and_re_add() -> None:
    net, a, b, pb, pa = make_pair()
    net.send(a, _ping())
    net.run_for(1.0)
    initiation = next(d for d in a.sent if w.message_type(d) == w.MESSAGE_INITIATION)
    assert sum(isinstance(e, HandshakeCompleted) for e in a.events) == 1
    db = b.device
    db.remove_peer(pa.public_key)
    again = db.add_peer(pa.public_key)
    db.set_allowed_ips(again, [A_IP + "/32"])
    # (a re-added peer is a new Peer: its per-peer initiation rate limit starts afresh)
    sent_before = len(b.sent)
    net.inject(initiation, A_EP, B_EP)  # the captured initiation, replayed
    net.run_for(1.0)
    assert db.counters.handshake_replay == 1
    assert len(b.sent) == sent_before  # no response: no session for the replayer
    assert again.keypairs.current is None and again.keypairs.next is None
    # the real peer still handshakes afresh
    pb.last_initiation_sent = float("-inf")
    net.handle(a, a.device.initiate_handshake(net.clock.now, net.clock.wall(), pb))
    net.run_for(1.0)
    assert db.counters.initiations_received == 2
    assert again.keypairs.current is not None


def test_remembered_timestamps_are_bounded() -> None:
    net, a, b, _, pa = make_pair()
    net.send(a, _ping())
    net.run_for(1.0)
    db = b.device
    db.remove_peer(pa.public_key)
    assert len(db._retired_timestamps) == 1
    for i in range(device_mod.MAX_RETIRED_TIMESTAMPS + 10):
        p = db.add_peer(make_key(1000 + i).public_key)
        p.greatest_timestamp = b"\x00" * 11 + b"\x01"
        db.remove_peer(p.public_key)
    assert len(db._retired_timestamps) == device_mod.MAX_RETIRED_TIMESTAMPS
    assert pa.public_key.raw not in db._retired_timestamps  # the oldest went first


def _ping() -> bytes:
    return ipv4_packet(A_IP, B_IP, b"ping")
