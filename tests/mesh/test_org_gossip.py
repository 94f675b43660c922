"""Org revocations and aliases in virtual time: a revocation signed by the org reaches every
member within the gossip spread bound, takes the revoked node's tunnel down everywhere, reaches
late joiners, survives a restart through the `revocations` file; forged or untrusted-org
revocations are ignored and never forwarded. Aliases give DNS names."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from meshguard.crypto.keys import Ed25519PrivateKey
from meshguard.dns.resolver import Resolver, build_table
from meshguard.identity.addressing import org_domain
from meshguard.identity.certificate import sign_certificate
from meshguard.identity.trust import Revocation, TrustStore
from meshguard.mesh import org_gossip
from meshguard.mesh.node import AliasLearned, RevocationLearned
from meshguard.mesh.org_gossip import (
    OrgGossip,
    OrgLink,
    format_label,
    format_line,
    parse_line,
    revocation_valid,
    sign_alias,
    sign_revocation,
)
from meshguard.testing.rng import SeededRng
from meshguard.wire import dns
from meshguard.wire import org as wire
from meshguard.wireguard.actions import SendDatagram

from .helpers import CertTrust, OrgNet, SimNode, cluster


def has_tunnel(a: SimNode, b: SimNode) -> bool:
    return b.node.wg_key in a.node.peers


def test_revocation_reaches_every_member_within_the_spread_bound() -> None:
    n = 12
    net, nodes = cluster(n)
    origin, victim = nodes[3], nodes[7]
    rev = sign_revocation(net.org, victim.key, int(net.clock.wall()))
    out = origin.node.announce_revocations([rev], net.clock.wall())
    assert not has_tunnel(origin, victim)  # at once on the announcing node
    assert any(getattr(a, "wg_key", None) == victim.node.wg_key for a in out)
    # push gossip: FANOUT members per ROUND; infection is exponential, so every member has it
    # within ~log_(1+FANOUT)(n) + ln(n) rounds w.h.p.; we allow 2*ceil(log2 n) + 2 rounds
    bound = (2 * math.ceil(math.log2(n)) + 2) * org_gossip.ROUND
    start = net.clock.monotonic()
    reached: dict[str, float] = {}
    while net.clock.monotonic() - start < bound and len(reached) < n - 2:
        net.step()
        for x in nodes:
            if x not in (origin, victim) and x.name not in reached and x.node.org is not None \
                    and rev.target in x.node.org.revocations:
                reached[x.name] = net.clock.monotonic() - start
    # (the revoked node itself is no longer gossiped to by anyone: it need not know)
    assert len(reached) == n - 2, f"only {sorted(reached)} within {bound} s"
    for x in nodes:
        if x is victim:
            continue
        assert not has_tunnel(x, victim), f"{x.name} still routes to the revoked node"
        if x is not origin:
            assert x.name in reached
            assert [e for e in x.events if isinstance(e, RevocationLearned)] == \
                [RevocationLearned(rev)]
        for y in nodes:
            if y is not x and y is not victim:
                assert has_tunnel(x, y)  # nobody else is affected
    # budget is spent: after the retransmit rounds no more revocation pushes (bounded)
    net.run(40.0)
    sent_before = sum(x.node.org.counters["org_revoke_known"] for x in nodes if x.node.org)
    net.run(5.0)
    sent_after = sum(x.node.org.counters["org_revoke_known"] for x in nodes if x.node.org)
    assert sent_after - sent_before <= n  # only the rare periodic sync remains


def test_late_joiner_learns_the_revocation_and_never_routes_to_the_node() -> None:
    net, nodes = cluster(5, seed=8)
    victim = nodes[2]
    rev = sign_revocation(net.org, victim.key, int(net.clock.wall()))
    nodes[0].node.announce_revocations([rev], net.clock.wall())
    net.run(60.0)  # the push rounds are long over
    late = net.add_cert_node("late", "192.0.2.50")
    net.join(late, [nodes[1]])
    net.run(5.0)
    assert late.node.org is not None and rev.target in late.node.org.revocations
    assert not has_tunnel(late, victim)
    assert all(has_tunnel(late, x) for x in nodes if x is not victim)


def test_forged_and_untrusted_revocations_are_ignored_and_not_forwarded() -> None:
    net, nodes = cluster(3, seed=5)
    a, victim = nodes[0], nodes[1]
    other_org = Ed25519PrivateKey(b"\x07" * 32)
    wall = net.clock.wall()
    forged = sign_revocation(net.org, victim.key, int(wall))
    forged = wire.CertRevocation(forged.org_key, forged.node_key, forged.revoked_at + 1,
                                 forged.signature)  # time changed after signing
    untrusted = sign_revocation(other_org, victim.key, int(wall))
    wrong_node = sign_revocation(net.org, victim.key, int(wall))
    wrong_node = wire.CertRevocation(wrong_node.org_key, nodes[2].key, wrong_node.revoked_at,
                                     wrong_node.signature)
    assert not revocation_valid(forged) and not revocation_valid(wrong_node)
    sender = nodes[2].node.org
    assert sender is not None
    to_a = OrgLink(a.key, a.node.wg_key)
    for r in (forged, untrusted, wrong_node):
        # from a stranger: dropped before any check of the items
        out = a.node.receive(net.clock.monotonic(), wall, wire.encode_revocations([r]),
                                      ("203.0.113.9", 4000))
        assert out == []
        # from a member (MACed for a): the items are checked and refused
        data = sender.seal(wire.encode_revocations([r]), to_a)
        assert data is not None
        out = a.node.receive(net.clock.monotonic(), wall, data, nodes[2].ep)
        assert out == []
    org = a.node.org
    assert org is not None and org.revocations == {}
    assert org.counters["org_not_member"] == 3
    assert org.counters["org_revoke_bad_signature"] == 2
    assert org.counters["org_revoke_untrusted"] == 1
    net.run(5.0)
    assert has_tunnel(a, victim) and has_tunnel(nodes[2], victim)
    assert all(x.node.org is not None and not x.node.org.revocations for x in nodes)


def test_authorized_key_admission_survives_a_certificate_revocation() -> None:
    net, nodes = cluster(3, seed=6)
    a, victim = nodes[0], nodes[1]
    assert isinstance(a.trust, CertTrust)
    a.trust.keys[victim.key] = "friend"
    a.node.set_trust(a.trust, net.clock.wall())
    rev = sign_revocation(net.org, victim.key, int(net.clock.wall()))
    nodes[2].node.announce_revocations([rev], net.clock.wall())
    net.run(5.0)
    assert a.node.org is not None and rev.target in a.node.org.revocations
    assert has_tunnel(a, victim) and not has_tunnel(nodes[2], victim)
    names = dict(a.node.dns_table(net.clock.wall()))
    assert "friend.mesh" in names
    assert f"node-1.{org_domain(net.org.public_key.raw)}.mesh" not in names


def test_revocation_persists_in_the_revocations_file_and_reloads(tmp_path: Path) -> None:
    org = Ed25519PrivateKey(b"\x01" * 32)
    node = Ed25519PrivateKey(b"\x02" * 32).public_key.raw
    (tmp_path / "trusted_orgs").mkdir()
    (tmp_path / "trusted_orgs" / "fleet.org").write_text(org.public_key.b64() + "\n")
    cert = sign_certificate(org, node, "n1", 1_700_000_000).to_bytes()
    store = TrustStore.load(tmp_path)
    assert store.admit(node, cert, 1_700_000_100.0).admitted
    rev = sign_revocation(org, node, 1_700_000_050)
    assert store.revoke(Revocation("cert", node, org.public_key.raw, format_label(rev)))
    again = TrustStore.load(tmp_path)  # a restart
    adm = again.admit(node, cert, 1_700_000_100.0)
    assert not adm.admitted and adm.reason == "certificate revoked"
    text = (tmp_path / "revocations").read_text()
    assert format_line(rev) in text
    assert parse_line(format_line(rev)) == rev
    # the restarted node turns the file back into signed items it can re-send
    core = OrgGossip(SeededRng(1))
    loaded = core.load_signed(((r.org_key or b"", r.key, r.label) for r in again.revocations
                               if r.kind == "cert"), {org.public_key.raw})
    assert loaded == [rev]


def test_aliases_name_members_and_a_contested_alias_names_nobody() -> None:
    net, nodes = cluster(3, seed=9)
    a = nodes[0]
    now = int(net.clock.wall())
    assert a.node.announce_alias(sign_alias(net.org, "acme", now))
    net.run(5.0)
    for x in nodes[1:]:
        assert any(isinstance(e, AliasLearned) for e in x.events)
        table = build_table(x.node.dns_table(net.clock.wall()))
        r = Resolver(table)
        resp = dns.parse_response(r.handle(dns.build_query(1, "node-0.acme.mesh",
                                                           dns.TYPE_AAAA)) or b"")
        assert resp.answers and resp.answers[0][1] == bytes(a.node.self_ipv6.packed)
        dom = org_domain(net.org.public_key.raw)
        assert f"node-2.{dom}.mesh" in table or x is nodes[2]
    core = OrgGossip(SeededRng(2))
    other = Ed25519PrivateKey(b"\x09" * 32)
    trusted = {net.org.public_key.raw, other.public_key.raw}
    assert core.add_alias(sign_alias(other, "acme", now + 5), trusted)
    assert core.add_alias(sign_alias(net.org, "acme", now), trusted)
    assert core.alias_map(trusted) == {}  # two trusted orgs claim it: neither's names
    assert core.alias_map({net.org.public_key.raw}) == {"acme": net.org.public_key.raw}
    assert not core.add_alias(sign_alias(net.org, "abc123", now + 9), trusted)  # hex-like
    assert not core.add_alias(sign_alias(net.org, "older", now - 1), trusted)  # stale


def test_codec_round_trip() -> None:
    org = Ed25519PrivateKey(b"\x03" * 32)
    revs = [sign_revocation(org, bytes([i]) * 32, 1000 + i) for i in range(wire.MAX_ITEMS)]
    data = wire.encode_revocations(revs)
    assert len(data) <= 1280 and wire.decode_revocations(data) == tuple(revs)
    al = [sign_alias(org, f"a{i}", i) for i in range(3)]
    assert wire.decode_aliases(wire.encode_aliases(al)) == tuple(al)


_NODE = cluster(2, seed=12)[1][0]


@given(st.sampled_from([b"\x42MG\x01\x00", b"\x41MG\x01\x00", b"\x42", b"\x41MG\x01\x00\x01"]),
       st.binary(max_size=400))
@settings(max_examples=300, deadline=None)
def test_org_garbage_never_raises(prefix: bytes, body: bytes) -> None:
    out = _NODE.node.receive(1.0, 1_700_000_000.0, prefix + body, ("203.0.113.5", 1))
    assert not any(isinstance(a, SendDatagram) for a in out)
    assert _NODE.node.org is not None and not _NODE.node.org.revocations


@given(st.binary(max_size=1400))
@settings(max_examples=300, deadline=None)
def test_org_codec_rejects_garbage_with_its_typed_error_only(body: bytes) -> None:
    from meshguard.errors import WireFormatError

    for prefix in (b"\x42MG\x01\x00", b"\x41MG\x01\x00"):
        for decode in (wire.decode_revocations, wire.decode_aliases):
            with contextlib.suppress(WireFormatError):
                decode(prefix + body)
    text = body.decode("latin-1")
    assert isinstance(org_gossip.parse_line(text), wire.CertRevocation | None)
    assert isinstance(org_gossip.parse_alias_line(text), wire.AliasAnnouncement | None)


class LossyNet(OrgNet):
    """Drops each org datagram with probability `loss` (SWIM traffic is left alone, so the
    membership stays stable and the test measures the revocation gossip itself)."""

    loss = 0.3

    def run_actions(self, sn: SimNode, actions: list[object]) -> None:
        kept = [a for a in actions if not (isinstance(a, SendDatagram) and a.data[:1] in
                                           (b"\x41", b"\x42") and
                                           self.rng.uniform(0, 1) < self.loss)]
        super().run_actions(sn, kept)


def test_revocation_spreads_despite_heavy_loss() -> None:
    net = LossyNet(21, Ed25519PrivateKey(SeededRng(77).bytes(32)))
    nodes = [net.add_cert_node(f"node-{i}", f"192.0.2.{i + 1}") for i in range(16)]
    net.join(nodes[0], [])
    for x in nodes[1:]:
        net.join(x, [nodes[0]])
    net.run(10.0)
    victim = nodes[5]
    rev = sign_revocation(net.org, victim.key, int(net.clock.wall()))
    nodes[0].node.announce_revocations([rev], net.clock.wall())
    net.run(3 * math.ceil(math.log2(17)) * org_gossip.ROUND)  # the push budget, 30% loss
    missing = [x.name for x in nodes if x is not victim and x.node.org is not None
               and rev.target not in x.node.org.revocations]
    assert missing == []
    assert all(not has_tunnel(x, victim) for x in nodes if x is not victim)
