"""A check that an object has the shape of sansio.Core, for the tests of every core."""

from __future__ import annotations

import inspect

from meshguard.sansio import Core


def _params(fn: object) -> list[str]:
    assert callable(fn)
    return list(inspect.signature(fn).parameters)


def check_core_shape(core: Core[object], garbage: bytes) -> None:
    """receive(now, wall, data, src), tick(now, wall) and next_deadline() with those parameter
    names; `garbage` from the network is counted and dropped, never raised: no actions."""
    assert _params(core.receive) == ["now", "wall", "data", "src"]
    assert _params(core.tick) == ["now", "wall"]
    assert _params(core.next_deadline) == []
    assert list(core.receive(1.0, 1.7e9, garbage, ("192.0.2.9", 1))) == []
    assert isinstance(list(core.tick(1.0, 1.7e9)), list)
