"""The small mesh in virtual time whose datagrams seed the fuzz targets, and the harness that
feeds mutated datagrams to its victim node (testing/fuzz.py)."""

from __future__ import annotations

import dataclasses
import functools
import struct
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from meshguard.crypto.hashes import blake2s, mac
from meshguard.crypto.keys import Ed25519PrivateKey, X25519PrivateKey
from meshguard.errors import WireFormatError
from meshguard.identity.addressing import mesh_ipv4
from meshguard.identity.certificate import sign_certificate
from meshguard.identity.trust import (
    Admission,
    TrustStore,
)
from meshguard.mesh import demux, org_gossip
from meshguard.mesh.node import MeshNode
from meshguard.mesh.org_gossip import OrgGossip
from meshguard.mesh.policy_gossip import LINK_LABEL as POLICY_LINK_LABEL
from meshguard.mesh.policy_gossip import PolicyGossip
from meshguard.mesh.swim_port import SwimPort, build_membership
from meshguard.mesh.wg_backend import DeviceBackend
from meshguard.nat import relay as relay_core
from meshguard.nat.holepunch import HolePuncher
from meshguard.nat.relay import Relay
from meshguard.nat.stun_client import StunClient
from meshguard.policy.signed import sign_policy
from meshguard.sansio import Endpoint
from meshguard.swim import records as swim_records
from meshguard.testing.fuzz_engine import WALL0, building_seeds, counted_logs, dedupe
from meshguard.testing.rng import SeededRng
from meshguard.wire import gossip, holepunch, org, relay, wireguard
from meshguard.wire import policy_gossip as policy_wire
from meshguard.wireguard.actions import SendDatagram
from meshguard.wireguard.cookie import mac1_key
from meshguard.wireguard.device import Device

# -- a small mesh in virtual time --------------------------------------------------------------


class FuzzTrust:
    """A real TrustStore (in memory) behind the node's Admitter and org-key interface."""

    def __init__(self, store_: TrustStore) -> None:
        self.store = store_

    def admit(self, node_key: bytes, certificate: bytes | None, now_wall: float
              ) -> Admission:
        return self.store.admit(node_key, certificate, now_wall)

    def trusted_org_keys(self) -> list[bytes]:
        return [k for k in self.store.orgs.values() if not self.store.is_org_revoked(k)]


@dataclass
class Member:
    name: str
    ep: Endpoint
    ident: Ed25519PrivateKey
    wg: X25519PrivateKey
    node: MeshNode
    cert: bytes | None

    @property
    def key(self) -> bytes:
        return self.ident.public_key.raw


@dataclass
class MeshCapture:
    """A victim node in a small joined mesh, and the datagrams seen while it formed."""

    victim: Member
    members: list[Member]
    org_key: Ed25519PrivateKey
    now: float
    datagrams: list[bytes]  # every datagram any node received
    to_victim: list[bytes]  # those the victim received
    records: list[bytes]  # every signed record seen in them
    relay_seeds: list[bytes]  # the RelayData hops of the run (A and B relay through V)
    punch_seeds: list[bytes]  # signed hole-punch messages built here
    problems: list[str]  # seed generators that failed (a codec or core API changed)


VICTIM_EP = ("198.51.100.1", 51821)


def _member_eps() -> list[Endpoint]:
    return [("198.51.100.2", 51821), ("203.0.113.3", 40000), ("2001:db8::4", 51821)]


def build_mesh(seed: int = 1, victim_under_load: int | None = None) -> MeshCapture:
    building_seeds[0] += 1
    try:
        with counted_logs():
            return _build_mesh(seed, victim_under_load)
    finally:
        building_seeds[0] -= 1


