"""Org vouches in virtual time, with real trust stores in temporary config dirs: a vouch made on
the admin's node reaches every member, each keeps it in vouched/ and admits the external node;
a revocation by the vouching org drops the node everywhere at once (another org's vouch still
admits it). Forged, untrusted-org, revoked and replayed vouches change nothing, and a member's
flood of them costs a bounded number of signature checks."""

from __future__ import annotations

import math
from pathlib import Path

from meshguard.crypto.keys import Ed25519PrivateKey, X25519PrivateKey
from meshguard.daemon.trust_holder import TrustHolder
from meshguard.identity import store
from meshguard.identity.certificate import sign_certificate
from meshguard.identity.trust import Revocation, TrustStore
from meshguard.identity.vouch import VOUCHED_DIR, sign_vouch
from meshguard.mesh import org_gossip, org_wiring
from meshguard.mesh.node import MeshNode, RevocationLearned, VouchLearned
from meshguard.mesh.org_gossip import OrgGossip, OrgLink, sign_revocation
from meshguard.mesh.swim_port import SwimPort, build_membership
from meshguard.testing.rng import SeededRng
from meshguard.wire import org as wire
from meshguard.wire.org import OrgVouch

from .helpers import OrgNet, SimNode


class VouchNet(OrgNet):
    """Each node's trust is a TrustHolder over a real config dir; what a node learns is kept
    as the daemon keeps it (daemon/mesh_daemon.py): vouches in vouched/, revocations in
    `revocations`, then the node and SWIM ask admission again."""

    def __init__(self, seed: int, tmp: Path, orgs: list[Ed25519PrivateKey]) -> None:
        super().__init__(seed, orgs[0])
        self.tmp = tmp
        self.orgs = orgs

    def add_store_node(self, name: str, ip: str, cert: bool = True) -> SimNode:
        ident = Ed25519PrivateKey(self.rng.bytes(32))
        wg = X25519PrivateKey.generate(self.rng.bytes(32))
        cfg = self.tmp / name
        (cfg / store.TRUSTED_ORGS).mkdir(parents=True)
        for i, org in enumerate(self.orgs):
            (cfg / store.TRUSTED_ORGS / f"org{i}.org").write_bytes(
                store.public_key_file(org.public_key.raw))
        holder = TrustHolder(TrustStore.load(cfg))
        c = self.clock
        raw = sign_certificate(self.org, ident.public_key.raw, name,
                               int(c.wall()) - 60).to_bytes() if cert else None
        ep = (ip, 51821)
        port = build_membership(identity=ident, wg_private=wg, certificate=raw, endpoints=[ep],
                                kernel=False, admitter=holder, rng=self.rng, now=c.monotonic(),
                                wall=c.wall())
        node = MeshNode(ident.public_key.raw, wg.public_key.raw, port, holder,
                        org=OrgGossip(self.rng, wg, identity_key=ident.public_key.raw),
                        certificate=raw)
        sn = SimNode(name, ep, ident, node, holder)  # type: ignore[arg-type]
        self.nodes[ep] = sn
        return sn

    def retrust(self, sn: SimNode) -> None:
        port = sn.node.membership
        assert isinstance(port, SwimPort)
        c = self.clock
        acts = list(sn.node.set_trust(sn.node.trust, c.wall()))
        self.run_actions(sn, [*acts, *port.trust_changed(c.monotonic(), c.wall())])

    def run_actions(self, sn: SimNode, actions: list[object]) -> None:
        super().run_actions(sn, actions)
        holder = sn.node.trust
        assert isinstance(holder, TrustHolder)
        for a in actions:
            if isinstance(a, VouchLearned) and holder.keep_vouch(a.vouch):
                self.retrust(sn)
            elif isinstance(a, RevocationLearned):
                r = a.revocation
                holder.store.revoke(Revocation("cert", r.node_key, r.org_key,
                                               org_gossip.format_label(r)))
                self.retrust(sn)


def tunnel(a: SimNode, b: SimNode) -> bool:
    return b.node.wg_key in a.node.peers


def vouch_on(net: VouchNet, admin: SimNode, v: OrgVouch) -> None:
    """`org-vouch` on the admin's node, then its daemon's reload (trust poller)."""
    holder = admin.node.trust
    assert isinstance(holder, TrustHolder)
    assert holder.store.add_vouch(v) == "accepted"
    net.retrust(admin)
    assert org_wiring.announce_vouches(admin.node, holder.vouches()) == 1


def revoke_on(net: VouchNet, sn: SimNode, rev: wire.CertRevocation) -> None:
    """`org-revoke` where the org key lives (the `revocations` file), then its daemon's
    reload announces it."""
    holder = sn.node.trust
    assert isinstance(holder, TrustHolder)
    holder.store.revoke(Revocation("cert", rev.node_key, rev.org_key,
                                   org_gossip.format_label(rev)))
    net.retrust(sn)
    net.run_actions(sn, sn.node.announce_revocations([rev], net.clock.wall()))


