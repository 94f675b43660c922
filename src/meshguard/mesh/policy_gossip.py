"""Signed org policies spreading through the mesh: announce, pull in chunks, check (sans-IO).

A signed policy (policy/signed.py) is up to ~60 KiB, so it cannot ride in one gossip packet as
revocations do (mesh/org_gossip.py). Instead (wire/policy_gossip.py, docs/policy.md):

* **announce**: a member announces (org, serial, digest, size) of every policy it holds for the
  orgs it trusts, in push rounds (FANOUT random members every ROUND seconds for
  `RETRANSMIT_MULT * ceil(log2(n + 1))` rounds after it got a new one), to members it has not
  met before (newcomers; each member with probability min(1, NEW_MEMBER_SENDERS / n)), to one
  random member every SYNC_INTERVAL seconds, and back to a member that announced an older
  serial (budgeted per member);
* **pull**: on hearing a newer serial of an org this node trusts, it pulls the blob chunk by
  chunk (CHUNK bytes, WINDOW requests outstanding) from a member that announced it: one
  transfer per org at a time and at most MAX_TRANSFERS in all (bounded memory), each
  announcer may start at most a few transfers (PULL_BURST, PULL_RATE), a stalled transfer asks
  again after CHUNK_TIMEOUT and gives up after MAX_STALLS or TRANSFER_TIMEOUT, then tries the
  next announcer. Chunks are accepted only from the member the transfer asked, for the exact
  (org, serial, digest, offset, total) it asked;
* **check**: a complete blob must have the announced digest, frame as a signed policy of the
  announced org and serial, and then `offer` decides (the daemon passes PolicyStore.offer,
  which checks the one signature and writes the file). A blob that fails after its digest
  matched is remembered as bad, so it is never pulled again; one whose digest did not match
  only strikes the announcer that sent it.
* **members only**: every packet carries the member link trailer (a lookup and one MAC before
  anything else, as org gossip) and is answered only to the member's known gossip endpoint,
  never to the packet's source address; serving chunks is budgeted per member and in all.

A forged, truncated, oversized or stale transfer therefore changes nothing: it is counted
(`counters`) and dropped. A rogue member can make this node pull and check at most PULL_BURST
blobs, then PULL_RATE per second, and cannot hide a real newer policy: each member counts for
one candidate per org (its newest announcement), at most MAX_CANDIDATES per org, and once a
rogue announcer's pull budget is spent the next best candidate is pulled from another.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from meshguard.crypto.hashes import blake2s, equal, mac
from meshguard.crypto.keys import X25519PrivateKey
from meshguard.errors import WireFormatError
from meshguard.mesh.link_keys import cached_link_key
from meshguard.mesh.org_gossip import NEW_MEMBER_SENDERS, OrgLink
from meshguard.nat.budget import TokenBucket
from meshguard.policy.signed import SignedPolicy, decode_policy, signature_valid
from meshguard.rng import Rng
from meshguard.sansio import Endpoint, SendDatagram
from meshguard.wire import policy_gossip as wire
from meshguard.wire.policy_gossip import Chunk, ChunkRequest, PolicyItem

ROUND = 1.0  # seconds between push rounds
FANOUT = 3
RETRANSMIT_MULT = 3
SYNC_INTERVAL = 30.0
LINK_LABEL = b"meshguard policy link v1"
WINDOW = 8  # chunk requests outstanding per transfer
CHUNK_TIMEOUT = 1.0  # seconds without a chunk before the outstanding ones are asked again
MAX_STALLS = 4  # such timeouts in a row before the transfer moves to another announcer
TRANSFER_TIMEOUT = 30.0
MAX_TRANSFERS = 4  # transfers at once (each holds at most wire.MAX_BLOB bytes)
MAX_CANDIDATES = 16  # (serial, digest) pairs kept per org; one per announcing member
MAX_ANNOUNCERS = 8  # members remembered per candidate
PULL_BURST = 4.0  # transfers one announcer may start, then PULL_RATE per second
PULL_RATE = 0.1
SERVE_BURST = 2.0 * (wire.MAX_BLOB // wire.CHUNK + 1)  # chunks served to one member
SERVE_RATE = 64.0
SERVE_GLOBAL_BURST = 1024.0
SERVE_GLOBAL_RATE = 512.0
ANSWER_BURST = 4.0  # announcements sent back to a member that is behind
ANSWER_RATE = 0.2
MAX_SENDERS = 4096
MAX_BAD_REMEMBERED = 1024


@dataclass(frozen=True, slots=True)
class PolicyLearned:
    """A newer signed policy arrived, passed its checks and was accepted by `offer`."""

    policy: SignedPolicy


PolicyAction = SendDatagram | PolicyLearned


def item_of(sp: SignedPolicy) -> PolicyItem:
    return PolicyItem(sp.org_key, sp.serial, sp.digest, len(sp.raw))


def check_only(sp: SignedPolicy) -> str:
    """The `offer` used when no policy store is bound: the signature alone decides."""
    return "accepted" if signature_valid(sp) else "invalid"


@dataclass
class _Candidate:
    item: PolicyItem
    announcers: list[bytes]  # WireGuard keys, in the order heard


@dataclass
class _Transfer:
    item: PolicyItem
    source: bytes  # the announcer's WireGuard key
    started: float
    last_progress: float
    buf: bytearray
    have: set[int] = field(default_factory=set)
    asked: set[int] = field(default_factory=set)
    next_offset: int = 0
    stalls: int = 0


def _no_peers() -> Sequence[Endpoint]:
    return ()


def _no_orgs() -> Collection[bytes]:
    return frozenset()


def _no_endpoint(wg_key: bytes) -> Endpoint | None:
    return None


@dataclass
class PolicyGossip:
    """The policy gossip of one node; `bind` tells it who the members are (mesh/node.py)."""

    rng: Rng
    wg_private: X25519PrivateKey | None = None
    identity_key: bytes = b""
    offer: Callable[[SignedPolicy], str] = check_only
    held: dict[bytes, SignedPolicy] = field(default_factory=dict)  # by org key
    counters: Counter[str] = field(default_factory=Counter)
    member_of: Callable[[bytes], bytes | None] | None = None  # WireGuard key -> identity
    endpoint_of: Callable[[bytes], Endpoint | None] = _no_endpoint  # its gossip endpoint
    links: Callable[[], Mapping[Endpoint, OrgLink]] | None = None
    peers: Callable[[], Sequence[Endpoint]] = _no_peers
    trusted_orgs: Callable[[], Collection[bytes]] = _no_orgs
    _candidates: dict[bytes, dict[tuple[int, bytes], _Candidate]] = field(default_factory=dict)
    _transfers: dict[bytes, _Transfer] = field(default_factory=dict)
    _bad: dict[tuple[bytes, int, bytes], None] = field(default_factory=dict)
    _budget: dict[bytes, int] = field(default_factory=dict)  # org -> push rounds left
    _seen_peers: set[Endpoint] = field(default_factory=set)
    _next_round: float = float("-inf")
    _next_sync: float = float("-inf")
    _members: int = 1
    _link_keys: dict[tuple[bytes, bytes], bytes | None] = field(default_factory=dict)
    _pull: dict[bytes, TokenBucket] = field(default_factory=dict)
    _serve: dict[bytes, TokenBucket] = field(default_factory=dict)
    _answer: dict[bytes, TokenBucket] = field(default_factory=dict)
    _serve_all: TokenBucket = field(
        default_factory=lambda: TokenBucket(SERVE_GLOBAL_RATE, SERVE_GLOBAL_BURST))

    def bind(self, identity_key: bytes, member_of: Callable[[bytes], bytes | None],
             endpoint_of: Callable[[bytes], Endpoint | None],
             links: Callable[[], Mapping[Endpoint, OrgLink]],
             peers: Callable[[], Sequence[Endpoint]] = _no_peers,
             trusted_orgs: Callable[[], Collection[bytes]] = _no_orgs) -> None:
        self.identity_key = bytes(identity_key)
        self.member_of = member_of
        self.endpoint_of = endpoint_of
        self.links = links
        self.peers = peers
        self.trusted_orgs = trusted_orgs

    # local policies ----------------------------------------------------------------------

    def _rounds(self) -> int:
        return RETRANSMIT_MULT * max(1, math.ceil(math.log2(self._members + 1)))

    def hold(self, sp: SignedPolicy) -> bool:
        """A policy this node holds (its store's newest for the org): announce and serve it.
        True if it is newer than the one held before. The caller has checked it."""
        old = self.held.get(sp.org_key)
        if old is not None and old.serial >= sp.serial:
            return False
        self.held[sp.org_key] = sp
        self._budget[sp.org_key] = self._rounds()
        self._drop_stale(sp.org_key)
        return True

    def _drop_stale(self, org: bytes) -> None:
        held = self.held.get(org)
        if held is None:
            return
        cands = self._candidates.get(org)
        if cands:
            for k in [k for k in cands if k[0] <= held.serial]:
                del cands[k]
            if not cands:
                del self._candidates[org]
        t = self._transfers.get(org)
        if t is not None and t.item.serial <= held.serial:
            del self._transfers[org]
            self.counters["policy_transfer_superseded"] += 1

    def busy(self) -> bool:
        """Anything to announce, pull or time out (else `tick` has nothing to do)."""
        return bool(self.held or self._transfers or self._candidates)

    def transfers(self) -> list[tuple[PolicyItem, int]]:
        """(item, bytes received) of every transfer in progress, for `meshguard policy`."""
        return [(t.item, sum(wire.chunk_len(o, t.item.size) for o in t.have))
                for t in self._transfers.values()]

    # links -------------------------------------------------------------------------------

    def _link_key(self, wg_key: bytes, identity_key: bytes) -> bytes | None:
        return cached_link_key(self._link_keys, self.wg_private, self.identity_key, wg_key,
                               identity_key, LINK_LABEL, MAX_SENDERS)

    def seal(self, body: bytes, to: OrgLink) -> bytes | None:
        key = self._link_key(to.wg_key, to.identity_key)
        if self.wg_private is None or key is None:
            return None
        head = body + self.wg_private.public_key.raw
        return head + mac(key, head)

    def _send_to_member(self, body: bytes, wg_key: bytes) -> list[PolicyAction]:
        """`body` to the member with this WireGuard key, at its known gossip endpoint."""
        ident = self.member_of(wg_key) if self.member_of is not None else None
        ep = self.endpoint_of(wg_key)
        if ident is None or ep is None:
            self.counters["policy_send_no_link"] += 1
            return []
        d = self.seal(body, OrgLink(ident, wg_key))
        if d is None:
            self.counters["policy_send_no_link"] += 1
            return []
        return [SendDatagram(d, ep)]

    @staticmethod
    def _bucket(table: dict[bytes, TokenBucket], key: bytes, rate: float, burst: float
                ) -> TokenBucket:
        b = table.get(key)
        if b is None:
            if len(table) >= MAX_SENDERS:
                table.clear()
            b = table[key] = TokenBucket(rate, burst)
        return b

    # network -----------------------------------------------------------------------------

    def receive(self, now: float, wall: float, data: bytes, src: Endpoint
                ) -> list[PolicyAction]:
        """One policy packet. A non-member's costs a lookup (and a MAC if it names a member);
        nothing is ever sent back to `src` itself, only to a member's known endpoint."""
        try:
            body, sender, tag = wire.split_link(data)
        except WireFormatError:
            self.counters["policy_garbage"] += 1
            return []
        member = self.member_of(sender) if self.member_of is not None else None
        if member is None:
            self.counters["policy_not_member"] += 1
            return []
        key = self._link_key(sender, member)
        if key is None or not equal(mac(key, data[: -wire.MAC_LEN]), tag):
            self.counters["policy_bad_mac"] += 1
            return []
        try:
            msg = wire.decode(body)
        except WireFormatError:
            self.counters["policy_garbage"] += 1
            return []
        if isinstance(msg, ChunkRequest):
            return self._serve_request(now, sender, msg)
        if isinstance(msg, Chunk):
            return self._on_chunk(now, sender, msg)
        return self._on_announce(now, sender, msg)

    def _on_announce(self, now: float, sender: bytes, items: Sequence[PolicyItem]
                     ) -> list[PolicyAction]:
        self.counters["policy_announce_rx"] += 1
        trusted = self.trusted_orgs()
        behind = False
        for it in items:
            if it.org_key not in trusted:
                self.counters["policy_announce_untrusted"] += 1
                continue
            held = self.held.get(it.org_key)
            if held is not None and it.serial <= held.serial:
                behind = behind or it.serial < held.serial
                self.counters["policy_announce_known"] += 1
                continue
            if (it.org_key, it.serial, it.digest) in self._bad:
                self.counters["policy_announce_bad"] += 1
                continue
            self._add_candidate(it, sender)
        out: list[PolicyAction] = []
        if behind and self._bucket(self._answer, sender, ANSWER_RATE, ANSWER_BURST).take(now):
            self.counters["policy_announce_answered"] += 1
            for body in self._announcements(trusted):
                out += self._send_to_member(body, sender)
        return out + self._start_transfers(now)

    def _add_candidate(self, it: PolicyItem, sender: bytes) -> None:
        """Remember that `sender` holds `it`. Each member counts for one candidate per org
        (its newest announcement), so a rogue member cannot crowd out the others'."""
        cands = self._candidates.setdefault(it.org_key, {})
        k = (it.serial, it.digest)
        for other_k, other in list(cands.items()):
            if other_k != k and sender in other.announcers:
                if other_k[0] > it.serial:
                    return  # it told us of a newer one before: keep that
                other.announcers.remove(sender)
                if not other.announcers and (it.org_key not in self._transfers or
                                             self._transfers[it.org_key].item != other.item):
                    del cands[other_k]
        c = cands.get(k)
        if c is None:
            if len(cands) >= MAX_CANDIDATES:
                self.counters["policy_candidates_full"] += 1
                return
            c = cands[k] = _Candidate(it, [])
        if c.item.size != it.size:
            self.counters["policy_announce_conflict"] += 1
            return
        if sender not in c.announcers and len(c.announcers) < MAX_ANNOUNCERS:
            c.announcers.append(sender)

    def _start_transfers(self, now: float) -> list[PolicyAction]:
        out: list[PolicyAction] = []
        for org in list(self._candidates):
            if org in self._transfers:
                continue
            if len(self._transfers) >= MAX_TRANSFERS:
                self.counters["policy_transfers_busy"] += 1
                break
            out += self._start_one(now, org)
        return out

    def _start_one(self, now: float, org: bytes) -> list[PolicyAction]:
        cands = self._candidates[org]
        for k in sorted(cands, reverse=True):  # the highest serial first
            c = cands[k]
            for wg in c.announcers:
                if self.member_of is None or self.member_of(wg) is None:
                    continue
                if not self._bucket(self._pull, wg, PULL_RATE, PULL_BURST).take(now):
                    self.counters["policy_pull_limited"] += 1
                    continue
                t = _Transfer(c.item, wg, now, now, bytearray(c.item.size))
                self._transfers[org] = t
                self.counters["policy_transfer_started"] += 1
                return self._ask(t)
        return []

    def _ask(self, t: _Transfer, again: bool = False) -> list[PolicyAction]:
        """Requests to keep WINDOW chunks outstanding (with `again`, the outstanding ones
        too)."""
        it = t.item
        new: list[int] = sorted(t.asked) if again else []
        while len(t.asked) < WINDOW and t.next_offset < it.size:
            t.asked.add(t.next_offset)
            new.append(t.next_offset)
            t.next_offset += wire.CHUNK
        out: list[PolicyAction] = []
        for off in new:
            body = wire.encode_request(ChunkRequest(it.org_key, it.serial, it.digest, off))
            out += self._send_to_member(body, t.source)
        return out

    def _serve_request(self, now: float, sender: bytes, r: ChunkRequest
                       ) -> list[PolicyAction]:
        sp = self.held.get(r.org_key)
        if sp is None or sp.serial != r.serial or not equal(sp.digest, r.digest) \
                or r.offset >= len(sp.raw):
            self.counters["policy_request_unknown"] += 1
            return []
        if not self._bucket(self._serve, sender, SERVE_RATE, SERVE_BURST).take(now):
            self.counters["policy_serve_limited"] += 1
            return []
        if not self._serve_all.take(now):
            self.counters["policy_serve_over_budget"] += 1
            return []
        n = wire.chunk_len(r.offset, len(sp.raw))
        body = wire.encode_chunk(Chunk(sp.org_key, sp.serial, sp.digest, r.offset,
                                       len(sp.raw), sp.raw[r.offset : r.offset + n]))
        self.counters["policy_chunk_served"] += 1
        return self._send_to_member(body, sender)

    def _on_chunk(self, now: float, sender: bytes, c: Chunk) -> list[PolicyAction]:
        t = self._transfers.get(c.org_key)
        if t is None or t.item.serial != c.serial or not equal(t.item.digest, c.digest) \
                or t.item.size != c.total:
            self.counters["policy_chunk_unexpected"] += 1
            return []
        if c.offset not in t.asked:
            self.counters["policy_chunk_duplicate" if c.offset in t.have
                          else "policy_chunk_unexpected"] += 1
            return []
        if sender != t.source:
            self.counters["policy_chunk_wrong_sender"] += 1
            return []
        t.asked.discard(c.offset)
        t.have.add(c.offset)
        t.buf[c.offset : c.offset + len(c.data)] = c.data
        t.last_progress, t.stalls = now, 0
        if len(t.have) == -(-t.item.size // wire.CHUNK):
            return self._complete(t)
        return self._ask(t)

    def _complete(self, t: _Transfer) -> list[PolicyAction]:
        it = t.item
        del self._transfers[it.org_key]
        raw = bytes(t.buf)
        if not equal(blake2s(raw)[: wire.DIGEST_LEN], it.digest):
            self.counters["policy_digest_mismatch"] += 1
            self._strike(it, t.source)
            return []
        try:
            sp = decode_policy(raw)
        except WireFormatError:
            sp = None
        if sp is None or sp.org_key != it.org_key or sp.serial != it.serial:
            self.counters["policy_malformed"] += 1
            self._remember_bad(it)
            return []
        if it.org_key not in self.trusted_orgs():
            self.counters["policy_offer_untrusted"] += 1
            self._drop_candidate(it)
            return []
        verdict = self.offer(sp)
        self.counters[f"policy_offer_{verdict}"] += 1
        if verdict == "accepted":
            self.hold(sp)
            return [PolicyLearned(sp)]
        if verdict in ("older", "held"):
            self._drop_candidate(it)
        else:
            self._remember_bad(it)
        return []

    def _strike(self, it: PolicyItem, announcer: bytes) -> None:
        """The announcer did not deliver the blob it announced (silent, or other bytes): it
        is not asked for this one again, and its pull budget is spent, so the next transfer
        goes to another member's candidate."""
        self._bucket(self._pull, announcer, PULL_RATE, PULL_BURST).tokens = 0.0
        c = self._candidates.get(it.org_key, {}).get((it.serial, it.digest))
        if c is None:
            return
        if announcer in c.announcers:
            c.announcers.remove(announcer)
        if not c.announcers:
            self._drop_candidate(it)

    def _drop_candidate(self, it: PolicyItem) -> None:
        cands = self._candidates.get(it.org_key)
        if cands is not None:
            cands.pop((it.serial, it.digest), None)
            if not cands:
                del self._candidates[it.org_key]

    def _remember_bad(self, it: PolicyItem) -> None:
        self._drop_candidate(it)
        if len(self._bad) >= MAX_BAD_REMEMBERED:
            self._bad.pop(next(iter(self._bad)))
        self._bad[(it.org_key, it.serial, it.digest)] = None

    # timers ------------------------------------------------------------------------------

    def _announcements(self, trusted: Collection[bytes]) -> list[bytes]:
        items = [item_of(sp) for org, sp in sorted(self.held.items()) if org in trusted]
        return [wire.encode_announce(items[i : i + wire.MAX_ANNOUNCE_ITEMS])
                for i in range(0, len(items), wire.MAX_ANNOUNCE_ITEMS)]

    def _sealed(self, bodies: Sequence[bytes], targets: Iterable[Endpoint],
                links: Mapping[Endpoint, OrgLink], missed: set[Endpoint] | None = None
                ) -> list[PolicyAction]:
        out: list[PolicyAction] = []
        for ep in targets:
            link = links.get(ep)
            d = [self.seal(b, link) for b in bodies] if link is not None else [None]
            if any(x is None for x in d):
                self.counters["policy_send_no_link"] += 1
                if missed is not None:
                    missed.add(ep)
                continue
            out += [SendDatagram(x, ep) for x in d if x is not None]
        return out

    def tick(self, now: float, wall: float) -> list[PolicyAction]:
        out: list[PolicyAction] = []
        for org, t in list(self._transfers.items()):
            if now - t.started > TRANSFER_TIMEOUT or t.stalls >= MAX_STALLS:
                del self._transfers[org]
                self.counters["policy_transfer_timeout"] += 1
                self._strike(t.item, t.source)
            elif now - t.last_progress >= CHUNK_TIMEOUT:
                t.stalls += 1
                t.last_progress = now
                self.counters["policy_chunk_retry"] += 1
                out += self._ask(t, again=True)
        out += self._start_transfers(now)
        peers = self.peers()
        self._members = len(peers) + 1
        trusted = self.trusted_orgs()
        bodies = self._announcements(trusted)
        if not bodies:
            return out
        links: Mapping[Endpoint, OrgLink] = self.links() if self.links is not None else {}
        new = [p for p in peers if p not in self._seen_peers]
        self._seen_peers = set(peers)
        if new:
            p_send = min(1.0, NEW_MEMBER_SENDERS / max(1, len(peers)))
            chosen = [p for p in new if p_send >= 1.0 or self.rng.uniform(0.0, 1.0) < p_send]
            self.counters["policy_announce_new_member"] += len(chosen)
            missed: set[Endpoint] = set()
            out += self._sealed(bodies, chosen, links, missed)
            self._seen_peers -= missed  # no tunnel to it yet: still new at the next tick
        if now >= self._next_sync and peers:
            self._next_sync = now + SYNC_INTERVAL
            out += self._sealed(bodies, [peers[self.rng.randrange(len(peers))]], links)
        if now >= self._next_round and self._budget:
            self._next_round = now + ROUND
            for org in list(self._budget):
                self._budget[org] -= 1
                if self._budget[org] <= 0:
                    del self._budget[org]
            targets = list(peers)
            self.rng.shuffle(targets)  # type: ignore[arg-type]
            out += self._sealed(bodies, targets[:FANOUT], links)
        return out

    def next_deadline(self) -> float | None:
        ds = [t.last_progress + CHUNK_TIMEOUT for t in self._transfers.values()]
        if self.held:
            ds.append(self._next_sync)
            if self._budget:
                ds.append(self._next_round)
        return min(ds) if ds else None
