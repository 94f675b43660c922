"""The batched fast path gives the same bytes, results and state as the slow path."""

from __future__ import annotations

from meshguard.wire.wireguard import unpack_transport_header
from meshguard.wireguard.actions import Action, HandshakeCompleted, SendDatagram, WriteTun
from meshguard.wireguard.device import (
    Device,
    Peer,
    inner_destination,
    inner_packet,
    open_transport,
    seal_transport,
)
from meshguard.wireguard.timers import PeerTimers

from .sim import A_EP, A_IP, B_EP, B_IP, Node, ipv4_packet, make_key, make_pair

NOW = 1000.0
WALL = 1_700_001_000.0


def _world() -> tuple[Node, Node, Peer, Peer]:
    """A has completed a handshake with B; B holds the new keypair as `next` (unconfirmed)."""
    _, a, b, pb, pa = make_pair(seed=21)
    init = [x for x in a.device.initiate_handshake(NOW, WALL, pb) if isinstance(x, SendDatagram)]
    resp = b.device.receive(NOW, WALL, init[0].data, A_EP)
    assert isinstance(resp[0], SendDatagram)
    out = a.device.receive(NOW, WALL, resp[0].data, B_EP)
    assert isinstance(out[0], HandshakeCompleted)  # the confirming keepalive is not delivered
    assert pa.keypairs.next is not None and pa.keypairs.current is None
    return a, b, pb, pa


def _timers(t: PeerTimers) -> tuple[object, ...]:
    return tuple(getattr(t, s) for s in PeerTimers.__slots__ if s != "bound")


def _state(dev: Device, peer: Peer) -> tuple[object, ...]:
    kps = peer.keypairs
    return (
        dev.counters.as_dict(),
        peer.tx_bytes,
        peer.rx_bytes,
        peer.endpoint,
        peer.last_handshake_wall,
        _timers(peer.timers),
        [(k.local_index, k.send_counter, k.replay.last) for k in kps.all()],
        kps.current is not None and kps.current.local_index,
        kps.next is not None and kps.next.local_index,
    )


PACKETS = [ipv4_packet(A_IP, B_IP, bytes([i]) * (i * 37 % 200), ident=i) for i in range(20)]


def test_send_fast_path_matches_slow_path() -> None:
    a1, _, pb1, _ = _world()
    a2, _, pb2, _ = _world()
    t = NOW + 0.5
    slow: list[Action] = []
    for p in PACKETS:
        slow += a1.device.send_packet(t, WALL + 0.5, p)
    dst = inner_destination(PACKETS[0])
    assert dst is not None
    batch = a2.device.prepare_send(t, dst)
    assert batch is not None and batch.peer is pb2 and batch.endpoint == B_EP
    first = batch.reserve(len(PACKETS))
    assert first is not None
    fast: list[Action] = [
        SendDatagram(seal_transport(batch.cipher, batch.receiver_index, first + i, p), B_EP)
        for i, p in enumerate(PACKETS)
    ]
    fast += a2.device.note_sent(t, batch.peer, len(PACKETS), sum(len(x.data) for x in fast))  # type: ignore[union-attr]
    assert fast == slow
    assert _state(a1.device, pb1) == _state(a2.device, pb2)
    # the slow path is needed (None) when there is no route or no session
    assert a2.device.prepare_send(t, bytes([10, 9, 9, 9])) is None


