"""Signed policies pulled chunk by chunk between members (mesh/policy_gossip.py), and the
attacks on it: a forged, truncated, oversized, mismatched or stale transfer, a non-member, a
wrong sender, a flood of fake serials, a silent announcer. Each changes nothing and is counted."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshguard.crypto.keys import Ed25519PrivateKey, X25519PrivateKey
from meshguard.errors import WireFormatError
from meshguard.mesh.org_gossip import OrgLink
from meshguard.mesh.policy_gossip import (
    CHUNK_TIMEOUT,
    MAX_STALLS,
    PULL_BURST,
    WINDOW,
    PolicyGossip,
    PolicyLearned,
    item_of,
)
from meshguard.policy import signed
from meshguard.policy.signed import SignedPolicy, sign_policy
from meshguard.sansio import Endpoint
from meshguard.testing.rng import SeededRng
from meshguard.wire import policy_gossip as wire
from meshguard.wire.policy_gossip import Chunk, ChunkRequest, PolicyItem
from meshguard.wireguard.actions import SendDatagram

from .helpers import cluster

ORG = Ed25519PrivateKey(bytes(range(32)))
OTHER_ORG = Ed25519PrivateKey(bytes(range(1, 33)))


def policy(serial: int, size: int = 9000, org: Ed25519PrivateKey = ORG) -> SignedPolicy:
    text = "".join(f"allow tcp {1000 + i % 60000}\n" for i in range(size // 15))
    return sign_policy(org, text, serial, 1_700_000_000 + serial)


@dataclasses.dataclass
class Peer:
    name: str
    ep: Endpoint
    ident: bytes
    wg: X25519PrivateKey
    core: PolicyGossip
    events: list[PolicyLearned] = dataclasses.field(default_factory=list)

    @property
    def link(self) -> OrgLink:
        return OrgLink(self.ident, self.wg.public_key.raw)


class Lab:
    """A few policy cores that are each other's members, and a wire between them."""

    def __init__(self, names: list[str], seed: int = 5) -> None:
        self.rng = SeededRng(seed)
        self.now = 100.0
        self.peers: dict[str, Peer] = {}
        self.drop: Callable[[Peer, Peer, bytes], bool] = lambda a, b, d: False
        self.sent: list[tuple[str, SendDatagram]] = []
        for i, n in enumerate(names):
            wg = X25519PrivateKey.generate(self.rng.bytes(32))
            ident = Ed25519PrivateKey(self.rng.bytes(32)).public_key.raw
            core = PolicyGossip(self.rng, wg, identity_key=ident)
            self.peers[n] = Peer(n, (f"192.0.2.{i + 1}", 51821), ident, wg, core)
        for p in self.peers.values():
            self._bind(p)

    def _bind(self, p: Peer) -> None:
        others = {q.wg.public_key.raw: q for q in self.peers.values() if q is not p}
        p.core.bind(p.ident, lambda wg: others[wg].ident if wg in others else None,
                    lambda wg: others[wg].ep if wg in others else None,
                    lambda: {q.ep: q.link for q in others.values()},
                    lambda: [q.ep for q in others.values()],
                    lambda: frozenset({ORG.public_key.raw}))

    def by_ep(self, ep: Endpoint) -> Peer | None:
        return next((p for p in self.peers.values() if p.ep == ep), None)

    def deliver(self, src: Peer, actions: list[object]) -> None:
        queue = [(src, a) for a in actions]
        while queue:
            frm, a = queue.pop(0)
            if isinstance(a, PolicyLearned):
                frm.events.append(a)
                continue
            assert isinstance(a, SendDatagram)
            self.sent.append((frm.name, a))
            to = self.by_ep(a.endpoint)
            if to is None or self.drop(frm, to, a.data):
                continue
            queue += [(to, x) for x in to.core.receive(self.now, 0.0, a.data, frm.ep)]

    def run(self, seconds: float, dt: float = 0.1) -> None:
        end = self.now + seconds
        while self.now < end:
            self.now += dt
            for p in list(self.peers.values()):
                self.deliver(p, list(p.core.tick(self.now, 0.0)))

    def packet(self, frm: Peer, to: Peer, body: bytes) -> bytes:
        d = frm.core.seal(body, to.link)
        assert d is not None
        return d

    def inject(self, frm: Peer, to: Peer, body: bytes) -> list[object]:
        """`frm` sends `body` to `to`, sealed; returns what `to` does about it."""
        out: list[object] = list(to.core.receive(self.now, 0.0, self.packet(frm, to, body),
                                                 frm.ep))
        return out


