"""The piggyback queue, and the packet budget that decides what rides on each packet.

`BroadcastQueue` holds the updates waiting to ride on outgoing packets; `Piggyback` writes a
packet to a member, fills its spare room from the queue (after this node's own record on first
contact and the buddy-system accusation), and MACs it under the pair key.

Queue:

One entry per subject (a newer update about a node replaces the older one). Entries are taken
by priority class first (CRITICAL: accusations, refutations and leaves, which race a suspicion
timeout; URGENT: other nodes' new records; NORMAL: records learnt by anti-entropy), then
fewest transmissions first, newest first among equals; an entry is dropped after `limit`
transmissions (SwimConfig.retransmit_limit, which grows with log N).

Each (class, transmit count) bucket is a stack with lazy deletion: a replaced or dropped entry
stays in its stack until it surfaces and is discarded, so put, drop and take are O(1) per entry.
"""

from __future__ import annotations

from collections.abc import Sequence

from meshguard.crypto.hashes import mac
from meshguard.sansio import Endpoint, SendDatagram
from meshguard.swim.events import Action
from meshguard.swim.state import DEAD, SUSPECT, Member, SwimState
from meshguard.wire.gossip import (
    ACK,
    JOIN_ACK,
    MAC_LEN,
    MAX_ENTRIES,
    MAX_PACKET,
    PING,
    PING_REQ,
    TAG_RECORD,
    Entry,
    Packet,
    encode_body,
)

_MAX_SKIPS = 4  # entries have near-equal sizes: a few misfits mean the packet is full
_MIN_ENTRY = 1 + 136  # the smallest entry (an accusation): below this nothing fits

_Item = tuple[bytes, int, Entry]  # (subject, token, entry)

# Fixed bytes of a packet before its entries, per type (type, sender, seq / key fields).
_BASE_PING = 5 + 32 + 4
_BASE_PROBE = 5 + 32 + 36
_BASE_LEAVE = 5 + 32
BASE_SYNC = 5 + 32 + 8

CRITICAL = 0
URGENT = 1
NORMAL = 2


class BroadcastQueue:
    def __init__(self) -> None:
        # class -> transmit count -> stack of items
        self._stacks: tuple[dict[int, list[_Item]], ...] = ({}, {}, {})
        self._where: dict[bytes, tuple[int, int, int]] = {}  # subject -> (class, count, token)
        self._token = 0
        self._normal = 0

    def __len__(self) -> int:
        return len(self._where)

    def normal_count(self) -> int:
        return self._normal

    def __contains__(self, subject: bytes) -> bool:
        return subject in self._where

    def put(self, subject: bytes, entry: Entry, priority: int = CRITICAL) -> None:
        self.drop(subject)
        cls = priority
        self._normal += cls == NORMAL
        self._token += 1
        self._stacks[cls].setdefault(0, []).append((subject, self._token, entry))
        self._where[subject] = (cls, 0, self._token)

    def drop(self, subject: bytes) -> None:
        w = self._where.pop(subject, None)
        if w is not None:
            self._normal -= w[0] == NORMAL

    def take(
        self,
        budget: int,
        limit: int,
        max_entries: int,
        skip: bytes = b"",
        limit_normal: int | None = None,
    ) -> list[Entry]:
        """Entries whose encoded sizes (1 + len) fit in `budget` bytes, at most max_entries.

        `limit` / `limit_normal` are the transmissions after which a critical or urgent / a
        normal entry is dropped (limit_normal defaults to limit). `skip` names a subject not
        to include (e.g. one the caller already added).
        """
        limits = (limit, limit, limit if limit_normal is None else limit_normal)
        out: list[Entry] = []
        moved: list[tuple[int, int, _Item]] = []
        skips = 0
        where = self._where
        for cls in (CRITICAL, URGENT, NORMAL):
            stacks = self._stacks[cls]
            for t in sorted(stacks):
                stack = stacks[t]
                kept: list[_Item] = []
                while stack:
                    if len(out) >= max_entries or skips > _MAX_SKIPS or budget < _MIN_ENTRY:
                        break
                    item = stack.pop()
                    subject, token, entry = item
                    w = where.get(subject)
                    if w is None or w[2] != token:
                        continue  # stale
                    size = 1 + len(entry[1])
                    if size > budget or subject == skip:
                        skips += 1
                        kept.append(item)
                        continue
                    budget -= size
                    out.append(entry)
                    moved.append((cls, t, item))
                while kept:
                    stack.append(kept.pop())
                if not stack:
                    del stacks[t]
                if len(out) >= max_entries or skips > _MAX_SKIPS or budget < _MIN_ENTRY:
                    break
            else:
                continue
            break
        for cls, t, item in moved:
            subject, token, _ = item
            if t + 1 >= limits[cls]:
                del where[subject]
                self._normal -= cls == NORMAL
            else:
                self._stacks[cls].setdefault(t + 1, []).append(item)
                where[subject] = (cls, t + 1, token)
        return out


class Piggyback:
    """Sends packets to members, each carrying as many queued updates as fit."""

    def __init__(self, state: SwimState, queue: BroadcastQueue) -> None:
        self._s = state
        self.queue = queue

    def seal(self, m: Member, body: bytes, ep: Endpoint, out: list[Action]) -> None:
        """`body` MACed for member `m`, to `ep` (nothing when there is no pair key)."""
        key = self._s.pair_key(m)
        if key is not None:
            out.append(SendDatagram(body + mac(key, body), ep))

    def send(
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
        s = self._s
        key = s.pair_key(m)
        if key is None:
            return
        t = pkt.type
        if t == PING:
            base = _BASE_PING
        elif t in (PING_REQ, ACK):
            base = _BASE_PROBE
        elif t == JOIN_ACK:
            base = BASE_SYNC + len(pkt.record)
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
                Packet(t, s.id, pkt.seq, pkt.key, record=pkt.record, entries=keep), False
            )
            out.append(SendDatagram(body + mac(key, body), ep))
            s.stats["bare_replies"] += 1
            return
        if not m.heard and t != JOIN_ACK and not s.left:
            entries.insert(0, (TAG_RECORD, s.raw))
        for e in entries:
            budget -= 1 + len(e[1])
        skip = b""
        if buddy and m.state in (SUSPECT, DEAD) and m.accusation is not None:
            # Lifeguard's buddy system: a member we suspect hears it from us directly.
            entries.append(m.accusation)
            budget -= 1 + len(m.accusation[1])
            skip = m.key
        for e in extra:
            if 1 + len(e[1]) <= budget and len(entries) < MAX_ENTRIES:
                entries.append(e)
                budget -= 1 + len(e[1])
        n = 1 + s.n_live
        cfg = s.config
        entries += self.queue.take(
            budget,
            cfg.retransmit_limit(n),
            MAX_ENTRIES - len(entries),
            skip,
            cfg.retransmit_limit(n) // cfg.retransmit_mult,
        )
        body = encode_body(
            Packet(t, s.id, pkt.seq, pkt.key, record=pkt.record, entries=tuple(entries)),
            False,
        )
        out.append(SendDatagram(body + mac(key, body), ep))
