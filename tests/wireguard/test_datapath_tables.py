"""The Device's tables for a data path outside the interpreter (datapath_tables) and the
generation that says when to take them again (docs/performance.md#data-path-thread)."""

from __future__ import annotations

from meshguard.wireguard.actions import SendDatagram
from meshguard.wireguard.device import Device

from .sim import A_EP, A_IP, B_EP, B_IP, ipv4_packet, make_key, make_pair


def test_generation_moves_with_every_change_the_tables_show() -> None:
    net, a, b, pb, pa = make_pair()
    dev = a.device
    seen = [dev.generation]

    def moved() -> bool:
        seen.append(dev.generation)
        return seen[-1] != seen[-2]

    t = dev.datapath_tables()
    assert [(p, ep, kp) for p, ep, kp in t.peers] == [(pb, pb.endpoint, None)]
    assert t.receive == []
    assert [(bytes(addr), plen, p) for addr, plen, p in t.routes] == [
        (bytes(r[0]), r[1], pb) for r in t.routes]
    net.send(a, ipv4_packet(A_IP, B_IP, b"hello"))
    net.run_for(1.0)
    assert moved()  # a keypair: the handshake completed
    t = dev.datapath_tables()
    kp = pb.keypairs.current
    assert kp is not None and t.peers == [(pb, pb.endpoint, kp)]
    assert t.receive == [(kp, False)]
    # b answered as responder: its keypair was `next` until a's first data confirmed it
    assert b.device.datapath_tables().receive == [(pa.keypairs.current, False)]
    assert not moved()
    dev.set_allowed_ips(pb, ["10.9.0.0/16"], replace=False)
    assert moved()
    assert (bytes([10, 9, 0, 0]), 16, pb) in dev.datapath_tables().routes
    other = dev.add_peer(make_key(9).public_key)
    assert moved()
    dev.remove_peer(other.public_key)
    assert moved()
    now = net.clock.now
    dev.note_received(now, kp, 1, 64, ("192.0.2.7", 9))  # roaming
    assert moved() and dev.datapath_tables().peers[0][1] == ("192.0.2.7", 9)
    dev.new_path(pb.public_key.raw, now, net.clock.wall(), A_EP, initiate=False)
    assert moved()
    dev.changed()  # a caller that set an endpoint itself
    assert moved()


def test_a_responder_s_next_keypair_is_flagged_until_confirmed() -> None:
    net, a, b, _pb, pa = make_pair()
    now, wall = net.clock.now, net.clock.wall()
    init = next(x for x in a.device.send_packet(now, wall, ipv4_packet(A_IP, B_IP, b"x"))
                if isinstance(x, SendDatagram))
    gen = b.device.generation
    resp = next(x for x in b.device.receive(now, wall, init.data, A_EP)
                if isinstance(x, SendDatagram))
    assert b.device.generation != gen
    nxt = pa.keypairs.next
    assert nxt is not None and b.device.datapath_tables().receive == [(nxt, True)]
    assert b.device.datapath_tables().peers == [(pa, A_EP, None)]  # nothing to send with yet
    data = [x for x in a.device.receive(now, wall, resp.data, B_EP)
            if isinstance(x, SendDatagram)]
    gen = b.device.generation
    b.device.receive(now, wall, data[0].data, A_EP)  # a's first data confirms it
    assert b.device.generation != gen
    assert b.device.datapath_tables().receive == [(nxt, False)]
    assert b.device.datapath_tables().peers == [(pa, A_EP, nxt)]


def test_tables_of_an_empty_device() -> None:
    from meshguard.testing.rng import SeededRng

    t = Device(SeededRng(1), make_key(1)).datapath_tables()
    assert t.peers == [] and t.receive == [] and t.routes == []
