"""Org revocations, vouches and aliases that spread through the mesh and persist (sans-IO).

The original meshguard kept revocations in memory on receivers and never sent aliases
(docs/compatibility.md). Here an org admin signs an `OrgCertRevoke` ("org O no longer vouches for
node N", wire/org.py) with the org key; the signed item then travels from member to member:

* **members only, cheap checks first**: every packet carries the sender's WireGuard key and a
  keyed-BLAKE2s MAC under a key the two members share (BLAKE2s(LINK_LABEL, X25519 of their
  WireGuard keys, sorted WireGuard keys, sorted identity keys); one X25519 per member,
  cached). A packet whose sender is not a member with a tunnel (`member_of`, a dictionary
  lookup) is dropped before any cryptography; one with a bad MAC after one BLAKE2s. A stranger
  who copied a trusted org key therefore cannot make a node check a single signature, and a
  member that is revoked or expired loses its tunnel and with it its org gossip rights;
* **accepted** only if the org is one this node trusts (trusted_orgs/) and the Ed25519
  signature over the domain-separated message verifies. An item already known (same target;
  for aliases, not newer) or whose signature already failed once (MAX_BAD_REMEMBERED) is
  dropped without a check; the others are checked within a per-member token bucket
  (VERIFY_BURST_PER_SENDER, VERIFY_RATE_PER_SENDER) and a global one (VERIFY_BURST,
  VERIFY_RATE), so even a rogue member's flood costs a bounded number of checks and cannot
  spend the whole budget. Everything refused is counted per reason (`counters`) and never
  forwarded;
* **spread** by push gossip: each new item is sent to FANOUT random members every ROUND seconds
  for `RETRANSMIT_MULT * ceil(log2(n + 1))` rounds (the SWIM piggyback bound), so it reaches
  every member in O(log n) rounds with high probability;
* **anti-entropy**: every item known is pushed to members this node has not seen before (late
  joiners, healed partitions), each with probability min(1, NEW_MEMBER_SENDERS / n) so a join
  does not draw n copies, and to one random member every SYNC_INTERVAL seconds (an item a
  receiver dropped for its budget, or because it did not know the sender yet, comes again);
* **persisted** by the shell (the daemon) as a `cert <org> <node> signed <revoked_at> <sig>`
  line of the `revocations` file (identity/trust.py: the trailing label of a line is free
  text), which is exactly what `format_line` returns; on restart `load_signed` turns those
  lines back into signed items, so a restarted node still re-sends them to later joiners.

A revocation never expires (`revoked_at` is informational); re-admitting the node needs a
certificate from another org or an authorized key. The store is bounded per org
(MAX_ITEMS_STORED): beyond it that org's new items are counted and dropped, and no org can
crowd out another's.

Vouches (`OrgTrustVouch`, identity/vouch.py: "org O admits node N, which holds no
certificate") travel exactly like revocations, with the same link MAC, budgets and rounds. One
is accepted only from a trusted org, with a valid signature, for an (org, node) this core knows
no revocation of; a duplicate (org, node) is dropped (the first vouch stays). A revocation of
(org, node) removes O's vouch (another org's vouch for N stands), and no later copy of it is
taken. The shell persists each `VouchLearned` in `vouched/`, where the trust store admits by
it.

Aliases (`OrgAliasAnnounce`; validity and text form in identity/org_aliases.py) travel the
same way; each org has one, the newest `issued_at` wins. An `issued_at` that is negative or
more than MAX_FUTURE seconds ahead of the receiver's clock is refused, so an org can neither
backdate a claim nor pin its alias against a later rename. An alias is a DNS label that is not
itself six hex digits (it would shadow an org domain); when two trusted orgs claim the same
alias, it names neither (the earliest claim cannot win: an org can date its claim in 1970), so
every node that trusts the same orgs maps the alias the same way, and a rogue org can keep
an alias from another org but never take it over. The shell keeps every `AliasLearned` in
the config dir's `org_aliases` and gives them back at start-up (org_wiring.restore_aliases),
verified again.

The core follows the sans-IO shape of the others: `receive(now, wall, data, src)` and
`tick(now, wall)` return `OrgAction`s (`SendDatagram`s, and `RevocationLearned`/`AliasLearned`
for every new valid item a packet brought); `bind` gives it the member views it reads.

Replay: a replayed packet (from anywhere) is either dropped by its MAC or carries items that
are already known or already failed, so it costs one BLAKE2s and dictionary lookups and changes
nothing; items are idempotent (a revocation is permanent, an alias is ordered by its signed
`issued_at`).
"""

