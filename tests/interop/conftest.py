"""Fixtures for real-network interop tests (namespaces, userspace WireGuard processes)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from meshguard.testing.netns import Testbed, netns_skip_reason


@pytest.fixture
def tb() -> Iterator[Testbed]:
    reason = netns_skip_reason()
    if reason:
        pytest.skip(reason)
    with Testbed() as bed:
        yield bed
