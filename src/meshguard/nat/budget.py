"""Token buckets that bound what unauthenticated datagrams may cost (sans-IO, no clock).

`SourceBudget` is the cheap check in front of a MAC or signature verification: a datagram
from a source host may be checked only while both that host's bucket and the global bucket
have a token. A flood from one address spends its own bucket; a flood from many (spoofed)
addresses spends the global one, so the work spent on checks that fail is bounded either way.
The per-source table is bounded too: idle buckets are dropped, and past `max_sources` the
table is cleared (the global bucket still bounds the work while it refills).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TokenBucket:
    """`rate` tokens per second, at most `burst` saved up; starts full."""

    rate: float
    burst: float
    tokens: float = -1.0
    last: float = float("-inf")

    def take(self, now: float) -> bool:
        if self.tokens < 0:
            self.tokens, self.last = self.burst, now
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.last) * self.rate)
        self.last = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


@dataclass
class SourceBudget:
    """Per-source-host token buckets with one global bucket behind them."""

    per_source_rate: float
    per_source_burst: float
    global_rate: float
    global_burst: float
    max_sources: int = 8192
    _global: TokenBucket = field(init=False)
    _sources: dict[str, tuple[float, float]] = field(default_factory=dict)  # host -> tokens, t
    _last_gc: float = float("-inf")

    def __post_init__(self) -> None:
        self._global = TokenBucket(self.global_rate, self.global_burst)

    def take(self, now: float, host: str) -> str | None:
        """None if a check may be spent on this datagram, else the drop reason
        ("source_limited" or "global_limited")."""
        if now - self._last_gc >= 1.0:
            full_after = self.per_source_burst / self.per_source_rate
            self._sources = {h: v for h, v in self._sources.items() if now - v[1] < full_after}
            self._last_gc = now
        tokens, last = self._sources.get(host, (self.per_source_burst, now))
        tokens = min(self.per_source_burst, tokens + max(0.0, now - last) * self.per_source_rate)
        if tokens < 1.0:
            self._sources[host] = (tokens, now)
            return "source_limited"
        if not self._global.take(now):
            self._sources[host] = (tokens, now)
            return "global_limited"
        if len(self._sources) >= self.max_sources and host not in self._sources:
            self._sources.clear()
        self._sources[host] = (tokens - 1.0, now)
        return None

    def __len__(self) -> int:
        return len(self._sources)
