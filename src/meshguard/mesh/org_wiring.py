"""The mesh node's side of org messages: OrgCertRevoke (0x42), OrgTrustVouch (0x43) and
OrgAliasAnnounce (0x41) between MeshNode (mesh/node.py) and its optional org core
(mesh/org_gossip.py).

MeshNode calls in here from a few places only:

* `receive` for each org datagram, `tick` from its tick (a push is due or the members
  changed), `announce_revocations`, `announce_vouches` and `announce_alias` for local ones;
* `bind` tells the org core who the members are (its packets are MACed member to member):
  the members with a tunnel, their gossip endpoints and the trusted orgs;
* `learned` applies what the core learned: a new revocation takes effect at once (the
  admission cache is dropped and the node reconciles, so a member admitted only by the revoked
  certificate or vouch loses its tunnel in the same call), a new alias changes the DNS names.
  A new vouch goes to the shell as `VouchLearned`: the trust store admits by it once the
  shell has kept it in vouched/ (daemon/mesh_daemon.py), and the node then reconciles.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

from meshguard.identity.addressing import org_domain
from meshguard.identity.org_aliases import KeptAliases
from meshguard.mesh.actions import Action, AliasLearned, RevocationLearned
from meshguard.mesh.org_gossip import OrgAction, OrgGossip, OrgLink
from meshguard.sansio import Endpoint, SendDatagram
from meshguard.wire.org import AliasAnnouncement, CertRevocation, OrgVouch

if TYPE_CHECKING:
    from meshguard.mesh.node import MeshNode, _Cached

log = logging.getLogger(__name__)

__all__ = ["announce_alias", "announce_revocations", "announce_vouches", "bind", "learned",
           "receive", "restore_aliases", "tick"]


def bind(node: MeshNode, org: OrgGossip, wall: float | None) -> None:
    """Tell the org core who the members are (its packets are MACed member to member)."""
    if wall is not None:
        node._views_wall = wall
    if org.member_of is None:
        org.bind(node.identity_key, node._org_member, lambda: _links(node),
                 lambda: _peers(node), node.trusted_orgs)


def _peers(node: MeshNode) -> list[Endpoint]:
    """The gossip endpoints of the members with a tunnel (at the latest wall time known)."""
    wall = node._views_wall
    if wall is None:
        return []
    return [g for g in (x.gossip_endpoint for x in node.routed_members(wall))
            if g is not None]


def _links(node: MeshNode) -> dict[Endpoint, OrgLink]:
    """Gossip endpoint -> member, for the members with a tunnel."""
    ident = {p.identity_key: p.wg_key for p in node.peers.values()}
    out: dict[Endpoint, OrgLink] = {}
    for m in node.membership.members():
        wg = ident.get(m.identity_key)
        if wg is not None and wg == m.wg_key and m.gossip_endpoint is not None:
            out[m.gossip_endpoint] = OrgLink(m.identity_key, wg)
    return out


def tick(node: MeshNode, now: float, wall: float) -> list[Action]:
    """The org core's pushes: only when one is due or the members changed (new ones get
    everything)."""
    org = node.org
    if org is None or not org.has_items():
        return []
    due = org.next_deadline()
    if node._org_seen != node.names_version or (due is not None and now >= due):
        node._org_seen = node.names_version
        bind(node, org, wall)
        return [a for a in org.tick(now, wall) if isinstance(a, SendDatagram)]
    return []


def receive(node: MeshNode, now: float, wall: float, data: bytes, src: Endpoint
            ) -> list[Action]:
    if node.org is None:
        node.counters["garbage_dropped"] += 1
        return []
    bind(node, node.org, wall)
    return learned(node, node.org.receive(now, wall, data, src), wall)


def learned(node: MeshNode, actions: list[OrgAction], wall: float) -> list[Action]:
    out: list[Action] = list(actions)
    revs = [a.revocation for a in actions if isinstance(a, RevocationLearned)]
    aliases = [a.alias for a in actions if isinstance(a, AliasLearned)]
    if aliases:
        node.names_version += 1
    if revs:
        for r in revs:
            if r.node_key == node.identity_key:
                log.error("our org %s revoked THIS node's certificate: members that trust "
                          "us only through it drop our tunnels", r.org_key.hex()[:12])
            elif node._revocation_logs.take(wall):
                log.warning("org %s revoked its certificate of %s", r.org_key.hex()[:12],
                            r.node_key.hex()[:12])
            else:
                node.counters["revocation_logs_suppressed"] += 1
        node._admission.clear()
        node.names_version += 1
        out += node.reconcile(wall)
    return out


def announce_revocations(node: MeshNode, revs: list[CertRevocation], wall: float
                         ) -> list[Action]:
    """Local revocations (from the `revocations` file or an org admin): those new and
    valid take effect now and start spreading. No RevocationLearned for them."""
    if node.org is None:
        return []
    bind(node, node.org, None)
    trusted = node.trusted_orgs()
    new = [r for r in revs if node.org.add_revocation(r, trusted)]
    if not new:
        return []
    node._admission.clear()
    node.names_version += 1
    return list(node.reconcile(wall))


def announce_vouches(node: MeshNode, vouches: list[OrgVouch]) -> int:
    """Vouches from vouched/ (made here by `org-vouch`, or kept from the mesh): the new and
    valid ones start spreading; returns how many. The trust store admits by them already."""
    if node.org is None:
        return 0
    bind(node, node.org, None)
    trusted = node.trusted_orgs()
    return sum(1 for v in vouches if node.org.add_vouch(v, trusted))


def announce_alias(node: MeshNode, alias: AliasAnnouncement, wall: float | None = None
                   ) -> bool:
    """This org's own alias (org/alias); with `wall`, one dated in the future is refused
    here as every other member would refuse it."""
    if node.org is None:
        return False
    bind(node, node.org, None)
    if not node.org.add_alias(alias, node.trusted_orgs(), wall):
        return False
    node.names_version += 1
    return True


def restore_aliases(node: MeshNode, kept: KeptAliases, wall: float) -> int:
    """The aliases kept in the config dir (identity/org_aliases.py; each verified again
    there), taken as a local item: still only from a trusted org, newer than what the node
    has, not dated in the future, signature checked. The refused ones are counted
    (`org_alias_file_refused`); returns how many were taken."""
    if node.org is None:
        return 0
    bind(node, node.org, None)
    trusted = node.trusted_orgs()
    taken = sum(1 for a in kept.aliases if node.org.add_alias(a, trusted, wall))
    if kept.refused:
        node.org.counters["org_alias_file_refused"] += kept.refused
    if taken:
        node.names_version += 1
    return taken


def vouch_standing(org: OrgGossip, node_key: bytes, c: _Cached) -> _Cached:
    """A vouch admission less the vouching orgs whose revocation of the node the org core
    learned before the trust store did: refused once no vouching org is left."""
    left = tuple(o for o in c.orgs if (o, node_key) not in org.revocations)
    if left == c.orgs:
        return c
    if not left:
        return dataclasses.replace(c, admitted=False, reason="vouch revoked", orgs=(),
                                   org_domain=None)
    return dataclasses.replace(c, org_domain=org_domain(left[0]), orgs=left)