def mesh(tmp: Path, n: int, seed: int, orgs: int = 1
         ) -> tuple[VouchNet, list[SimNode], SimNode]:
    keys = [Ed25519PrivateKey(SeededRng(seed + 100 + i).bytes(32)) for i in range(orgs)]
    net = VouchNet(seed, tmp, keys)
    members = [net.add_store_node(f"m{i}", f"192.0.2.{i + 1}") for i in range(n)]
    x = net.add_store_node("x", "192.0.2.200", cert=False)
    net.join(members[0], [])
    for m in members[1:]:
        net.join(m, [members[0]])
    net.run(8.0)
    net.join(x, [members[0]])
    net.run(4.0)
    return net, members, x


def test_a_vouch_spreads_admits_everywhere_and_a_revocation_drops_it(tmp_path: Path) -> None:
    net, members, x = mesh(tmp_path, 8, seed=31)
    admin = members[0]
    assert not any(tunnel(m, x) for m in members)  # nobody admits the unvouched node
    v = sign_vouch(net.org, x.key, int(net.clock.wall()))
    vouch_on(net, admin, v)
    bound = (2 * math.ceil(math.log2(len(members) + 1)) + 2) * org_gossip.ROUND
    net.run(bound)
    for m in members:
        assert m.node.org is not None and v.target in m.node.org.vouches, m.name
        assert tunnel(m, x), f"{m.name} does not admit the vouched node"
        files = list((m.node.trust.store.config_dir / VOUCHED_DIR).glob("*.vouch"))  # type: ignore[attr-defined]
        assert [f.read_bytes() for f in files] == [v.to_bytes()], m.name
        if m is not admin:
            assert [e for e in m.events if isinstance(e, VouchLearned)] == [VouchLearned(v)]
        adm = m.node.admission(next(x_ for x_ in m.node.membership.members()
                                    if x_.identity_key == x.key), net.clock.wall())
        assert adm.admitted and adm.reason == "org vouch" and adm.orgs == (net.org.public_key.raw,)
    # the revocation, made on another member, drops x on each node as soon as it arrives
    rev = sign_revocation(net.org, x.key, int(net.clock.wall()))
    revoke_on(net, members[3], rev)
    assert not tunnel(members[3], x)
    net.run(bound)
    for m in members:
        assert m.node.org is not None and v.target not in m.node.org.vouches, m.name
        assert not tunnel(m, x), f"{m.name} still routes to the revoked node"
        assert not list((m.node.trust.store.config_dir / VOUCHED_DIR).glob("*.vouch"))  # type: ignore[attr-defined]
        assert all(tunnel(m, o) for o in members if o is not m)
    # a copy of the old vouch, replayed by a member, is refused everywhere
    org = members[1].node.org
    assert org is not None and not org.add_vouch(v, {net.org.public_key.raw})
    assert org.counters["org_vouch_revoked_refused"] == 1


def test_a_revocation_by_one_org_leaves_the_other_orgs_vouch(tmp_path: Path) -> None:
    net, members, x = mesh(tmp_path, 4, seed=32, orgs=2)
    other = net.orgs[1]
    wall = int(net.clock.wall())
    vouch_on(net, members[0], sign_vouch(net.org, x.key, wall))
    vouch_on(net, members[1], sign_vouch(other, x.key, wall))
    net.run(10.0)
    assert all(tunnel(m, x) for m in members)
    revoke_on(net, members[2], sign_revocation(net.org, x.key, wall))
    net.run(10.0)
    for m in members:
        assert tunnel(m, x), f"{m.name} dropped x though another org vouches for it"
        holder = m.node.trust
        assert isinstance(holder, TrustHolder)
        assert holder.store.admit(x.key, None, wall).orgs == (other.public_key.raw,)


def test_the_node_drops_a_vouched_member_before_its_trust_store_knows(tmp_path: Path) -> None:
    net, members, x = mesh(tmp_path, 3, seed=33)
    a = members[1]
    vouch_on(net, members[0], sign_vouch(net.org, x.key, int(net.clock.wall())))
    net.run(8.0)
    assert tunnel(a, x)
    # the org core alone learns the revocation (no shell has recorded it yet)
    rev = sign_revocation(net.org, x.key, int(net.clock.wall()))
    assert a.node.org is not None
    sender = members[2].node.org
    assert sender is not None
    data = sender.seal(wire.encode_revocations([rev]), OrgLink(a.key, a.node.wg_key))
    assert data is not None
    out = a.node.receive(net.clock.monotonic(), net.clock.wall(), data, members[2].ep)
    assert not tunnel(a, x)
    assert any(getattr(e, "identity_key", None) == x.key for e in out)  # its PeerDown


