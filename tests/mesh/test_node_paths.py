"""MeshNode's path selection (mesh/paths.py): a relayed handshake does not stop punching,
relayed datagrams in flight after going direct keep the direct path, a dead direct path
falls back to the relay, and the path report says why."""

from __future__ import annotations

from dataclasses import replace

from meshguard.crypto.keys import Ed25519PrivateKey, X25519PrivateKey
from meshguard.mesh import paths
from meshguard.mesh.node import MeshNode
from meshguard.nat.holepunch import PunchFailed, PunchSucceeded
from meshguard.nat.relay import Relay
from meshguard.sansio import Endpoint
from meshguard.wire.holepunch import HOLEPUNCH_REQUEST
from meshguard.wireguard.actions import SendDatagram

from .helpers import B_EP, R_EP, WALL, FakeBackend, FakeMembership, setup

Stats = tuple[float, int, int, Endpoint | None]


def _with_relay(node: MeshNode, ms: FakeMembership) -> Relay:
    rkey = Ed25519PrivateKey(b"\x23" * 32)
    rwg = X25519PrivateKey(b"\x42" * 32)
    r = ms.view[rkey.public_key.raw]
    ms.view[r.identity_key] = replace(r, wg_key=rwg.public_key.raw)
    node.relay = Relay(node.identity_key, X25519PrivateKey(b"\x41" * 32),
                       cookie_secret=b"\x03" * 32, behind_nat=True)
    node.relay.rtt[r.identity_key] = 0.02  # R answered a registration
    node.reconcile(WALL)
    return node.relay


def _stats(be: FakeBackend, table: dict[bytes, Stats]) -> None:
    def stats(wg: bytes) -> Stats:
        if wg in table:
            return table[wg]
        p = be.peers.get(wg)
        return (0.0, 0, 0, p.endpoint if p else None)

    be.stats = stats  # type: ignore[method-assign]


def _requests(out: list[object]) -> list[SendDatagram]:
    return [a for a in out if isinstance(a, SendDatagram) and a.data[0] == HOLEPUNCH_REQUEST]


def test_a_handshake_through_the_relay_does_not_stop_punching() -> None:
    node, ms, be, _dev, _bkey, b = setup()
    rl = _with_relay(node, ms)
    assert b.wg_key is not None
    node._punch_actions([PunchFailed(b.identity_key)], 5.0, WALL + 5)
    ph = be.peers[b.wg_key].endpoint
    assert rl.is_placeholder(ph)
    table: dict[bytes, Stats] = {b.wg_key: (WALL + 6, 500, 500, ph)}  # a fresh handshake
    _stats(be, table)
    p = node._punch_lookup()[b.identity_key]
    assert not node._punch_connected(p)  # through the relay: not "connected directly"
    sent = [a for t in range(6, 40) for a in _requests(node.tick(float(t), WALL + t))]
    assert len(sent) >= 2  # punching goes on, with backoff
    # the same handshake on a direct endpoint counts
    table[b.wg_key] = (WALL + 6, 500, 500, B_EP)
    assert node._punch_connected(p)


def test_relayed_datagrams_in_flight_keep_the_direct_path() -> None:
    node, ms, be, _dev, _bkey, b = setup()
    rl = _with_relay(node, ms)
    assert b.wg_key is not None
    node._punch_actions([PunchFailed(b.identity_key)], 5.0, WALL + 5)
    ph = rl.placeholder(b.identity_key)
    node._punch_actions([PunchSucceeded(b.identity_key, B_EP, 0.01)], 20.0, WALL + 20)
    assert be.peers[b.wg_key].endpoint == B_EP and b.identity_key not in rl.via
    _stats(be, {b.wg_key: (WALL + 20, 1, 1, B_EP)})
    # the relay core took B up again for a datagram sent before B switched: it goes to the
    # device as if from B's direct endpoint, and the relay is dropped again
    rl.via[b.identity_key] = ms.view[next(iter(rl.rtt))].identity_key
    assert paths.relayed_arrival(node, rl, 21.0, ph, True) == (B_EP, False)
    assert b.identity_key not in rl.via and node.counters["path_relayed_in_grace"] == 1
    # later, a relayed datagram means B moved to the relay: follow it
    assert paths.relayed_arrival(node, rl, 30.0, ph, True) == (ph, True)
    assert node.counters["path_followed_to_relay"] == 1
    st = node.paths.state(b.identity_key) if node.paths else None
    assert st is not None and st[0] == "relayed"


def test_a_dead_direct_path_falls_back_to_the_relay() -> None:
    node, ms, be, dev, _bkey, b = setup()
    rl = _with_relay(node, ms)
    assert b.wg_key is not None
    table: dict[bytes, Stats] = {}
    _stats(be, table)
    t, rx, tx = 0.0, 0, 0
    fell_back_at = None
    while t < 30.0:
        tx += 300
        if t < 10.0:
            rx += 300  # B answers until t=10, then the path dies
        table[b.wg_key] = (WALL + 1, rx, tx, be.peers[b.wg_key].endpoint)
        node.tick(t, WALL + t)
        if fell_back_at is None and rl.is_placeholder(be.peers[b.wg_key].endpoint):
            fell_back_at = t
        t = round(t + 0.25, 6)
    assert fell_back_at is not None and 10.0 < fell_back_at < 20.0, fell_back_at
    # the direct path was probed with a handshake first (the fake device keeps the endpoint
    # only new_path gave it: none), then a handshake went through the relay
    assert len(dev.initiated) == 2 and dev.initiated[0] is None
    assert rl.is_placeholder(dev.initiated[1])
    assert node.counters["path_direct_to_relay"] == 1
    rep = node.path_report(b.wg_key, 30.0, WALL + 30)
    assert rep.path == "relayed" and rep.via_endpoint == R_EP
    assert "stopped answering" in rep.reason and rep.next_punch_in is not None


def test_path_report_of_a_direct_and_of_an_unknown_peer() -> None:
    node, _ms, be, _dev, _bkey, b = setup()
    assert b.wg_key is not None
    _stats(be, {b.wg_key: (WALL, 1, 1, B_EP)})
    node.tick(0.0, WALL)
    rep = node.path_report(b.wg_key, 1.0, WALL + 1)
    assert rep.path == "direct" and rep.endpoint == B_EP and rep.via is None
    assert rep.reason.startswith("direct to 203.0.113.22:51821")
    assert rep.peer_nat == "cone" and rep.last_punch is None
    gone = node.path_report(b"\x99" * 32, 1.0, WALL + 1)
    assert gone.path == "none" and gone.reason.startswith("no tunnel")


def test_forged_relay_data_changes_no_path() -> None:
    node, ms, be, _dev, _bkey, b = setup()
    rl = _with_relay(node, ms)
    assert b.wg_key is not None
    node._punch_actions([PunchFailed(b.identity_key)], 5.0, WALL + 5)
    node._punch_actions([PunchSucceeded(b.identity_key, B_EP, 0.01)], 20.0, WALL + 20)
    before = (dict(be.peers), dict(rl.via), node.paths.state(b.identity_key)
              if node.paths else None)
    # RelayData claiming to come from B through R, with a made-up MAC, from a stranger
    forged = bytes([0x31]) + b"MG" + b"\x00" * 150
    for _ in range(3):
        node.receive(20.5, WALL + 20.5, forged, ("198.51.100.66", 4000))
    after = (dict(be.peers), dict(rl.via), node.paths.state(b.identity_key)
             if node.paths else None)
    assert after == before
    assert node.counters["path_relayed_in_grace"] == 0
