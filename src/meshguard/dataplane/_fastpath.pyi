# The C extension built from _fastpath.c (see fastpath.py for what each call does).
# tests/dataplane/test_fastpath_stub.py holds this stub to the names the built module has.

from collections.abc import Mapping, Sequence
from typing import final

_Buffer = bytes | bytearray | memoryview

@final
class Cipher:
    def __init__(self, key: _Buffer) -> None: ...
    def seal(self, counter: int, plaintext: _Buffer) -> bytes: ...
    def open(self, counter: int, ciphertext: _Buffer) -> bytes | None: ...

@final
class HandshakeGuard:
    threshold: int
    hold: float
    def __init__(
        self,
        threshold: int,
        hold: float,
        source_rate: float,
        source_burst: float,
        net_rate: float,
        net_burst: float,
        dh_rate: float,
        dh_burst: float,
        cookie_rate: float,
        cookie_burst: float,
        reply_rate: float,
        reply_burst: float,
        max_sources: int,
    ) -> None: ...
    @property
    def load(self) -> HandshakeGuard: ...
    @property
    def sources(self) -> int: ...
    def set_keys(self, mac1: _Buffer, cookie: _Buffer, /) -> None: ...
    def precheck(
        self, now: float, msg: _Buffer, source_key: _Buffer, binding: _Buffer, /
    ) -> tuple[int, bytes | None]: ...
    def cookie_reply(self, now: float, msg: _Buffer, source_key: _Buffer, /) -> bool: ...
    def set_ticket(self, mac1: _Buffer, /) -> None: ...
    def under_load(self, now: float, /) -> bool: ...
    def take_counts(self) -> tuple[int, ...]: ...

def checksum(data: _Buffer, initial: int = 0, /) -> int: ...
def segment_count(buf: _Buffer, vnet: bool = True) -> int: ...
def seal_segments(
    cipher: Cipher, receiver: int, first: int, buf: _Buffer, vnet: bool = True
) -> tuple[bytes, int, int]: ...
def open_batch(
    cipher: Cipher, buf: _Buffer, seg_size: int, receiver: int, offset: int = 0
) -> tuple[int, list[tuple[int, int, bytes | None, bytes | None, int]]]: ...
def coalesce(packets: Sequence[_Buffer], verify: bool = True) -> list[bytes]: ...
def recv_batch(
    fd: int,
    limit: int,
    guard: HandshakeGuard | None,
    now: float,
    indices: Mapping[int, object] | None = None,
    /,
) -> tuple[
    list[tuple[bytes, int, bytes, int]], int, int, int, int, int, int, int, int, int
]: ...
