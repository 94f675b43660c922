"""The sans-IO SWIM membership core.

Feed it datagrams with `receive(now, wall, data, src)` and call `tick(now, wall)` at
`next_deadline()` (the shape every sans-IO core shares, see sansio.py); it returns actions:
`SendDatagram` and membership events (`MemberUp`, `MemberUpdated`, `MemberDown`) carrying the
member's verified, signed record.

Protocol (SWIM, Das et al. 2002, with Lifeguard refinements, Dadgar et al. 2017):
- one probe per period, targets in randomized round-robin order (each round a fresh shuffle;
  members joining mid-round go to a random place among those not yet probed); direct Ping,
  and after `probe_timeout` a PingReq to k members, which ping the target and forward its Ack
  back; no ack by the end of the period -> Suspect.
- Suspicion timeout from `SwimConfig.suspicion_min/max(N)`, shortened by independent
  confirmations (Lifeguard); when it expires the member is declared Dead.
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

import heapq
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass

from meshguard.crypto.hashes import equal as _equal
from meshguard.crypto.hashes import mac as _mac
from meshguard.crypto.keys import Ed25519PrivateKey, X25519PrivateKey
from meshguard.errors import MeshguardError, WireFormatError
from meshguard.rng import Rng
from meshguard.sansio import Endpoint, SendDatagram
from meshguard.swim.broadcast import CRITICAL, NORMAL, URGENT, BroadcastQueue
from meshguard.swim.config import DEFAULT_CONFIG, SwimConfig
from meshguard.swim.records import (
    AdmissionPolicy,
    CryptoCache,
    is_admitted,
    sign_accusation,
    sign_record,
)
from meshguard.swim.suspicion import Suspicion
from meshguard.wire.gossip import (
    ACK,
    JOIN,
    JOIN_ACK,
    LEAVE,
    MAC_LEN,
    MAX_ENTRIES,
    MAX_PACKET,
    MAX_SUMMARY_ITEMS,
    MAX_WANT_ITEMS,
    PING,
    PING_REQ,
    SYNC_BUCKETS,
    SYNC_DATA,
    SYNC_FLAG_REPLY,
    SYNC_REQ,
    SYNC_SUMMARY,
    SYNC_WANT,
    TAG_DEAD,
    TAG_RECORD,
    TAG_SUSPECT,
    Entry,
    NodeRecord,
    Packet,
    decode_packet,
    encode_accusation,
    encode_body,
    peek_type,
)

ALIVE = "alive"
SUSPECT = "suspect"
DEAD = "dead"
LEFT = "left"
_LIVE = (ALIVE, SUSPECT)

_BASE_PING = 5 + 32 + 4
_BASE_PROBE = 5 + 32 + 36
_BASE_LEAVE = 5 + 32
_BASE_SYNC = 5 + 32 + 8
_BMASK = SYNC_BUCKETS - 1
_DIRECT_SYNC = 14  # up to this many records are sent at once (2 packets), more are summarised


class SwimUsageError(MeshguardError):
    """The membership core was used wrongly (bad local configuration)."""


@dataclass(frozen=True, slots=True)
class MemberUp:
    record: NodeRecord


@dataclass(frozen=True, slots=True)
class MemberUpdated:
    record: NodeRecord


@dataclass(frozen=True, slots=True)
class MemberDown:
    record: NodeRecord
    reason: str  # "dead" | "left" | "untrusted"


Action = SendDatagram | MemberUp | MemberUpdated | MemberDown


class Member:
    __slots__ = (
        "accusation",
        "heard",
        "key",
        "pair_key",
        "raw",
        "record",
        "since",
        "state",
        "state_inc",
        "suspicion",
        "sync_budget",
        "sync_in",
        "sync_out",
    )

    def __init__(self, key: bytes, record: NodeRecord, raw: bytes, now: float) -> None:
        self.key = key
        self.record = record
        self.raw = raw
        self.state = ALIVE
        self.state_inc = record.incarnation
        self.accusation: Entry | None = None
        self.since = now
        self.pair_key: bytes | None = None
        self.suspicion: Suspicion | None = None
        self.sync_in = 0
        self.sync_out = -1
        self.sync_budget = 0  # records it may still ask for under sync_in
        self.heard = False  # an authenticated packet from it arrived (it knows our record)


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
    ) -> None:
        self._key = identity_key
        self._wg = wg_key
        self._id = identity_key.public_key.raw
        self._admission = admission
        self._rng = rng
        self.config = config
        self._cache = cache if cache is not None else CryptoCache()
        self._inc = incarnation
        self._endpoints = tuple(endpoints)
        self._nat = nat_type
        self._cert = certificate
        try:
            self._record, self._raw = self._sign_self(left=False)
        except WireFormatError as e:
            raise SwimUsageError(f"invalid self record: {e}") from None
        self._members: dict[bytes, Member] = {}
        self._by_prefix: dict[bytes, Member] = {}  # identity[:8] -> member (SyncWant lookups)
        self._queue = BroadcastQueue()
        self._order: list[bytes] = []
        self._order_idx = 0
        # anti-entropy view: per key bucket, the XOR digest and the raw records of live members
        self._bdig = [0] * SYNC_BUCKETS
        self._braw: list[dict[bytes, bytes]] = [{} for _ in range(SYNC_BUCKETS)]
        self._xor(self._raw)
        self._braw[self._id[0] & _BMASK][self._id] = self._raw
        self._ep_index: dict[Endpoint, bytes] = {}
        self._n_live = 0
        self._rejected: dict[bytes, None] = {}
        self._susp_heap: list[tuple[float, int, bytes, int]] = []
        self._reap_queue: deque[tuple[float, bytes]] = deque()
        self._heap_ctr = 0
        self._graveyard: deque[Endpoint] = deque(maxlen=config.graveyard_size)
        self._wall = now
        self._left = False
        # probing
        self._next_probe = now + rng.uniform(0, config.probe_interval)
        self._probe_target: bytes | None = None
        self._probe_seq = 0
        self._probe_start = 0.0
        self._probe_acked = True
        self._probe_indirect = True
        # Lifeguard local health: failed probes and refutations (signs that we, not the
        # others, are slow or cut off) stretch our probe period and timeout by (1 + lhm).
        self._lhm = 0
        self._probe_asked: set[bytes] = set()
        self._forwards: dict[int, tuple[bytes, Endpoint, int, bytes, float]] = {}
        # joining, re-contact, anti-entropy
        self._seeds: tuple[Endpoint, ...] = ()
        self._joined = True
        self._next_join = float("inf")
        self._join_backoff = config.join_retry_min
        self._join_nonces: dict[int, float] = {}
        self._next_recontact = now + config.recontact_interval * rng.uniform(0.5, 1.5)
        self._next_sync = now + config.sync_interval * rng.uniform(0.5, 1.5)
        self._sync_ctr = 0
        self._boot_gap = config.sync_interval
        self._boot_round = 0
        self._tokens = config.join_burst
        self._tokens_at = now
        self._src_tokens: dict[str, tuple[float, float]] = {}  # host -> (tokens, at)
        self._seen_joins: dict[tuple[bytes, int], float] = {}  # (identity, nonce) -> when
        self._join_acked: dict[bytes, float] = {}  # identity -> when its join was last answered
        self._wg_owner: dict[bytes, bytes] = {}  # WireGuard key -> the member that holds it
        # identity -> highest incarnation of a reaped member: its older records stay refused
        self._tombs: dict[bytes, int] = {}
        self._wall_offset = 0.0  # wall - now, as of the last call that gave both
        self._next_recheck = now + config.admission_recheck
        self.stats: Counter[str] = Counter()

    # -- public API ----------------------------------------------------------------------------

    @property
    def identity(self) -> bytes:
        return self._id

    @property
    def record(self) -> NodeRecord:
        return self._record

    @property
    def raw_record(self) -> bytes:
        """Our signed record as it goes on the wire."""
        return self._raw

    @property
    def local_health(self) -> int:
        """Lifeguard's local health multiplier (0 = healthy, up to awareness_max)."""
        return self._lhm

    @property
    def incarnation(self) -> int:
        return self._inc

    def high_water(self) -> dict[bytes, int]:
        """Highest incarnation known per identity (members and reaped ones), to persist."""
        out = dict(self._tombs)
        for k, m in self._members.items():
            out[k] = max(m.record.incarnation, m.state_inc)
        return out

    def remember(self, high_water: dict[bytes, int]) -> None:
        """Refuse records at or below these incarnations (high-water marks from disk)."""
        for k, inc in high_water.items():
            if k != self._id and k not in self._members and inc > self._tombs.get(k, -1):
                self._tombs[k] = inc
        self._prune_tombs()

    def members(self) -> list[NodeRecord]:
        """Records of the members currently alive or suspected (not including this node)."""
        return [m.record for m in self._members.values() if m.state in _LIVE]

    def state_of(self, key: bytes) -> str | None:
        """'alive' | 'suspect' | 'dead' | 'left' for a known node, None otherwise."""
        m = self._members.get(key)
        return m.state if m is not None else None

    def alive_count(self) -> int:
        """Members alive or suspected, this node included (the N of the formulas)."""
        return 1 + self._n_live

    def join(self, seeds: Sequence[Endpoint], now: float) -> list[Action]:
        """Start joining through `seeds` (endpoints; no key known). Retries with backoff."""
        self._seeds = tuple(seeds)
        if not self._seeds:
            return []
        self._joined = False
        self._join_backoff = self.config.join_retry_min
        out: list[Action] = []
        self._send_joins(now, self._seeds, out)
        self._next_join = now + self._join_backoff * self._rng.uniform(0.8, 1.2)
        return out

    @property
    def joined(self) -> bool:
        return self._joined

    def leave(self, now: float) -> list[Action]:
        """Announce a graceful leave (a self-signed record with the left flag)."""
        if self._left:
            return []
        self._inc += 1
        self._record, self._raw = self._sign_self(left=True)
        entry: Entry = (TAG_RECORD, self._raw)
        self._queue.put(self._id, entry)
        out: list[Action] = []
        live = [m for m in self._members.values() if m.state == ALIVE]
        self._rng.shuffle(live)  # type: ignore[arg-type]
        for m in live[: self.config.leave_fanout]:
            ep = self._endpoint(m)
            if ep is None:
                continue
            pkt = Packet(LEAVE, self._id, entries=(entry,))
            self._send(m, pkt, ep, out)
        self._left = True
        return out

    def update_self(
        self,
        now: float,
        *,
        endpoints: Sequence[Endpoint] | None = None,
        nat_type: int | None = None,
        certificate: bytes | None = None,
        wg_key: X25519PrivateKey | None = None,
    ) -> None:
        """Change a claim about this node: a new incarnation is signed and gossiped."""
        if endpoints is not None:
            self._endpoints = tuple(endpoints)
        if nat_type is not None:
            self._nat = nat_type
        if certificate is not None:
            self._cert = certificate
        if wg_key is not None:
            self._wg = wg_key
            for m in self._members.values():
                m.pair_key = None
                m.heard = False  # our next packet to each carries the new record first
        self._bump(self._inc + 1)

    def reevaluate_admission(self, now: float, wall: float) -> list[Action]:
        """Ask the admission policy again about every member; drop those no longer admitted."""
        self._wall = wall
        self._rejected.clear()
        out: list[Action] = []
        for m in list(self._members.values()):
            ok = is_admitted(self._admission.admit(m.key, m.record.certificate, self._wall))
            if ok:
                continue
            was_live = m.state in _LIVE
            self._remove(m)
            self._rejected[m.key] = None
            self._queue.drop(m.key)
            if was_live:
                out.append(MemberDown(m.record, "untrusted"))
        return out

    def next_deadline(self) -> float | None:
        if self._left:
            return None
        t = min(self._next_probe, self._next_recontact, self._next_sync, self._next_join,
                self._next_recheck, self._refresh_due())
        if not self._probe_acked and not self._probe_indirect:
            t = min(t, self._probe_start + self.config.probe_timeout * (1 + self._lhm))
        if self._susp_heap:
            t = min(t, self._susp_heap[0][0])
        if self._reap_queue:
            t = min(t, self._reap_queue[0][0] + self.config.dead_reap_after)
        return t

    # -- timers --------------------------------------------------------------------------------

    def tick(self, now: float, wall: float) -> list[Action]:
        if self._left:
            return []
        self._set_wall(now, wall)
        out: list[Action] = []
        cfg = self.config
        if now >= self._refresh_due():
            # Sign our record again, so that it never grows too old to be accepted.
            self.stats["record_refreshed"] += 1
            self._bump(self._inc + 1)
        if now >= self._next_recheck:
            # Certificates expire and revocations arrive without a trust reload: ask again, so
            # a member that is no longer admitted loses every gossip right.
            self._next_recheck = now + cfg.admission_recheck
            out += self.reevaluate_admission(now, self._wall)
            self._prune_tombs()
        if (
            not self._probe_acked
            and not self._probe_indirect
            and now >= self._probe_start + cfg.probe_timeout * (1 + self._lhm)
        ):
            self._probe_indirect = True
            self._send_indirect(now, out)
        if now >= self._next_probe:
            if not self._probe_acked and self._probe_target is not None:
                self._lhm = min(cfg.awareness_max, self._lhm + 1)
                m = self._members.get(self._probe_target)
                if m is not None and m.state == ALIVE:
                    self.stats["probe_failed"] += 1
                    self._accuse(now, m, dead=False, out=out)
                elif (
                    m is not None
                    and m.state == SUSPECT
                    and m.suspicion is not None
                    and self._id not in m.suspicion.accusers
                ):
                    # Our own failed probe confirms someone else's suspicion (Lifeguard): the
                    # timeout shrinks here, and our signed confirmation shrinks it elsewhere.
                    self.stats["probe_failed"] += 1
                    if m.suspicion.confirm(self._id):
                        self.stats["confirmed"] += 1
                        acc = sign_accusation(self._key, False, m.key, m.suspicion.incarnation)
                        self._push_suspicion(m)
                        self._queue.put(m.key, encode_accusation(acc))
            self._probe_acked = True
            self._start_probe(now, out)
            self._next_probe = now + cfg.probe_interval * (1 + self._lhm)
            if self._forwards:
                for seq in [s for s, f in self._forwards.items() if f[4] <= now]:
                    del self._forwards[seq]
        while self._susp_heap and self._susp_heap[0][0] <= now:
            _, _, key, inc = heapq.heappop(self._susp_heap)
            m = self._members.get(key)
            if (
                m is not None
                and m.state == SUSPECT
                and m.suspicion is not None
                and m.suspicion.incarnation == inc
                and m.suspicion.deadline() <= now
            ):
                self.stats["declared_dead"] += 1
                self._accuse(now, m, dead=True, out=out)
        while self._reap_queue and self._reap_queue[0][0] + cfg.dead_reap_after <= now:
            since, key = self._reap_queue.popleft()
            m = self._members.get(key)
            if m is not None and m.state in (DEAD, LEFT) and m.since == since:
                ep = self._endpoint(m)
                self._remove(m)
                self._tombs[key] = max(m.record.incarnation, m.state_inc)
                if ep is not None:
                    self._graveyard.append(ep)
                self.stats["reaped"] += 1
        if not self._joined and now >= self._next_join:
            self._send_joins(now, self._seeds, out)
            self._join_backoff = min(self._join_backoff * 2, cfg.join_retry_max)
            self._next_join = now + self._join_backoff * self._rng.uniform(0.8, 1.2)
        if now >= self._next_recontact:
            self._next_recontact = now + cfg.recontact_interval * self._rng.uniform(0.5, 1.5)
            if self._joined:
                self._recontact(now, out)
        if now >= self._next_sync:
            if self._boot_gap < cfg.sync_interval:
                self._boot_round += 1
                if self._boot_round % 2 == 0:
                    self._boot_gap *= 2
                self._next_sync = now + self._boot_gap * self._rng.uniform(0.8, 1.2)
            else:
                self._next_sync = now + cfg.sync_interval * self._rng.uniform(0.5, 1.5)
            peer = self._random_alive()
            if peer is not None:
                self._send_sync_req(peer, SYNC_FLAG_REPLY, out)
        if self._joined:
            self._next_join = float("inf")
        return out

    # -- receiving -----------------------------------------------------------------------------

    def receive(self, now: float, wall: float, data: bytes, src: Endpoint) -> list[Action]:
        """Handle one datagram. Garbage and forgeries are counted in `stats` and dropped."""
        t = peek_type(data)
        if t < 0:
            self.stats["not_gossip"] += 1
            return []
        if self._left:
            return []
        self._set_wall(now, wall)
        if t == JOIN and self._source_exhausted(now, src):
            # A Join flood from one address stops here, before it is even decoded.
            self.stats["join_rate_limited"] += 1
            return []
        try:
            p = decode_packet(data)
        except WireFormatError:
            self.stats["malformed"] += 1
            return []
        out: list[Action] = []
        try:
            self._receive(now, t, p, data, src, out)
        except WireFormatError:
            # Nothing from the network may raise out of the core; a packet that trips an
            # encoder is counted and dropped.
            self.stats["dropped_wire_error"] += 1
        return out

    def _receive(
        self, now: float, t: int, p: Packet, data: bytes, src: Endpoint, out: list[Action]
    ) -> None:
        if t == JOIN:
            self._on_join(now, p, src, out)
            return
        sender = p.sender
        if sender == self._id:
            self.stats["from_self"] += 1
            return
        m = self._members.get(sender)
        if t == JOIN_ACK:
            if p.seq not in self._join_nonces:
                self.stats["join_ack_unsolicited"] += 1
                return
            m = self._introduce(now, p.record, data, p.mac, m, src, out)
            if m is None:
                return
            self._on_join_ack(now, m, out)
        elif m is None:
            # First contact: a member that knows us puts its own record first ("hello").
            ent = p.entries
            if not ent or ent[0][0] != TAG_RECORD or ent[0][1][4:36] != sender:
                self.stats["non_member"] += 1
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
            if not self._record_fresh(p.entries[0][1]):
                return
            if not self._take_token(now, src):
                self.stats["join_rate_limited"] += 1
                return
            m = self._introduce(now, p.entries[0][1], data, p.mac, m, src, out)
            if m is None:
                return
        elif not self._mac_ok(m, data, p.mac):
            return
        m.heard = True
        self.stats["rx_" + str(t)] += 1
        if t == PING:
            ep_out = Packet(ACK, self._id, p.seq, self._id)
            self._send(m, ep_out, src, out, buddy=True)
        elif t == PING_REQ:
            self._on_ping_req(now, m, p, src, out)
        elif t == ACK:
            self._on_ack(m, p, out)
        elif t == SYNC_REQ:
            self._on_sync_req(m, p, src, out)
            return
        elif t == SYNC_DATA:
            if p.seq != m.sync_out:
                self.stats["sync_unsolicited"] += 1
                return
            self._apply_entries(now, p.entries, out, rebroadcast=False)
            return
        elif t == SYNC_SUMMARY:
            self._on_sync_summary(m, p, src, out)
            return
        elif t == SYNC_WANT:
            self._on_sync_want(m, p, src, out)
            return
        self._apply_entries(now, p.entries, out, rebroadcast=True)
        return

    def _mac_ok(self, m: Member, data: bytes, tag: bytes) -> bool:
        key = self._pair_key(m)
        if key is None or not _equal(_mac(key, data[:-MAC_LEN]), tag):
            self.stats["bad_mac"] += 1
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
        sender = raw[4:36]
        if m is not None and raw == m.raw:
            return m if self._mac_ok(m, data, tag) else None
        if sender in self._rejected:
            self.stats["not_admitted"] += 1
            return None
        if m is None and not self._record_fresh(raw):
            return None
        if m is None and not self._take_token(now, src):
            self.stats["join_rate_limited"] += 1
            return None
        rec = self._cache.parse_record(raw)
        if rec is None or not self._cache.record_valid(raw):
            self.stats["bad_signature"] += 1
            return None
        if m is not None and rec.incarnation <= m.record.incarnation:
            return m if self._mac_ok(m, data, tag) else None
        if m is None and not self._admit(sender, rec.certificate):
            return None
        key = self._cache.pair_key(self._wg, self._id, rec.wg_public, sender)
        if key is None or not _equal(_mac(key, data[:-MAC_LEN]), tag):
            self.stats["bad_mac"] += 1
            return None
        self._apply_record(now, raw, out, rebroadcast=True)
        m = self._members.get(sender)
        if m is None or m.raw != raw:
            return None
        return m

    def _on_join_ack(self, now: float, m: Member, out: list[Action]) -> None:
        if not self._joined:
            self._joined = True
            self._next_join = float("inf")
            # Bootstrap: pull from random members again after gaps of 1, 1, 2, 2, 4, 4, ...
            # periods (until the regular interval), so early joiners of a mass join learn the
            # late ones quickly.
            self._boot_gap = self.config.probe_interval
            self._next_sync = now + self._boot_gap
        self._send_sync_req(m, 0, out)
        if m.state in (SUSPECT, DEAD) and m.accusation is not None:
            # It thinks it is alive; tell it what we heard so it can refute.
            self._send(m, Packet(PING, self._id, self._new_seq()), self._endpoint(m), out)

    def _on_join(self, now: float, p: Packet, src: Endpoint, out: list[Action]) -> None:
        raw = p.record
        ident = raw[4:36]
        if ident == self._id:
            self.stats["from_self"] += 1
            return
        nonce = (ident, p.seq)
        if nonce in self._seen_joins:
            # Each Join carries a fresh random nonce: a second one is a replay.
            self.stats["join_replayed"] += 1
            return
        if not self._record_fresh(raw):
            return
        m = self._members.get(ident)
        if m is not None and raw == m.raw:
            # A retry of a join we answered, or a replay with a new (unsigned) nonce: at most
            # one answer per member per join_retry_min / 2.
            last = self._join_acked.get(ident)
            if last is not None and now - last < self.config.join_retry_min / 2:
                self.stats["join_replayed"] += 1
                return
        if m is None or raw != m.raw:
            if ident in self._rejected:
                self.stats["not_admitted"] += 1
                return
            if not self._take_token(now, src):
                self.stats["join_rate_limited"] += 1
                return
            self._apply_record(now, raw, out, rebroadcast=True)
            m = self._members.get(ident)
            if m is None:
                return
        if len(self._seen_joins) >= 8192:
            horizon = now - self.config.record_max_age
            self._seen_joins = {k: t for k, t in self._seen_joins.items() if t > horizon}
            if len(self._seen_joins) >= 8192:
                self._seen_joins.clear()
        self._seen_joins[nonce] = now
        if len(self._join_acked) >= 8192:
            self._join_acked.clear()
        self._join_acked[ident] = now
        self.stats["joins_answered"] += 1
        extra: list[Entry] = []
        if m.state == ALIVE and m.raw != raw:
            extra.append((TAG_RECORD, m.raw))  # it restarted with an older incarnation
        pkt = Packet(JOIN_ACK, self._id, p.seq, record=self._raw)
        self._send(m, pkt, src, out, buddy=True, extra=extra)

    def _on_ping_req(
        self, now: float, m: Member, p: Packet, src: Endpoint, out: list[Action]
    ) -> None:
        target = self._members.get(p.key)
        if target is None or target.state not in _LIVE:
            return
        ep = self._endpoint(target)
        if ep is None:
            return
        seq = self._new_seq()
        back = self._reply_to(m, src)
        if back is None:
            return
        self._forwards[seq] = (m.key, back, p.seq, p.key, now + self.config.probe_interval)
        self._send(target, Packet(PING, self._id, seq), ep, out, buddy=True)

    def _on_ack(self, m: Member, p: Packet, out: list[Action]) -> None:
        if (
            not self._probe_acked
            and p.seq == self._probe_seq
            and p.key == self._probe_target
            and (m.key == self._probe_target or m.key in self._probe_asked)
        ):
            self._probe_acked = True
            self.stats["probe_acked"] += 1
            if self._lhm:
                self._lhm -= 1
            return
        f = self._forwards.get(p.seq)
        if f is not None and f[3] == m.key and p.key == m.key:
            del self._forwards[p.seq]
            req_key, req_ep, req_seq, target, _ = f
            requester = self._members.get(req_key)
            if requester is not None:
                self._send(requester, Packet(ACK, self._id, req_seq, target), req_ep, out)

    def _on_sync_req(self, m: Member, p: Packet, src: Endpoint, out: list[Action]) -> None:
        if p.seq <= m.sync_in:
            self.stats["sync_replayed"] += 1
            return
        dst = self._reply_to(m, src)
        if dst is None:
            return
        src = dst
        m.sync_in = p.seq
        differ = {b for b in range(SYNC_BUCKETS) if p.digests[b] != self._bdig[b]}
        if not differ:
            self.stats["sync_equal"] += 1
            return
        self.stats["sync_served"] += 1
        entries: list[Entry] = [
            (TAG_RECORD, raw) for b in sorted(differ) for raw in self._braw[b].values()
        ]
        if len(entries) <= _DIRECT_SYNC:
            self._send_records(m, p.seq, entries, src, out)
        else:
            # Too many to send blindly: summarise (key prefix, incarnation), let it ask.
            m.sync_budget = len(entries)
            items = [e[1][4:12] + e[1][36:44] for e in entries]
            key = self._pair_key(m)
            if key is not None:
                for i in range(0, len(items), MAX_SUMMARY_ITEMS):
                    chunk = tuple(items[i : i + MAX_SUMMARY_ITEMS])
                    body = encode_body(Packet(SYNC_SUMMARY, self._id, p.seq, items=chunk), False)
                    out.append(SendDatagram(body + _mac(key, body), src))
        if p.flags & SYNC_FLAG_REPLY:
            self._send_sync_req(m, 0, out)

    def _send_records(
        self, m: Member, counter: int, entries: list[Entry], dst: Endpoint, out: list[Action]
    ) -> None:
        key = self._pair_key(m)
        if key is None:
            return
        budget0 = MAX_PACKET - MAC_LEN - _BASE_SYNC - 1
        i = 0
        sent = 0
        while i < len(entries) and sent < self.config.sync_max_packets:
            budget = budget0
            chunk: list[Entry] = []
            while i < len(entries) and len(chunk) < MAX_ENTRIES:
                size = 1 + len(entries[i][1])
                if size > budget:
                    break
                budget -= size
                chunk.append(entries[i])
                i += 1
            body = encode_body(Packet(SYNC_DATA, self._id, counter, entries=tuple(chunk)), False)
            out.append(SendDatagram(body + _mac(key, body), dst))
            sent += 1

    def _on_sync_summary(self, m: Member, p: Packet, src: Endpoint, out: list[Action]) -> None:
        if p.seq != m.sync_out:
            self.stats["sync_unsolicited"] += 1
            return
        dst = self._reply_to(m, src)
        if dst is None:
            return
        src = dst
        want: list[bytes] = []
        rejected = {r[:8] for r in self._rejected}
        for item in p.items:
            prefix = item[:8]
            inc = int.from_bytes(item[8:16], "little")
            if prefix == self._id[:8]:
                continue
            k = self._by_prefix.get(prefix)
            if k is None:
                if prefix in rejected:
                    continue
                want.append(prefix)
            elif inc > k.record.incarnation and not (
                k.state in (SUSPECT, DEAD) and inc <= k.state_inc
            ):
                want.append(prefix)
        key = self._pair_key(m)
        if not want or key is None:
            return
        self.stats["sync_wanted"] += len(want)
        for i in range(0, len(want), MAX_WANT_ITEMS):
            chunk = tuple(want[i : i + MAX_WANT_ITEMS])
            body = encode_body(Packet(SYNC_WANT, self._id, p.seq, items=chunk), False)
            out.append(SendDatagram(body + _mac(key, body), src))

    def _on_sync_want(self, m: Member, p: Packet, src: Endpoint, out: list[Action]) -> None:
        if p.seq != m.sync_in or m.sync_budget <= 0:
            self.stats["sync_unsolicited"] += 1
            return
        dst = self._reply_to(m, src)
        if dst is None:
            return
        src = dst
        entries: list[Entry] = []
        for prefix in p.items[: m.sync_budget]:
            if prefix == self._id[:8]:
                entries.append((TAG_RECORD, self._raw))
                continue
            k = self._by_prefix.get(prefix)
            if k is not None and k.state in _LIVE:
                entries.append((TAG_RECORD, k.raw))
        m.sync_budget -= len(p.items)
        self._send_records(m, p.seq, entries, src, out)

    # -- applying gossip -----------------------------------------------------------------------

    def _apply_entries(
        self, now: float, entries: tuple[Entry, ...], out: list[Action], rebroadcast: bool
    ) -> None:
        for tag, raw in entries:
            if tag == TAG_RECORD:
                self._apply_record(now, raw, out, rebroadcast)
            else:
                self._apply_accusation(now, tag == TAG_DEAD, raw, out)

    def _apply_record(self, now: float, raw: bytes, out: list[Action], rebroadcast: bool) -> None:
        ident = raw[4:36]
        inc = int.from_bytes(raw[36:44], "little")
        if ident == self._id:
            if (inc > self._inc or (inc == self._inc and raw != self._raw)) and (
                self._cache.record_valid(raw)
            ):
                # A newer (or conflicting) record of ours circulates: we restarted. Outbid it.
                self.stats["self_outbid"] += 1
                self._bump(max(inc, self._inc) + 1)
            return
        m = self._members.get(ident)
        if m is not None:
            known = m.record.incarnation
            if inc < known:
                self.stats["stale_record"] += 1
                return
            if inc == known:
                if raw != m.raw:
                    self.stats["equivocation"] += 1
                return
            if m.state in (SUSPECT, DEAD) and inc <= m.state_inc:
                self.stats["stale_record"] += 1
                return
        elif ident in self._rejected:
            self.stats["not_admitted"] += 1
            return
        elif inc < self._tombs.get(ident, -1):
            # Older than what a reaped member last said (its latest record may come back: a
            # member on the far side of a partition never heard it was declared dead).
            self.stats["stale_record"] += 1
            return
        if not self._record_fresh(raw):
            return
        wg = raw[44:76]
        owner = self._wg_owner.get(wg)
        if (owner is not None and owner != ident) or wg == self._wg.public_key.raw:
            # A WireGuard key belongs to one identity: a record claiming another's is refused.
            self.stats["wg_key_taken"] += 1
            return
        refutes = m is not None and m.state in (SUSPECT, DEAD)
        rec = self._cache.parse_record(raw)
        if rec is None:
            self.stats["malformed"] += 1
            return
        if not self._cache.record_valid(raw):
            self.stats["bad_signature"] += 1
            return
        if m is None:
            if rec.left:
                return
            if not self._admit(ident, rec.certificate):
                return
            m = Member(ident, rec, raw, now)
            self._members[ident] = m
            self._wg_owner[rec.wg_public] = ident
            self._tombs.pop(ident, None)
            self._by_prefix[ident[:8]] = m
            self._live_add(m)
            self._order_insert(ident)
            out.append(MemberUp(rec))
        else:
            old_state = m.state
            was_live = old_state in _LIVE
            if not self._admit(ident, rec.certificate):
                # Every new record is checked against trust again (a revoked certificate).
                self._remove(m)
                self._queue.drop(ident)
                if was_live:
                    out.append(MemberDown(m.record, "untrusted"))
                return
            if was_live:
                self._live_remove(m)
            m.sync_in = 0
            m.heard = False  # a new incarnation may have forgotten us
            if rec.wg_public != m.record.wg_public:
                m.pair_key = None
                if self._wg_owner.get(m.record.wg_public) == ident:
                    del self._wg_owner[m.record.wg_public]
                self._wg_owner[rec.wg_public] = ident
            m.record = rec
            m.raw = raw
            m.state_inc = inc
            m.suspicion = None
            m.accusation = None
            if rec.left:
                m.state = LEFT
                m.since = now
                self._reap_queue.append((now, ident))
                if was_live:
                    out.append(MemberDown(rec, "left"))
            else:
                m.state = ALIVE
                self._live_add(m)
                if was_live:
                    out.append(MemberUpdated(rec))
                else:
                    m.since = now
                    self._order_insert(ident)
                    out.append(MemberUp(rec))
        if rebroadcast or rec.left or refutes:
            # A refutation races the suspicion timeouts elsewhere: it rides as critical.
            self._queue.put(ident, (TAG_RECORD, raw), CRITICAL if rec.left or refutes else URGENT)
        elif (
            out
            and isinstance(out[-1], MemberUp)
            and (self._queue.normal_count() < self.config.quiet_queue_cap)
        ):
            # A member new to us, learnt by anti-entropy: spread it in spare piggyback room
            # (never ahead of accusations, refutations, joins or leaves).
            self._queue.put(ident, (TAG_RECORD, raw), NORMAL)

    def _apply_accusation(self, now: float, dead: bool, raw: bytes, out: list[Action]) -> None:
        """Suspect and Dead notices count only at the subject's current incarnation, and only
        from a live, admitted member. A single notice never kills: a Dead notice about a member
        we think alive starts a suspicion (which the subject refutes if it is alive); it dies
        when our own suspicion times out, or at once when `dead_quorum` distinct members have
        declared it dead."""
        subject = raw[0:32]
        accuser = raw[40:72]
        inc = int.from_bytes(raw[32:40], "little")
        if accuser == subject or accuser == self._id:
            return
        am = self._members.get(accuser)
        if am is None or am.state not in _LIVE:
            self.stats["accuser_not_member"] += 1
            return
        if subject == self._id:
            if inc != self._inc:
                self.stats["accusation_not_current"] += 1
                return
            if not self._cache.accusation_valid(dead, raw):
                self.stats["bad_signature"] += 1
                return
            self.stats["refuted"] += 1
            self._lhm = min(self.config.awareness_max, self._lhm + 1)
            self._bump(self._inc + 1)
            return
        m = self._members.get(subject)
        if m is None or m.state in (LEFT, DEAD):
            return
        if inc != m.record.incarnation:
            self.stats["accusation_not_current"] += 1
            return
        entry: Entry = (TAG_DEAD if dead else TAG_SUSPECT, raw)
        s = m.suspicion
        if m.state == SUSPECT and s is not None:
            if accuser in (s.dead if dead else s.accusers):
                return
            if not self._cache.accusation_valid(dead, raw):
                self.stats["bad_signature"] += 1
                return
            new = s.confirm(accuser)
            if dead:
                s.dead.add(accuser)
                if len(s.dead) >= self.config.dead_quorum:
                    self.stats["dead_by_quorum"] += 1
                    self._set_accused(now, m, True, inc, accuser, entry, out)
                    return
            elif not new:
                return  # beyond k confirmations: the timeout cannot shrink, nothing to spread
            self._push_suspicion(m)
            self._queue.put(subject, entry)
            return
        if not self._cache.accusation_valid(dead, raw):
            self.stats["bad_signature"] += 1
            return
        self._set_accused(now, m, False, inc, accuser, entry, out)
        if dead:
            self.stats["dead_notice_suspected"] += 1
            assert m.suspicion is not None
            m.suspicion.dead.add(accuser)

    def _set_accused(
        self,
        now: float,
        m: Member,
        dead: bool,
        inc: int,
        accuser: bytes,
        entry: Entry,
        out: list[Action],
    ) -> None:
        was_live = m.state in _LIVE
        m.state_inc = inc
        m.accusation = entry
        if dead:
            if was_live:
                self._live_remove(m)
            m.state = DEAD
            m.suspicion = None
            m.since = now
            self._reap_queue.append((now, m.key))
            if was_live:
                out.append(MemberDown(m.record, "dead"))
        else:
            n = self.alive_count()
            cfg = self.config
            m.state = SUSPECT
            m.suspicion = Suspicion(
                now,
                inc,
                accuser,
                cfg.suspicion_min(n),
                cfg.suspicion_max(n),
                cfg.expected_confirmations(n),
            )
            self._push_suspicion(m)
        self._queue.put(m.key, entry)

    def _push_suspicion(self, m: Member) -> None:
        assert m.suspicion is not None
        self._heap_ctr += 1
        heapq.heappush(
            self._susp_heap,
            (m.suspicion.deadline(), self._heap_ctr, m.key, m.suspicion.incarnation),
        )

    def _accuse(self, now: float, m: Member, dead: bool, out: list[Action]) -> None:
        inc = m.state_inc if m.state == SUSPECT else m.record.incarnation
        acc = sign_accusation(self._key, dead, m.key, inc)
        self._set_accused(now, m, dead, inc, self._id, encode_accusation(acc), out)

    # -- helpers -------------------------------------------------------------------------------

    def _sign_self(self, left: bool) -> tuple[NodeRecord, bytes]:
        rec = NodeRecord(
            identity=self._id,
            wg_public=self._wg.public_key.raw,
            incarnation=self._inc,
            endpoints=self._endpoints,
            nat_type=self._nat,
            certificate=self._cert,
            left=left,
        )
        return sign_record(self._key, rec)

    def _bump(self, inc: int) -> None:
        # The incarnation doubles as the signing time (wall-clock ms), see SwimConfig.
        self._xor(self._raw)
        self._inc = max(inc, int(self._wall * 1000))
        self._record, self._raw = self._sign_self(left=False)
        self._xor(self._raw)
        self._braw[self._id[0] & _BMASK][self._id] = self._raw
        self._queue.put(self._id, (TAG_RECORD, self._raw))

    def _admit(self, key: bytes, cert: bytes | None) -> bool:
        if is_admitted(self._admission.admit(key, cert, self._wall)):
            return True
        if len(self._rejected) >= 4096:
            self._rejected.clear()
        self._rejected[key] = None
        self.stats["not_admitted"] += 1
        return False

    def _remove(self, m: Member) -> None:
        if m.state in _LIVE:
            self._live_remove(m)
        del self._members[m.key]
        if self._wg_owner.get(m.record.wg_public) == m.key:
            del self._wg_owner[m.record.wg_public]
        if self._by_prefix.get(m.key[:8]) is m:
            del self._by_prefix[m.key[:8]]

    def _xor(self, raw: bytes) -> None:
        # a record's digest part is 8 of its signature bytes: unique per record version
        self._bdig[raw[4] & _BMASK] ^= int.from_bytes(raw[-8:], "little")

    def _live_add(self, m: Member) -> None:
        raw = m.raw
        b = raw[4] & _BMASK
        self._bdig[b] ^= int.from_bytes(raw[-8:], "little")
        self._braw[b][m.key] = raw
        for ep in m.record.endpoints:
            self._ep_index[ep] = m.key
        self._n_live += 1

    def _live_remove(self, m: Member) -> None:
        raw = m.raw
        b = raw[4] & _BMASK
        self._bdig[b] ^= int.from_bytes(raw[-8:], "little")
        self._braw[b].pop(m.key, None)
        self._index_eps(m, add=False)
        self._n_live -= 1

    def _index_eps(self, m: Member, add: bool) -> None:
        for ep in m.record.endpoints:
            if add:
                self._ep_index[ep] = m.key
            elif self._ep_index.get(ep) == m.key:
                del self._ep_index[ep]

    def _pair_key(self, m: Member) -> bytes | None:
        if m.pair_key is None:
            m.pair_key = self._cache.pair_key(self._wg, self._id, m.record.wg_public, m.key)
        return m.pair_key

    def _order_insert(self, key: bytes) -> None:
        """Put a new member at a random place among those not yet probed this round (SWIM
        inserts at random positions; otherwise every node would probe in join order and a
        crashed node could go unprobed for a whole round)."""
        order = self._order
        order.append(key)
        lo = min(self._order_idx, len(order) - 1)
        j = lo + self._rng.randrange(len(order) - lo)
        order[j], order[-1] = order[-1], order[j]

    def _random_alive(self) -> Member | None:
        order = self._order
        for _ in range(8):
            if not order:
                return None
            m = self._members.get(order[self._rng.randrange(len(order))])
            if m is not None and m.state == ALIVE:
                return m
        live = [m for m in self._members.values() if m.state == ALIVE]
        return live[self._rng.randrange(len(live))] if live else None

    def _endpoint(self, m: Member) -> Endpoint | None:
        eps = m.record.endpoints
        return eps[0] if eps else None

    def _new_seq(self) -> int:
        return self._rng.randrange(1 << 32)

    def _take_token(self, now: float, src: Endpoint) -> bool:
        """Budget for verifying a stranger's self-signed record: per source host first (a
        member's announced address is exempt), then the global bucket."""
        cfg = self.config
        host = src[0]
        per_source = src not in self._ep_index
        if per_source:
            b = self._src_tokens.get(host)
            if b is None:
                if len(self._src_tokens) >= 4096:
                    del self._src_tokens[next(iter(self._src_tokens))]
                have = cfg.join_source_burst
            else:
                have = min(cfg.join_source_burst, b[0] + (now - b[1]) * cfg.join_source_rate)
            self._src_tokens[host] = (have, now)
            if have < 1.0:
                return False
        self._tokens = min(cfg.join_burst, self._tokens + (now - self._tokens_at) * cfg.join_rate)
        self._tokens_at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        if per_source:
            self._src_tokens[host] = (have - 1.0, now)
        return True

    def _source_exhausted(self, now: float, src: Endpoint) -> bool:
        """True when a Join from `src` (not a member's announced address) could not be
        verified anyway: its source's budget or the global one is spent."""
        if src in self._ep_index:
            return False
        cfg = self.config
        if self._tokens + (now - self._tokens_at) * cfg.join_rate < 1.0:
            return True  # the global budget is spent (a flood from many addresses)
        b = self._src_tokens.get(src[0])
        return b is not None and b[0] + (now - b[1]) * cfg.join_source_rate < 1.0

    def _set_wall(self, now: float, wall: float) -> None:
        self._wall = wall
        self._wall_offset = wall - now

    def _refresh_due(self) -> float:
        """When (in `now` time) our record becomes record_refresh old."""
        return self._inc / 1000 + self.config.record_refresh - self._wall_offset

    def _record_fresh(self, raw: bytes) -> bool:
        """A record's incarnation is its signing time in ms: refuse it when too old or too far
        in the future (a cheap check, before any signature verification)."""
        age = self._wall - int.from_bytes(raw[36:44], "little") / 1000
        if age > self.config.record_max_age:
            self.stats["record_too_old"] += 1
            return False
        if age < -self.config.record_max_age:
            self.stats["record_from_future"] += 1
            return False
        return True

    def _prune_tombs(self) -> None:
        """Forget high-water marks whose records would be refused as too old anyway."""
        horizon = (self._wall - self.config.record_max_age) * 1000
        if len(self._tombs) > 65536:
            self._tombs = dict(list(self._tombs.items())[-65536:])
        for k in [k for k, inc in self._tombs.items() if inc < horizon]:
            del self._tombs[k]

    def _reply_to(self, m: Member, src: Endpoint) -> Endpoint | None:
        """Where a reply that may be large goes: the source if the member announced it, else
        its first announced endpoint (a spoofed source draws nothing)."""
        if src in m.record.endpoints:
            return src
        self.stats["reply_redirected"] += 1
        return self._endpoint(m)

    def _send(
        self,
        m: Member,
        pkt: Packet,
        ep: Endpoint | None,
        out: list[Action],
        buddy: bool = True,
        extra: Sequence[Entry] = (),
    ) -> None:
        if ep is None:
            return
        key = self._pair_key(m)
        if key is None:
            return
        t = pkt.type
        if t == PING:
            base = _BASE_PING
        elif t in (PING_REQ, ACK):
            base = _BASE_PROBE
        elif t == JOIN_ACK:
            base = _BASE_SYNC + len(pkt.record)
        else:
            base = _BASE_LEAVE
        budget = MAX_PACKET - MAC_LEN - base - 1
        entries: list[Entry] = list(pkt.entries)
        if ep not in m.record.endpoints:
            # A reply to an address the member never announced (NAT, or a replayed packet with
            # a spoofed source): send it bare, so it is never much larger than the request and
            # spends no piggyback budget. A JoinAck keeps the sender's record and `extra`.
            keep = (*pkt.entries, *extra[:1]) if t == JOIN_ACK else pkt.entries
            body = encode_body(
                Packet(t, self._id, pkt.seq, pkt.key, record=pkt.record, entries=keep), False
            )
            out.append(SendDatagram(body + _mac(key, body), ep))
            self.stats["bare_replies"] += 1
            return
        if not m.heard and t != JOIN_ACK and not self._left:
            entries.insert(0, (TAG_RECORD, self._raw))
        for e in entries:
            budget -= 1 + len(e[1])
        skip = b""
        if buddy and m.state in (SUSPECT, DEAD) and m.accusation is not None:
            entries.append(m.accusation)
            budget -= 1 + len(m.accusation[1])
            skip = m.key
        for e in extra:
            if 1 + len(e[1]) <= budget and len(entries) < MAX_ENTRIES:
                entries.append(e)
                budget -= 1 + len(e[1])
        n = 1 + self._n_live
        cfg = self.config
        entries += self._queue.take(
            budget,
            cfg.retransmit_limit(n),
            MAX_ENTRIES - len(entries),
            skip,
            cfg.retransmit_limit(n) // cfg.retransmit_mult,
        )
        body = encode_body(
            Packet(t, self._id, pkt.seq, pkt.key, record=pkt.record, entries=tuple(entries)),
            False,
        )
        out.append(SendDatagram(body + _mac(key, body), ep))

    def _start_probe(self, now: float, out: list[Action]) -> None:
        target = None
        for _ in range(2):
            while self._order_idx < len(self._order):
                k = self._order[self._order_idx]
                self._order_idx += 1
                m = self._members.get(k)
                if m is not None and m.state in _LIVE and m.record.endpoints:
                    target = m
                    break
            if target is not None:
                break
            self._order = [k for k, m in self._members.items() if m.state in _LIVE]
            self._rng.shuffle(self._order)  # type: ignore[arg-type]
            self._order_idx = 0
        if target is None:
            self._probe_target = None
            return
        self._probe_target = target.key
        self._probe_seq = self._new_seq()
        self._probe_start = now
        self._probe_acked = False
        self._probe_indirect = False
        self._probe_asked = set()
        self._send(target, Packet(PING, self._id, self._probe_seq), self._endpoint(target), out)

    def _send_indirect(self, now: float, out: list[Action]) -> None:
        target = self._probe_target
        if target is None:
            return
        cands = [m for m in self._members.values() if m.state == ALIVE and m.key != target]
        k = self.config.indirect_checks
        if len(cands) > k:
            picked = []
            for _ in range(k):
                picked.append(cands.pop(self._rng.randrange(len(cands))))
            cands = picked
        for m in cands:
            self._probe_asked.add(m.key)
            pkt = Packet(PING_REQ, self._id, self._probe_seq, target)
            self._send(m, pkt, self._endpoint(m), out)

    def _send_joins(self, now: float, eps: Sequence[Endpoint], out: list[Action]) -> None:
        for nonce, exp in list(self._join_nonces.items()):
            if exp <= now:
                del self._join_nonces[nonce]
        for ep in eps:
            nonce = int.from_bytes(self._rng.bytes(8), "little")
            if len(self._join_nonces) < 256:
                self._join_nonces[nonce] = now + 2 * self.config.join_retry_max
            body = encode_body(Packet(JOIN, seq=nonce, record=self._raw))
            out.append(SendDatagram(body, ep))
            self.stats["joins_sent"] += 1

    def _recontact(self, now: float, out: list[Action]) -> None:
        cands: list[Endpoint] = []
        for m in self._members.values():
            if m.state == DEAD:
                ep = self._endpoint(m)
                if ep is not None:
                    cands.append(ep)
        cands.extend(e for e in self._graveyard if e not in self._ep_index)
        cands.extend(e for e in self._seeds if e not in self._ep_index)
        if cands:
            self._send_joins(now, [cands[self._rng.randrange(len(cands))]], out)

    def _send_sync_req(self, m: Member, flags: int, out: list[Action]) -> None:
        self._sync_ctr += 1
        m.sync_out = self._sync_ctr
        key = self._pair_key(m)
        ep = self._endpoint(m)
        if key is None or ep is None:
            return
        body = encode_body(
            Packet(SYNC_REQ, self._id, self._sync_ctr, digests=tuple(self._bdig), flags=flags)
        )
        out.append(SendDatagram(body + _mac(key, body), ep))
