"""Org revocations and aliases that spread through the mesh and persist (sans-IO).

The original meshguard kept revocations in memory on receivers and never sent aliases
(SPEC-NOTES 5). Here an org admin signs an `OrgCertRevoke` ("org O no longer vouches for node
N", wire/org.py) with the org key; the signed item then travels from member to member:

* **accepted** only if the org is one this node trusts (trusted_orgs/) and the Ed25519
  signature over the domain-separated message verifies; anything else is counted and dropped,
  and never forwarded, so a stranger cannot make the mesh carry its traffic;
* **spread** by push gossip: each new item is sent to FANOUT random members every ROUND seconds
  for `RETRANSMIT_MULT * ceil(log2(n + 1))` rounds (the SWIM piggyback bound), so it reaches
  every member in O(log n) rounds with high probability;
* **anti-entropy**: every item known is pushed to members this node has not seen before (late
  joiners, healed partitions), each with probability min(1, NEW_MEMBER_SENDERS / n) so a join
  does not draw n copies, and to one random member every SYNC_INTERVAL seconds;
* **persisted** by the shell (the daemon) as a `cert <org> <node> signed <revoked_at> <sig>`
  line of the `revocations` file (identity/trust.py: the trailing label of a line is free
  text), which is exactly what `format_line` returns; on restart `load_signed` turns those
  lines back into signed items, so a restarted node still re-sends them to later joiners.

A revocation never expires (`revoked_at` is informational); re-admitting the node needs a
certificate from another org or an authorized key. The store is bounded (MAX_ITEMS_STORED);
beyond it new items are counted and dropped.

Aliases (`OrgAliasAnnounce`) travel the same way; per org the newest `issued_at` wins. An alias
is a DNS label that is not itself six hex digits (it would shadow an org domain); when two
trusted orgs claim the same alias, the earliest claim wins (ties: the lower org key), so every
node that trusts the same orgs maps the alias the same way.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field

from meshguard.crypto.keys import Ed25519PrivateKey, b64encode, ed25519_verify
from meshguard.errors import WireFormatError
from meshguard.identity.names import is_dns_label
from meshguard.rng import Rng
from meshguard.wire import org as wire
from meshguard.wire.org import AliasAnnouncement, CertRevocation

Endpoint = tuple[str, int]

ROUND = 1.0  # seconds between push rounds (the SWIM protocol period)
FANOUT = 3  # members pushed to per round
RETRANSMIT_MULT = 3  # rounds per item = RETRANSMIT_MULT * ceil(log2(n + 1)), as SWIM's lambda
SYNC_INTERVAL = 30.0  # seconds between full pushes to one random member
NEW_MEMBER_SENDERS = 4  # expected number of members that push everything to a newcomer
MAX_ITEMS_STORED = 1024  # revocations (and as many aliases) kept and re-sent
SIGNED_LABEL = "signed"


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


def alias_problem(alias: str) -> str | None:
    if not is_dns_label(alias) or alias != alias.lower():
        return "an alias must be a lowercase DNS label"
    if len(alias) == 6 and all(c in "0123456789abcdef" for c in alias):
        return "an alias must not look like an org domain (six hex digits)"
    if alias == "mesh":
        return "'mesh' is the top-level domain"
    return None


def sign_alias(org: Ed25519PrivateKey, alias: str, issued_at: int) -> AliasAnnouncement:
    org_key = org.public_key.raw
    return AliasAnnouncement(org_key, alias, issued_at,
                             org.sign(wire.alias_message(org_key, alias, issued_at)))


def alias_valid(a: AliasAnnouncement) -> bool:
    if alias_problem(a.alias) is not None:
        return False
    try:
        msg = wire.alias_message(a.org_key, a.alias, a.issued_at)
    except WireFormatError:
        return False
    return ed25519_verify(a.org_key, a.signature, msg)


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


@dataclass
class OrgGossip:
    rng: Rng
    revocations: dict[tuple[bytes, bytes], CertRevocation] = field(default_factory=dict)
    aliases: dict[bytes, AliasAnnouncement] = field(default_factory=dict)  # by org key
    counters: Counter[str] = field(default_factory=Counter)
    _budget: dict[tuple[str, bytes, bytes], int] = field(default_factory=dict)
    _seen_peers: set[Endpoint] = field(default_factory=set)
    _next_round: float = float("-inf")
    _next_sync: float = float("-inf")
    _members: int = 1

    # adding items ------------------------------------------------------------------------

    def _rounds(self) -> int:
        return RETRANSMIT_MULT * max(1, math.ceil(math.log2(self._members + 1)))

    def add_revocation(self, r: CertRevocation, trusted_orgs: Collection[bytes]) -> bool:
        """Accept a revocation (local or remote); True if it is new and valid."""
        if r.target in self.revocations:
            self.counters["org_revoke_known"] += 1
            return False
        if r.org_key not in trusted_orgs:
            self.counters["org_revoke_untrusted"] += 1
            return False
        if len(self.revocations) >= MAX_ITEMS_STORED:
            self.counters["org_revoke_full"] += 1
            return False
        if not revocation_valid(r):
            self.counters["org_revoke_bad_signature"] += 1
            return False
        self.revocations[r.target] = r
        self._budget[("r", *r.target)] = self._rounds()
        self.counters["org_revoke_accepted"] += 1
        return True

    def add_alias(self, a: AliasAnnouncement, trusted_orgs: Collection[bytes]) -> bool:
        cur = self.aliases.get(a.org_key)
        if cur is not None and (cur.issued_at, cur.alias) >= (a.issued_at, a.alias):
            self.counters["org_alias_known"] += 1
            return False
        if a.org_key not in trusted_orgs:
            self.counters["org_alias_untrusted"] += 1
            return False
        if cur is None and len(self.aliases) >= MAX_ITEMS_STORED:
            self.counters["org_alias_full"] += 1
            return False
        if not alias_valid(a):
            self.counters["org_alias_bad_signature"] += 1
            return False
        self.aliases[a.org_key] = a
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
        """alias -> org key, for the orgs still trusted (earliest claim wins)."""
        claims = sorted((a.issued_at, a.org_key, a.alias) for a in self.aliases.values()
                        if a.org_key in trusted_orgs)
        out: dict[str, bytes] = {}
        for _, org_key, alias in claims:
            out.setdefault(alias, org_key)
        return out

    # network -----------------------------------------------------------------------------

    def receive(self, data: bytes, trusted_orgs: Collection[bytes]
                ) -> tuple[list[CertRevocation], list[AliasAnnouncement]]:
        """The new, valid items of one packet (garbage is counted, never raised)."""
        try:
            if data[:1] == bytes([wire.ORG_CERT_REVOKE]):
                revs = wire.decode_revocations(data)
                return [r for r in revs if self.add_revocation(r, trusted_orgs)], []
            aliases = wire.decode_aliases(data)
        except WireFormatError:
            self.counters["org_garbage"] += 1
            return [], []
        return [], [a for a in aliases if self.add_alias(a, trusted_orgs)]

    def _packets(self, revs: Sequence[CertRevocation], aliases: Sequence[AliasAnnouncement]
                 ) -> list[bytes]:
        out = []
        for i in range(0, len(revs), wire.MAX_ITEMS):
            out.append(wire.encode_revocations(revs[i : i + wire.MAX_ITEMS]))
        for i in range(0, len(aliases), wire.MAX_ITEMS):
            out.append(wire.encode_aliases(aliases[i : i + wire.MAX_ITEMS]))
        return out

    def _everything(self) -> list[bytes]:
        return self._packets(list(self.revocations.values()), list(self.aliases.values()))

    def tick(self, now: float, peers: Sequence[Endpoint]) -> list[tuple[bytes, Endpoint]]:
        """Datagrams to send: (data, gossip endpoint). `peers` are the live members'."""
        self._members = len(peers) + 1
        out: list[tuple[bytes, Endpoint]] = []
        if not self.revocations and not self.aliases:
            return out  # (members met before the first item count as new then: cheap)
        # anti-entropy for members we have not met before
        new = [p for p in peers if p not in self._seen_peers]
        self._seen_peers = set(peers)  # bounded by the current members; a returning one is new
        if new:
            p_send = min(1.0, NEW_MEMBER_SENDERS / max(1, len(peers)))
            everything = self._everything()
            for p in new:
                if p_send >= 1.0 or self.rng.uniform(0.0, 1.0) < p_send:
                    out += [(d, p) for d in everything]
                    self.counters["org_sync_new_member"] += 1
        if now >= self._next_sync and peers:
            self._next_sync = now + SYNC_INTERVAL
            target = peers[self.rng.randrange(len(peers))]
            out += [(d, target) for d in self._everything()]
            self.counters["org_sync_periodic"] += 1
        if now >= self._next_round and self._budget:
            self._next_round = now + ROUND
            out += self._push_round(peers)
        return out

    def _push_round(self, peers: Sequence[Endpoint]) -> list[tuple[bytes, Endpoint]]:
        pending = sorted(self._budget.items(), key=lambda kv: -kv[1])
        revs = [self.revocations[(k[1], k[2])] for k, _ in pending if k[0] == "r"]
        aliases = [self.aliases[k[1]] for k, _ in pending if k[0] == "a"]
        revs, aliases = revs[: wire.MAX_ITEMS], aliases[: wire.MAX_ITEMS]
        for r in revs:
            self._spend(("r", *r.target))
        for a in aliases:
            self._spend(("a", a.org_key, b""))
        if not peers:
            return []
        targets = list(peers)
        self.rng.shuffle(targets)  # type: ignore[arg-type]
        packets = self._packets(revs, aliases)
        return [(d, p) for p in targets[:FANOUT] for d in packets]

    def _spend(self, key: tuple[str, bytes, bytes]) -> None:
        left = self._budget[key] - 1
        if left <= 0:
            del self._budget[key]
        else:
            self._budget[key] = left

    def next_deadline(self) -> float | None:
        if not self.revocations and not self.aliases:
            return None
        ds = [self._next_sync]
        if self._budget:
            ds.append(self._next_round)
        return min(ds)


# -- alias text form (the org admin's `org/alias` file) ----------------------------------


def format_alias_line(a: AliasAnnouncement) -> str:
    return f"alias {b64encode(a.org_key)} {a.alias} {a.issued_at} {b64encode(a.signature)}\n"


def parse_alias_line(text: str) -> AliasAnnouncement | None:
    """Parse the first `alias <org> <alias> <issued_at> <sig>` line of `text`, or None."""
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) != 5 or fields[0] != "alias":
            continue
        try:
            org = base64.b64decode(fields[1], validate=True)
            issued = int(fields[3])
            sig = base64.b64decode(fields[4], validate=True)
        except (ValueError, binascii.Error):
            return None
        if len(org) != wire.KEY_LEN or len(sig) != wire.SIG_LEN:
            return None
        return AliasAnnouncement(org, fields[2], issued, sig)
    return None
