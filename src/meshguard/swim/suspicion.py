"""Lifeguard dynamic suspicion timeout.

A suspicion starts with timeout `max_t`; each independent confirmation (a Suspect notice for the
same incarnation from another accuser) shrinks it on a log curve towards `min_t`, reached after
`k` confirmations:  timeout(c) = max(min_t, max_t - (max_t - min_t) * log(c + 1) / log(k + 1)).

Confirmations are counted up to `k` (Lifeguard's cap): a further one can shrink nothing, so it
is neither stored (a suspicion holds at most k + 1 accusers, whatever the mesh size) nor worth
spreading again.
"""

from __future__ import annotations

import math


class Suspicion:
    __slots__ = ("accusers", "dead", "incarnation", "k", "max_t", "min_t", "start")

    def __init__(
        self, start: float, incarnation: int, accuser: bytes, min_t: float, max_t: float, k: int
    ) -> None:
        self.start = start
        self.incarnation = incarnation
        self.min_t = min_t
        self.max_t = max(min_t, max_t)
        self.k = k
        self.accusers = {accuser}
        self.dead: set[bytes] = set()  # accusers who have declared the subject dead

    def confirm(self, accuser: bytes) -> bool:
        """Count an independent confirmation; True if it was new and under the cap of `k`
        (the deadline moved)."""
        if accuser in self.accusers or len(self.accusers) > self.k:
            return False
        self.accusers.add(accuser)
        return True

    def timeout(self) -> float:
        c = len(self.accusers) - 1
        if self.k < 1 or c <= 0:
            return self.min_t if self.k < 1 else self.max_t
        frac = math.log(c + 1) / math.log(self.k + 1)
        return max(self.min_t, self.max_t - (self.max_t - self.min_t) * frac)

    def deadline(self) -> float:
        return self.start + self.timeout()
