"""Injected time. Protocol cores take `now` as an argument; the shell reads it from a Clock."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a monotonic clock (timers)."""
        ...

    def wall(self) -> float:
        """Seconds since the Unix epoch (timestamps that leave the process)."""
        ...


class SystemClock:
    """The real clock, used only by the asyncio shell and the CLI."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()
