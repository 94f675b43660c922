"""Roaming in virtual time (tests/mesh/helpers.py Net: real WireGuard Devices and SWIM cores on
one in-memory network): a member whose address changes re-announces itself
(mesh/roaming.py), and its peers follow at once; a stranger replaying the moved member's
packets from yet another address moves nothing (docs/security.md#a-stranger-on-the-path)."""

from __future__ import annotations

from meshguard.crypto.keys import Ed25519PrivateKey, X25519PrivateKey, X25519PublicKey
from meshguard.mesh.roaming import Reannounce, Roaming, apply_reannounce
from meshguard.mesh.swim_port import NAT_SPLIT_PORT, SwimPort, build_membership
from meshguard.nat.holepunch import HolePuncher
from meshguard.nat.relay import Relay
from meshguard.nat.stun_client import NatType
from meshguard.wireguard.device import Device

from .helpers import Net, SimNode, Trust

NEW_IP = "192.0.2.102"
ATTACKER = ("198.51.100.66", 4444)


def mesh() -> tuple[Net, SimNode, SimNode, SimNode]:
    net = Net(21)
    a, b, c = (net.add(n, f"192.0.2.{i + 1}") for i, n in enumerate("abc"))
    for x in (a, b, c):
        for y in (a, b, c):
            if x is not y:
                x.trust.keys.add(y.key)
    net.join(a, [])
    net.join(b, [a])
    net.join(c, [a])
    net.run(6.0)
    for x, y in ((a, b), (b, a), (c, b), (b, c)):
        assert delivered(net, x, y), f"{x.name} -> {y.name}"
    return net, a, b, c


def delivered(net: Net, a: SimNode, b: SimNode) -> bool:
    b.tun.clear()
    pkt = net.send_ip(a, b)
    net.run(0.3)
    return pkt in b.tun


def device(sn: SimNode) -> Device:
    dev = sn.node.device
    assert isinstance(dev, Device)
    return dev


def wg_endpoint(viewer: SimNode, member: SimNode) -> tuple[str, int] | None:
    p = device(viewer).peer(X25519PublicKey(member.node.wg_key))
    assert p is not None
    return p.endpoint


def record_endpoint(viewer: SimNode, member: SimNode) -> tuple[str, int] | None:
    m = next(m for m in viewer.node.membership.members() if m.identity_key == member.key)
    return m.gossip_endpoint


def swim(sn: SimNode) -> SwimPort:
    port = sn.node.membership
    assert isinstance(port, SwimPort)
    return port


def roam(net: Net, sn: SimNode, ip: str) -> None:
    """Move `sn` and let its roaming policy react as the daemon does (no STUN)."""
    c = net.clock
    r = Roaming(hosts=(sn.ep[0],), port=sn.ep[1], now=c.monotonic())
    net.move(sn, ip)
    for a in r.observed(c.monotonic(), [ip]):
        if isinstance(a, Reannounce):
            net.run_actions(sn, apply_reannounce(sn.node, swim(sn), a, c.monotonic(),
                                                 c.wall()))


def test_peers_follow_a_moved_member_at_once() -> None:
    net, a, b, c = mesh()
    inc = swim(b).core.incarnation
    roam(net, b, NEW_IP)
    assert swim(b).core.record.endpoints == ((NEW_IP, 51821),)
    assert swim(b).core.incarnation > inc
    net.run(0.2)  # one hop: the keepalives and the record went straight to every peer
    for v in (a, c):
        assert wg_endpoint(v, b) == b.ep, v.name
        assert record_endpoint(v, b) == b.ep, v.name
        assert delivered(net, v, b) and delivered(net, b, v), v.name
    assert swim(b).core.stats["announce_sent"] == 2


def test_without_the_reaction_the_peers_keep_the_old_address() -> None:
    # what the reaction buys: a moved node that says nothing is not found at once
    net, a, b, _ = mesh()
    old = b.ep
    net.move(b, NEW_IP)
    net.run(0.2)
    assert wg_endpoint(a, b) == old and record_endpoint(a, b) == old
    assert not delivered(net, a, b)


def test_a_record_move_sends_a_keepalive_to_the_new_endpoint() -> None:
    # the peer side (mesh/wg_backend.py): a member whose signed record moved gets a keepalive
    # at its new endpoint at once (behind a NAT, it opens our mapping towards it)
    net, a, b, _ = mesh()
    net.move(b, NEW_IP)
    c = net.clock
    assert swim(b).set_endpoints(c.monotonic(), [b.ep], None)
    # only the record reaches a (b's own keepalives would move a's peer by themselves)
    net.queue.extend((dst, d, b.ep) for dst, d in
                     ((x.endpoint, x.data) for x in swim(b).announce(c.monotonic(), c.wall())
                      if hasattr(x, "endpoint")) if dst == a.ep)
    net.step(0.0)  # a takes b's record: reconcile moves the peer, a's next tick sends
    assert wg_endpoint(a, b) == b.ep
    assert any(dst == b.ep and d[0] == 4 and len(d) == 32 for dst, d, _ in net.queue)


