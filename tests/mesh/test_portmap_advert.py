"""A node's port mapping in its signed record (simulated network): the mapping goes first and
as PUBLIC, a member's tunnel follows it there, and a lost mapping leaves the record."""

from __future__ import annotations

from meshguard.nat.portmap import Method, PortMapping, advertisement
from meshguard.nat.stun_client import NatType

from .helpers import SimNode, joined_pair


def _view(of: SimNode, at: SimNode) -> tuple[tuple[tuple[str, int], ...], int]:
    m = next(m for m in at.node.membership.members() if m.identity_key == of.key)
    return m.endpoints, m.nat_type


def test_a_mapping_is_advertised_first_and_taken_out_when_lost() -> None:
    net, a, b = joined_pair(13)
    port = b.node.membership
    c = net.clock
    stun = ("198.51.100.7", 31000)
    assert port.set_public_endpoints(c.monotonic(), *advertisement(None, stun, NatType.SYMMETRIC))
    mp = PortMapping(Method.PCP, ("198.51.100.7", 51821), 51821, 7200, 7200.0)
    net.nodes[mp.external] = b  # the router forwards the mapped port to b
    first, nat = advertisement(mp, stun, NatType.SYMMETRIC)
    assert port.set_public_endpoints(c.monotonic(), first, nat)
    assert not port.set_public_endpoints(c.monotonic(), first, nat)  # no new incarnation
    net.run(3.0)
    eps, nat_type = _view(b, a)
    assert eps[:3] == (mp.external, stun, b.ep) and nat_type == NatType.PUBLIC
    assert a.node.peers[b.node.wg_key].endpoint == mp.external
    # the mapping is lost: out of the record, and b is symmetric again
    first, nat = advertisement(None, stun, NatType.SYMMETRIC)
    assert port.set_public_endpoints(c.monotonic(), first, nat, drop=[mp.external])
    net.run(3.0)
    eps, nat_type = _view(b, a)
    assert mp.external not in eps and eps[0] == stun and nat_type == NatType.SYMMETRIC
