"""Receiver index table (paper 5.4.1): random 32-bit indices that name handshakes and keypairs.

The index is what the remote puts in the `receiver` field, so an incoming response or
transport message is routed with one dict lookup and no public-key search.
"""

from __future__ import annotations

import struct
from typing import Generic, TypeVar

from meshguard.rng import Rng

T = TypeVar("T")
_U32 = struct.Struct("<I")


class IndexTable(Generic[T]):
    __slots__ = ("_entries", "_rng")

    def __init__(self, rng: Rng) -> None:
        self._rng = rng
        self._entries: dict[int, T] = {}

    def new_index(self, value: T) -> int:
        """A fresh, unused, non-zero random index bound to value."""
        while True:
            idx = int(_U32.unpack(self._rng.bytes(4))[0])
            if idx and idx not in self._entries:
                self._entries[idx] = value
                return idx

    def get(self, index: int) -> T | None:
        return self._entries.get(index)

    def replace(self, index: int, value: T) -> None:
        """Rebind an index we handed out (handshake -> keypair, same index)."""
        if index not in self._entries:
            raise KeyError(index)
        self._entries[index] = value

    def remove(self, index: int) -> None:
        self._entries.pop(index, None)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, index: object) -> bool:
        return index in self._entries
