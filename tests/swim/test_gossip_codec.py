"""Round trips and robustness of the gossip codec (wire/gossip.py)."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshguard.errors import WireFormatError
from meshguard.wire import gossip as g

keys = st.binary(min_size=32, max_size=32)
sigs = st.binary(min_size=64, max_size=64)
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
ports = st.integers(0, 65535)
v4 = st.builds(lambda b: ".".join(str(x) for x in b), st.binary(min_size=4, max_size=4))
v6 = st.builds(
    lambda b: str(__import__("ipaddress").IPv6Address(b)), st.binary(min_size=16, max_size=16)
)
endpoints = st.tuples(st.one_of(v4, v6), ports)
certs = st.one_of(st.none(), st.binary(min_size=186, max_size=314))

records = st.builds(
    g.NodeRecord,
    identity=keys,
    wg_public=keys,
    incarnation=u64,
    endpoints=st.lists(endpoints, max_size=4).map(tuple),
    nat_type=st.integers(0, 255),
    certificate=certs,
    left=st.booleans(),
    signature=sigs,
)
accusations = st.builds(g.Accusation, st.booleans(), keys, u64, keys, sigs)


def _entry(x: g.NodeRecord | g.Accusation) -> g.Entry:
    if isinstance(x, g.NodeRecord):
        return (g.TAG_RECORD, g.encode_record(x))
    return g.encode_accusation(x)


entries = st.lists(st.one_of(records, accusations), max_size=5).map(
    lambda xs: tuple(_entry(x) for x in xs)
)
small_records = st.builds(
    g.NodeRecord,
    identity=keys,
    wg_public=keys,
    incarnation=u64,
    endpoints=st.lists(endpoints, max_size=2).map(tuple),
    signature=sigs,
)
macs = st.binary(min_size=16, max_size=16)


def _fits(p: g.Packet) -> bool:
    try:
        g.encode_body(p)
    except WireFormatError:
        return False
    return True


packets = st.one_of(
    st.builds(g.Packet, st.just(g.PING), keys, u32, entries=entries, mac=macs),
    st.builds(g.Packet, st.just(g.PING_REQ), keys, u32, keys, entries=entries, mac=macs),
    st.builds(g.Packet, st.just(g.ACK), keys, u32, keys, entries=entries, mac=macs),
    st.builds(g.Packet, st.just(g.LEAVE), keys, entries=entries, mac=macs),
    st.builds(g.Packet, st.just(g.SYNC_DATA), keys, u64, entries=entries, mac=macs),
    st.builds(
        g.Packet,
        st.just(g.SYNC_REQ),
        keys,
        u64,
        digests=st.lists(u64, min_size=g.SYNC_BUCKETS, max_size=g.SYNC_BUCKETS).map(tuple),
        flags=st.integers(0, 255),
        mac=macs,
    ),
    st.builds(
        g.Packet,
        st.just(g.JOIN_ACK),
        keys,
        u64,
        record=small_records.map(g.encode_record),
        entries=entries,
        mac=macs,
    ),
    st.builds(g.Packet, st.just(g.JOIN), seq=u64, record=records.map(g.encode_record)),
    st.builds(
        g.Packet,
        st.just(g.SYNC_SUMMARY),
        keys,
        u64,
        items=st.lists(st.binary(min_size=16, max_size=16), max_size=g.MAX_SUMMARY_ITEMS).map(
            tuple
        ),
        mac=macs,
    ),
    st.builds(
        g.Packet,
        st.just(g.SYNC_WANT),
        keys,
        u64,
        items=st.lists(st.binary(min_size=8, max_size=8), max_size=g.MAX_WANT_ITEMS).map(tuple),
        mac=macs,
    ),
).filter(_fits)


@given(records)
def test_record_round_trip(rec: g.NodeRecord) -> None:
    raw = g.encode_record(rec)
    assert g.decode_record(raw) == rec
    assert raw[g.REC_ID_OFF : g.REC_ID_OFF + 32] == rec.identity
    assert int.from_bytes(raw[g.REC_INC_OFF : g.REC_INC_OFF + 8], "little") == rec.incarnation
    assert g.record_signed_part(rec) + rec.signature == raw


@given(accusations)
def test_accusation_round_trip(a: g.Accusation) -> None:
    tag, raw = g.encode_accusation(a)
    assert len(raw) == g.ACCUSATION_LEN
    assert g.decode_accusation(tag, raw) == a


@settings(max_examples=300)
@given(packets)
def test_packet_round_trip(p: g.Packet) -> None:
    data = g.encode_packet(p)
    assert len(data) <= g.MAX_PACKET
    q = g.decode_packet(data)
    assert q == p
    assert g.encode_packet(q) == data
    # never WireGuard (LE u32 1..4 in the first 4 bytes) nor STUN (cookie at 4..8)
    assert not 1 <= struct.unpack_from("<I", data)[0] <= 4
    assert data[4:8] != b"\x21\x12\xa4\x42"
    assert g.peek_type(data) == p.type
    if p.type == g.JOIN:
        assert len(data) >= g.JOIN_MIN_LEN


@settings(max_examples=500)
@given(st.binary(max_size=1400))
def test_garbage_never_raises_anything_but_wire_errors(data: bytes) -> None:
    with contextlib.suppress(WireFormatError):
        g.decode_packet(data)


@settings(max_examples=300)
@given(packets, st.data())
def test_mutated_packets_decode_or_fail_cleanly(p: g.Packet, data: st.DataObject) -> None:
    raw = bytearray(g.encode_packet(p))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    for blob in (bytes(raw), bytes(raw[:cut])):
        with contextlib.suppress(WireFormatError):
            g.decode_packet(blob)


def test_oversize_and_bounds_rejected() -> None:
    rec = g.NodeRecord(b"\x01" * 32, b"\x02" * 32, 1, (("10.0.0.1", 1),) * 5)
    with pytest.raises(WireFormatError):
        g.encode_record(rec)
    big = (
        g.TAG_RECORD,
        g.encode_record(g.NodeRecord(b"\x01" * 32, b"\x02" * 32, 1, (), certificate=b"\x00" * 314)),
    )
    with pytest.raises(WireFormatError):
        g.encode_body(g.Packet(g.PING, b"\x00" * 32, 1, entries=(big,) * 3))
    with pytest.raises(WireFormatError):
        g.encode_entries([big] * (g.MAX_ENTRIES + 1))
    with pytest.raises(WireFormatError):
        g.decode_packet(b"\x01MG\x01\x00" + b"\x00" * 2000)
    with pytest.raises(WireFormatError):  # a WireGuard-looking header is not gossip
        g.decode_packet(b"\x01\x00\x00\x00" + b"\x00" * 200)


def test_type_numbers_match_spec_notes() -> None:
    assert (g.PING, g.PING_REQ, g.ACK) == (0x01, 0x02, 0x03)
    new = {g.JOIN, g.JOIN_ACK, g.LEAVE, g.SYNC_REQ, g.SYNC_DATA, g.SYNC_SUMMARY, g.SYNC_WANT}
    assert all(t > 0x04 for t in new)
    assert not new & {0x31, 0x32, 0x33, 0x34, 0x41, 0x42}
