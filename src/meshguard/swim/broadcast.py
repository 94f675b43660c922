"""The piggyback queue: updates waiting to ride on outgoing packets.

One entry per subject (a newer update about a node replaces the older one). Entries are taken
by priority class first (CRITICAL: accusations, refutations and leaves, which race a suspicion
timeout; URGENT: other nodes' new records; NORMAL: records learnt by anti-entropy), then
fewest transmissions first, newest first among equals; an entry is dropped after `limit`
transmissions (SwimConfig.retransmit_limit, which grows with log N).

Each (class, transmit count) bucket is a stack with lazy deletion: a replaced or dropped entry
stays in its stack until it surfaces and is discarded, so put, drop and take are O(1) per entry.
"""

from __future__ import annotations

from meshguard.wire.gossip import Entry

_MAX_SKIPS = 4  # entries have near-equal sizes: a few misfits mean the packet is full
_MIN_ENTRY = 1 + 136  # the smallest entry (an accusation): below this nothing fits

_Item = tuple[bytes, int, Entry]  # (subject, token, entry)

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
