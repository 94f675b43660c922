"""Replay protection for message counters (sans-IO): a sliding window per sender.

`CounterWindow` is WireGuard's scheme (RFC 6479) kept as one Python int: the highest counter
accepted so far and a bitmap of the `WINDOW` counters below it. A counter is accepted once;
one below the window, or seen before, is a replay. `Windows` keeps one window per (sender,
target) pair, bounded: past `max_keys` the least recently used window is dropped, and its
highest counter becomes the sender's floor, under which no new window of that sender accepts
anything, so forgetting a window never lets its old counters in again. Floors are per sender
(one counter sequence per sender), so a sender's counters only ever constrain itself.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

WINDOW = 1024
MAX_FLOORS = 65536


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


Key = tuple[bytes, bytes]  # (sender, target)


@dataclass
class Windows:
    max_keys: int = 4096
    # sender -> counters at or below this are refused by its windows created from now on
    floors: dict[bytes, int] = field(default_factory=dict)
    _w: OrderedDict[Key, CounterWindow] = field(default_factory=OrderedDict)

    def check(self, key: Key, counter: int) -> bool:
        w = self._w.get(key)
        return counter > self.floors.get(key[0], -1) if w is None else w.check(counter)

    def accept(self, key: Key, counter: int) -> bool:
        w = self._w.get(key)
        if w is None:
            if counter <= self.floors.get(key[0], -1):
                return False
            w = self._w[key] = CounterWindow()
            while len(self._w) > self.max_keys:
                (sender, _), old = self._w.popitem(last=False)
                if len(self.floors) >= MAX_FLOORS and sender not in self.floors:
                    self.floors.clear()
                self.floors[sender] = max(self.floors.get(sender, -1), old.last)
        else:
            self._w.move_to_end(key)
        return w.accept(counter)

    def __len__(self) -> int:
        return len(self._w)
