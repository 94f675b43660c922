"""Every sans-IO core this package and mesh/org_gossip.py hold has the shape of sansio.Core:
receive(now, wall, data, src), tick(now, wall) and next_deadline(), each returning actions."""

from __future__ import annotations

import pytest

from meshguard.crypto.keys import Ed25519PrivateKey, X25519PrivateKey
from meshguard.mesh.org_gossip import OrgGossip
from meshguard.nat.holepunch import HolePuncher
from meshguard.nat.portmap import PortMapper
from meshguard.nat.relay import Relay
from meshguard.nat.stun_client import StunClient
from meshguard.testing.core_shape import check_core_shape
from meshguard.testing.rng import SeededRng

CORES = {
    "stun": lambda: StunClient(SeededRng(1), [("192.0.2.1", 3478)]),
    "relay": lambda: Relay(b"\x01" * 32, X25519PrivateKey(b"\x02" * 32),
                           cookie_secret=b"\x03" * 32),
    "holepunch": lambda: HolePuncher(Ed25519PrivateKey(b"\x04" * 32), SeededRng(2)),
    "org": lambda: OrgGossip(SeededRng(3)),
    "portmap": lambda: PortMapper(SeededRng(4), gateway="192.0.2.1", client_ip="192.0.2.2",
                                  internal_port=51821),
}


@pytest.mark.parametrize("name", sorted(CORES))
def test_core_entry_points(name: str) -> None:
    check_core_shape(CORES[name](), b"\x00garbage")
