"""Seeded, reproducible randomness for tests and simulations."""

from __future__ import annotations

import random


class SeededRng:
    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._r = random.Random(seed)

    def bytes(self, n: int) -> bytes:
        return self._r.randbytes(n)

    def uniform(self, a: float, b: float) -> float:
        return self._r.uniform(a, b)

    def randrange(self, n: int) -> int:
        return self._r.randrange(n)

    def shuffle(self, items: list[object]) -> None:
        self._r.shuffle(items)
