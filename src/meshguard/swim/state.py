"""What a SWIM node knows: itself, its members and the indexes over them.

`SwimState` is the one place that holds the membership table, so the parts of the core
(probing, anti-entropy, joining, applying updates; see membership.py) share one view:

- this node's own signed record and the incarnation it was signed at;
- every known member (`Member`: its record, state, accusation, pair key, sync counters), with
  the indexes kept in step with it: by 8-byte key prefix (SyncWant lookups), by announced
  endpoint, by WireGuard key (a key belongs to one identity);
- the anti-entropy view: per key bucket, the XOR digest of the live records and the records;
- the probe order (randomized round-robin, SWIM section 4.3);
- the dead members to re-contact (`dead`, so that picking one costs no scan of the table);
- refused identities, and the high-water marks of reaped members (`tombs`);
- the wall clock as of the last call that gave one (records carry signed times).
"""

from __future__ import annotations

from collections import Counter, deque

from meshguard.crypto.keys import Ed25519PrivateKey, X25519PrivateKey
from meshguard.rng import Rng
from meshguard.sansio import Endpoint
from meshguard.swim.config import SwimConfig
from meshguard.swim.records import AdmissionPolicy, CryptoCache, is_admitted, sign_record
from meshguard.swim.suspicion import Suspicion
from meshguard.wire.gossip import SYNC_BUCKETS, Entry, IPNetwork, NodeRecord

ALIVE = "alive"
SUSPECT = "suspect"
DEAD = "dead"
LEFT = "left"
LIVE = (ALIVE, SUSPECT)

_BMASK = SYNC_BUCKETS - 1


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


class KeySample:
    """A set of member keys with O(1) add, discard and uniform choice by index."""

    __slots__ = ("_at", "_keys")

    def __init__(self) -> None:
        self._keys: list[bytes] = []
        self._at: dict[bytes, int] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: bytes) -> bool:
        return key in self._at

    def add(self, key: bytes) -> None:
        if key not in self._at:
            self._at[key] = len(self._keys)
            self._keys.append(key)

    def discard(self, key: bytes) -> None:
        i = self._at.pop(key, None)
        if i is None:
            return
        last = self._keys.pop()
        if i < len(self._keys):
            self._keys[i] = last
            self._at[last] = i

    def __getitem__(self, i: int) -> bytes:
        return self._keys[i]


