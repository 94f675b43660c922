"""The routes block of a node record (docs/wire-format.md#routes-block): what a member offers to
carry travels signed, bounded and canonical; a forged, oversized or malformed block is dropped."""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest

from meshguard.crypto.hashes import mac
from meshguard.crypto.keys import Ed25519PrivateKey
from meshguard.errors import WireFormatError
from meshguard.swim.records import CryptoCache, sign_record
from meshguard.testing.simnet import SwimCluster
from meshguard.wire import gossip as g

KEY = Ed25519PrivateKey(b"\x11" * 32)
NET = ipaddress.ip_network


def _record(routes: tuple[g.IPNetwork, ...] = ()) -> g.NodeRecord:
    return g.NodeRecord(identity=KEY.public_key.raw, wg_public=b"\x22" * 32, incarnation=7,
                        endpoints=(("192.0.2.1", 51821),), routes=routes)


def _raw_with_block(block: bytes) -> bytes:
    """A record whose flags claim routes and whose block is `block`, validly signed."""
    body = bytearray(g.record_signed_part(_record()))
    body[0] |= g.FLAG_ROUTES
    body += block
    return bytes(body) + KEY.sign(b"meshguard-swim-record-v1\x00" + bytes(body))


def _entry(fam: int, plen: int, addr: bytes) -> bytes:
    return bytes([fam, plen]) + addr.ljust(16, b"\x00")


def test_routes_round_trip_signed() -> None:
    routes = g.canonical_routes([NET("fd00:20::/64"), NET("10.20.0.0/24"), NET("0.0.0.0/0"),
                                 NET("::/0"), NET("10.20.0.0/24")])
    assert [str(r) for r in routes] == ["0.0.0.0/0", "10.20.0.0/24", "::/0", "fd00:20::/64"]
    rec, raw = sign_record(KEY, _record(routes))
    assert raw[0] == g.FLAG_ROUTES
    back = g.decode_record(raw)
    assert back == rec and back.routes == routes
    assert CryptoCache().record_valid(raw)


def test_a_record_without_routes_is_encoded_as_before() -> None:
    _, raw = sign_record(KEY, _record())
    assert raw[0] == 0
    assert len(raw) == g.REC_HEAD_LEN + g.EP_LEN + g.SIG_LEN
    assert g.decode_record(raw).routes == ()


def test_altered_routes_fail_the_signature() -> None:
    _, raw = sign_record(KEY, _record((NET("10.20.0.0/24"),)))
    # the attacker widens the offer to a /16 and keeps the old signature
    at = g.REC_HEAD_LEN + g.EP_LEN + 1 + 1
    forged = raw[:at] + bytes([16]) + raw[at + 1:]
    assert g.decode_record(forged).routes == (NET("10.20.0.0/16"),)
    assert not CryptoCache().record_valid(forged)


def test_more_than_sixteen_routes_are_refused() -> None:
    nets = tuple(NET(f"10.{i}.0.0/16") for i in range(g.MAX_ROUTES + 1))
    with pytest.raises(WireFormatError):
        g.record_signed_part(_record(nets))
    block = bytes([g.MAX_ROUTES + 1]) + b"".join(
        _entry(4, 16, bytes([10, i, 0, 0])) for i in range(g.MAX_ROUTES + 1))
    with pytest.raises(WireFormatError):
        g.decode_record(_raw_with_block(block))
    ok = tuple(NET(f"10.{i}.0.0/16") for i in range(g.MAX_ROUTES))
    assert g.decode_record(sign_record(KEY, _record(ok))[1]).routes == ok


@pytest.mark.parametrize("block", [
    b"\x00",  # flag set, zero prefixes
    b"\x01",  # count says one, no prefix follows
    b"\x01" + _entry(4, 24, bytes([10, 20, 0, 1])),  # host bits set
    b"\x01" + _entry(4, 33, bytes([10, 20, 0, 0])),  # IPv4 length above 32
    b"\x01" + _entry(6, 129, b"\xfd"),  # IPv6 length above 128
    b"\x01" + _entry(5, 8, b"\x0a"),  # unknown family
    b"\x01" + bytes([4, 8, 10]) + b"\x00" * 4 + b"\x01" + b"\x00" * 10,  # IPv4 padding
    b"\x02" + _entry(4, 16, bytes([10, 2, 0, 0])) + _entry(4, 16, bytes([10, 1, 0, 0])),
    b"\x02" + _entry(4, 16, bytes([10, 1, 0, 0])) * 2,  # the same prefix twice
    b"\x02" + _entry(6, 0, b"") + _entry(4, 0, b""),  # IPv6 before IPv4
], ids=["zero", "truncated", "host-bits", "v4-len", "v6-len", "family", "padding", "order",
        "duplicate", "v6-first"])
def test_malformed_routes_blocks_are_refused(block: bytes) -> None:
    raw = _raw_with_block(block)
    with pytest.raises(WireFormatError):
        g.decode_record(raw)
    assert CryptoCache().parse_record(raw) is None


def test_an_unknown_flag_is_still_refused() -> None:
    raw = bytearray(sign_record(KEY, _record())[1])
    raw[0] |= 0x04
    with pytest.raises(WireFormatError):
        g.decode_record(bytes(raw))


def test_a_forged_routes_offer_changes_nobody_s_view() -> None:
    """An attacker re-signs nothing: it takes member 3's record, adds an exit-node offer and
    a newer incarnation, and keeps (or corrupts) the signature. No node takes the offer."""
    c = SwimCluster(5, 11)
    c.start(join_window=0.5)
    c.run_until_true(lambda: c.converged(range(5)), limit=60)
    victim = c.ids[3]
    rec = next(r for r in c.nodes[0].members() if r.identity == victim)
    offer = dataclasses.replace(rec, incarnation=rec.incarnation + 9,
                                routes=(NET("0.0.0.0/0"), NET("::/0")))
    forged = g.record_signed_part(offer) + rec.signature
    # an oversized block is refused before any signature check
    block = bytes([40]) + _entry(4, 0, b"") * 40
    huge = bytearray(g.record_signed_part(rec))
    huge[0] |= g.FLAG_ROUTES
    oversized = bytes(huge) + block + rec.signature
    c.gossip_from(1, ((g.TAG_RECORD, forged),))
    for r in (0, 2, 4):  # an authentic packet of member 1 carrying the oversized record
        key = c.cache.pair_key(c.wg_keys[1], c.ids[1], c.wg_keys[r].public_key.raw, c.ids[r])
        assert key is not None
        ping = g.Packet(g.PING, c.ids[1], 98, entries=((g.TAG_RECORD, oversized),))
        body = g.encode_body(ping, check=False)
        c.net.inject(body + mac(key, body), c.eps[1], c.eps[r])
    c.net.run_for(5)
    for i in (0, 1, 2, 4):
        seen = next(r for r in c.nodes[i].members() if r.identity == victim)
        assert seen.routes == () and seen.incarnation == rec.incarnation
    assert c.total("bad_signature") >= 1
    assert c.total("malformed") >= 3
