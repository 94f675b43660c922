"""The WireGuard Device, the SWIM core, its mesh adapter and the mesh node have the shape of
sansio.Core, as the NAT and org cores do (tests/nat/test_core_shape.py): receive(now, wall,
data, src), tick(now, wall) and next_deadline()."""

from __future__ import annotations

import inspect

from meshguard.mesh.swim_port import SwimPort
from meshguard.sansio import Core

from .helpers import Net


def _params(fn: object) -> list[str]:
    assert callable(fn)
    return list(inspect.signature(fn).parameters)


def test_every_core_below_the_shell_has_the_sansio_entry_points() -> None:
    sn = Net(3).add("a", "192.0.2.1")
    port = sn.node.membership
    assert isinstance(port, SwimPort)
    cores: dict[str, Core[object]] = {"device": sn.node.device, "membership": port.core,
                                      "swim_port": port, "node": sn.node}
    for name, core in cores.items():
        assert _params(core.receive) == ["now", "wall", "data", "src"], name
        assert _params(core.tick) == ["now", "wall"], name
        assert _params(core.next_deadline) == [], name
        # garbage is counted and dropped, never raised: no actions
        assert list(core.receive(1.0, 1.7e9, b"\x7fgarbage", ("192.0.2.9", 1))) == [], name