def announce(sp: SignedPolicy) -> bytes:
    return wire.encode_announce([item_of(sp)])


# the codec ---------------------------------------------------------------------------------


def test_codec_round_trip_and_sizes() -> None:
    assert wire.MAX_BLOB == signed.MAX_BLOB
    sp = policy(3)
    items = wire.decode(announce(sp))
    assert items == (item_of(sp),)
    req = ChunkRequest(sp.org_key, 3, sp.digest, 2 * wire.CHUNK)
    assert wire.decode(wire.encode_request(req)) == req
    last = (len(sp.raw) - 1) // wire.CHUNK * wire.CHUNK
    c = Chunk(sp.org_key, 3, sp.digest, last, len(sp.raw), sp.raw[last:])
    assert wire.decode(wire.encode_chunk(c)) == c
    full = Chunk(sp.org_key, 3, sp.digest, 0, wire.MAX_BLOB, bytes(wire.CHUNK))
    assert len(wire.encode_chunk(full)) + 48 <= 1280


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1300))
def test_garbage_never_raises_anything_but_a_wire_error(data: bytes) -> None:
    for body in (data, bytes([0x44]) + b"MG\x01\x00" + data, bytes([0x46]) + b"MG\x01\x00" + data):
        with contextlib.suppress(WireFormatError):
            wire.decode(body)


def test_the_codec_refuses_bad_offsets_lengths_and_sizes() -> None:
    sp = policy(1)
    good = wire.encode_chunk(Chunk(sp.org_key, 1, sp.digest, 0, len(sp.raw), sp.raw[:1024]))
    bad = [
        good[:-1],  # truncated data
        good + b"x",  # trailing byte
        good[:5] + good[5:65] + (512).to_bytes(4, "little") + good[69:],  # unaligned offset
        good[:5] + good[5:69] + (wire.MAX_BLOB + 1).to_bytes(4, "little") + good[73:],  # oversize
        wire.encode_announce([item_of(sp)])[:-1],
        bytes([0x45]) + b"MG\x01\x00" + bytes(59),  # request one byte short
    ]
    for body in bad:
        with pytest.raises(WireFormatError):
            wire.decode(body)


# spreading ---------------------------------------------------------------------------------


def test_a_policy_spreads_to_every_member_and_the_digest_is_checked() -> None:
    lab = Lab(["a", "b", "c", "d", "e"])
    sp = policy(7, size=40_000)  # 40 chunks
    assert lab.peers["a"].core.hold(sp)
    lab.run(6.0)
    for p in lab.peers.values():
        assert p.core.held.get(ORG.public_key.raw) == sp, p.name
        if p.name != "a":
            assert p.events == [PolicyLearned(sp)], p.name
            assert p.core.counters["policy_offer_accepted"] == 1
    assert not any(p.core.transfers() for p in lab.peers.values())
    # the push budget is spent: afterwards nobody pulls again
    started = sum(p.core.counters["policy_transfer_started"] for p in lab.peers.values())
    lab.run(20.0)
    assert sum(p.core.counters["policy_transfer_started"]
               for p in lab.peers.values()) == started


def test_a_newer_serial_replaces_an_older_one_and_a_member_behind_is_told() -> None:
    lab = Lab(["a", "b"])
    a, b = lab.peers["a"], lab.peers["b"]
    old, new = policy(1), policy(2)
    b.core.hold(old)
    a.core.hold(new)
    # b announces its older serial to a: a answers with its own announcement, b pulls
    out = lab.inject(b, a, announce(old))
    assert a.core.counters["policy_announce_answered"] == 1
    lab.deliver(a, out)
    assert b.core.held[ORG.public_key.raw] == new
    assert b.events == [PolicyLearned(new)]


def test_a_stale_or_equal_serial_is_not_pulled() -> None:
    lab = Lab(["a", "b"])
    a, b = lab.peers["a"], lab.peers["b"]
    cur = policy(5)
    b.core.hold(cur)
    for sp in (policy(4), cur, policy(5, size=5000)):  # older, same, a conflicting same serial
        out = lab.inject(a, b, announce(sp))
        assert not any(isinstance(x, SendDatagram) and x.data[0] == wire.POLICY_CHUNK_REQUEST
                       for x in out)
        assert b.core.transfers() == []
    assert b.core.counters["policy_announce_known"] == 3
    assert b.core.counters["policy_transfer_started"] == 0
    assert b.core.held[ORG.public_key.raw] == cur