def test_forged_untrusted_and_replayed_vouches_change_nothing(tmp_path: Path) -> None:
    net, members, x = mesh(tmp_path, 3, seed=34)
    a, sender_node = members[0], members[2]
    rogue_org = Ed25519PrivateKey(b"\x07" * 32)
    wall = int(net.clock.wall())
    good = sign_vouch(net.org, x.key, wall)
    forged = OrgVouch(good.org_key, good.node_key, wall + 1, good.signature)
    untrusted = sign_vouch(rogue_org, x.key, wall)
    stolen_sig = OrgVouch(good.org_key, members[1].key, wall, good.signature)
    sender = sender_node.node.org
    assert sender is not None
    to_a = OrgLink(a.key, a.node.wg_key)
    for v in (forged, untrusted, stolen_sig):
        body = wire.encode_vouches([v])
        # from a stranger: dropped before any check of the items
        assert a.node.receive(net.clock.monotonic(), wall, body, ("203.0.113.9", 4000)) == []
        data = sender.seal(body, to_a)
        assert data is not None
        assert a.node.receive(net.clock.monotonic(), wall, data, sender_node.ep) == []
    org = a.node.org
    assert org is not None and org.vouches == {}
    assert org.counters["org_not_member"] == 3
    assert org.counters["org_vouch_bad_signature"] == 2
    assert org.counters["org_vouch_untrusted"] == 1
    net.run(5.0)
    assert not any(tunnel(m, x) for m in members)
    assert not any((m.node.trust.store.config_dir / VOUCHED_DIR).exists()  # type: ignore[attr-defined]
                   for m in members)
    # a valid vouch from a member is taken once; its replay is a dictionary lookup
    data = sender.seal(wire.encode_vouches([good]), to_a)
    assert data is not None
    out = a.node.receive(net.clock.monotonic(), wall, data, sender_node.ep)
    assert [e for e in out if isinstance(e, VouchLearned)] == [VouchLearned(good)]
    assert a.node.receive(net.clock.monotonic(), wall, data, sender_node.ep) == []
    assert org.counters["org_vouch_known"] >= 1


def test_a_members_vouch_flood_costs_bounded_signature_checks(tmp_path: Path) -> None:
    net, members, _x = mesh(tmp_path, 2, seed=35)
    a, b = members
    sender, receiver = b.node.org, a.node.org
    assert sender is not None and receiver is not None
    to_a = OrgLink(a.key, a.node.wg_key)
    rng = SeededRng(9)
    bogus = [OrgVouch(net.org.public_key.raw, rng.bytes(32), i, rng.bytes(64))
             for i in range(2000)]
    now, wall = net.clock.monotonic(), net.clock.wall()
    for i in range(0, len(bogus), wire.MAX_ITEMS):
        data = sender.seal(wire.encode_vouches(bogus[i : i + wire.MAX_ITEMS]), to_a)
        assert data is not None
        assert a.node.receive(now, wall, data, b.ep) == []
    checked = receiver.counters["org_vouch_bad_signature"]
    assert checked <= org_gossip.VERIFY_BURST_PER_SENDER
    assert receiver.counters["org_verify_rate_limited"] == len(bogus) - checked
    assert receiver.vouches == {}


def test_vouch_codec_round_trip_and_packet_size() -> None:
    org = Ed25519PrivateKey(b"\x03" * 32)
    vs = [sign_vouch(org, bytes([i]) * 32, 1000 + i) for i in range(wire.MAX_ITEMS)]
    data = wire.encode_vouches(vs)
    assert data[0] == wire.ORG_TRUST_VOUCH == 0x43
    assert len(data) + wire.LINK_LEN <= 1280 and wire.decode_vouches(data) == tuple(vs)
    assert data[wire.HEADER_LEN:wire.HEADER_LEN + wire.VOUCH_ITEM_LEN] == vs[0].to_bytes()


def test_a_newcomer_and_a_restarted_member_get_the_vouch(tmp_path: Path) -> None:
    net, members, x = mesh(tmp_path, 4, seed=36)
    v = sign_vouch(net.org, x.key, int(net.clock.wall()))
    vouch_on(net, members[0], v)
    net.run(60.0)  # the push rounds are long over
    late = net.add_store_node("late", "192.0.2.50")
    net.join(late, [members[1]])
    net.run(6.0)
    assert late.node.org is not None and v.target in late.node.org.vouches
    assert tunnel(late, x) and all(tunnel(late, m) for m in members)
    # a restart reads vouched/ again: the vouch admits at once and is offered to others
    again = TrustHolder(TrustStore.load(tmp_path / "late"))
    assert again.vouches() == [v]
    assert again.admit(x.key, None, net.clock.wall()).reason == "org vouch"
    fresh = OrgGossip(SeededRng(3))
    assert fresh.add_vouch(again.vouches()[0], again.trusted_org_keys())
