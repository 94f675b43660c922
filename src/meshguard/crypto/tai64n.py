"""TAI64N timestamps (WireGuard's handshake replay protection)."""

from __future__ import annotations

import struct

TAI64N_LEN = 12
_TAI64_BASE = 0x400000000000000A  # 2^62 + 10 (TAI - UTC offset as used by WireGuard)
_FMT = struct.Struct(">QI")
# wireguard-go rounds nanoseconds down to a multiple of 2^24 ns so the timestamp does not
# leak a precise clock reading; we do the same.
_WHITEN_MASK = ~((1 << 24) - 1)


def tai64n(unix_seconds: float, whiten: bool = True) -> bytes:
    """Encode a wall-clock time as 12 bytes of TAI64N."""
    secs = int(unix_seconds)
    nanos = round((unix_seconds - secs) * 1e9)
    if nanos >= 1_000_000_000:
        secs += 1
        nanos -= 1_000_000_000
    if whiten:
        nanos &= _WHITEN_MASK
    return _FMT.pack(_TAI64_BASE + secs, nanos)


def parse_tai64n(data: bytes) -> tuple[int, int]:
    """Decode to (unix seconds, nanoseconds)."""
    if len(data) != TAI64N_LEN:
        raise ValueError("TAI64N is 12 bytes")
    secs, nanos = _FMT.unpack(data)
    return secs - _TAI64_BASE, nanos
