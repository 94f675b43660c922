"""MeshNode with a HolePuncher: stalled peers trigger a rendezvous request, a proven path
becomes the WireGuard peer's endpoint and starts a handshake at once."""

from __future__ import annotations

from dataclasses import replace

from meshguard.crypto.keys import Ed25519PrivateKey
from meshguard.crypto.keys import X25519PublicKey as _X
from meshguard.nat.holepunch import HolePuncher, PeerInfo, PunchSucceeded
from meshguard.testing.rng import SeededRng
from meshguard.wire.holepunch import HOLEPUNCH_REQUEST, HOLEPUNCH_RESPONSE, STAGE_PROBE, decode
from meshguard.wireguard.actions import SendDatagram

from .helpers import B_EP, NODE_EP, R_EP, WALL, setup


def test_stalled_peer_is_punched_and_gets_the_proven_endpoint() -> None:
    node, ms, be, dev, bkey, b = setup()
    assert not [a for a in node.tick(0.0, WALL) if isinstance(a, SendDatagram)
                and a.data[0] == HOLEPUNCH_REQUEST]
    assert node.next_deadline() is not None and node.next_deadline() <= 4.0  # type: ignore[operator]
    out = node.tick(4.5, WALL + 4.5)
    reqs = [a for a in out if isinstance(a, SendDatagram) and a.data[0] == HOLEPUNCH_REQUEST]
    assert [a.endpoint for a in reqs] == [R_EP]  # to the public member only
    req = decode(reqs[0].data)
    assert req.target == bkey.public_key.raw and req.endpoints == (NODE_EP,)
    # B (its own puncher) gets the request through R, answers and probes our endpoint
    view = {node.identity_key: PeerInfo(node.identity_key, node.wg_key, NODE_EP, (NODE_EP,),
                                        2, True)}
    bhp = HolePuncher(bkey, SeededRng(2), members=lambda: view)
    bhp.set_self((B_EP,), behind_nat=True)
    bout = bhp.receive(4.6, WALL + 4.6, reqs[0].data, R_EP)
    probes = [a for a in bout if isinstance(a, SendDatagram) and a.endpoint == NODE_EP]
    assert len(probes) == 1 and decode(probes[0].data).stage == STAGE_PROBE
    # the probe arrives from a port B never advertised (peer-reflexive): we answer it and
    # probe that port, but a probe proves nothing by itself
    seen_from = ("203.0.113.22", 40007)
    got = node.receive(4.7, WALL + 4.7, probes[0].data, seen_from)
    to_b = [a for a in got if isinstance(a, SendDatagram) and a.endpoint == seen_from]
    answer = [a for a in to_b if a.data[0] == HOLEPUNCH_RESPONSE]
    ours = [a for a in to_b if a.data[0] == HOLEPUNCH_REQUEST]
    assert len(answer) == 1 and len(ours) == 1
    assert be.peers[b.wg_key].endpoint == B_EP and b.wg_key not in node.punched
    # the answer proves the path to B (B's NAT sends it from where B probed us from)
    bres = bhp.receive(4.8, WALL + 4.8, answer[0].data, NODE_EP)
    assert [x.endpoint for x in bres if isinstance(x, PunchSucceeded)] == [NODE_EP]
    # B answers our probe of that port: now the path is proven, from where we sent it
    bans = [a for a in bhp.receive(4.8, WALL + 4.8, ours[0].data, NODE_EP)
            if isinstance(a, SendDatagram)]
    assert len(bans) == 1
    got = node.receive(4.9, WALL + 4.9, bans[0].data, seen_from)
    assert be.peers[b.wg_key].endpoint == seen_from
    assert node.punched[b.wg_key] == (B_EP, seen_from)
    assert dev.peer(_X(b.wg_key)).endpoint == seen_from
    inits = [a for a in got if isinstance(a, SendDatagram) and a.endpoint == seen_from]
    if node.identity_key < b.identity_key:  # the lower key starts the handshake
        assert len(inits) == 1 and dev.initiated == [seen_from]
    else:
        assert inits == [] and dev.initiated == []
    assert node.holepunch is not None and node.holepunch.counters["punch_succeeded"] == 1
    # B moves (a new signed record): its new endpoint wins over the punched one
    moved = ("203.0.113.99", 1000)
    ms.view[b.identity_key] = replace(b, wg_endpoint=moved, gossip_endpoint=moved,
                                      endpoints=(moved,), incarnation=2)
    node.reconcile(WALL + 5)
    assert be.peers[b.wg_key].endpoint == moved and b.wg_key not in node.punched


