"""The mesh node's side of signed-policy gossip (0x44-0x46, wire/policy_gossip.py), between
MeshNode (mesh/node.py) and its optional policy core (mesh/policy_gossip.py).

MeshNode calls `receive` for each policy datagram and `tick` from its tick; `bind` tells the
core who the members are (the members with a tunnel, the gossip endpoint each advertises, the
trusted orgs), through the same views the org gossip uses (mesh/org_wiring.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshguard.mesh import org_wiring
from meshguard.mesh.actions import Action
from meshguard.mesh.policy_gossip import PolicyGossip
from meshguard.sansio import Endpoint

if TYPE_CHECKING:
    from meshguard.mesh.node import MeshNode

__all__ = ["bind", "receive", "tick"]


def _endpoint_of(node: MeshNode, wg_key: bytes) -> Endpoint | None:
    """The gossip endpoint the member with a tunnel under `wg_key` advertises."""
    peer = node.peers.get(wg_key)
    if peer is None:
        return None
    for m in node.membership.members():
        if m.identity_key == peer.identity_key and m.wg_key == wg_key:
            return m.gossip_endpoint
    return None


def bind(node: MeshNode, core: PolicyGossip, wall: float | None) -> None:
    if wall is not None:
        node._views_wall = wall
    if core.member_of is None:
        core.bind(node.identity_key, node._org_member, lambda wg: _endpoint_of(node, wg),
                  lambda: org_wiring._links(node), lambda: org_wiring._peers(node),
                  node.trusted_orgs)


def receive(node: MeshNode, now: float, wall: float, data: bytes, src: Endpoint
            ) -> list[Action]:
    core = node.policy
    if core is None:
        node.counters["garbage_dropped"] += 1
        return []
    bind(node, core, wall)
    return list(core.receive(now, wall, data, src))


def tick(node: MeshNode, now: float, wall: float) -> list[Action]:
    """The core's timers: only when one is due or the members changed (newcomers)."""
    core = node.policy
    if core is None or not core.busy():
        return []
    due = core.next_deadline()
    if node._policy_seen != node.names_version or (due is not None and now >= due):
        node._policy_seen = node.names_version
        bind(node, core, wall)
        return list(core.tick(now, wall))
    return []
