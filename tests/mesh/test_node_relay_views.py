"""MeshNode with 1,000 members: relay and hole-punch datagrams from a stranger (garbage, or
well formed but from nobody) cost no scan of the members: the node's member views are built
once per membership change, not per datagram."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

import pytest

from meshguard.crypto.keys import Ed25519PrivateKey, X25519PrivateKey
from meshguard.mesh.node import MemberView, MeshNode
from meshguard.nat.holepunch import HolePuncher
from meshguard.nat.relay import Relay
from meshguard.testing.rng import SeededRng
from meshguard.wire import holepunch as hpwire
from meshguard.wire import relay as rwire

from .helpers import FakeBackend, FakeMembership, FakeTrust

WALL = 1_700_000_000.0
EVIL = ("198.51.100.66", 4444)


@dataclass
class CountingMembership(FakeMembership):
    scans: int = 0

    def members(self) -> Iterable[MemberView]:
        self.scans += 1
        return super().members()


def big_node(n: int = 1000) -> tuple[MeshNode, CountingMembership, list[MemberView]]:
    me = Ed25519PrivateKey(b"\x21" * 32)
    ms, tr, be = CountingMembership(), FakeTrust(), FakeBackend()
    node = MeshNode(me.public_key.raw, b"\x31" * 32, ms, tr, backend=be,
                    holepunch=HolePuncher(me, SeededRng(1)),
                    relay=Relay(me.public_key.raw, X25519PrivateKey(b"\x41" * 32),
                                cookie_secret=b"\x06" * 32))
    assert node.holepunch is not None
    node.holepunch.set_self((("203.0.113.21", 51821),), behind_nat=True)
    rng = SeededRng(5)
    views = []
    for i in range(n):
        ident = rng.bytes(32)
        ep = (f"10.{i >> 8}.{i & 255}.1", 51821)
        m = MemberView(ident, rng.bytes(32), ep, ep, None, "alive", 1, 1, (ep,))
        tr.keys.add(ident)
        ms.view[ident] = m
        views.append(m)
    node.reconcile(WALL)
    return node, ms, views


@pytest.mark.parametrize("type_byte", [0x31, 0x33, 0x34])
def test_one_byte_datagrams_scan_no_members(type_byte: int) -> None:
    node, ms, _ = big_node()
    before = ms.scans
    for i in range(2000):
        assert node.receive(1.0 + i * 1e-4, WALL + 1, bytes([type_byte]), EVIL) == []
    assert ms.scans == before
    assert node.counters["member_views_built"] == 0


def test_well_formed_stranger_datagrams_build_the_views_once() -> None:
    node, ms, views = big_node()
    stranger = b"\x66" * 32
    relay_junk = rwire.authenticated_part(rwire.RelayMessage(
        stranger, stranger, node.identity_key, b"x" * 64, int(WALL) << 24)) + b"\x00" * 16
    punch = hpwire.PunchMessage(hpwire.HOLEPUNCH_REQUEST, hpwire.STAGE_RENDEZVOUS, stranger,
                                node.identity_key, 1, int(WALL * 1000), (),
                                signature=b"\x00" * 64)
    punch_junk = hpwire.encode(punch)
    before = ms.scans
    for i in range(1000):
        node.receive(1.0 + i * 1e-4, WALL + 1, relay_junk, EVIL)
        node.receive(1.0 + i * 1e-4, WALL + 1, punch_junk, EVIL)
    assert ms.scans - before <= 2  # one build of each view, then lookups
    assert node.counters["member_views_built"] <= 2
    assert node.relay is not None and node.relay.counters["relay_unknown_hop"] == 1000
    assert node.holepunch is not None
    assert node.holepunch.counters["punch_unknown_origin"] == 1000
    # a membership change (through reconcile) is seen by the next datagram
    ms.view[views[0].identity_key] = replace(views[0], state="dead")
    node.reconcile(WALL + 2)
    relay_dead = rwire.authenticated_part(rwire.RelayMessage(
        views[0].identity_key, views[0].identity_key, node.identity_key, b"",
        int(WALL) << 24)) + b"\x00" * 16
    node.receive(3.0, WALL + 3, relay_dead, EVIL)
    assert node.relay.counters["relay_unknown_hop"] == 1001