def test_a_newcomer_gets_what_the_others_hold() -> None:
    lab = Lab(["a", "b", "c"])
    sp = policy(9)
    for p in ("a", "b"):
        lab.peers[p].core.hold(sp)
    lab.run(40.0)  # the push rounds are long over
    late = Lab(["x"], seed=9).peers["x"]
    late.ep = ("192.0.2.99", 51821)
    late.core.rng = lab.rng
    lab.peers["x"] = late
    for p in lab.peers.values():
        lab._bind(p)
    lab.run(3.0)
    assert late.core.held.get(ORG.public_key.raw) == sp
    assert late.events == [PolicyLearned(sp)]


# attacks -----------------------------------------------------------------------------------


def test_a_forged_policy_is_pulled_once_refused_and_never_pulled_again() -> None:
    lab = Lab(["rogue", "victim"])
    rogue, victim = lab.peers["rogue"], lab.peers["victim"]
    real = policy(3)
    victim.core.hold(real)
    # a blob claiming to be ORG's serial 50, signed by another key
    forged_body = sign_policy(OTHER_ORG, "allow all all\n", 50, 0)
    raw = forged_body.raw[:4] + ORG.public_key.raw + forged_body.raw[36:]
    forged = signed.decode_policy(raw)
    assert forged.org_key == ORG.public_key.raw and not signed.signature_valid(forged)
    rogue.core.held[ORG.public_key.raw] = forged  # the rogue serves it as if it held it
    lab.deliver(victim, lab.inject(rogue, victim, announce(forged)))
    assert victim.core.counters["policy_offer_invalid"] == 1
    assert victim.core.held[ORG.public_key.raw] == real
    assert victim.events == []
    # the same announcement again costs nothing: remembered as bad
    assert lab.inject(rogue, victim, announce(forged)) == []
    assert victim.core.counters["policy_announce_bad"] == 1
    assert victim.core.counters["policy_transfer_started"] == 1


def test_a_truncated_blob_is_refused_as_malformed() -> None:
    lab = Lab(["rogue", "victim"])
    rogue, victim = lab.peers["rogue"], lab.peers["victim"]
    whole = policy(8)
    cut = dataclasses.replace(whole, raw=whole.raw[:-100])  # announced and served truncated
    rogue.core.held[ORG.public_key.raw] = cut
    lab.deliver(victim, lab.inject(rogue, victim, announce(cut)))
    assert victim.core.counters["policy_malformed"] == 1
    assert ORG.public_key.raw not in victim.core.held
    assert lab.inject(rogue, victim, announce(cut)) == []  # not pulled again


def test_chunks_that_do_not_match_the_announced_digest_are_refused() -> None:
    lab = Lab(["rogue", "honest", "victim"])
    rogue, honest, victim = lab.peers["rogue"], lab.peers["honest"], lab.peers["victim"]
    sp = policy(4, size=3000)
    honest.core.hold(sp)
    # the rogue announces sp's digest but answers every request with other bytes
    lab.inject(honest, victim, announce(sp))  # victim now knows two announcers ...
    victim.core._transfers.clear()
    lab.inject(rogue, victim, announce(sp))

    def lie(frm: Peer, to: Peer, data: bytes) -> bool:
        return frm is victim and to is rogue

    lab.drop = lie
    victim.core._transfers.clear()
    victim.core._candidates[ORG.public_key.raw][(4, sp.digest)].announcers[:] = [
        rogue.wg.public_key.raw, honest.wg.public_key.raw]
    reqs = victim.core._start_transfers(lab.now)
    assert reqs and all(isinstance(r, SendDatagram) and r.endpoint == rogue.ep for r in reqs)
    for off in range(0, len(sp.raw), wire.CHUNK):
        n = wire.chunk_len(off, len(sp.raw))
        body = wire.encode_chunk(Chunk(sp.org_key, 4, sp.digest, off, len(sp.raw), bytes(n)))
        out = lab.inject(rogue, victim, body)
        lab.deliver(victim, out)  # requests for more go to the rogue (dropped)
    assert victim.core.counters["policy_digest_mismatch"] == 1
    assert ORG.public_key.raw not in victim.core.held
    lab.drop = lambda a, b, d: False
    lab.run(2.0)  # the honest announcer is tried next
    assert victim.core.held.get(ORG.public_key.raw) == sp