from __future__ import annotations

import base64
import binascii
import math
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from meshguard.crypto.hashes import equal, mac
from meshguard.crypto.keys import Ed25519PrivateKey, X25519PrivateKey, b64encode, ed25519_verify
from meshguard.errors import WireFormatError
from meshguard.identity.org_aliases import alias_problem as alias_problem
from meshguard.identity.org_aliases import alias_valid as alias_valid
from meshguard.identity.org_aliases import format_alias_line as format_alias_line
from meshguard.identity.org_aliases import parse_alias_line as parse_alias_line
from meshguard.identity.vouch import vouch_valid
from meshguard.mesh.link_keys import cached_link_key
from meshguard.rng import Rng
from meshguard.sansio import Endpoint, SendDatagram
from meshguard.wire import org as wire
from meshguard.wire.org import AliasAnnouncement, CertRevocation, OrgVouch

ROUND = 1.0  # seconds between push rounds (the SWIM protocol period)
FANOUT = 3  # members pushed to per round
RETRANSMIT_MULT = 3  # rounds per item = RETRANSMIT_MULT * ceil(log2(n + 1)), as SWIM's lambda
SYNC_INTERVAL = 30.0  # seconds between full pushes to one random member
NEW_MEMBER_SENDERS = 4  # expected number of members that push everything to a newcomer
MAX_ITEMS_STORED = 1024  # revocations kept and re-sent, per org (aliases: one per org)
SIGNED_LABEL = "signed"
LINK_LABEL = b"meshguard org link v1"
# signature checks that items from the network may cost: per sending member and in all
VERIFY_BURST_PER_SENDER = 256.0
VERIFY_RATE_PER_SENDER = 32.0  # per second
VERIFY_BURST = 1024.0
VERIFY_RATE = 256.0  # per second
MAX_SENDERS = 4096  # token buckets and link keys kept (members only: one per member)
MAX_BAD_REMEMBERED = 4096  # items whose signature failed, dropped again without a check
MAX_FUTURE = 600.0  # seconds an alias's issued_at may be ahead of our clock


# -- signing and checking --------------------------------------------------------------------


def sign_revocation(org: Ed25519PrivateKey, node_key: bytes, revoked_at: int) -> CertRevocation:
    org_key = org.public_key.raw
    sig = org.sign(wire.revoke_message(org_key, bytes(node_key), revoked_at))
    return CertRevocation(org_key, bytes(node_key), revoked_at, sig)


def revocation_valid(r: CertRevocation) -> bool:
    try:
        msg = wire.revoke_message(r.org_key, r.node_key, r.revoked_at)
    except WireFormatError:
        return False
    return ed25519_verify(r.org_key, r.signature, msg)


def sign_alias(org: Ed25519PrivateKey, alias: str, issued_at: int) -> AliasAnnouncement:
    org_key = org.public_key.raw
    return AliasAnnouncement(org_key, alias, issued_at,
                             org.sign(wire.alias_message(org_key, alias, issued_at)))


# -- text form (a `revocations` file line; also the content of a `.revoke` file) ----------


def format_label(r: CertRevocation) -> str:
    """The trailing label that makes a `cert` line of `revocations` carry its proof."""
    return f"{SIGNED_LABEL} {r.revoked_at} {b64encode(r.signature)}"


