"""MeshNode with a relay core: a rogue member's relayed datagram that claims another member's
origin never reaches the WireGuard device, and moves no peer onto the rogue relay."""

from __future__ import annotations

from dataclasses import replace

from meshguard.crypto.keys import Ed25519PrivateKey, X25519PrivateKey
from meshguard.mesh.node import MeshNode
from meshguard.nat.relay import Relay, RelayPeer

from .helpers import WALL, HsDevice, setup


class RecordingDevice(HsDevice):
    def __init__(self) -> None:
        super().__init__()
        self.got: list[tuple[bytes, tuple[str, int]]] = []

    def receive(self, now: float, wall: float, data: bytes, src: tuple[str, int]
                         ) -> list[object]:
        self.got.append((data, src))
        return []


def test_forged_origin_never_reaches_the_device() -> None:
    node, ms, be, _dev, bkey, b = setup()
    dev = RecordingDevice()
    node.device = dev
    wg = X25519PrivateKey(b"\x41" * 32)
    node.relay = Relay(node.identity_key, wg, cookie_secret=b"\x03" * 32)
    # R (a current member) turns rogue: it claims B sent this through it
    rkey = Ed25519PrivateKey(b"\x23" * 32)
    rwg = X25519PrivateKey(b"\x42" * 32)
    r_view = ms.view[rkey.public_key.raw]
    ms.view[r_view.identity_key] = replace(r_view, wg_key=rwg.public_key.raw)
    node.reconcile(WALL)
    rogue = Relay(rkey.public_key.raw, rwg, cookie_secret=b"\x04" * 32)
    rogue._wall = WALL
    me = RelayPeer(node.identity_key, wg.public_key.raw, None, 3, True)
    forged = rogue._hop(me, bkey.public_key.raw, node.identity_key, rogue._next_counter(),
                        b"\x01\x00\x00\x00" + b"\x00" * 144)
    assert forged is not None
    before = dict(be.peers)
    out = node.receive(1.0, WALL + 1, forged, r_view.gossip_endpoint or ("0", 0))
    assert out == [] and dev.got == []
    assert node.relay.via == {} and be.peers == before
    assert node.relay.counters["relay_bad_origin"] == 1
    assert isinstance(node, MeshNode) and b.identity_key not in node.relay.via
