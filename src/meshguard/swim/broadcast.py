"""The piggyback queue: updates waiting to ride on outgoing packets.

One entry per subject (a newer update about a node replaces the older one). Entries are taken
fewest-transmissions first, newest first among equals, urgent ones (accusations, refutations,
leaves, joins) before plain record refreshes; an entry is dropped after `limit` transmissions
(SwimConfig.retransmit_limit, which grows with log N).
"""

from __future__ import annotations

from meshguard.wire.gossip import Entry

_MAX_SKIPS = 64
_MIN_ENTRY = 1 + 136  # the smallest entry (an accusation): below this nothing fits


class BroadcastQueue:
    def __init__(self) -> None:
        # class (0 urgent, 1 normal) -> transmit count -> subject -> entry
        self._buckets: tuple[dict[int, dict[bytes, Entry]], dict[int, dict[bytes, Entry]]] = (
            {},
            {},
        )
        self._where: dict[bytes, tuple[int, int]] = {}
        self._normal = 0

    def __len__(self) -> int:
        return len(self._where)

    def normal_count(self) -> int:
        return self._normal

    def __contains__(self, subject: bytes) -> bool:
        return subject in self._where

    def put(self, subject: bytes, entry: Entry, urgent: bool = True) -> None:
        self.drop(subject)
        cls = 0 if urgent else 1
        self._normal += cls
        self._buckets[cls].setdefault(0, {})[subject] = entry
        self._where[subject] = (cls, 0)

    def drop(self, subject: bytes) -> None:
        w = self._where.pop(subject, None)
        if w is None:
            return
        self._normal -= w[0]
        bucket = self._buckets[w[0]][w[1]]
        del bucket[subject]
        if not bucket:
            del self._buckets[w[0]][w[1]]

    def take(self, budget: int, limit: int, max_entries: int, skip: bytes = b"") -> list[Entry]:
        """Entries whose encoded sizes (1 + len) fit in `budget` bytes, at most max_entries.

        `skip` names a subject not to include (e.g. one the caller already added).
        """
        out: list[Entry] = []
        chosen: list[tuple[int, int, bytes]] = []
        skips = 0
        for cls in (0, 1):
            buckets = self._buckets[cls]
            for t in sorted(buckets):
                for subject in reversed(buckets[t]):
                    if len(out) >= max_entries or skips > _MAX_SKIPS or budget < _MIN_ENTRY:
                        break
                    entry = buckets[t][subject]
                    size = 1 + len(entry[1])
                    if size > budget or subject == skip:
                        skips += 1
                        continue
                    budget -= size
                    out.append(entry)
                    chosen.append((cls, t, subject))
                if len(out) >= max_entries or skips > _MAX_SKIPS or budget < _MIN_ENTRY:
                    break
        for cls, t, subject in chosen:
            buckets = self._buckets[cls]
            entry = buckets[t].pop(subject)
            if not buckets[t]:
                del buckets[t]
            if t + 1 >= limit:
                del self._where[subject]
                self._normal -= cls
            else:
                buckets.setdefault(t + 1, {})[subject] = entry
                self._where[subject] = (cls, t + 1)
        return out
