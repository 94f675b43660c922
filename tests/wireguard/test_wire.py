"""WireGuard message codecs: sizes, offsets, round-trips and (type, length) dispatch."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshguard.errors import WireFormatError
from meshguard.wire import wireguard as w

u32 = st.integers(0, 2**32 - 1)


def b(n: int) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=n, max_size=n)


def test_sizes_and_offsets() -> None:
    assert (w.INITIATION_SIZE, w.RESPONSE_SIZE, w.COOKIE_REPLY_SIZE) == (148, 92, 64)
    assert (w.INITIATION_MAC1_OFFSET, w.INITIATION_MAC2_OFFSET) == (116, 132)
    assert (w.RESPONSE_MAC1_OFFSET, w.RESPONSE_MAC2_OFFSET) == (60, 76)
    assert w.TRANSPORT_MIN_SIZE == 32
    assert [w.padded_length(n) for n in (0, 1, 15, 16, 17, 1420)] == [0, 16, 16, 16, 32, 1424]


@given(u32, b(32), b(48), b(28), b(16), b(16))
def test_initiation_round_trip(
    s: int, e: bytes, st_: bytes, ts: bytes, m1: bytes, m2: bytes
) -> None:
    msg = w.Initiation(s, e, st_, ts, m1, m2)
    data = msg.encode()
    assert len(data) == 148 and data[:4] == b"\x01\x00\x00\x00"
    assert data[116:132] == m1 and data[132:] == m2
    assert w.parse(data) == msg


@given(u32, u32, b(32), b(16), b(16), b(16))
def test_response_round_trip(s: int, r: int, e: bytes, em: bytes, m1: bytes, m2: bytes) -> None:
    msg = w.Response(s, r, e, em, m1, m2)
    data = msg.encode()
    assert len(data) == 92 and data[:4] == b"\x02\x00\x00\x00"
    assert struct.unpack_from("<II", data, 4) == (s, r)
    assert w.parse(data) == msg


@given(u32, b(24), b(32))
def test_cookie_reply_round_trip(r: int, nonce: bytes, c: bytes) -> None:
    msg = w.CookieReply(r, nonce, c)
    data = msg.encode()
    assert len(data) == 64
    assert w.parse(data) == msg


@given(u32, st.integers(0, 2**64 - 1), st.binary(min_size=16, max_size=200))
def test_transport_round_trip(r: int, ctr: int, ct: bytes) -> None:
    msg = w.Transport(r, ctr, ct)
    data = msg.encode()
    assert len(data) == 16 + len(ct)
    assert w.parse(data) == msg
    assert w.unpack_transport_header(data) == (r, ctr)
    assert w.transport_header(r, ctr) == data[:16]


@given(st.binary(max_size=300))
def test_parse_never_raises_anything_but_wire_format_error(data: bytes) -> None:
    try:
        msg = w.parse(data)
    except WireFormatError:
        return
    assert msg.encode() == data


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x01\x00\x00",
        bytes(148),  # type 0
        b"\x01\x00\x00\x00" + bytes(143),  # initiation, 147 bytes
        b"\x01\x00\x00\x00" + bytes(145),  # initiation, 149 bytes
        b"\x02\x00\x00\x00" + bytes(90),
        b"\x03\x00\x00\x00" + bytes(61),
        b"\x04\x00\x00\x00" + bytes(27),  # transport shorter than header + tag
        b"\x01\x00\x00\x01" + bytes(144),  # reserved bytes set: type is not 1
        b"\x05\x00\x00\x00" + bytes(60),
    ],
)
def test_parse_rejects(data: bytes) -> None:
    with pytest.raises(WireFormatError):
        w.parse(data)


def test_encode_rejects_wrong_field_sizes() -> None:
    with pytest.raises(WireFormatError):
        w.Initiation(1, bytes(31), bytes(48), bytes(28)).encode()
    with pytest.raises(WireFormatError):
        w.Transport(1, 0, bytes(15)).encode()


def test_demux_rule() -> None:
    assert w.is_wireguard(b"\x04\x00\x00\x00" + bytes(28))
    assert not w.is_wireguard(b"\x05\x00\x00\x00")
    assert not w.is_wireguard(b"\x01\x00")