def test_higher_key_side_waits_for_the_handshake() -> None:
    node, _, _, dev, bkey, _b = setup()
    hp = node.holepunch
    assert hp is not None
    # whichever side this node is, exactly one of the two would initiate
    lower = node.identity_key < bkey.public_key.raw
    node.tick(0.0, WALL)
    node.tick(4.5, WALL + 4.5)
    sess = next(iter(hp._sessions.values()))
    bhp = HolePuncher(bkey, SeededRng(3))
    probe = bhp._sign(HOLEPUNCH_REQUEST, STAGE_PROBE, node.identity_key, sess.session,
                      WALL + 4.6, (), nonce=9)
    got = node.receive(4.6, WALL + 4.6, probe, B_EP)
    ours = [a for a in got if isinstance(a, SendDatagram) and a.data[0] == HOLEPUNCH_REQUEST]
    assert dev.initiated == [] and len(ours) == 1  # a probe proves nothing: we probe back
    ans = bhp._sign(HOLEPUNCH_RESPONSE, STAGE_PROBE, node.identity_key, sess.session,
                    WALL + 4.7, (), nonce=decode(ours[0].data).nonce)
    node.receive(4.7, WALL + 4.7, ans, B_EP)
    assert hp.counters["punch_succeeded"] == 1
    assert bool(dev.initiated) is lower


def test_connected_peers_are_left_alone() -> None:
    node, _, be, _, _, _b = setup()
    be.stats = lambda k: (WALL, 1, 1, B_EP)  # type: ignore[method-assign]
    for t in (0.0, 4.5, 9.0):
        out = node.tick(t, WALL + t)
        assert not [a for a in out if isinstance(a, SendDatagram)
                    and a.data[0] == HOLEPUNCH_REQUEST]


def test_holepunch_messages_without_puncher_are_garbage() -> None:
    node, _, _, _, _, _ = setup()
    node.holepunch = None
    assert node.receive(0.0, WALL, b"\x33MG\x01\x00" + b"\x00" * 200, B_EP) == []
    assert node.counters["garbage_dropped"] == 1


def test_failed_punch_relays_through_the_fastest_public_member() -> None:
    from meshguard.crypto.keys import X25519PrivateKey
    from meshguard.mesh.node import ReflexiveEndpoint
    from meshguard.nat.holepunch import PunchFailed
    from meshguard.nat.relay import Relay, RelayPeer

    node, ms, be, _dev, _bkey, b = setup()
    wg = X25519PrivateKey(b"\x41" * 32)
    node.relay = Relay(node.identity_key, wg, cookie_secret=b"\x03" * 32)
    node.relay.behind_nat = True
    # no relay has answered yet: the failure changes nothing
    assert node._punch_actions([PunchFailed(b.identity_key)], 5.0, WALL) == []
    assert be.peers[b.wg_key].endpoint == B_EP
    # the public member R answers a registration (R's side built from its own core)
    rkey = Ed25519PrivateKey(b"\x23" * 32)
    rwg = X25519PrivateKey(b"\x42" * 32)
    r_view = ms.view[rkey.public_key.raw]
    ms.view[r_view.identity_key] = replace(r_view, wg_key=rwg.public_key.raw)
    node.reconcile(WALL + 6)  # what the membership port does on a change
    regs = [a for a in node.tick(6.0, WALL + 6) if isinstance(a, SendDatagram)
            and a.data[0] == 0x31]
    assert [a.endpoint for a in regs] == [R_EP]
    me = RelayPeer(node.identity_key, wg.public_key.raw, NODE_EP, 3, True)
    r_core = Relay(rkey.public_key.raw, rwg, cookie_secret=b"\x04" * 32,
                   members=lambda: {node.identity_key: me})
    seen_from = ("203.0.113.21", 45000)  # not our STUN mapping: the NAT is symmetric

    class Stun:
        mapped = NODE_EP

    node.stun = Stun()  # type: ignore[assignment]
    echo = r_core.receive(6.0, WALL + 6, regs[0].data, seen_from)
    assert [type(a) for a in echo] == [SendDatagram]
    assert isinstance(echo[0], SendDatagram)
    out = node.receive(6.02, WALL + 6.02, echo[0].data, R_EP)
    assert ReflexiveEndpoint(seen_from, rkey.public_key.raw) in out
    # the echo carried a cookie: the node confirms the address from where it registered
    confirms = [a for a in out if isinstance(a, SendDatagram) and a.data[0] == 0x31]
    assert [a.endpoint for a in confirms] == [R_EP]
    assert r_core.receive(6.03, WALL + 6.03, confirms[0].data, seen_from) == []
    assert r_core._seen_at[node.identity_key] == seen_from
    assert abs(node.relay.rtt[rkey.public_key.raw] - 0.02) < 1e-9
    # now the failure switches B to the relay: a placeholder endpoint, status says relayed
    out = node._punch_actions([PunchFailed(b.identity_key)], 7.0, WALL + 7)
    ep = be.peers[b.wg_key].endpoint
    assert ep is not None and node.relay.is_placeholder(ep)
    assert node.path_of(b.wg_key) == ("relayed", R_EP)
    # device datagrams to the placeholder leave as RelayData to R
    wrapped = node._from_device([SendDatagram(b"\x01\x00\x00\x00hs", ep)])
    assert len(wrapped) == 1 and isinstance(wrapped[0], SendDatagram)
    assert wrapped[0].endpoint == R_EP and wrapped[0].data[0] == 0x31
    # a later successful punch goes direct again
    node._punch_actions([PunchSucceeded(b.identity_key, B_EP, 0.01)], 20.0, WALL + 20)
    assert be.peers[b.wg_key].endpoint == B_EP
    assert node.path_of(b.wg_key) == ("direct", None)
