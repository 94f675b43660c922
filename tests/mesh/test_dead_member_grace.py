"""A dead member leaves the member views (what `status` lists) DEAD_GRACE seconds after it
died, in virtual time; the SWIM core still remembers it, so its old record stays refused."""

from __future__ import annotations

from meshguard.mesh.swim_port import DEAD_GRACE, SwimPort
from meshguard.swim.config import DEFAULT_CONFIG
from meshguard.wire import gossip as g

from .helpers import Net, SimNode


def _views(sn: SimNode) -> dict[bytes, str]:
    return {m.identity_key: m.state for m in sn.node.membership.members()}


def _port(sn: SimNode) -> SwimPort:
    port = sn.node.membership
    assert isinstance(port, SwimPort)
    return port


def _replay_join(net: Net, to: SimNode, raw_record: bytes, seq: int) -> None:
    """c's last signed record, replayed in a Join (with a new nonce) from an address of the
    attacker's."""
    body = g.encode_body(g.Packet(g.JOIN, seq=seq, record=raw_record))
    src = ("203.0.113.9", 51821)
    c = net.clock
    net.run_actions(to, to.node.receive(c.monotonic(), c.wall(), body, src))


def test_a_dead_member_leaves_the_views_after_the_grace_and_its_old_record_stays_refused(
) -> None:
    assert DEAD_GRACE == 30.0 < DEFAULT_CONFIG.dead_reap_after
    net = Net(21)
    a, b, c = (net.add(n, f"192.0.2.{i + 1}") for i, n in enumerate("abc"))
    for x in (a, b, c):
        x.trust.keys.update(y.key for y in (a, b, c) if y is not x)
    net.join(a, [])
    net.join(b, [a])
    net.join(c, [a])
    net.run(6.0)
    assert _views(a)[c.key] == "alive"
    old = _port(c).core.raw_record  # an earlier record of c's, then its latest one
    _port(c).core.update_self(net.clock.monotonic(), endpoints=[c.ep, ("198.51.100.3", 9)])
    net.run(5.0)
    latest = _port(c).core.raw_record
    incarnation = _port(c).core.incarnation
    assert latest != old and _port(a).core.high_water()[c.key] == incarnation
    net.down.add(c.ep)  # c stops answering
    start = net.clock.monotonic()
    while _views(a).get(c.key) != "dead":
        net.step()
        assert net.clock.monotonic() - start < 30.0, "c was never declared dead"
    died = net.clock.monotonic()
    while net.clock.monotonic() < died + DEAD_GRACE - 1.0:
        net.step()
        assert _views(a).get(c.key) == "dead", "c left the views before the grace ended"
        assert c.node.wg_key not in a.node.peers
    while c.key in _views(a):  # the port asks to be ticked at the end of the grace
        net.step()
    assert DEAD_GRACE - 1.0 <= net.clock.monotonic() - died <= DEAD_GRACE + 0.1
    # hidden, not forgotten: the core keeps c and its incarnation, so even c's latest record,
    # replayed, changes nothing
    assert _port(a).core.state_of(c.key) == "dead"
    _replay_join(net, a, latest, 7)
    _replay_join(net, a, old, 8)
    net.run(1.0)
    assert c.key not in _views(a) and _port(a).core.state_of(c.key) == "dead"
    # once the core reaps c, its high-water mark still refuses the earlier record
    net.run(DEFAULT_CONFIG.dead_reap_after - DEAD_GRACE + 5.0)
    assert _port(a).core.state_of(c.key) is None
    assert _port(a).core.high_water()[c.key] == incarnation
    _replay_join(net, a, old, 9)
    net.run(1.0)
    assert c.key not in _views(a) and _port(a).core.state_of(c.key) is None
    assert c.node.wg_key not in a.node.peers
    # a newer record (c is back, with a new incarnation) shows it again
    net.down.discard(c.ep)
    _port(c).core.update_self(net.clock.monotonic(), endpoints=[c.ep])
    net.join(c, [a])
    net.run(5.0)
    assert _views(a).get(c.key) == "alive"
    assert c.node.wg_key in a.node.peers
