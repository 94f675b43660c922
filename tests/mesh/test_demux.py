from __future__ import annotations

import struct

import pytest

from meshguard.mesh.demux import GOSSIP_TYPES, Kind, classify
from meshguard.wire import stun


@pytest.mark.parametrize("t", [1, 2, 3, 4])
def test_wireguard_types(t: int) -> None:
    assert classify(struct.pack("<I", t) + b"\x00" * 28) is Kind.WIREGUARD


def test_wireguard_needs_zero_reserved_bytes() -> None:
    # 0x01 followed by a non-zero byte is a gossip Ping, not a WireGuard initiation
    assert classify(b"\x01\x07\x00\x00" + b"k" * 40) is Kind.GOSSIP
    assert classify(struct.pack("<I", 0x10) + b"\x00" * 28) is Kind.GARBAGE
    assert classify(struct.pack("<I", 0) + b"\x00" * 28) is Kind.GARBAGE


def test_stun_magic() -> None:
    req = stun.encode_binding_request(b"\xaa" * 12)
    assert classify(req) is Kind.STUN
    # magic in place but too short to be a header
    assert classify(b"\x00\x01\x00\x00" + stun.MAGIC_BYTES) is Kind.GARBAGE


@pytest.mark.parametrize("t", sorted(GOSSIP_TYPES))
def test_gossip_types(t: int) -> None:
    assert classify(bytes([t]) + b"\x99" * 40) is Kind.GOSSIP


@pytest.mark.parametrize(
    "data", [b"", b"\xff", b"\x00\x00\x00", b"\x7f" * 100, b"\xfeabc", b"\x20MG"]
)
def test_garbage(data: bytes) -> None:
    assert classify(data) is Kind.GARBAGE


def test_short_wireguard_like() -> None:
    assert classify(b"\x04\x00\x00") is Kind.GARBAGE  # 0x04 is no gossip type either
    assert classify(b"\x01\x00\x00") is Kind.GOSSIP
