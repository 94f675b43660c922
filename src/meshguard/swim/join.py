"""Joining, re-contact, and the budgets that keep strangers' joins cheap.

A joining node sends Join (its self-signed record and a random nonce, padded to 1200 bytes so
a Join never draws a larger answer) to its seeds, retrying with exponential backoff from
`join_retry_first` to `join_retry_max` until one answers with a JoinAck echoing a nonce. Then it
pulls the seed's state (sync.py). Once joined, every `recontact_interval` it sends a Join to one
dead member, reaped endpoint or seed not known alive, so a healed partition merges by itself.

Verifying a stranger's record costs an Ed25519 verification, so it is rate limited per source
host (`join_source_rate`; a member's announced endpoint is exempt) and then globally
(`join_rate`). A Join nonce is used once, and a member's current record draws at most one
JoinAck per half retry interval.
"""

from __future__ import annotations

from collections.abc import Sequence

from meshguard.sansio import Endpoint, SendDatagram
from meshguard.swim.broadcast import Piggyback
from meshguard.swim.events import Action
from meshguard.swim.state import ALIVE, SwimState, endpoint_of
from meshguard.swim.updates import Updates
from meshguard.wire.gossip import JOIN, JOIN_ACK, TAG_RECORD, Entry, Packet, encode_body