def format_line(r: CertRevocation) -> str:
    return f"cert {b64encode(r.org_key)} {b64encode(r.node_key)} {format_label(r)}\n"


def from_label(org_key: bytes, node_key: bytes, label: str) -> CertRevocation | None:
    """The signed revocation a `cert` line's label carries, or None (unsigned/malformed)."""
    parts = label.split()
    if len(parts) < 3 or parts[0] != SIGNED_LABEL:
        return None
    try:
        revoked_at = int(parts[1])
        sig = base64.b64decode(parts[2], validate=True)
    except (ValueError, binascii.Error):
        return None
    if len(sig) != wire.SIG_LEN or not -(2**63) <= revoked_at < 2**63:
        return None
    return CertRevocation(bytes(org_key), bytes(node_key), revoked_at, sig)


def parse_line(text: str) -> CertRevocation | None:
    """Parse one `cert <org> <node> signed <t> <sig>` line (comments/blank lines: None)."""
    fields = text.split("#", 1)[0].split()
    if len(fields) < 6 or fields[0] != "cert":
        return None
    try:
        org = base64.b64decode(fields[1], validate=True)
        node = base64.b64decode(fields[2], validate=True)
    except (ValueError, binascii.Error):
        return None
    if len(org) != wire.KEY_LEN or len(node) != wire.KEY_LEN:
        return None
    return from_label(org, node, " ".join(fields[3:]))


# -- the gossip core ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RevocationLearned:
    """A valid org-signed certificate revocation arrived: persist it (the shell's job)."""

    revocation: CertRevocation


@dataclass(frozen=True, slots=True)
class AliasLearned:
    """A valid, newer org alias arrived."""

    alias: AliasAnnouncement


@dataclass(frozen=True, slots=True)
class VouchLearned:
    """A valid org vouch arrived: persist it in vouched/ (the shell's job)."""

    vouch: OrgVouch


OrgAction = SendDatagram | RevocationLearned | AliasLearned | VouchLearned


def _no_peers() -> Sequence[Endpoint]:
    return ()


def _no_orgs() -> Collection[bytes]:
    return frozenset()


@dataclass(frozen=True, slots=True)
class OrgLink:
    """A member this node exchanges org packets with: its identity and WireGuard keys."""

    identity_key: bytes
    wg_key: bytes


@dataclass
class _Bucket:
    tokens: float
    at: float

    def refill(self, now: float, rate: float, burst: float) -> float:
        self.tokens = min(burst, self.tokens + max(0.0, now - self.at) * rate)
        self.at = max(self.at, now)
        return self.tokens


