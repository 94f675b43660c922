"""The sans-IO SWIM membership core.

Feed it datagrams with `receive(now, wall, data, src)` and call `tick(now, wall)` at
`next_deadline()` (the shape every sans-IO core shares, see sansio.py); it returns actions:
`SendDatagram` and membership events (`MemberUp`, `MemberUpdated`, `MemberDown`) carrying the
member's verified, signed record.

`Membership` is a facade over the parts, one module each (the seams of hashicorp memberlist):
state.py (the member table and this node's record), probing.py (failure detection),
awareness.py (Lifeguard local health), suspicion.py (the suspicion timeout), updates.py
(applying records and accusations, reaping), broadcast.py (the piggyback queue and the packet
budget), sync.py (anti-entropy) and join.py (joins, re-contact and their budgets). This module
receives datagrams, authenticates their senders and hands them to the right part. The parts,
a member's states and the configuration presets are described in docs/swim.md.

Protocol (SWIM, Das et al. 2002, with Lifeguard refinements, Dadgar et al. 2017):
- one probe per period, targets in randomized round-robin order (each round a fresh shuffle;
  members joining mid-round go to a random place among those not yet probed); direct Ping,
  and after `probe_timeout` a PingReq to k members, which ping the target and forward its Ack
  back; no ack by the end of the period -> Suspect.
- Suspicion timeout from `SwimConfig.suspicion_min/max(N)`, shortened by up to k independent
  confirmations (Lifeguard; further ones are neither stored nor spread); when it expires the
  member is declared Dead.
- Lifeguard local health: a node whose probes fail or who has to refute suspicions stretches its
  own probe period and timeout (x (1 + lhm), lhm <= awareness_max), so a slow or cut-off node
  does not flood the mesh with false suspicions.
- Incarnation numbers: only the subject can declare itself alive (by signing a record with a
  higher incarnation), so it refutes a suspicion or death it hears about. Members we suspect or
  think dead are told so directly whenever we write to them (Lifeguard's buddy system).
- Updates ride on every packet (piggyback queue, retransmit limit ~ log N). Anti-entropy makes
  large joins and partition merges converge without relying on piggyback bandwidth: a node
  pulls a random member's state now and then (right after joining, then after 1, 1, 2, 2, 4, 4
  ... periods, then every `sync_interval`). SyncReq carries 128 per-bucket digests of its view;
  the responder sends the records of differing buckets directly when there are few, otherwise
  a summary (key prefix, incarnation) from which the requester asks (SyncWant) only for what
  it lacks. The first packet to a member that has not heard from us carries our own record, so
  it can authenticate us at once.
- Dead and left members are reaped after `dead_reap_after`; dead members, reaped endpoints and
  seeds not known alive are re-contacted (Join) every `recontact_interval`, so a partitioned
  mesh heals by itself. A joining node retries its seeds with exponential backoff.

Security (the threat model and the tests behind each claim: docs/security.md):
- Records are signed by their subject, accusations by their accuser, who must be a live,
  admitted member. A newer incarnation wins; a replayed old record loses; two different records
  with the same incarnation (equivocation) are ignored.
- An incarnation is the wall-clock millisecond of signing (plus one per refutation), so a record
  carries a signed time: every node signs its own again every `record_refresh`, and a record
  older than `record_max_age` (or as far ahead) is refused before its signature is checked.
  Reaped members leave a high-water mark (`high_water()`, persisted by the daemon and restored
  with `remember()`), below which their records stay refused.
- Suspect and Dead notices count only at the subject's current incarnation (so a refutation
  never overflows). One Dead notice about a member we think alive only starts a suspicion: a
  member dies here when our own suspicion times out or `dead_quorum` members declared it dead.
- A WireGuard key belongs to one identity: a record claiming a key another member (or this
  node) holds is refused. Every new record version is re-checked against trust, and trust is
  re-asked about every member each `admission_recheck`: a member no longer admitted is dropped
  and loses every gossip right (its packets and accusations are a non-member's).
- Packets between members carry a 16-byte keyed-BLAKE2s MAC under a pair key derived from
  X25519 of the two members' WireGuard keys (`CryptoCache.pair_key`). A packet whose sender is
  not a member is dropped after a dictionary lookup, before any cryptography; a spoofed source
  address gains nothing because nothing is taken from the source address except where to send a
  reply. Cost per packet: one keyed BLAKE2s over <= 1280 bytes (~1-2 us) to send and one to
  receive; one X25519 per pair (~50 us, cached); one Ed25519 verification per record version
  (cached). Joins from non-members (self-signed record, one Ed25519 verification) are rate
  limited per source host and then globally, and padded to 1200 bytes so a Join never draws a
  larger answer; a Join nonce is used once, and a member's current record draws at most one
  JoinAck per half retry interval (bare, when the source is not an announced endpoint).
- Replay: SyncReq carries a per-sender counter that must increase (SyncWant must echo it and
  may ask for no more records than were summarised); Acks must match an outstanding random
  sequence number; a JoinAck must match an outstanding Join nonce; all membership content is
  ordered by signed incarnations, so replaying it changes nothing. A reply to an address the
  member never announced is sent bare, so a replayed packet with a spoofed source draws no
  amplified answer; sync answers (which may be many packets) and forwarded indirect acks go to
  the member's announced endpoint instead.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from meshguard.crypto.hashes import equal, mac
from meshguard.crypto.keys import Ed25519PrivateKey, X25519PrivateKey
from meshguard.errors import MeshguardError, WireFormatError
from meshguard.rng import Rng
from meshguard.sansio import Endpoint, SendDatagram
from meshguard.swim.awareness import Awareness
from meshguard.swim.broadcast import BroadcastQueue, Piggyback
from meshguard.swim.config import DEFAULT_CONFIG, SwimConfig
from meshguard.swim.events import Action, MemberDown, MemberUp, MemberUpdated
from meshguard.swim.join import Joiner
from meshguard.swim.probing import Prober
from meshguard.swim.records import AdmissionPolicy, CryptoCache
from meshguard.swim.state import ALIVE, DEAD, LIVE, SUSPECT, Member, SwimState, endpoint_of
from meshguard.swim.sync import AntiEntropy
from meshguard.swim.updates import Updates
from meshguard.wire.gossip import (
    ACK,
    JOIN,
    JOIN_ACK,
    LEAVE,
    MAC_LEN,
    PING,
    PING_REQ,
    SYNC_DATA,
    SYNC_REQ,
    SYNC_SUMMARY,
    SYNC_WANT,
    TAG_RECORD,
    TYPE_NAMES,
    Entry,
    IPNetwork,
    NodeRecord,
    Packet,
    canonical_routes,
    decode_packet,
    peek_type,
)

__all__ = [
    "Action",
    "MemberDown",
    "MemberUp",
    "MemberUpdated",
    "Membership",
    "SendDatagram",
    "SwimUsageError",
]


class SwimUsageError(MeshguardError):
    """The membership core was used wrongly (bad local configuration)."""


class Membership:
    def __init__(
        self,
        identity_key: Ed25519PrivateKey,
        wg_key: X25519PrivateKey,
        endpoints: Sequence[Endpoint],
        admission: AdmissionPolicy,
        rng: Rng,
        config: SwimConfig = DEFAULT_CONFIG,
        *,
        nat_type: int = 0,
        certificate: bytes | None = None,
        incarnation: int = 0,
        cache: CryptoCache | None = None,
        now: float = 0.0,
        routes: Sequence[IPNetwork] = (),
    ) -> None:
        self.config = config
        try:
            s = SwimState(
                identity_key,
                wg_key,
                tuple(endpoints),
                admission,
                rng,
                config,
                cache if cache is not None else CryptoCache(),
                nat_type=nat_type,
                certificate=certificate,
                incarnation=incarnation,
                now=now,
                routes=canonical_routes(routes),
            )
        except WireFormatError as e:
            raise SwimUsageError(f"invalid self record: {e}") from None
        self._s = s
        self.stats: Counter[str] = s.stats
        self._queue = BroadcastQueue()
        self._out = Piggyback(s, self._queue)
        self._awareness = Awareness(config.awareness_max)
        self._updates = Updates(s, self._queue, self._awareness)
        # The parts draw their first timer jitter from `rng` in this order; keep it, so that a
        # seeded simulation stays reproducible across versions.
        self._probe = Prober(s, self._out, self._updates, self._awareness, now)
        self._next_recheck = now + config.admission_recheck
        self._joins = Joiner(s, self._out, self._updates, now)
        self._sync = AntiEntropy(s, self._updates, now)

    # -- public API ----------------------------------------------------------------------------

    @property
    def identity(self) -> bytes:
        return self._s.id

    @property
    def record(self) -> NodeRecord:
        return self._s.record

    @property
    def raw_record(self) -> bytes:
        """Our signed record as it goes on the wire."""
        return self._s.raw

    @property
    def local_health(self) -> int:
        """Lifeguard's local health multiplier (0 = healthy, up to awareness_max)."""
        return self._awareness.score

    @property
    def incarnation(self) -> int:
        return self._s.inc

    @property
    def joined(self) -> bool:
        return self._joins.joined

    def high_water(self) -> dict[bytes, int]:
        """Highest incarnation known per identity (members and reaped ones), to persist."""
        s = self._s
        out = dict(s.tombs)
        for k, m in s.members.items():
            out[k] = max(m.record.incarnation, m.state_inc)
        return out

    def remember(self, high_water: dict[bytes, int]) -> None:
        """Refuse records at or below these incarnations (high-water marks from disk)."""
        s = self._s
        for k, inc in high_water.items():
            if k != s.id and k not in s.members and inc > s.tombs.get(k, -1):
                s.tombs[k] = inc
        s.prune_tombs()

    def members(self) -> list[NodeRecord]:
        """Records of the members currently alive or suspected (not including this node)."""
        return [m.record for m in self._s.members.values() if m.state in LIVE]

    def state_of(self, key: bytes) -> str | None:
        """'alive' | 'suspect' | 'dead' | 'left' for a known node, None otherwise."""
        m = self._s.members.get(key)
        return m.state if m is not None else None

    def alive_count(self) -> int:
        """Members alive or suspected, this node included (the N of the formulas)."""
        return 1 + self._s.n_live

    def join(self, seeds: Sequence[Endpoint], now: float) -> list[Action]:
        """Start joining through `seeds` (endpoints; no key known). Retries with backoff."""
        return self._joins.join(seeds, now)

    def leave(self, now: float) -> list[Action]:
        """Announce a graceful leave (a self-signed record with the left flag)."""
        s = self._s
        if s.left:
            return []
        s.inc += 1
        s.record, s.raw = s.sign_self(left=True)
        entry: Entry = (TAG_RECORD, s.raw)
        self._queue.put(s.id, entry)
        out: list[Action] = []
        live = [m for m in s.members.values() if m.state == ALIVE]
        s.rng.shuffle(live)  # type: ignore[arg-type]
        for m in live[: self.config.leave_fanout]:
            ep = endpoint_of(m)
            if ep is None:
                continue
            pkt = Packet(LEAVE, s.id, entries=(entry,))
            self._out.send(m, pkt, ep, out)
        s.left = True
        return out

    def announce(self, now: float) -> list[Action]:
        """Send our current record to every live member at once (a Ping carrying it), after
        a change they should not wait for the piggyback to learn (a new endpoint: their
        probes would go to the old one). Their Acks match no probe and change nothing."""
        s = self._s
        if s.left:
            return []
        entry: Entry = (TAG_RECORD, s.raw)
        out: list[Action] = []
        for m in s.members.values():
            if m.state not in LIVE:
                continue
            # the piggyback queue holds the fresh record until its retransmit limit; after
            # that it rides along explicitly (never twice in one packet)
            extra = () if s.id in self._queue else (entry,)
            self._out.send(m, Packet(PING, s.id, s.new_seq()), endpoint_of(m), out,
                           extra=extra)
            s.stats["announce_sent"] += 1
        return out

    def update_self(
        self,
        now: float,
        *,
        endpoints: Sequence[Endpoint] | None = None,
        nat_type: int | None = None,
        certificate: bytes | None = None,
        wg_key: X25519PrivateKey | None = None,
        routes: Sequence[IPNetwork] | None = None,
    ) -> None:
        """Change a claim about this node: a new incarnation is signed and gossiped."""
        s = self._s
        if routes is not None:
            s.routes = canonical_routes(routes)
        if endpoints is not None:
            s.endpoints = tuple(endpoints)
        if nat_type is not None:
            s.nat = nat_type
        if certificate is not None:
            s.cert = certificate
        if wg_key is not None:
            s.wg = wg_key
            for m in s.members.values():
                m.pair_key = None
                m.heard = False  # our next packet to each carries the new record first
        self._updates.bump_self(s.inc + 1)

    def reevaluate_admission(self, now: float, wall: float) -> list[Action]:
        """Ask the admission policy again about every member; drop those no longer admitted."""
        return self._updates.reevaluate_admission(wall)

    def next_deadline(self) -> float | None:
        s = self._s
        if s.left:
            return None
        return min(
            self._probe.next_deadline(),
            self._joins.next_deadline(),
            self._sync.next_deadline(),
            self._next_recheck,
            s.refresh_due(),
            self._updates.next_deadline(),
        )

    # -- timers --------------------------------------------------------------------------------

    def tick(self, now: float, wall: float) -> list[Action]:
        s = self._s
        if s.left:
            return []
        s.set_wall(now, wall)
        out: list[Action] = []
        if now >= s.refresh_due():
            # Sign our record again, so that it never grows too old to be accepted.
            s.stats["record_refreshed"] += 1
            self._updates.bump_self(s.inc + 1)
        if now >= self._next_recheck:
            # Certificates expire and revocations arrive without a trust reload: ask again, so
            # a member that is no longer admitted loses every gossip right.
            self._next_recheck = now + self.config.admission_recheck
            out += self._updates.reevaluate_admission(s.wall)
            s.prune_tombs()
        self._probe.tick(now, out)
        self._updates.tick(now, out)
        self._joins.tick(now, out)
        self._sync.tick(now, out)
        return out

    # -- receiving -----------------------------------------------------------------------------

    def receive(self, now: float, wall: float, data: bytes, src: Endpoint) -> list[Action]:
        """Handle one datagram. Garbage and forgeries are counted in `stats` and dropped."""
        s = self._s
        t = peek_type(data)
        if t < 0:
            s.stats["not_gossip"] += 1
            return []
        if s.left:
            return []
        s.set_wall(now, wall)
        if t == JOIN and self._joins.source_exhausted(now, src):
            # A Join flood from one address stops here, before it is even decoded.
            s.stats["join_rate_limited"] += 1
            return []
        try:
            p = decode_packet(data)
        except WireFormatError:
            s.stats["malformed"] += 1
            return []
        out: list[Action] = []
        try:
            self._receive(now, t, p, data, src, out)
        except WireFormatError:
            # Nothing from the network may raise out of the core; a packet that trips an
            # encoder is counted and dropped.
            s.stats["dropped_wire_error"] += 1
        return out

    def _receive(
        self, now: float, t: int, p: Packet, data: bytes, src: Endpoint, out: list[Action]
    ) -> None:
        s = self._s
        if t == JOIN:
            self._joins.on_join(now, p, src, out)
            return
        sender = p.sender
        if sender == s.id:
            s.stats["from_self"] += 1
            return
        m = s.members.get(sender)
        if t == JOIN_ACK:
            if not self._joins.expects(p.seq):
                s.stats["join_ack_unsolicited"] += 1
                return
            m = self._introduce(now, p.record, data, p.mac, m, src, out)
            if m is None:
                return
            self._on_join_ack(now, m, out)
        elif m is None:
            # First contact: a member that knows us puts its own record first ("hello").
            ent = p.entries
            if not ent or ent[0][0] != TAG_RECORD or ent[0][1][4:36] != sender:
                s.stats["non_member"] += 1
                return
            m = self._introduce(now, ent[0][1], data, p.mac, None, src, out)
            if m is None:
                return
        elif (
            p.entries
            and p.entries[0][0] == TAG_RECORD
            and p.entries[0][1][4:36] == sender
            and p.entries[0][1] != m.raw
            and int.from_bytes(p.entries[0][1][36:44], "little") > m.record.incarnation
        ):
            # A member that changed its keys (WireGuard key rotation) says hello again with its
            # new record first: the MAC is checked under the new record's keys. The record
            # costs a verification, so this path spends the stranger budget.
            if not s.record_fresh(p.entries[0][1]):
                return
            if not self._joins.take_token(now, src):
                s.stats["join_rate_limited"] += 1
                return
            m = self._introduce(now, p.entries[0][1], data, p.mac, m, src, out)
            if m is None:
                return
        elif not self._mac_ok(m, data, p.mac):
            return
        m.heard = True
        s.stats["rx_" + TYPE_NAMES[t]] += 1  # accepted (MAC verified), by type
        if t == PING:
            self._probe.on_ping(m, p, src, out)
        elif t == PING_REQ:
            self._probe.on_ping_req(now, m, p, src, out)
        elif t == ACK:
            self._probe.on_ack(m, p, out)
        elif t == SYNC_REQ:
            self._sync.on_sync_req(m, p, src, out)
            return
        elif t == SYNC_DATA:
            self._sync.on_sync_data(now, m, p, out)
            return
        elif t == SYNC_SUMMARY:
            self._sync.on_sync_summary(m, p, src, out)
            return
        elif t == SYNC_WANT:
            self._sync.on_sync_want(m, p, src, out)
            return
        self._updates.apply_entries(now, p.entries, out, rebroadcast=True)
        return

    def _mac_ok(self, m: Member, data: bytes, tag: bytes) -> bool:
        s = self._s
        key = s.pair_key(m)
        if key is None or not equal(mac(key, data[:-MAC_LEN]), tag):
            s.stats["bad_mac"] += 1
            return False
        return True

    def _introduce(
        self,
        now: float,
        raw: bytes,
        data: bytes,
        tag: bytes,
        m: Member | None,
        src: Endpoint,
        out: list[Action],
    ) -> Member | None:
        """Accept a packet whose sender vouches for itself with `raw` (its signed record).

        The record is checked (signature, admission) and the MAC under its keys before it may
        change anything. Costs one Ed25519 verification per record version (rate limited for
        strangers).
        """
        s = self._s
        sender = raw[4:36]
        if m is not None and raw == m.raw:
            return m if self._mac_ok(m, data, tag) else None
        if sender in s.rejected:
            s.stats["not_admitted"] += 1
            return None
        if m is None and not s.record_fresh(raw):
            return None
        if m is None and not self._joins.take_token(now, src):
            s.stats["join_rate_limited"] += 1
            return None
        rec = s.cache.parse_record(raw)
        if rec is None or not s.cache.record_valid(raw):
            s.stats["bad_signature"] += 1
            return None
        if m is not None and rec.incarnation <= m.record.incarnation:
            return m if self._mac_ok(m, data, tag) else None
        if m is None and not s.admit(sender, rec.certificate):
            return None
        key = s.cache.pair_key(s.wg, s.id, rec.wg_public, sender)
        if key is None or not equal(mac(key, data[:-MAC_LEN]), tag):
            s.stats["bad_mac"] += 1
            return None
        self._updates.apply_record(now, raw, out, rebroadcast=True)
        m = s.members.get(sender)
        if m is None or m.raw != raw:
            return None
        return m

    def _on_join_ack(self, now: float, m: Member, out: list[Action]) -> None:
        if self._joins.mark_joined():
            self._sync.bootstrap(now)
        self._sync.send_sync_req(m, 0, out)
        if m.state in (SUSPECT, DEAD) and m.accusation is not None:
            # It thinks it is alive; tell it what we heard so it can refute.
            s = self._s
            self._out.send(m, Packet(PING, s.id, s.new_seq()), endpoint_of(m), out)
