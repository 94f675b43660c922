"""The mesh node's views of the members for the NAT cores (nat/relay.py, nat/holepunch.py),
built lazily: a datagram that fails to decode, or is dropped before any member lookup, never
pays for a scan of the members.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Generic, TypeVar

from meshguard.mesh.actions import ROUTED_STATES, MemberView
from meshguard.nat.holepunch import PeerInfo
from meshguard.nat.relay import RelayPeer


def relay_peers(members: Iterable[MemberView], own_key: bytes,
                admitted: Callable[[MemberView], bool]) -> dict[bytes, RelayPeer]:
    """Every other member as the relay sees it (alive = routed and `admitted`)."""
    out: dict[bytes, RelayPeer] = {}
    for m in members:
        if m.identity_key == own_key:
            continue
        alive = m.state in ROUTED_STATES and admitted(m)
        out[m.identity_key] = RelayPeer(m.identity_key, m.wg_key, m.gossip_endpoint,
                                        m.nat_type, alive)
    return out


def punch_peers(members: Iterable[MemberView], own_key: bytes,
                admitted: Callable[[MemberView], bool]) -> dict[bytes, PeerInfo]:
    """Every other member as the hole puncher sees it (alive = routed and `admitted`)."""
    out: dict[bytes, PeerInfo] = {}
    for m in members:
        if m.identity_key == own_key:
            continue
        alive = m.state in ROUTED_STATES and admitted(m)
        eps = m.endpoints or ((m.wg_endpoint,) if m.wg_endpoint else ())
        out[m.identity_key] = PeerInfo(m.identity_key, m.wg_key, m.gossip_endpoint,
                                       tuple(eps), m.nat_type, alive)
    return out


V = TypeVar("V")


class LazyView(Mapping[bytes, V], Generic[V]):
    """A member view built on first use: a datagram that fails to decode, or is dropped
    before any member lookup, never builds it. Each build is counted."""

    def __init__(self, build: Callable[[], dict[bytes, V]], counters: Counter[str]) -> None:
        self._build = build
        self._counters = counters
        self._d: dict[bytes, V] | None = None

    def _get(self) -> dict[bytes, V]:
        d = self._d
        if d is None:
            d = self._d = self._build()
            self._counters["member_views_built"] += 1
        return d

    def __getitem__(self, key: bytes) -> V:
        return self._get()[key]

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())