class Joiner:
    def __init__(
        self,
        state: SwimState,
        out: Piggyback,
        updates: Updates,
        now: float,
    ) -> None:
        self._s = state
        self._out = out
        self._updates = updates
        cfg = state.config
        self._seeds: tuple[Endpoint, ...] = ()
        self.joined = True
        self._next_join = float("inf")
        self._join_backoff = cfg.join_retry_min
        self._join_nonces: dict[int, float] = {}
        self._next_recontact = now + cfg.recontact_interval * state.rng.uniform(0.5, 1.5)
        self._tokens = cfg.join_burst
        self._tokens_at = now
        self._src_tokens: dict[str, tuple[float, float]] = {}  # host -> (tokens, at)
        self._seen_joins: dict[tuple[bytes, int], float] = {}  # (identity, nonce) -> when
        self._join_acked: dict[bytes, float] = {}  # identity -> when its join was last answered

    def expects(self, nonce: int) -> bool:
        """A JoinAck echoing `nonce` answers one of our outstanding Joins."""
        return nonce in self._join_nonces

    def mark_joined(self) -> bool:
        """A JoinAck arrived; True if it is the first (we have just joined)."""
        if self.joined:
            return False
        self.joined = True
        self._next_join = float("inf")
        return True

    def next_deadline(self) -> float:
        return min(self._next_join, self._next_recontact)

    def tick(self, now: float, out: list[Action]) -> None:
        s = self._s
        cfg = s.config
        if not self.joined and now >= self._next_join:
            self._send_joins(now, self._seeds, out)
            self._join_backoff = min(self._join_backoff * 2, cfg.join_retry_max)
            self._next_join = now + self._join_backoff * s.rng.uniform(0.8, 1.2)
        if now >= self._next_recontact:
            self._next_recontact = now + cfg.recontact_interval * s.rng.uniform(0.5, 1.5)
            if self.joined:
                self._recontact(now, out)

    def join(self, seeds: Sequence[Endpoint], now: float) -> list[Action]:
        """Start joining through `seeds` (endpoints; no key known). Retries with backoff."""
        s = self._s
        self._seeds = tuple(seeds)
        if not self._seeds:
            return []
        self.joined = False
        self._join_backoff = s.config.join_retry_first
        out: list[Action] = []
        self._send_joins(now, self._seeds, out)
        self._next_join = now + self._join_backoff * s.rng.uniform(0.8, 1.2)
        return out

    def _send_joins(self, now: float, eps: Sequence[Endpoint], out: list[Action]) -> None:
        s = self._s
        for nonce, exp in list(self._join_nonces.items()):
            if exp <= now:
                del self._join_nonces[nonce]
        for ep in eps:
            nonce = int.from_bytes(s.rng.bytes(8), "little")
            if len(self._join_nonces) < 256:
                self._join_nonces[nonce] = now + 2 * s.config.join_retry_max
            body = encode_body(Packet(JOIN, seq=nonce, record=s.raw))
            out.append(SendDatagram(body, ep))
            s.stats["joins_sent"] += 1

    def _recontact(self, now: float, out: list[Action]) -> None:
        """A Join to one candidate, uniformly among the dead members, the reaped endpoints
        and the seeds not known alive (the dead are sampled from an index, not a scan)."""
        s = self._s
        dead = s.dead
        cands = [e for e in s.graveyard if e not in s.ep_index]
        cands.extend(e for e in self._seeds if e not in s.ep_index)
        total = len(dead) + len(cands)
        if not total:
            return
        i = s.rng.randrange(total)
        if i >= len(dead):
            self._send_joins(now, [cands[i - len(dead)]], out)
            return
        m = s.members.get(dead[i])
        ep = endpoint_of(m) if m is not None else None
        if ep is not None:
            self._send_joins(now, [ep], out)

    def take_token(self, now: float, src: Endpoint) -> bool:
        """Budget for verifying a stranger's self-signed record: per source host first (a
        member's announced address is exempt), then the global bucket."""
        s = self._s
        cfg = s.config
        host = src[0]
        per_source = src not in s.ep_index
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

    def source_exhausted(self, now: float, src: Endpoint) -> bool:
        """True when a Join from `src` (not a member's announced address) could not be
        verified anyway: its source's budget or the global one is spent."""
        s = self._s
        if src in s.ep_index:
            return False
        cfg = s.config
        if self._tokens + (now - self._tokens_at) * cfg.join_rate < 1.0:
            return True  # the global budget is spent (a flood from many addresses)
        b = self._src_tokens.get(src[0])
        return b is not None and b[0] + (now - b[1]) * cfg.join_source_rate < 1.0

    def on_join(self, now: float, p: Packet, src: Endpoint, out: list[Action]) -> None:
        s = self._s
        raw = p.record
        ident = raw[4:36]
        if ident == s.id:
            s.stats["from_self"] += 1
            return
        nonce = (ident, p.seq)
        if nonce in self._seen_joins:
            # Each Join carries a fresh random nonce: a second one is a replay.
            s.stats["join_replayed"] += 1
            return
        if not s.record_fresh(raw):
            return
        m = s.members.get(ident)
        if m is not None and raw == m.raw:
            # A retry of a join we answered, or a replay with a new (unsigned) nonce: at most
            # one answer per member per join_retry_min / 2.
            last = self._join_acked.get(ident)
            if last is not None and now - last < s.config.join_retry_min / 2:
                s.stats["join_replayed"] += 1
                return
        if m is None or raw != m.raw:
            if ident in s.rejected:
                s.stats["not_admitted"] += 1
                return
            if not self.take_token(now, src):
                s.stats["join_rate_limited"] += 1
                return
            self._updates.apply_record(now, raw, out, rebroadcast=True)
            m = s.members.get(ident)
            if m is None:
                return
        if len(self._seen_joins) >= 8192:
            horizon = now - s.config.record_max_age
            self._seen_joins = {k: t for k, t in self._seen_joins.items() if t > horizon}
            if len(self._seen_joins) >= 8192:
                self._seen_joins.clear()
        self._seen_joins[nonce] = now
        if len(self._join_acked) >= 8192:
            self._join_acked.clear()
        self._join_acked[ident] = now
        s.stats["joins_answered"] += 1
        extra: list[Entry] = []
        if m.state == ALIVE and m.raw != raw:
            extra.append((TAG_RECORD, m.raw))  # it restarted with an older incarnation
        pkt = Packet(JOIN_ACK, s.id, p.seq, record=s.raw)
        self._out.send(m, pkt, src, out, buddy=True, extra=extra)
