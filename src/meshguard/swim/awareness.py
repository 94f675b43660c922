"""Lifeguard local health (Dadgar et al. 2017, section 4.3).

A node whose own probes fail, or who has to refute suspicions about itself, is more likely the
slow or cut-off one than its peers are. Its health score (0 = healthy, up to `max_score`) rises
by one on each such sign and falls by one on each probe answered in time; the probe period and
the probe timeout are stretched by (1 + score), so a struggling node stops flooding the mesh
with suspicions it cannot back up.
"""

from __future__ import annotations


class Awareness:
    __slots__ = ("max_score", "score")

    def __init__(self, max_score: int) -> None:
        self.max_score = max_score
        self.score = 0

    def worse(self) -> None:
        """A failed probe or a refutation: we may be the problem."""
        self.score = min(self.max_score, self.score + 1)

    def better(self) -> None:
        """A probe answered in time."""
        if self.score:
            self.score -= 1

    def scale(self, t: float) -> float:
        """`t` (a probe period or timeout) stretched by the current health."""
        return t * (1 + self.score)