def test_replayed_packets_from_another_address_move_nothing() -> None:
    """The attack: a stranger who saw the moved member's packets replays them from its own
    address, hoping to pull the tunnel (and the member's record) towards itself."""
    net, a, b, _ = mesh()
    cl = net.clock
    captured: list[bytes] = []
    roam(net, b, NEW_IP)
    captured += [d for dst, d, src in net.queue if dst == a.ep and src == b.ep]
    net.run(0.3)
    # replayed at once from the stranger's address: the window refuses the keepalive
    replays = device(a).counters.as_dict()["replay"]
    for d in captured:
        net.run_actions(a, a.node.receive(cl.monotonic(), cl.wall(), d, ATTACKER))
    assert device(a).counters.as_dict()["replay"] == replays + 1
    assert wg_endpoint(a, b) == b.ep
    # a fresh handshake initiation from the new address, captured too
    init = device(b).new_path(a.node.wg_key, cl.monotonic(), cl.wall())
    net.run_actions(b, list(init))
    captured += [d for dst, d, src in net.queue if dst == a.ep and src == b.ep
                 and d[0] == 1 and len(d) == 148]
    net.run(0.5)
    assert delivered(net, a, b)
    kinds = {(d[0], len(d)) for d in captured}
    assert (4, 32) in kinds and (1, 148) in kinds  # a keepalive and an initiation
    assert any(d[1:4] == b"MG\x01" for d in captured)  # the announcing Ping
    inc = next(m.incarnation for m in a.node.membership.members() if m.identity_key == b.key)
    rx = device(a).counters.as_dict()
    for d in captured:
        out = a.node.receive(cl.monotonic(), cl.wall(), d, ATTACKER)
        net.run_actions(a, out)
        # any answer goes back bare, never larger than what came in
        assert all(len(x[1]) <= max(len(d), 92) for x in net.queue if x[0] == ATTACKER)
    net.run(0.5)
    assert wg_endpoint(a, b) == b.ep
    assert record_endpoint(a, b) == b.ep
    m = next(m for m in a.node.membership.members() if m.identity_key == b.key)
    assert m.incarnation == inc and m.state == "alive"
    after = device(a).counters.as_dict()
    # the keepalive's session was replaced by the new handshake: unknown index, else replay
    assert after["replay"] + after["unknown_index"] > rx["replay"] + rx["unknown_index"]
    assert after["handshake_replay"] > rx["handshake_replay"]
    assert delivered(net, a, b) and delivered(net, b, a)


def test_a_forged_keepalive_from_a_new_address_moves_nothing() -> None:
    net, a, b, _ = mesh()
    cl = net.clock
    old = wg_endpoint(a, b)
    kp = device(b).peer(X25519PublicKey(a.node.wg_key))
    assert kp is not None and kp.keypairs.current is not None
    # a transport header that reaches b's keypair at a, with a made-up tag
    forged = (b"\x04\x00\x00\x00" + kp.keypairs.current.remote_index.to_bytes(4, "little")
              + (10**6).to_bytes(8, "little") + bytes(16))
    bad = device(a).counters.as_dict()["bad_auth"]
    a.node.receive(cl.monotonic(), cl.wall(), forged, ATTACKER)
    assert wg_endpoint(a, b) == old
    assert device(a).counters.as_dict()["bad_auth"] == bad + 1


def test_set_endpoints_keeps_the_split_port_flag_and_refuses_an_empty_list() -> None:
    net = Net(5)
    ident = Ed25519PrivateKey(net.rng.bytes(32))
    wg = X25519PrivateKey.generate(net.rng.bytes(32))
    c = net.clock
    port = build_membership(identity=ident, wg_private=wg, certificate=None,
                            endpoints=[("192.0.2.5", 51822)], kernel=True, admitter=Trust(),
                            rng=net.rng, now=c.monotonic(), wall=c.wall())
    inc = port.core.incarnation
    assert port.set_endpoints(c.monotonic(), [("203.0.113.5", 40000), ("192.0.2.5", 51822)],
                              NatType.CONE)
    rec = port.core.record
    assert rec.nat_type == NAT_SPLIT_PORT | NatType.CONE and port.core.incarnation > inc
    assert rec.endpoints == (("203.0.113.5", 40000), ("192.0.2.5", 51822))
    assert not port.set_endpoints(c.monotonic(), list(rec.endpoints), NatType.CONE)
    assert not port.set_endpoints(c.monotonic(), [], None)
    assert port.core.record == rec


def test_a_new_nat_mapping_reaches_the_record_the_hole_puncher_and_the_relay() -> None:
    net, a, b, _ = mesh()
    cl = net.clock
    b.node.holepunch = HolePuncher(b.ident, net.rng)
    b.node.relay = Relay(b.key, X25519PrivateKey.generate(net.rng.bytes(32)),
                         cookie_secret=bytes(32))
    r = Roaming(hosts=(b.ep[0],), port=b.ep[1], now=cl.monotonic(), stun=True)
    first = r.stun_finished(cl.monotonic(), ("203.0.113.22", 51821), NatType.CONE)
    moved = ("203.0.113.22", 40123)
    r.tick(cl.monotonic() + 90.0)
    acts = [*first, *r.stun_finished(cl.monotonic() + 90.1, moved, NatType.CONE)]
    for x in acts:
        assert isinstance(x, Reannounce)
        net.run_actions(b, apply_reannounce(b.node, swim(b), x, cl.monotonic(), cl.wall()))
    assert swim(b).core.record.endpoints == (moved, b.ep)
    assert swim(b).core.record.nat_type == NatType.CONE
    assert b.node.holepunch.self_endpoints == (moved, b.ep) and b.node.holepunch.behind_nat
    assert b.node.relay.behind_nat
    assert b.node.counters["reannounced"] == 1  # the first answer is no news to anyone
    net.run(0.3)
    assert record_endpoint(a, b) == moved
