"""Hostile replies to the port mapping client (nat/portmap.py) and its codecs: each one is
counted and dropped and changes no mapping (docs/security.md, "Port mapping")."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshguard.errors import WireFormatError
from meshguard.nat.portmap import MappingGranted, Method, PortMapper, usable_external
from meshguard.sansio import SendDatagram
from meshguard.testing.rng import SeededRng
from meshguard.wire import natpmp, pcp

from .helpers import EXT, GW, ME, PORT, SRV, WALL, pcp_reply, pmp_replies


def mapped_pcp() -> tuple[PortMapper, bytes]:
    pm = PortMapper(SeededRng(3), gateway=GW, client_ip=ME, internal_port=PORT)
    req = next(a for a in pm.start(0.0) if isinstance(a, SendDatagram)).data
    return pm, req


def test_a_reply_from_another_address_or_port_changes_nothing() -> None:
    pm, req = mapped_pcp()
    for src in (("192.168.1.66", 5351), (GW, 5350), ("::ffff:192.168.1.66", 5351)):
        assert pm.receive(0.01, WALL, pcp_reply(req), src) == []
    assert pm.counters["portmap_wrong_source"] == 3 and pm.mapping is None
    # the real one, from the gateway (also as a v4-mapped address), is taken
    assert pm.receive(0.02, WALL, pcp_reply(req), (f"::ffff:{GW}", 5351))
    assert pm.mapping is not None


def test_a_pcp_reply_with_another_nonce_port_or_opcode_changes_nothing() -> None:
    pm, req = mapped_pcp()
    assert pm.receive(0.01, WALL, pcp_reply(req, nonce=b"\x00" * 12), SRV) == []
    other_port = bytearray(pcp_reply(req))
    struct.pack_into("!H", other_port, 40, PORT + 1)
    assert pm.receive(0.01, WALL, bytes(other_port), SRV) == []
    assert pm.counters["portmap_mismatch"] == 2
    announce = bytearray(pcp_reply(req))
    announce[1] = 0x80  # an ANNOUNCE response
    assert pm.receive(0.01, WALL, bytes(announce), SRV) == []
    assert pm.counters["portmap_garbage"] == 1 and pm.mapping is None


def test_replies_while_nothing_is_asked_change_nothing() -> None:
    pm, req = mapped_pcp()
    good = pcp_reply(req)
    assert pm.receive(0.01, WALL, good, SRV)
    # the same reply again (replayed) once the mapping is in force, before any renewal
    assert pm.receive(5.0, WALL, pcp_reply(req, ext="203.0.113.66"), SRV) == []
    assert pm.counters["portmap_unsolicited"] == 1
    assert pm.mapping is not None and pm.mapping.external == (EXT, PORT)


def test_nat_pmp_replies_before_the_method_is_asked_change_nothing() -> None:
    pm, _ = mapped_pcp()  # asking PCP: a NAT-PMP answer is not what was asked
    fake = pmp_replies([SendDatagram(b"\x00\x00", SRV)])[0]
    assert pm.receive(0.01, WALL, fake, SRV) == []
    assert pm.counters["portmap_garbage"] == 1 and pm.mapping is None


@pytest.mark.parametrize("ext", ["0.0.0.0", "127.0.0.1", "224.0.0.1", "169.254.1.1",
                                 "255.255.255.255", "0.1.2.3"])
def test_an_unusable_external_address_is_refused(ext: str) -> None:
    pm, req = mapped_pcp()
    acts = pm.receive(0.01, WALL, pcp_reply(req, ext=ext), SRV)
    assert not any(isinstance(a, MappingGranted) for a in acts)
    assert pm.mapping is None and pm.counters["portmap_bad_grant"] == 1
    assert not usable_external(ext)


def test_a_zero_lifetime_or_port_grant_is_refused() -> None:
    for kw in ({"lifetime": 0}, {"port": 0}):
        pm, req = mapped_pcp()
        pm.receive(0.01, WALL, pcp_reply(req, **kw), SRV)
        assert pm.mapping is None and pm.counters["portmap_bad_grant"] == 1


def test_a_longer_lifetime_than_asked_is_cut_to_ours() -> None:
    pm, req = mapped_pcp()
    pm.receive(0.01, WALL, pcp_reply(req, lifetime=2**32 - 1), SRV)
    assert pm.mapping is not None and pm.mapping.lifetime == 7200


def test_an_epoch_reset_is_noticed_and_the_new_grant_wins() -> None:
    pm, req = mapped_pcp()
    pm.receive(0.0, WALL, pcp_reply(req, epoch=5000), SRV)
    renew = next(a for a in pm.tick(3600.0, WALL) if isinstance(a, SendDatagram)).data
    # the router restarted: its epoch is 10 s, and it gave another port
    acts = pm.receive(3600.1, WALL, pcp_reply(renew, epoch=10, port=40000), SRV)
    assert pm.counters["portmap_epoch_reset"] == 1
    assert isinstance(acts[0], MappingGranted) and acts[0].changed
    assert pm.mapping is not None and pm.mapping.external == (EXT, 40000)


def test_short_long_and_misaligned_pcp_messages_are_garbage() -> None:
    pm, req = mapped_pcp()
    good = pcp_reply(req)
    for bad in (b"", b"\x02", good[:59], good + b"\x00", good + b"\x00" * 1044,
                b"\x07" + good[1:]):
        assert pm.receive(0.01, WALL, bad, SRV) == []
    assert pm.counters["portmap_garbage"] == 6 and pm.mapping is None


def test_nat_pmp_decoder_is_strict() -> None:
    ok = struct.pack("!BBHIHHI", 0, 129, 0, 1, PORT, PORT, 60)
    assert natpmp.decode_response(ok) == natpmp.MapResponse(0, 1, PORT, PORT, 60)
    for bad in (ok[:15], ok + b"\x00", b"\x01" + ok[1:], b"\x00\x01" + ok[2:],
                struct.pack("!BBHI", 0, 129, 0, 1)):  # an 8-byte "success"
        with pytest.raises(WireFormatError):
            natpmp.decode_response(bad)
    refusal = natpmp.decode_response(struct.pack("!BBHI", 0, 129, 2, 1))
    assert refusal == natpmp.MapResponse(2, 1, 0, 0, 0)


def test_nat_pmp_refusal_moves_on() -> None:
    pm = PortMapper(SeededRng(3), gateway=GW, client_ip=ME, internal_port=PORT,
                    methods=(Method.NATPMP, Method.UPNP))
    pm.start(0.0)
    acts = pm.receive(0.01, WALL, struct.pack("!BBHI", 0, 129, 2, 1), SRV)
    assert [type(a).__name__ for a in acts] == ["MethodRefused", "UpnpCall"]


@given(st.binary(max_size=1200))
def test_any_bytes_from_the_gateway_never_raise(data: bytes) -> None:
    for methods in ((Method.PCP,), (Method.NATPMP,)):
        pm = PortMapper(SeededRng(3), gateway=GW, client_ip=ME, internal_port=PORT,
                        methods=methods)
        pm.start(0.0)
        pm.receive(0.01, WALL, data, SRV)
        # a random datagram cannot carry our 96-bit nonce: PCP never maps from one
        if methods == (Method.PCP,):
            assert pm.mapping is None
    with pytest.raises(WireFormatError):
        pcp.decode_map_response(b"\x02" * 3)