def _build_mesh(seed: int, victim_under_load: int | None) -> MeshCapture:
    """Victim V (public: relay and rendezvous) and members A, B (org certificates) and C
    (an authorized key), joined through V, with tunnels up, one revocation and one alias in
    the org gossip; every datagram is recorded. `victim_under_load` overrides the handshake
    rate at which V's device starts demanding cookies (mac2)."""
    rng = SeededRng(seed)
    org_key = Ed25519PrivateKey(rng.bytes(32))
    now, wall = 0.0, WALL0

    def make(name: str, ep: Endpoint, cert_name: str | None) -> Member:
        ident = Ed25519PrivateKey(rng.bytes(32))
        wg = X25519PrivateKey.generate(rng.bytes(32))
        cert = (sign_certificate(org_key, ident.public_key.raw, cert_name, int(wall) - 60)
                .to_bytes() if cert_name else None)
        trust = FuzzTrust(TrustStore(Path("/nonexistent"), orgs={"org": org_key.public_key.raw}))
        port = build_membership(identity=ident, wg_private=wg, certificate=cert, endpoints=[ep],
                                kernel=False, admitter=trust, rng=rng, now=now, wall=wall)
        if name == "V" and victim_under_load is not None:
            dev = Device(rng, wg, under_load_threshold=victim_under_load)
        else:
            dev = Device(rng, wg)
        node = MeshNode(ident.public_key.raw, wg.public_key.raw, port, trust, device=dev,
                        backend=DeviceBackend(dev), org=OrgGossip(rng, wg), certificate=cert,
                        policy=PolicyGossip(rng, wg, identity_key=ident.public_key.raw))
        node.holepunch = HolePuncher(ident, rng)
        node.holepunch.set_self((ep,), behind_nat=name != "V")
        node.relay = Relay(ident.public_key.raw, wg, cookie_secret=b"\x05" * 32)
        return Member(name, ep, ident, wg, node, cert)

    eps = _member_eps()
    v = make("V", VICTIM_EP, "victim")
    a = make("A", eps[0], "node-a")
    b = make("B", eps[1], "node-b")
    c = make("C", eps[2], None)
    everyone = [v, a, b, c]
    for x in everyone:
        trust = x.node.trust
        assert isinstance(trust, FuzzTrust)
        if x is not c:
            trust.store.peers["c"] = c.key
    for x in (a, b):  # C trusts A and B by key (it has no certificate of its own)
        trust = c.node.trust
        assert isinstance(trust, FuzzTrust)
        trust.store.peers[x.name.lower()] = x.key
    by_ep = {x.ep: x for x in everyone}
    blocked = {a.ep, b.ep}  # A and B cannot reach each other directly: punch, then relay
    queue: deque[tuple[Endpoint, bytes, Endpoint]] = deque()
    datagrams: list[bytes] = []
    to_victim: list[bytes] = []

    def run(x: Member, actions: Iterable[object]) -> None:
        for act in actions:
            if isinstance(act, SendDatagram):
                queue.append((act.endpoint, act.data, x.ep))

    def deliver() -> None:
        while queue:
            dst, data, src = queue.popleft()
            target = by_ep.get(dst)
            if target is None or {src, dst} == blocked:
                continue
            datagrams.append(data)
            if target is v:
                to_victim.append(data)
            run(target, target.node.receive(now, wall, data, src))

    def join(x: Member, seeds: list[Member]) -> None:
        port = x.node.membership
        assert isinstance(port, SwimPort)
        run(x, port.join_actions([s.ep for s in seeds], now, wall))

    join(v, [])
    for x in (a, b, c):
        join(x, [v])
    stun_client = StunClient(rng, [("192.0.2.200", 3478)], local=[VICTIM_EP])
    run(v, v.node.start_stun(stun_client, now))
    vport = v.node.membership
    assert isinstance(vport, SwimPort)
    vport.set_public_endpoint(now, VICTIM_EP, relay_core.NAT_PUBLIC)  # V: relay, rendezvous
    for x in (a, b):
        assert x.node.relay is not None
        x.node.relay.behind_nat = True
    steps = 0
    while steps < 1200:  # 60 s of virtual time
        deliver()
        now += 0.05
        wall += 0.05
        steps += 1
        for x in everyone:
            d = x.node.next_deadline()
            if d is not None and d <= now:
                run(x, x.node.tick(now, wall))
        if steps % 100 == 60:  # tunnel traffic: an IP packet from every member to every other
            for s in everyone:
                for t in everyone:
                    if s is not t:
                        run(s, s.node.send_packet(now, wall, _ip_packet(s.key, t.key)))
        if steps == 80:  # org gossip: a revocation (of a non-member) and an alias
            rev = org_gossip.sign_revocation(org_key, b"\x77" * 32, int(wall))
            run(a, a.node.announce_revocations([rev], wall))
            a.node.announce_alias(org_gossip.sign_alias(org_key, "corp", int(wall)), wall)
            assert a.node.policy is not None  # and a signed policy of three chunks
            a.node.policy.hold(sign_policy(org_key, "to *\nallow tcp 22\n" * 150, 1, int(wall)))
    deliver()
    records = _records_in(datagrams)
    problems: list[str] = []
    relay_seeds = [d for d in datagrams if d[:1] == bytes([relay.RELAY_DATA])]
    if not relay_seeds:
        problems.append("relay seeds: A and B did not fall back to relaying through V")
    if not any(d[:1] in (b"\x41", b"\x42") for d in to_victim):
        problems.append("org seeds: V received no org gossip")
    if not any(d[:1] == bytes([policy_wire.POLICY_CHUNK]) for d in to_victim):
        problems.append("policy seeds: V received no policy chunk")
    punch_seeds = _safe("hole-punch", problems, lambda: _punch_seeds(v, a, b, c, wall))
    return MeshCapture(v, [a, b, c], org_key, now, datagrams, to_victim, records, relay_seeds,
                       punch_seeds, problems)


