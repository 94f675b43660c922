"""Injected randomness. Cores take an Rng; the shell passes SystemRng, tests a seeded one."""

from __future__ import annotations

import os
import random
from typing import Protocol


class Rng(Protocol):
    def bytes(self, n: int) -> bytes:
        """n random bytes (keys, nonces, indices)."""
        ...

    def uniform(self, a: float, b: float) -> float:
        """A float in [a, b] (jitter)."""
        ...

    def randrange(self, n: int) -> int:
        """An int in [0, n)."""
        ...

    def shuffle(self, items: list[object]) -> None:
        """Shuffle in place."""
        ...


class SystemRng:
    """Cryptographically strong randomness from the OS."""

    def __init__(self) -> None:
        self._sys = random.SystemRandom()

    def bytes(self, n: int) -> bytes:
        return os.urandom(n)

    def uniform(self, a: float, b: float) -> float:
        return self._sys.uniform(a, b)

    def randrange(self, n: int) -> int:
        return self._sys.randrange(n)

    def shuffle(self, items: list[object]) -> None:
        self._sys.shuffle(items)