def _fast_receive(
    dev: Device, now: float, grams: list[tuple[bytes, tuple[str, int]]]
) -> list[Action]:
    """What a data plane does with a batch (cf. the device module docstring)."""
    out: list[Action] = []
    acc: dict[object, list[object]] = {}
    for data, src in grams:
        idx, ctr = unpack_transport_header(data)
        kp = dev.keypair_for_receive(idx, now)
        if kp is None:
            dev.note_dropped("unknown_index")
            continue
        if not kp.replay.check(ctr):
            dev.note_dropped("replay")
            continue
        pt = kp.receive.open_or_none(ctr, data[16:])
        if pt is None:
            dev.note_dropped("bad_auth")
            continue
        if not kp.replay.accept(ctr):
            dev.note_dropped("replay")
            continue
        # one bookkeeping call per batch: the slow path calls it per packet, so to compare
        # state exactly the batch here is flushed per packet when the keypair changes
        a = acc.setdefault(kp, [0, 0, 0, src])
        a[0] += 1  # type: ignore[operator]
        a[1] += len(data)  # type: ignore[operator]
        a[3] = src
        if not pt:
            a[2] += 1  # type: ignore[operator]
            continue
        inner = inner_packet(pt)
        if inner is None:
            dev.note_dropped("bad_inner")
        elif not dev.source_allowed(kp.peer, inner[1]):
            dev.note_dropped("bad_source")
        else:
            out.append(WriteTun(inner[0]))
    for kp, (n, nb, ka, src) in acc.items():
        out += dev.note_received(now, kp, n, nb, src, n_keepalive=ka)  # type: ignore[arg-type]
    return out


def test_receive_fast_path_matches_slow_path() -> None:
    a, b1, _, pa1 = _world()
    _, b2, _, pa2 = _world()
    t = NOW + 0.5
    grams: list[bytes] = []
    for p in PACKETS:
        grams += [x.data for x in a.device.send_packet(t, WALL, p) if isinstance(x, SendDatagram)]
    grams += [x.data for x in a.device.send_packet(t, WALL, ipv4_packet("10.0.0.99", B_IP, b"sp"))]  # type: ignore[union-attr]
    kp = a.device.prepare_send(t, bytes([10, 0, 0, 2]))
    assert kp is not None
    ctr = kp.reserve(1)
    assert ctr is not None
    grams.append(seal_transport(kp.cipher, kp.receiver_index, ctr, b""))  # keepalive
    extra = a.device.send_packet(t, WALL, PACKETS[0])[0]
    assert isinstance(extra, SendDatagram)
    tampered = bytearray(extra.data)
    tampered[-1] ^= 1
    batch = [*grams, grams[0], bytes(tampered), grams[5][:4] + b"\xff" * 4 + grams[5][8:]]
    src = ("203.0.113.5", 999)  # roamed
    slow: list[Action] = []
    for d in batch:
        slow += b1.device.receive(t, WALL, d, src)
    fast = _fast_receive(b2.device, t, [(d, src) for d in batch])
    slow_tun = [x for x in slow if isinstance(x, WriteTun)]
    fast_tun = [x for x in fast if isinstance(x, WriteTun)]
    assert slow_tun == fast_tun and [x.packet for x in slow_tun] == PACKETS
    assert [x for x in slow if not isinstance(x, WriteTun)] == [
        x for x in fast if not isinstance(x, WriteTun)
    ]
    assert any(isinstance(x, HandshakeCompleted) for x in fast)  # `next` promoted
    assert _state(b1.device, pa1) == _state(b2.device, pa2)
    c = b2.device.counters
    assert (c.bad_source, c.replay, c.bad_auth, c.unknown_index, c.keepalives_received) == (
        1,
        1,
        1,
        1,
        1,
    )
    assert pa2.endpoint == src
    assert open_transport(kp.keypair.receive, grams[0]) is None  # the other direction's key
    assert open_transport(kp.cipher, grams[0]) == PACKETS[0] + bytes(-len(PACKETS[0]) % 16)


def test_route_cache_follows_allowed_ip_changes() -> None:
    a, _, pb, _ = _world()
    dev = a.device
    dst = bytes([10, 0, 0, 2])
    assert dev.route(dst) is pb
    dev.set_allowed_ips(pb, ["10.0.0.3/32"])
    assert dev.route(dst) is None
    other = dev.add_peer(make_key(77).public_key)
    dev.set_allowed_ips(other, ["10.0.0.0/24"])
    assert dev.route(dst) is other
    assert dev.route(bytes([10, 0, 0, 3])) is pb
    assert [str(n) for n in pb.allowed_ips] == ["10.0.0.3/32"]
    dev.remove_peer(other.public_key)
    assert dev.route(dst) is None