@dataclass
class OrgGossip:
    """The org gossip of one node. `wg_private` (this node's WireGuard key) keys the link
    MACs; `bind` tells it who the members are (the node does it, mesh/node.py). Without both,
    it keeps and checks local items but sends and accepts no packets."""

    rng: Rng
    wg_private: X25519PrivateKey | None = None
    revocations: dict[tuple[bytes, bytes], CertRevocation] = field(default_factory=dict)
    aliases: dict[bytes, AliasAnnouncement] = field(default_factory=dict)  # by org key
    vouches: dict[tuple[bytes, bytes], OrgVouch] = field(default_factory=dict)  # (org, node)
    counters: Counter[str] = field(default_factory=Counter)
    identity_key: bytes = b""
    # WireGuard key -> identity of a member with a tunnel (one dict lookup per packet)
    member_of: Callable[[bytes], bytes | None] | None = None
    # gossip endpoint -> member, for sealing what `tick` sends
    links: Callable[[], Mapping[Endpoint, OrgLink]] | None = None
    peers: Callable[[], Sequence[Endpoint]] = _no_peers  # the live members' gossip endpoints
    trusted_orgs: Callable[[], Collection[bytes]] = _no_orgs  # asked after a packet's MAC
    _per_org: Counter[bytes] = field(default_factory=Counter)  # revocations stored per org
    _vouches_per_org: Counter[bytes] = field(default_factory=Counter)
    _budget: dict[tuple[str, bytes, bytes], int] = field(default_factory=dict)
    _seen_peers: set[Endpoint] = field(default_factory=set)
    _next_round: float = float("-inf")
    _next_sync: float = float("-inf")
    _members: int = 1
    _link_keys: dict[tuple[bytes, bytes], bytes | None] = field(default_factory=dict)
    _bad: dict[bytes, None] = field(default_factory=dict)  # items whose signature failed
    _sender_buckets: dict[bytes, _Bucket] = field(default_factory=dict)
    _global_bucket: _Bucket = field(default_factory=lambda: _Bucket(VERIFY_BURST, 0.0))

    def bind(self, identity_key: bytes, member_of: Callable[[bytes], bytes | None],
             links: Callable[[], Mapping[Endpoint, OrgLink]],
             peers: Callable[[], Sequence[Endpoint]] = _no_peers,
             trusted_orgs: Callable[[], Collection[bytes]] = _no_orgs) -> None:
        self.identity_key = bytes(identity_key)
        self.member_of = member_of
        self.links = links
        self.peers = peers
        self.trusted_orgs = trusted_orgs

    # adding items ------------------------------------------------------------------------

    def _rounds(self) -> int:
        return RETRANSMIT_MULT * max(1, math.ceil(math.log2(self._members + 1)))

    def _may_verify(self, sender: bytes | None, now: float) -> bool:
        """A signature check for an item from `sender` (None: a local item, always)."""
        if sender is None:
            return True
        b = self._sender_buckets.get(sender)
        if b is None:
            if len(self._sender_buckets) >= MAX_SENDERS:
                self._sender_buckets.pop(next(iter(self._sender_buckets)))
            b = self._sender_buckets[sender] = _Bucket(VERIFY_BURST_PER_SENDER, now)
        if b.refill(now, VERIFY_RATE_PER_SENDER, VERIFY_BURST_PER_SENDER) < 1.0:
            self.counters["org_verify_rate_limited"] += 1
            return False
        g = self._global_bucket
        if g.refill(now, VERIFY_RATE, VERIFY_BURST) < 1.0:
            self.counters["org_verify_over_budget"] += 1
            return False
        b.tokens -= 1.0
        g.tokens -= 1.0
        return True

    def _remember_bad(self, key: bytes) -> None:
        if len(self._bad) >= MAX_BAD_REMEMBERED:
            self._bad.pop(next(iter(self._bad)))
        self._bad[key] = None

    def _signature_ok(self, seen: bytes, what: str, valid: Callable[[], bool],
                      sender: bytes | None, now: float) -> bool:
        """The last, costly check of an item (`seen`: its bytes): not failed before, within
        the sender's and the global budget, then its signature (counted as `what`_...)."""
        if seen in self._bad:
            self.counters[f"{what}_seen_bad"] += 1
            return False
        if not self._may_verify(sender, now):
            return False
        if not valid():
            self._remember_bad(seen)
            self.counters[f"{what}_bad_signature"] += 1
            return False
        return True

    def add_revocation(self, r: CertRevocation, trusted_orgs: Collection[bytes], *,
                       sender: bytes | None = None, now: float = 0.0) -> bool:
        """Accept a revocation (local, or from the member whose WireGuard key is `sender`);
        True if it is new and valid. Every cheap check comes before the signature check."""
        if r.target in self.revocations:
            self.counters["org_revoke_known"] += 1
            return False
        if r.org_key not in trusted_orgs:
            self.counters["org_revoke_untrusted"] += 1
            return False
        if self._per_org[r.org_key] >= MAX_ITEMS_STORED:
            self.counters["org_revoke_full"] += 1
            return False
        seen = r.org_key + r.node_key + r.signature + r.revoked_at.to_bytes(8, "little",
                                                                            signed=True)
        if not self._signature_ok(seen, "org_revoke", lambda: revocation_valid(r), sender, now):
            return False
        self.revocations[r.target] = r
        self._per_org[r.org_key] += 1
        self._budget[("r", *r.target)] = self._rounds()
        self.counters["org_revoke_accepted"] += 1
        if self.vouches.pop(r.target, None) is not None:  # only this org's vouch ends
            self._vouches_per_org[r.org_key] -= 1
            self._budget.pop(("v", *r.target), None)
            self.counters["org_vouch_revoked"] += 1
        return True

    def add_vouch(self, v: OrgVouch, trusted_orgs: Collection[bytes], *,
                  sender: bytes | None = None, now: float = 0.0) -> bool:
        """Accept a vouch (local, or from the member whose WireGuard key is `sender`); True
        if it is new and valid. Every cheap check comes before the signature check."""
        if v.target in self.vouches:
            self.counters["org_vouch_known"] += 1
            return False
        if v.org_key not in trusted_orgs:
            self.counters["org_vouch_untrusted"] += 1
            return False
        if v.target in self.revocations:
            self.counters["org_vouch_revoked_refused"] += 1
            return False
        if self._vouches_per_org[v.org_key] >= MAX_ITEMS_STORED:
            self.counters["org_vouch_full"] += 1
            return False
        seen = b"v" + v.org_key + v.node_key + v.signature + v.lamport.to_bytes(8, "little")
        if not self._signature_ok(seen, "org_vouch", lambda: vouch_valid(v), sender, now):
            return False
        self.vouches[v.target] = v
        self._vouches_per_org[v.org_key] += 1
        self._budget[("v", *v.target)] = self._rounds()
        self.counters["org_vouch_accepted"] += 1
        return True

    def add_alias(self, a: AliasAnnouncement, trusted_orgs: Collection[bytes],
                  wall: float | None = None, *, sender: bytes | None = None,
                  now: float = 0.0) -> bool:
        """Accept an alias; `issued_at` must not be negative nor more than MAX_FUTURE seconds
        ahead of `wall` (when given), so nobody wins a claim by backdating or pins one."""
        cur = self.aliases.get(a.org_key)
        if cur is not None and (cur.issued_at, cur.alias) >= (a.issued_at, a.alias):
            self.counters["org_alias_known"] += 1
            return False
        if a.org_key not in trusted_orgs:
            self.counters["org_alias_untrusted"] += 1
            return False
        if not 0 <= a.issued_at < 2**63 or (wall is not None and a.issued_at > wall + MAX_FUTURE):
            self.counters["org_alias_bad_time"] += 1
            return False
        if alias_problem(a.alias) is not None:
            self.counters["org_alias_bad_name"] += 1
            return False
        seen = a.org_key + a.signature + a.issued_at.to_bytes(8, "little", signed=True) \
            + a.alias.encode("ascii")
        if seen in self._bad:
            self.counters["org_alias_seen_bad"] += 1
            return False
        if not self._may_verify(sender, now):
            return False
        if not alias_valid(a):
            self._remember_bad(seen)
            self.counters["org_alias_bad_signature"] += 1
            return False
        self.aliases[a.org_key] = a  # one per org: an org only ever replaces its own
        self._budget[("a", a.org_key, b"")] = self._rounds()
        self.counters["org_alias_accepted"] += 1
        return True

    def load_signed(self, labelled: Iterable[tuple[bytes, bytes, str]],
                    trusted_orgs: Collection[bytes]) -> list[CertRevocation]:
        """Signed items from `revocations` lines (org, node, label); returns the new ones."""
        out = []
        for org_key, node_key, label in labelled:
            r = from_label(org_key, node_key, label)
            if r is not None and self.add_revocation(r, trusted_orgs):
                out.append(r)
        return out

    def alias_map(self, trusted_orgs: Collection[bytes]) -> dict[str, bytes]:
        """alias -> org key, for the orgs still trusted; an alias that two of them claim
        names neither (an `issued_at` proves nothing: a date in 1970 would win otherwise)."""
        claims: dict[str, list[bytes]] = {}
        for a in self.aliases.values():
            if a.org_key in trusted_orgs:
                claims.setdefault(a.alias, []).append(a.org_key)
        return {alias: orgs[0] for alias, orgs in claims.items() if len(orgs) == 1}

    # links -------------------------------------------------------------------------------

    def _link_key(self, wg_key: bytes, identity_key: bytes) -> bytes | None:
        """The MAC key this node shares with a member (one X25519 per member, cached)."""
        return cached_link_key(self._link_keys, self.wg_private, self.identity_key, wg_key,
                               identity_key, LINK_LABEL, MAX_SENDERS)

    def seal(self, body: bytes, to: OrgLink) -> bytes | None:
        """An org packet body (encode_revocations/encode_aliases) MACed for member `to`."""
        own = self.wg_private
        key = self._link_key(to.wg_key, to.identity_key)
        if own is None or key is None:
            return None
        head = body + own.public_key.raw
        return head + mac(key, head)

    # network -----------------------------------------------------------------------------

    def receive(self, now: float, wall: float, data: bytes, src: Endpoint
                ) -> list[OrgAction]:
        """The new, valid items of one packet, as RevocationLearned/AliasLearned (garbage is
        counted, never raised). Cost for a packet that is not from a member: one dictionary
        lookup (and one MAC for a sender that names a member); from a member: its items that
        are new cost a signature check each, within a per-member and a global budget. The
        trusted orgs are asked only once the packet has passed its MAC."""
        try:
            body, sender, tag = wire.split_link(data)
        except WireFormatError:
            self.counters["org_garbage"] += 1
            return []
        member = self.member_of(sender) if self.member_of is not None else None
        if member is None:
            self.counters["org_not_member"] += 1
            return []
        key = self._link_key(sender, member)
        if key is None or not equal(mac(key, data[:-wire.MAC_LEN]), tag):
            self.counters["org_bad_mac"] += 1
            return []
        trusted_orgs = self.trusted_orgs()
        try:
            if body[:1] == bytes([wire.ORG_CERT_REVOKE]):
                revs = wire.decode_revocations(body)
                return [RevocationLearned(r) for r in revs
                        if self.add_revocation(r, trusted_orgs, sender=sender, now=now)]
            if body[:1] == bytes([wire.ORG_TRUST_VOUCH]):
                vouches = wire.decode_vouches(body)
                return [VouchLearned(v) for v in vouches
                        if self.add_vouch(v, trusted_orgs, sender=sender, now=now)]
            aliases = wire.decode_aliases(body)
        except WireFormatError:
            self.counters["org_garbage"] += 1
            return []
        return [AliasLearned(a) for a in aliases
                if self.add_alias(a, trusted_orgs, wall, sender=sender, now=now)]

    def _packets(self, revs: Sequence[CertRevocation], aliases: Sequence[AliasAnnouncement],
                 vouches: Sequence[OrgVouch] = ()) -> list[bytes]:
        """Packet bodies (each within wire.MAX_BODY) carrying these items."""
        out = []
        for i in range(0, len(revs), wire.MAX_ITEMS):
            out.append(wire.encode_revocations(revs[i : i + wire.MAX_ITEMS]))
        for i in range(0, len(vouches), wire.MAX_ITEMS):
            out.append(wire.encode_vouches(vouches[i : i + wire.MAX_ITEMS]))
        chunk: list[AliasAnnouncement] = []
        size = wire.HEADER_LEN
        for a in aliases:
            n = wire.alias_item_len(a)
            if chunk and (len(chunk) == wire.MAX_ITEMS or size + n > wire.MAX_BODY):
                out.append(wire.encode_aliases(chunk))
                chunk, size = [], wire.HEADER_LEN
            chunk.append(a)
            size += n
        if chunk:
            out.append(wire.encode_aliases(chunk))
        return out

    def _everything(self) -> list[bytes]:
        return self._packets(list(self.revocations.values()), list(self.aliases.values()),
                             list(self.vouches.values()))

    def _sealed(self, bodies: Sequence[bytes], targets: Iterable[Endpoint],
                links: Mapping[Endpoint, OrgLink], missed: set[Endpoint] | None = None
                ) -> list[OrgAction]:
        """`bodies` MACed for each target; targets without a link go to `missed`."""
        out: list[OrgAction] = []
        for ep in targets:
            link = links.get(ep)
            if link is None:
                self.counters["org_send_no_link"] += 1
                if missed is not None:
                    missed.add(ep)
                continue
            for body in bodies:
                d = self.seal(body, link)
                if d is None:
                    self.counters["org_send_no_link"] += 1
                    break
                out.append(SendDatagram(d, ep))
        return out

    def tick(self, now: float, wall: float) -> list[OrgAction]:
        """Datagrams to the live members' gossip endpoints (`peers`)."""
        peers = self.peers()
        self._members = len(peers) + 1
        out: list[OrgAction] = []
        if not self.has_items():
            return out  # (members met before the first item count as new then: cheap)
        links: Mapping[Endpoint, OrgLink] = self.links() if self.links is not None else {}
        # anti-entropy for members we have not met before
        new = [p for p in peers if p not in self._seen_peers]
        self._seen_peers = set(peers)  # bounded by the current members; a returning one is new
        if new:
            p_send = min(1.0, NEW_MEMBER_SENDERS / max(1, len(peers)))
            everything = self._everything()
            chosen = [p for p in new if p_send >= 1.0 or self.rng.uniform(0.0, 1.0) < p_send]
            self.counters["org_sync_new_member"] += len(chosen)
            missed: set[Endpoint] = set()
            out += self._sealed(everything, chosen, links, missed)
            self._seen_peers -= missed  # no tunnel to it yet: still new at the next tick
        if now >= self._next_sync and peers:
            self._next_sync = now + SYNC_INTERVAL
            target = peers[self.rng.randrange(len(peers))]
            out += self._sealed(self._everything(), [target], links)
            self.counters["org_sync_periodic"] += 1
        if now >= self._next_round and self._budget:
            self._next_round = now + ROUND
            out += self._push_round(peers, links)
        return out

    def _push_round(self, peers: Sequence[Endpoint], links: Mapping[Endpoint, OrgLink]
                    ) -> list[OrgAction]:
        pending = sorted(self._budget.items(), key=lambda kv: -kv[1])
        revs = [self.revocations[(k[1], k[2])] for k, _ in pending if k[0] == "r"]
        aliases = [self.aliases[k[1]] for k, _ in pending if k[0] == "a"]
        vouches = [self.vouches[(k[1], k[2])] for k, _ in pending if k[0] == "v"]
        revs, aliases = revs[: wire.MAX_ITEMS], aliases[: wire.MAX_ITEMS]
        vouches = vouches[: wire.MAX_ITEMS]
        for r in revs:
            self._spend(("r", *r.target))
        for v in vouches:
            self._spend(("v", *v.target))
        for a in aliases:
            self._spend(("a", a.org_key, b""))
        if not peers:
            return []
        targets = list(peers)
        self.rng.shuffle(targets)  # type: ignore[arg-type]
        return self._sealed(self._packets(revs, aliases, vouches), targets[:FANOUT], links)

    def _spend(self, key: tuple[str, bytes, bytes]) -> None:
        left = self._budget[key] - 1
        if left <= 0:
            del self._budget[key]
        else:
            self._budget[key] = left

    def has_items(self) -> bool:
        return bool(self.revocations or self.aliases or self.vouches)

    def next_deadline(self) -> float | None:
        if not self.has_items():
            return None
        ds = [self._next_sync]
        if self._budget:
            ds.append(self._next_round)
        return min(ds)