def _ip_packet(src_key: bytes, dst_key: bytes) -> bytes:
    s4, d4 = mesh_ipv4(src_key), mesh_ipv4(dst_key)
    payload = b"fuzz-seed-payload"
    total = 20 + len(payload)
    src = s4.packed if s4 is not None else bytes(4)
    dst = d4.packed if d4 is not None else bytes(4)
    return struct.pack("!BBHHHBBH", 0x45, 0, total, 0, 0, 64, 17, 0) + src + dst + payload


def _records_in(datagrams: Iterable[bytes]) -> list[bytes]:
    out: list[bytes] = []
    for d in datagrams:
        try:
            p = gossip.decode_packet(d)
        except WireFormatError:
            continue
        if p.record:
            out.append(p.record)
        out += [raw for tag, raw in p.entries if tag == gossip.TAG_RECORD]
    return dedupe(out)


def pair_key(label: bytes, a_ident: bytes, a_wg: X25519PrivateKey, b_ident: bytes,
             b_wg: bytes) -> bytes:
    """BLAKE2s(label, X25519, sorted WireGuard keys, sorted identities): the key two members
    share for relay hops (nat/relay.py) and org packets (mesh/org_gossip.py)."""
    shared = a_wg.exchange(b_wg)
    w0, w1 = sorted((a_wg.public_key.raw, b_wg))
    i0, i1 = sorted((a_ident, b_ident))
    return blake2s(label, shared, w0, w1, i0, i1)


def _punch(frm: Member, t: int, stage: int, target: bytes, session: int, wall: float,
           eps: tuple[Endpoint, ...]) -> bytes:
    m = holepunch.PunchMessage(t, stage, frm.key, target, session, int(wall * 1000), eps)
    body = holepunch.signed_part(m)
    return body + frm.ident.sign(holepunch.SIGN_CONTEXT + body)


def _punch_seeds(v: Member, a: Member, b: Member, c: Member, wall: float) -> list[bytes]:
    hp = holepunch
    return [
        _punch(a, hp.HOLEPUNCH_REQUEST, hp.STAGE_RENDEZVOUS, b.key, 11, wall, (a.ep,)),
        _punch(b, hp.HOLEPUNCH_RESPONSE, hp.STAGE_RENDEZVOUS, a.key, 11, wall, (b.ep, c.ep)),
        _punch(a, hp.HOLEPUNCH_REQUEST, hp.STAGE_RENDEZVOUS, v.key, 12, wall, (a.ep,)),
        _punch(b, hp.HOLEPUNCH_REQUEST, hp.STAGE_PROBE, v.key, 13, wall, ()),
        _punch(c, hp.HOLEPUNCH_RESPONSE, hp.STAGE_PROBE, v.key, 14, wall, ()),
        _punch(c, hp.HOLEPUNCH_RESPONSE, hp.STAGE_RENDEZVOUS, v.key, 15, wall,
               (c.ep, a.ep, b.ep, v.ep)),
    ]


