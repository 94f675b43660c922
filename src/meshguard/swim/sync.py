"""Anti-entropy: pulling a member's whole state now and then (memberlist's push/pull).

Piggyback alone spreads each update O(log N) times, which is not enough for a mass join or a
partition merge. So a node pulls a random member's state: right after joining, then after 1,
1, 2, 2, 4, 4 ... periods (so early joiners of a mass join learn the late ones quickly), then
every `sync_interval` (+-50%).

SyncReq carries 128 per-bucket digests of the requester's view (XOR of 8 signature bytes of each
live record, SwimState.bdig) and a per-sender counter that must increase. The responder sends
the records of the differing buckets directly (SyncData) when there are at most `_DIRECT_SYNC`,
otherwise a summary (SyncSummary: key prefix and incarnation of each) from which the requester
asks (SyncWant, echoing the counter) only for what it lacks; a SyncWant may ask for no more
records than were summarised. Answers go to the member's announced endpoint.
"""

from __future__ import annotations

from meshguard.crypto.hashes import mac
from meshguard.sansio import Endpoint, SendDatagram
from meshguard.swim.broadcast import BASE_SYNC
from meshguard.swim.events import Action
from meshguard.swim.state import DEAD, LIVE, SUSPECT, Member, SwimState, endpoint_of
from meshguard.swim.updates import Updates
from meshguard.wire.gossip import (
    MAC_LEN,
    MAX_ENTRIES,
    MAX_PACKET,
    MAX_SUMMARY_ITEMS,
    MAX_WANT_ITEMS,
    SYNC_BUCKETS,
    SYNC_DATA,
    SYNC_FLAG_REPLY,
    SYNC_REQ,
    SYNC_SUMMARY,
    SYNC_WANT,
    TAG_RECORD,
    Entry,
    Packet,
    encode_body,
)

_DIRECT_SYNC = 14  # up to this many records are sent at once (2 packets), more are summarised