def test_oversized_and_malformed_packets_from_a_member_are_garbage() -> None:
    lab = Lab(["rogue", "victim"])
    rogue, victim = lab.peers["rogue"], lab.peers["victim"]
    sp = policy(2)
    huge = PolicyItem(sp.org_key, 2, sp.digest, wire.MAX_BLOB + 1)
    body = announce(sp)[:-4] + huge.size.to_bytes(4, "little")
    assert lab.inject(rogue, victim, body) == []
    assert lab.inject(rogue, victim, b"\x46MG\x01\x00" + bytes(10)) == []
    assert victim.core.counters["policy_garbage"] == 2
    assert victim.core.transfers() == []


def test_non_members_bad_macs_and_replays_change_nothing() -> None:
    lab = Lab(["a", "b"])
    a, b = lab.peers["a"], lab.peers["b"]
    sp = policy(6)
    a.core.hold(sp)
    stranger = Lab(["s"], seed=11).peers["s"]
    stranger.core.identity_key = b"\x01" * 32
    d = stranger.core.seal(announce(sp), b.link)
    assert d is not None
    assert b.core.receive(lab.now, 0.0, d, stranger.ep) == []
    assert b.core.counters["policy_not_member"] == 1
    good = lab.packet(a, b, announce(sp))
    tampered = good[:10] + bytes([good[10] ^ 1]) + good[11:]
    assert b.core.receive(lab.now, 0.0, tampered, a.ep) == []
    assert b.core.counters["policy_bad_mac"] == 1
    # a request from a non-member gets no chunk
    req = wire.encode_request(ChunkRequest(sp.org_key, 6, sp.digest, 0))
    d = stranger.core.seal(req, a.link)
    assert d is not None and a.core.receive(lab.now, 0.0, d, stranger.ep) == []
    # the real transfer; then every chunk replayed changes nothing
    lab.deliver(a, lab.inject(a, b, announce(sp)))
    assert b.core.held[ORG.public_key.raw] == sp
    chunks = [s for who, s in lab.sent if who == "a" and s.data[0] == wire.POLICY_CHUNK]
    assert len(chunks) == -(-len(sp.raw) // wire.CHUNK)
    for c in chunks:
        assert b.core.receive(lab.now, 0.0, c.data, a.ep) == []
    assert b.core.counters["policy_chunk_unexpected"] == len(chunks)
    assert b.events == [PolicyLearned(sp)]


def test_a_request_is_answered_at_the_members_known_endpoint_not_the_source() -> None:
    lab = Lab(["a", "b"])
    a, b = lab.peers["a"], lab.peers["b"]
    sp = policy(6)
    a.core.hold(sp)
    req = lab.packet(b, a, wire.encode_request(ChunkRequest(sp.org_key, 6, sp.digest, 0)))
    out = a.core.receive(lab.now, 0.0, req, ("203.0.113.66", 4444))  # a spoofed source
    assert [x.endpoint for x in out if isinstance(x, SendDatagram)] == [b.ep]
    # a request for a blob a does not hold (other digest) gets nothing
    other = lab.packet(b, a, wire.encode_request(ChunkRequest(sp.org_key, 6, bytes(16), 0)))
    assert a.core.receive(lab.now, 0.0, other, b.ep) == []
    assert a.core.counters["policy_request_unknown"] == 1


def test_serving_is_budgeted_per_member() -> None:
    lab = Lab(["a", "b"])
    a, b = lab.peers["a"], lab.peers["b"]
    sp = policy(6)
    a.core.hold(sp)
    req = lab.packet(b, a, wire.encode_request(ChunkRequest(sp.org_key, 6, sp.digest, 0)))
    answered = sum(len(a.core.receive(lab.now, 0.0, req, b.ep)) for _ in range(1000))
    assert answered < 300
    assert a.core.counters["policy_serve_limited"] == 1000 - answered


def test_a_chunk_from_another_member_than_the_one_asked_is_refused() -> None:
    lab = Lab(["a", "b", "c"])
    a, b, c = lab.peers["a"], lab.peers["b"], lab.peers["c"]
    sp = policy(6)
    a.core.hold(sp)
    c.core.hold(sp)
    b.core.receive(lab.now, 0.0, lab.packet(a, b, announce(sp)), a.ep)  # b asks a
    body = wire.encode_chunk(Chunk(sp.org_key, 6, sp.digest, 0, len(sp.raw), sp.raw[:1024]))
    assert b.core.receive(lab.now, 0.0, lab.packet(c, b, body), c.ep) == []
    assert b.core.counters["policy_chunk_wrong_sender"] == 1


def test_a_flood_of_fake_serials_is_bounded_and_cannot_hide_the_real_one() -> None:
    lab = Lab(["rogue", "honest", "victim"])
    rogue, honest, victim = lab.peers["rogue"], lab.peers["honest"], lab.peers["victim"]
    real = policy(10)
    honest.core.hold(real)
    sent_to_rogue = 0

    def count(frm: Peer, to: Peer, data: bytes) -> bool:
        nonlocal sent_to_rogue
        sent_to_rogue += to is rogue and data[0] == wire.POLICY_CHUNK_REQUEST
        return to is rogue  # the rogue never answers

    lab.drop = count
    for s in range(1000, 1100):  # fake serials above the real one, digests of nothing
        item = PolicyItem(ORG.public_key.raw, s, s.to_bytes(16, "little"), 60_000)
        lab.deliver(rogue, [SendDatagram(lab.packet(rogue, victim,
                                                    wire.encode_announce([item])), victim.ep)])
    assert victim.core.counters["policy_transfer_started"] <= PULL_BURST
    assert len(victim.core._candidates[ORG.public_key.raw]) <= 2  # one per announcer
    assert len(victim.core.transfers()) == 1
    lab.deliver(honest, [SendDatagram(lab.packet(honest, victim, announce(real)), victim.ep)])
    # the rogue's transfers stall and time out; its candidates go; the real one comes
    # then the rogue's pull budget is spent and the real one is pulled from the honest member
    lab.run((MAX_STALLS + 3) * CHUNK_TIMEOUT)
    assert victim.core.held.get(ORG.public_key.raw) == real
    assert victim.core.counters["policy_transfer_timeout"] == 1
    assert victim.core.counters["policy_transfer_started"] == 2
    assert sent_to_rogue <= (MAX_STALLS + 1) * WINDOW  # one window per try, nothing more


def test_a_silent_announcer_is_left_for_another() -> None:
    lab = Lab(["silent", "good", "victim"])
    silent, good, victim = lab.peers["silent"], lab.peers["good"], lab.peers["victim"]
    sp = policy(12, size=5000)
    silent.core.hold(sp)
    good.core.hold(sp)
    lab.drop = lambda frm, to, d: frm is silent
    victim.core.receive(lab.now, 0.0, lab.packet(silent, victim, announce(sp)), silent.ep)
    victim.core.receive(lab.now, 0.0, lab.packet(good, victim, announce(sp)), good.ep)
    lab.run((MAX_STALLS + 2) * CHUNK_TIMEOUT)
    assert victim.core.held.get(ORG.public_key.raw) == sp
    assert victim.core.counters["policy_transfer_timeout"] == 1
    assert victim.core.counters["policy_chunk_retry"] >= MAX_STALLS


# through real mesh nodes -------------------------------------------------------------------


def test_through_mesh_nodes_a_policy_reaches_every_member_and_a_late_joiner() -> None:
    net, nodes = cluster(6)
    org_key = net.org.public_key.raw
    for x in nodes:
        assert x.node.org is not None
        x.node.policy = PolicyGossip(net.rng, x.node.org.wg_private, identity_key=x.key)
    sp = sign_policy(net.org, "to *\nallow tcp 22\n" * 500, 3, int(net.clock.wall()))
    assert len(sp.raw) > 8 * wire.CHUNK
    nodes[2].node.policy.hold(sp)  # type: ignore[union-attr]
    start = net.clock.monotonic()
    while net.clock.monotonic() - start < 10.0 and not all(
            x.node.policy is not None and x.node.policy.held.get(org_key) == sp for x in nodes):
        net.step()
    took = net.clock.monotonic() - start
    assert took < 10.0, "not everywhere within 10 s"
    for x in nodes:
        if x is not nodes[2]:
            assert [e for e in x.events if isinstance(e, PolicyLearned)] == [PolicyLearned(sp)]
    net.run(40.0)
    late = net.add_cert_node("late", "192.0.2.77")
    assert late.node.org is not None
    late.node.policy = PolicyGossip(net.rng, late.node.org.wg_private, identity_key=late.key)
    net.join(late, [nodes[0]])
    net.run(10.0)
    assert late.node.policy.held.get(org_key) == sp
