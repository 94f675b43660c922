"""The WireGuard Device, the SWIM core, its mesh adapter and the mesh node have the shape of
sansio.Core, as the NAT and org cores do (tests/nat/test_core_shape.py): receive(now, wall,
data, src), tick(now, wall) and next_deadline()."""

from __future__ import annotations

from meshguard.mesh.swim_port import SwimPort
from meshguard.testing.core_shape import check_core_shape

from .helpers import Net


def test_every_core_below_the_shell_has_the_sansio_entry_points() -> None:
    sn = Net(3).add("a", "192.0.2.1")
    port = sn.node.membership
    assert isinstance(port, SwimPort)
    assert sn.node.device is not None
    for core in (sn.node.device, port.core, port, sn.node):
        check_core_shape(core, b"\x7fgarbage")