class AntiEntropy:
    def __init__(self, state: SwimState, updates: Updates, now: float) -> None:
        self._s = state
        self._updates = updates
        cfg = state.config
        self._next_sync = now + cfg.sync_interval * state.rng.uniform(0.5, 1.5)
        self._sync_ctr = 0
        self._boot_gap = cfg.sync_interval
        self._boot_round = 0

    def next_deadline(self) -> float:
        return self._next_sync

    def bootstrap(self, now: float) -> None:
        """We just joined: pull from random members again after gaps of 1, 1, 2, 2, 4, 4, ...
        periods (until the regular interval), so early joiners of a mass join learn the late
        ones quickly."""
        self._boot_gap = self._s.config.probe_interval
        self._next_sync = now + self._boot_gap

    def tick(self, now: float, out: list[Action]) -> None:
        s = self._s
        cfg = s.config
        if now < self._next_sync:
            return
        if self._boot_gap < cfg.sync_interval:
            self._boot_round += 1
            if self._boot_round % 2 == 0:
                self._boot_gap *= 2
            self._next_sync = now + self._boot_gap * s.rng.uniform(0.8, 1.2)
        else:
            self._next_sync = now + cfg.sync_interval * s.rng.uniform(0.5, 1.5)
        peer = s.random_alive()
        if peer is not None:
            self.send_sync_req(peer, SYNC_FLAG_REPLY, out)

    def on_sync_data(self, now: float, m: Member, p: Packet, out: list[Action]) -> None:
        if p.seq != m.sync_out:
            self._s.stats["sync_unsolicited"] += 1
            return
        self._updates.apply_entries(now, p.entries, out, rebroadcast=False)

    def send_sync_req(self, m: Member, flags: int, out: list[Action]) -> None:
        s = self._s
        self._sync_ctr += 1
        m.sync_out = self._sync_ctr
        key = s.pair_key(m)
        ep = endpoint_of(m)
        if key is None or ep is None:
            return
        body = encode_body(
            Packet(SYNC_REQ, s.id, self._sync_ctr, digests=tuple(s.bdig), flags=flags)
        )
        out.append(SendDatagram(body + mac(key, body), ep))

    def on_sync_req(self, m: Member, p: Packet, src: Endpoint, out: list[Action]) -> None:
        s = self._s
        if p.seq <= m.sync_in:
            s.stats["sync_replayed"] += 1
            return
        dst = s.reply_to(m, src)
        if dst is None:
            return
        src = dst
        m.sync_in = p.seq
        differ = {b for b in range(SYNC_BUCKETS) if p.digests[b] != s.bdig[b]}
        if not differ:
            s.stats["sync_equal"] += 1
            return
        s.stats["sync_served"] += 1
        entries: list[Entry] = [
            (TAG_RECORD, raw) for b in sorted(differ) for raw in s.braw[b].values()
        ]
        if len(entries) <= _DIRECT_SYNC:
            self._send_records(m, p.seq, entries, src, out)
        else:
            # Too many to send blindly: summarise (key prefix, incarnation), let it ask.
            m.sync_budget = len(entries)
            items = [e[1][4:12] + e[1][36:44] for e in entries]
            key = s.pair_key(m)
            if key is not None:
                for i in range(0, len(items), MAX_SUMMARY_ITEMS):
                    chunk = tuple(items[i : i + MAX_SUMMARY_ITEMS])
                    body = encode_body(Packet(SYNC_SUMMARY, s.id, p.seq, items=chunk), False)
                    out.append(SendDatagram(body + mac(key, body), src))
        if p.flags & SYNC_FLAG_REPLY:
            self.send_sync_req(m, 0, out)

    def _send_records(
        self, m: Member, counter: int, entries: list[Entry], dst: Endpoint, out: list[Action]
    ) -> None:
        s = self._s
        key = s.pair_key(m)
        if key is None:
            return
        budget0 = MAX_PACKET - MAC_LEN - BASE_SYNC - 1
        i = 0
        sent = 0
        while i < len(entries) and sent < s.config.sync_max_packets:
            budget = budget0
            chunk: list[Entry] = []
            while i < len(entries) and len(chunk) < MAX_ENTRIES:
                size = 1 + len(entries[i][1])
                if size > budget:
                    break
                budget -= size
                chunk.append(entries[i])
                i += 1
            body = encode_body(Packet(SYNC_DATA, s.id, counter, entries=tuple(chunk)), False)
            out.append(SendDatagram(body + mac(key, body), dst))
            sent += 1

    def on_sync_summary(self, m: Member, p: Packet, src: Endpoint, out: list[Action]) -> None:
        s = self._s
        if p.seq != m.sync_out:
            s.stats["sync_unsolicited"] += 1
            return
        dst = s.reply_to(m, src)
        if dst is None:
            return
        src = dst
        want: list[bytes] = []
        rejected = {r[:8] for r in s.rejected}
        for item in p.items:
            prefix = item[:8]
            inc = int.from_bytes(item[8:16], "little")
            if prefix == s.id[:8]:
                continue
            k = s.by_prefix.get(prefix)
            if k is None:
                if prefix in rejected:
                    continue
                want.append(prefix)
            elif inc > k.record.incarnation and not (
                k.state in (SUSPECT, DEAD) and inc <= k.state_inc
            ):
                want.append(prefix)
        key = s.pair_key(m)
        if not want or key is None:
            return
        s.stats["sync_wanted"] += len(want)
        for i in range(0, len(want), MAX_WANT_ITEMS):
            chunk = tuple(want[i : i + MAX_WANT_ITEMS])
            body = encode_body(Packet(SYNC_WANT, s.id, p.seq, items=chunk), False)
            out.append(SendDatagram(body + mac(key, body), src))

    def on_sync_want(self, m: Member, p: Packet, src: Endpoint, out: list[Action]) -> None:
        s = self._s
        if p.seq != m.sync_in or m.sync_budget <= 0:
            s.stats["sync_unsolicited"] += 1
            return
        dst = s.reply_to(m, src)
        if dst is None:
            return
        src = dst
        entries: list[Entry] = []
        for prefix in p.items[: m.sync_budget]:
            if prefix == s.id[:8]:
                entries.append((TAG_RECORD, s.raw))
                continue
            k = s.by_prefix.get(prefix)
            if k is not None and k.state in LIVE:
                entries.append((TAG_RECORD, k.raw))
        m.sync_budget -= len(p.items)
        self._send_records(m, p.seq, entries, src, out)