def _safe(what: str, problems: list[str], make: Callable[[], list[bytes]]) -> list[bytes]:
    """Seeds from `make`, or none (noted in `problems`) when its codec or core changed."""
    try:
        seeds = make()
    except Exception as exc:
        problems.append(f"{what} seeds: {type(exc).__name__}: {exc}")
        return []
    if not seeds:
        problems.append(f"{what} seeds: none")
    return seeds


@functools.cache
def mesh_capture(seed: int = 1) -> MeshCapture:
    """The seed mesh (built once per process; node targets build their own fresh copies)."""
    return build_mesh(seed)


# -- node targets ------------------------------------------------------------------------------


class NodeHarness:
    """The victim's receive path, with time moving on and timers firing as in the daemon."""

    def __init__(self, seed: int = 1, step: float = 2e-5, under_load: int | None = None
                 ) -> None:
        self.seed = seed
        self.step = step
        self.under_load = under_load
        self.reset()

    def reset(self) -> None:
        m = build_mesh(self.seed, self.under_load)
        self.mesh = m
        self.node = m.victim.node
        self.now = m.now
        self.sent = 0
        self._n = 0
        self._by_key = {x.key: x for x in m.members}
        self._by_wg = {x.wg.public_key.raw: x for x in m.members}
        self._pair = swim_records.CryptoCache(None)
        self._mac1 = mac1_key(m.victim.wg.public_key.raw)

    @property
    def wall(self) -> float:
        return WALL0 + self.now

    def receive(self, data: bytes) -> None:
        self._n += 1
        self.now += self.step
        src = self.source(data)
        out = self.node.receive(self.now, self.wall, data, src)
        self.sent += len(out)
        if self._n % 256 == 0:
            d = self.node.next_deadline()
            if d is not None and d <= self.now:
                self.node.tick(self.now, self.wall)

    def source(self, data: bytes) -> Endpoint:
        """Where a datagram claims to come from: the member it names, else a stranger."""
        for off in (5, 6):  # gossip sender / relay hop; hole-punch origin
            who = self._by_key.get(bytes(data[off : off + 32]))
            if who is not None:
                return who.ep
        return ("192.0.2.66", 40000 + (len(data) & 0xFF))

    # re-authentication (what a rogue member could send) ----------------------------------

    def reauth(self, data: bytes) -> bytes:
        if not data:
            return data
        t = data[0]
        if demux.classify(data) is demux.Kind.WIREGUARD:
            return self._wg(data)
        if t == relay.RELAY_DATA:
            return self._relay(data)
        if t in holepunch.HOLEPUNCH_TYPES:
            return self._punch(data)
        if t in org.ORG_TYPES:
            return self._org(data)
        if t in policy_wire.POLICY_TYPES:
            return self._remac(data, POLICY_LINK_LABEL)
        if t == gossip.JOIN:
            return self._join(data)
        if t in gossip.GOSSIP_TYPES:
            return self._gossip(data)
        return data

    def _wg(self, data: bytes) -> bytes:
        for size, off in ((wireguard.INITIATION_SIZE, wireguard.INITIATION_MAC1_OFFSET),
                          (wireguard.RESPONSE_SIZE, wireguard.RESPONSE_MAC1_OFFSET)):
            if len(data) == size:
                return data[:off] + mac(self._mac1, data[:off]) + data[off + 16:]
        return data

    def _relay(self, data: bytes) -> bytes:
        who = self._by_key.get(bytes(data[5:37]))
        if who is None or len(data) < relay.OVERHEAD:
            return data
        v = self.mesh.victim
        body = data[:-relay.MAC_LEN]
        return body + mac(pair_key(relay_core.LABEL, who.key, who.wg, v.key,
                                   v.wg.public_key.raw), body)

    def _punch(self, data: bytes) -> bytes:
        who = self._by_key.get(bytes(data[6:38]))
        if who is None or len(data) < holepunch.MIN_LEN:
            return data
        body = data[:-holepunch.SIG_LEN]
        return body + who.ident.sign(holepunch.SIGN_CONTEXT + body)

    def _org(self, data: bytes) -> bytes:
        """Re-sign the items of the trusted org and re-MAC the packet as the member whose
        WireGuard key the trailer names."""
        body, sender_wg, _tag = org.split_link(data)
        key = self.mesh.org_key
        okey = key.public_key.raw
        try:
            if body[0] == org.ORG_CERT_REVOKE:
                revs = org.decode_revocations(body)
                body = org.encode_revocations([dataclasses.replace(r, signature=key.sign(
                    org.revoke_message(r.org_key, r.node_key, r.revoked_at)))
                    if r.org_key == okey else r for r in revs])
            elif body[0] == org.ORG_TRUST_VOUCH:
                vouches = org.decode_vouches(body)
                body = org.encode_vouches([dataclasses.replace(v, signature=key.sign(
                    org.vouch_message(v.node_key, v.lamport)))
                    if v.org_key == okey else v for v in vouches])
            else:
                aliases = org.decode_aliases(body)
                body = org.encode_aliases([dataclasses.replace(a, signature=key.sign(
                    org.alias_message(a.org_key, a.alias, a.issued_at)))
                    if a.org_key == okey else a for a in aliases])
        except WireFormatError:
            pass
        who = self._by_wg.get(bytes(sender_wg))
        if who is None:
            return body + sender_wg + _tag
        v = self.mesh.victim
        link = pair_key(org_gossip.LINK_LABEL, who.key, who.wg, v.key, v.wg.public_key.raw)
        return body + sender_wg + mac(link, body + sender_wg)

    def _remac(self, data: bytes, label: bytes) -> bytes:
        """Re-MAC a member-to-member packet as the member its trailer names."""
        if len(data) < org.LINK_LEN:
            return data
        head = data[:-org.MAC_LEN]
        who = self._by_wg.get(bytes(head[-32:]))
        if who is None:
            return data
        v = self.mesh.victim
        return head + mac(pair_key(label, who.key, who.wg, v.key, v.wg.public_key.raw), head)

    def _resign_record(self, raw: bytes) -> bytes:
        who = self._by_key.get(bytes(raw[4:36]))
        if who is None or len(raw) < gossip.SIG_LEN:
            return raw
        body = raw[:-gossip.SIG_LEN]
        return body + who.ident.sign(swim_records.RECORD_DOMAIN + body)

    def _resign_accusation(self, tag: int, raw: bytes) -> bytes:
        who = self._by_key.get(bytes(raw[40:72]))
        if who is None:
            return raw
        domain = swim_records.DEAD_DOMAIN if tag == gossip.TAG_DEAD else \
            swim_records.SUSPECT_DOMAIN
        body = raw[:-gossip.SIG_LEN]
        return body + who.ident.sign(domain + body)

    def _join(self, data: bytes) -> bytes:
        off = gossip.HEADER_LEN + 8
        try:
            size = gossip.record_len_at(data, off)
        except WireFormatError:
            return data
        return data[:off] + self._resign_record(data[off : off + size]) + data[off + size:]

    def _gossip(self, data: bytes) -> bytes:
        who = self._by_key.get(bytes(data[5:37]))
        if who is None or len(data) < gossip.AUTH_MIN:
            return data
        try:
            p = gossip.decode_packet(data)
        except WireFormatError:
            body = data[:-gossip.MAC_LEN]
        else:
            entries = tuple(
                (tag, self._resign_record(raw) if tag == gossip.TAG_RECORD
                 else self._resign_accusation(tag, raw)) for tag, raw in p.entries)
            rec = self._resign_record(p.record) if p.record else p.record
            body = gossip.encode_body(dataclasses.replace(p, entries=entries, record=rec),
                                      check=False)
        v = self.mesh.victim
        key = self._pair.pair_key(who.wg, who.key, v.wg.public_key.raw, v.key)
        if key is None:
            return data
        return body + mac(key, body)
