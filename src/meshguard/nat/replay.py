"""Replay protection for message counters (sans-IO): a sliding window per sender.

`CounterWindow` is WireGuard's scheme (RFC 6479) kept as one Python int: the highest counter
accepted so far and a bitmap of the `WINDOW` counters below it. A counter is accepted once;
one below the window, or seen before, is a replay. `Windows` keeps one window per key (a
sender, or a sender and its target), bounded: past `max_keys` the least recently used window
is dropped, and its highest counter becomes a floor under which no new window accepts
anything, so forgetting a window never lets its old counters in again.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

WINDOW = 1024

K = TypeVar("K", bound=Hashable)


@dataclass
class CounterWindow:
    last: int = -1  # highest counter accepted
    bits: int = 0  # bit i: counter last - i was accepted

    def check(self, counter: int) -> bool:
        """Would `counter` be accepted? (read-only, so callers may check before a MAC)"""
        if counter > self.last:
            return True
        off = self.last - counter
        return off < WINDOW and not (self.bits >> off) & 1

    def accept(self, counter: int) -> bool:
        if counter > self.last:
            shift = counter - self.last
            self.bits = 1 if shift >= WINDOW else ((self.bits << shift) | 1) & ((1 << WINDOW) - 1)
            self.last = counter
            return True
        off = self.last - counter
        if off >= WINDOW or (self.bits >> off) & 1:
            return False
        self.bits |= 1 << off
        return True


@dataclass
class Windows(Generic[K]):
    max_keys: int = 4096
    floor: int = -1  # counters at or below this are refused by windows created from now on
    _w: OrderedDict[K, CounterWindow] = field(default_factory=OrderedDict)

    def check(self, key: K, counter: int) -> bool:
        w = self._w.get(key)
        return counter > self.floor if w is None else w.check(counter)

    def accept(self, key: K, counter: int) -> bool:
        w = self._w.get(key)
        if w is None:
            if counter <= self.floor:
                return False
            w = self._w[key] = CounterWindow()
            while len(self._w) > self.max_keys:
                _, old = self._w.popitem(last=False)
                self.floor = max(self.floor, old.last)
        else:
            self._w.move_to_end(key)
        return w.accept(counter)

    def __len__(self) -> int:
        return len(self._w)
