from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshguard.errors import WireFormatError
from meshguard.wire import stun

TXID = bytes(range(12))


def test_request_layout() -> None:
    req = stun.encode_binding_request(TXID)
    assert len(req) == 20
    assert req[:2] == b"\x00\x01" and req[2:4] == b"\x00\x00"
    assert req[4:8] == b"\x21\x12\xa4\x42" and req[8:] == TXID
    msg = stun.decode(req)
    assert msg.msg_type == stun.BINDING_REQUEST and msg.mapped is None


def test_rfc5769_ipv4_response_vector() -> None:
    # RFC 5769 section 2.2 sample IPv4 response: XOR-MAPPED-ADDRESS 192.0.2.1:32853
    txid = bytes.fromhex("b7e7a701bc34d686fa87dfae")
    xma = bytes.fromhex("002000080001a147e112a643")
    data = struct.pack("!HHI", 0x0101, len(xma), stun.MAGIC_COOKIE) + txid + xma
    msg = stun.decode(data)
    assert msg.mapped == ("192.0.2.1", 32853)


def test_rfc5769_ipv6_response_vector() -> None:
    # RFC 5769 section 2.3: 2001:db8:1234:5678:11:2233:4455:6677 port 32853
    txid = bytes.fromhex("b7e7a701bc34d686fa87dfae")
    xma = bytes.fromhex("002000140002a1470113a9faa5d3f179bc25f4b5bed2b9d9")
    data = struct.pack("!HHI", 0x0101, len(xma), stun.MAGIC_COOKIE) + txid + xma
    assert stun.decode(data).mapped == ("2001:db8:1234:5678:11:2233:4455:6677", 32853)


@given(st.ip_addresses(), st.integers(0, 65535), st.binary(min_size=12, max_size=12))
def test_roundtrip(ip: object, port: int, txid: bytes) -> None:
    data = stun.encode_binding_success(txid, (str(ip), port))
    msg = stun.decode(data)
    assert msg.msg_type == stun.BINDING_SUCCESS and msg.transaction_id == txid
    assert msg.mapped == (str(ip), port)


def test_mapped_address_fallback_and_unknown_attrs_skipped() -> None:
    software = struct.pack("!HH", stun.ATTR_SOFTWARE, 3) + b"abc\x00"
    ma = struct.pack("!HHBBH4s", stun.ATTR_MAPPED_ADDRESS, 8, 0, 1, 4242, bytes([198, 51, 100, 9]))
    body = software + ma
    data = struct.pack("!HHI", 0x0101, len(body), stun.MAGIC_COOKIE) + TXID + body
    assert stun.decode(data).mapped == ("198.51.100.9", 4242)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00\x01\x00\x00\x21\x12\xa4",
        struct.pack("!HHI", 0x0101, 4, stun.MAGIC_COOKIE) + TXID,  # length beyond datagram
        struct.pack("!HHI", 0xC101, 0, stun.MAGIC_COOKIE) + TXID,  # top bits set
        struct.pack("!HHI", 0x0101, 0, 0xDEADBEEF) + TXID,  # wrong cookie
        struct.pack("!HHI", 0x0101, 8, stun.MAGIC_COOKIE) + TXID
        + struct.pack("!HH", 0x0020, 8) + b"\x00\x09\x00\x00",  # bad family / truncated
    ],
)
def test_rejects_malformed(data: bytes) -> None:
    with pytest.raises(WireFormatError):
        stun.decode(data)


def test_bad_txid_length() -> None:
    with pytest.raises(ValueError):
        stun.encode_binding_request(b"short")