class SwimState:
    def __init__(
        self,
        identity_key: Ed25519PrivateKey,
        wg_key: X25519PrivateKey,
        endpoints: tuple[Endpoint, ...],
        admission: AdmissionPolicy,
        rng: Rng,
        config: SwimConfig,
        cache: CryptoCache,
        *,
        nat_type: int,
        certificate: bytes | None,
        incarnation: int,
        now: float,
        routes: tuple[IPNetwork, ...] = (),
    ) -> None:
        self.key = identity_key
        self.wg = wg_key
        self.id = identity_key.public_key.raw
        self.admission = admission
        self.rng = rng
        self.config = config
        self.cache = cache
        self.inc = incarnation
        self.endpoints = endpoints
        self.nat = nat_type
        self.cert = certificate
        self.routes = routes
        self.left = False
        self.record, self.raw = self.sign_self(left=False)
        self.members: dict[bytes, Member] = {}
        self.by_prefix: dict[bytes, Member] = {}  # identity[:8] -> member (SyncWant lookups)
        self.ep_index: dict[Endpoint, bytes] = {}
        self.wg_owner: dict[bytes, bytes] = {}  # WireGuard key -> the member that holds it
        self.n_live = 0
        # dead members that announce an endpoint (re-contact candidates, join.py)
        self.dead = KeySample()
        self.rejected: dict[bytes, None] = {}
        # identity -> highest incarnation of a reaped member: its older records stay refused
        self.tombs: dict[bytes, int] = {}
        self.graveyard: deque[Endpoint] = deque(maxlen=config.graveyard_size)
        # anti-entropy view: per key bucket, the XOR digest and the raw records of live members
        self.bdig = [0] * SYNC_BUCKETS
        self.braw: list[dict[bytes, bytes]] = [{} for _ in range(SYNC_BUCKETS)]
        self.xor(self.raw)
        self.braw[self.id[0] & _BMASK][self.id] = self.raw
        self.order: list[bytes] = []
        self.order_idx = 0
        self.wall = now
        self.wall_offset = 0.0  # wall - now, as of the last call that gave both
        self.stats: Counter[str] = Counter()

    # -- this node -------------------------------------------------------------------------

    def sign_self(self, left: bool) -> tuple[NodeRecord, bytes]:
        rec = NodeRecord(
            identity=self.id,
            wg_public=self.wg.public_key.raw,
            incarnation=self.inc,
            endpoints=self.endpoints,
            nat_type=self.nat,
            certificate=self.cert,
            left=left,
            routes=self.routes,
        )
        return sign_record(self.key, rec)

    def resign(self, inc: int) -> None:
        """Sign our record again at incarnation `inc` or the current wall-clock millisecond,
        whichever is higher (the incarnation doubles as the signing time, see SwimConfig)."""
        self.xor(self.raw)
        self.inc = max(inc, int(self.wall * 1000))
        self.record, self.raw = self.sign_self(left=False)
        self.xor(self.raw)
        self.braw[self.id[0] & _BMASK][self.id] = self.raw

    def set_wall(self, now: float, wall: float) -> None:
        self.wall = wall
        self.wall_offset = wall - now

    def refresh_due(self) -> float:
        """When (in `now` time) our record becomes record_refresh old."""
        return self.inc / 1000 + self.config.record_refresh - self.wall_offset

    # -- members ---------------------------------------------------------------------------

    def admit(self, key: bytes, cert: bytes | None) -> bool:
        if is_admitted(self.admission.admit(key, cert, self.wall)):
            return True
        if len(self.rejected) >= 4096:
            self.rejected.clear()
        self.rejected[key] = None
        self.stats["not_admitted"] += 1
        return False

    def remove(self, m: Member) -> None:
        if m.state in LIVE:
            self.live_remove(m)
        del self.members[m.key]
        self.dead.discard(m.key)
        if self.wg_owner.get(m.record.wg_public) == m.key:
            del self.wg_owner[m.record.wg_public]
        if self.by_prefix.get(m.key[:8]) is m:
            del self.by_prefix[m.key[:8]]

    def xor(self, raw: bytes) -> None:
        # a record's digest part is 8 of its signature bytes: unique per record version
        self.bdig[raw[4] & _BMASK] ^= int.from_bytes(raw[-8:], "little")

    def live_add(self, m: Member) -> None:
        raw = m.raw
        b = raw[4] & _BMASK
        self.bdig[b] ^= int.from_bytes(raw[-8:], "little")
        self.braw[b][m.key] = raw
        for ep in m.record.endpoints:
            self.ep_index[ep] = m.key
        self.n_live += 1

    def live_remove(self, m: Member) -> None:
        raw = m.raw
        b = raw[4] & _BMASK
        self.bdig[b] ^= int.from_bytes(raw[-8:], "little")
        self.braw[b].pop(m.key, None)
        for ep in m.record.endpoints:
            if self.ep_index.get(ep) == m.key:
                del self.ep_index[ep]
        self.n_live -= 1

    def pair_key(self, m: Member) -> bytes | None:
        if m.pair_key is None:
            m.pair_key = self.cache.pair_key(self.wg, self.id, m.record.wg_public, m.key)
        return m.pair_key

    def order_insert(self, key: bytes) -> None:
        """Put a new member at a random place among those not yet probed this round (SWIM
        inserts at random positions; otherwise every node would probe in join order and a
        crashed node could go unprobed for a whole round)."""
        order = self.order
        order.append(key)
        lo = min(self.order_idx, len(order) - 1)
        j = lo + self.rng.randrange(len(order) - lo)
        order[j], order[-1] = order[-1], order[j]

    def random_alive(self) -> Member | None:
        order = self.order
        for _ in range(8):
            if not order:
                return None
            m = self.members.get(order[self.rng.randrange(len(order))])
            if m is not None and m.state == ALIVE:
                return m
        live = [m for m in self.members.values() if m.state == ALIVE]
        return live[self.rng.randrange(len(live))] if live else None

    def new_seq(self) -> int:
        return self.rng.randrange(1 << 32)

    def reply_to(self, m: Member, src: Endpoint) -> Endpoint | None:
        """Where a reply that may be large goes: the source if the member announced it, else
        its first announced endpoint (a spoofed source draws nothing)."""
        if src in m.record.endpoints:
            return src
        self.stats["reply_redirected"] += 1
        return endpoint_of(m)

    # -- freshness -------------------------------------------------------------------------

    def record_fresh(self, raw: bytes) -> bool:
        """A record's incarnation is its signing time in ms: refuse it when too old or too far
        in the future (a cheap check, before any signature verification)."""
        age = self.wall - int.from_bytes(raw[36:44], "little") / 1000
        if age > self.config.record_max_age:
            self.stats["record_too_old"] += 1
            return False
        if age < -self.config.record_max_age:
            self.stats["record_from_future"] += 1
            return False
        return True

    def prune_tombs(self) -> None:
        """Forget high-water marks whose records would be refused as too old anyway."""
        horizon = (self.wall - self.config.record_max_age) * 1000
        if len(self.tombs) > 65536:
            self.tombs = dict(list(self.tombs.items())[-65536:])
        for k in [k for k, inc in self.tombs.items() if inc < horizon]:
            del self.tombs[k]


def endpoint_of(m: Member) -> Endpoint | None:
    """Where SWIM writes to a member: the first endpoint its record announces."""
    eps = m.record.endpoints
    return eps[0] if eps else None
