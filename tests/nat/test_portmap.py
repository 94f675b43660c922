"""The port mapping client (nat/portmap.py) against replies laid out byte by byte as RFC 6887
(PCP) and RFC 6886 (NAT-PMP) say, with a manual clock: the order PCP -> NAT-PMP -> UPnP,
renewal at half the lifetime, refusals, expiry, removal, and what the node advertises."""

from __future__ import annotations

import struct

import pytest

from meshguard.nat.portmap import (
    MappingGranted,
    MappingLost,
    Method,
    MethodRefused,
    NoMapping,
    PortMapper,
    PortMapping,
    UpnpCall,
    UpnpResult,
    advertisement,
    claims_public,
    describe,
)
from meshguard.sansio import SendDatagram
from meshguard.testing.clock import ManualClock
from meshguard.testing.rng import SeededRng
from meshguard.wire import natpmp, pcp

from .helpers import EXT, GW, ME, PORT, SRV, WALL, mapped, pcp_reply, pmp_replies


def mapper(methods: tuple[Method, ...] = (Method.PCP, Method.NATPMP, Method.UPNP)
           ) -> PortMapper:
    return PortMapper(SeededRng(7), gateway=GW, client_ip=ME, internal_port=PORT,
                      methods=methods)


def sends(acts: list[object]) -> list[SendDatagram]:
    return [a for a in acts if isinstance(a, SendDatagram)]


def test_pcp_request_layout_and_grant() -> None:
    pm, c = mapper(), ManualClock(0.0)
    out = sends(pm.start(c.now))
    assert len(out) == 1 and out[0].endpoint == SRV
    req = out[0].data
    version, op, _, life, client = struct.unpack_from("!BBHI16s", req)
    assert (version, op, life, client) == (2, 1, 7200, mapped(ME))
    assert struct.unpack_from("!B3xHH16s", req, 36) == (17, PORT, PORT, mapped("0.0.0.0"))
    acts = pm.receive(0.01, WALL, pcp_reply(req), SRV)
    m = PortMapping(Method.PCP, (EXT, PORT), PORT, 7200, 0.01 + 7200)
    assert acts == [MappingGranted(m, True)] and pm.mapping == m
    assert pm.next_deadline() == pytest.approx(0.01 + 3600)


def test_pcp_renews_at_half_lifetime_with_the_same_nonce() -> None:
    pm, c = mapper(), ManualClock(0.0)
    first = sends(pm.start(0.0))[0].data
    pm.receive(0.0, WALL, pcp_reply(first, lifetime=600), SRV)
    assert pm.tick(299.0, WALL) == []  # not due yet
    again = sends(pm.tick(300.0, WALL))
    assert len(again) == 1 and again[0].data[24:36] == first[24:36]
    acts = pm.receive(300.1, WALL, pcp_reply(again[0].data, lifetime=600, epoch=1300), SRV)
    assert [type(a) for a in acts] == [MappingGranted]
    assert isinstance(acts[0], MappingGranted) and not acts[0].changed
    assert pm.mapping is not None and pm.mapping.expires == pytest.approx(900.1)
    assert pm.counters["portmap_renewed"] == 1 and pm.counters["portmap_epoch_reset"] == 0
    del c


def test_a_silent_router_falls_through_to_nat_pmp_then_upnp() -> None:
    pm = mapper()
    assert len(sends(pm.start(0.0))) == 1
    # PCP: sent 3 times, 0.25 s then 0.5 s apart, given up 1 s after the last
    assert len(sends(pm.tick(0.25, WALL))) == 1
    assert len(sends(pm.tick(0.75, WALL))) == 1
    acts = pm.tick(1.75, WALL)
    assert acts[0] == MethodRefused(Method.PCP, "no answer")
    pmp = sends(acts)
    assert [s.data for s in pmp] == [b"\x00\x00", natpmp.encode_map_request(PORT, 7200, PORT)]
    pm.tick(2.0, WALL)
    pm.tick(2.5, WALL)
    acts = pm.tick(3.5, WALL)
    assert acts[0] == MethodRefused(Method.NATPMP, "no answer")
    assert acts[1] == UpnpCall("map", PORT, PORT, 7200)
    acts = pm.upnp_done(4.0, UpnpResult(False, error="no UPnP gateway answered"))
    assert acts[0] == MethodRefused(Method.UPNP, "no UPnP gateway answered")
    assert isinstance(acts[1], NoMapping) and len(acts[1].reasons) == 3
    assert not acts[1].refused  # nobody said no: nobody answered
    assert pm.mapping is None and pm.next_deadline() == pytest.approx(4.0 + pm.retry_after)
    # and everything is tried again later, then less and less often
    t = 4.0 + pm.retry_after
    assert len(sends(pm.tick(t, WALL))) == 1
    acts = pm.unreachable(t)
    acts = pm.unreachable(t)
    assert acts[-1] == UpnpCall("map", PORT, PORT, 7200)
    acts = pm.upnp_done(t, UpnpResult(False, error="Action not authorized", refused=True))
    assert acts[-1] == NoMapping(("pcp: port 5351 unreachable", "nat-pmp: port 5351 unreachable",
                                  "upnp: Action not authorized"), refused=True)
    assert pm.next_deadline() == pytest.approx(t + 2 * pm.retry_after)


def test_icmp_unreachable_moves_on_at_once() -> None:
    pm = mapper()
    pm.start(0.0)
    acts = pm.unreachable(0.01)
    assert acts[0] == MethodRefused(Method.PCP, "port 5351 unreachable")
    assert len(sends(acts)) == 2  # NAT-PMP's two requests


def test_nat_pmp_only_router_answers_pcp_with_version_0() -> None:
    pm = mapper()
    pm.start(0.0)
    acts = pm.receive(0.01, WALL, struct.pack("!BBHI", 0, 0x81, 1, 50), SRV)
    assert acts[0] == MethodRefused(Method.PCP, "the router speaks NAT-PMP only")
    replies = pmp_replies(sends(acts), epoch=50)
    assert pm.receive(0.02, WALL, replies[1], SRV) == []  # the port alone is not enough
    acts = pm.receive(0.03, WALL, replies[0], SRV)
    assert acts == [MappingGranted(PortMapping(Method.NATPMP, (EXT, PORT), PORT, 7200,
                                               0.03 + 7200), True)]


def test_pcp_refusal_is_a_warning_and_the_next_method_is_asked() -> None:
    pm = mapper()
    req = sends(pm.start(0.0))[0].data
    acts = pm.receive(0.01, WALL, pcp_reply(req, result=pcp.NOT_AUTHORIZED, ext="0.0.0.0",
                                            port=0, lifetime=0), SRV)
    assert acts[0] == MethodRefused(Method.PCP, "not authorized", refused=True)
    assert pm.counters["portmap_refused"] == 1 and pm.mapping is None


def test_another_external_port_is_taken_as_granted() -> None:
    pm = mapper((Method.NATPMP,))
    acts = pm.start(0.0)
    for r in pmp_replies(sends(acts), port=40001):
        acts = pm.receive(0.01, WALL, r, SRV)
    assert pm.mapping is not None and pm.mapping.external == (EXT, 40001)


def test_upnp_grant_and_permanent_lease() -> None:
    pm = mapper((Method.UPNP,))
    assert pm.start(0.0) == [UpnpCall("map", PORT, PORT, 7200)]
    acts = pm.upnp_done(2.0, UpnpResult(True, (EXT, PORT), 0))
    assert isinstance(acts[0], MappingGranted) and acts[0].mapping.lifetime == 7200
    assert pm.tick(2.0 + 3600, WALL) == [UpnpCall("map", PORT, PORT, 7200)]


def test_failed_renewals_keep_the_mapping_until_it_expires_then_start_over() -> None:
    pm = mapper((Method.PCP, Method.NATPMP))
    req = sends(pm.start(0.0))[0].data
    pm.receive(0.0, WALL, pcp_reply(req, lifetime=120), SRV)
    now = 60.0
    events: list[object] = []
    while now < 200 and not any(isinstance(e, MappingLost) for e in events):
        events += pm.tick(now, WALL)
        d = pm.next_deadline()
        assert d is not None and d > now
        now = d
    assert pm.counters["portmap_renew_failed"] >= 1
    lost = [e for e in events if isinstance(e, MappingLost)]
    assert lost == [MappingLost(Method.PCP, "no answer")] and pm.mapping is None
    assert now <= 121.0 + 2  # lost when it expired, not much later
    # and asked again from the first method
    assert sends(events)[-1].data[:2] == b"\x02\x01"


def test_removal_on_stop() -> None:
    pm = mapper()
    req = sends(pm.start(0.0))[0].data
    pm.receive(0.0, WALL, pcp_reply(req), SRV)
    out = sends(pm.stop(10.0))
    assert len(out) == 1
    life = struct.unpack_from("!I", out[0].data, 4)[0]
    assert life == 0 and out[0].data[24:36] == req[24:36] and not pm.removed
    pm.receive(10.01, WALL, pcp_reply(out[0].data, lifetime=0, epoch=1010), SRV)
    assert pm.removed and pm.mapping is None and pm.next_deadline() is None


def test_removal_gives_up_after_its_retries() -> None:
    pm = mapper((Method.NATPMP,))
    for r in pmp_replies(sends(pm.start(0.0))):
        pm.receive(0.0, WALL, r, SRV)
    out = sends(pm.stop(5.0))
    assert [s.data for s in out] == [natpmp.encode_map_request(PORT, 0, 0)]
    t = 5.0
    while not pm.removed:
        d = pm.next_deadline()
        assert d is not None
        t = d
        pm.tick(t, WALL)
    assert t - 5.0 < 2.0 and pm.counters["portmap_remove_timeouts"] == 1


def test_stop_without_a_mapping_is_done_at_once() -> None:
    pm = mapper()
    pm.start(0.0)
    assert pm.stop(0.1) == [] and pm.removed and pm.next_deadline() is None


def test_upnp_removal() -> None:
    pm = mapper((Method.UPNP,))
    pm.start(0.0)
    pm.upnp_done(1.0, UpnpResult(True, (EXT, 40000), 7200))
    assert pm.stop(2.0) == [UpnpCall("unmap", PORT, 40000, 0)]
    pm.upnp_done(2.5, UpnpResult(True))
    assert pm.removed


def test_what_is_advertised() -> None:
    m = PortMapping(Method.PCP, (EXT, PORT), PORT, 7200, 7200.0)
    stun = (EXT, 40000)
    # the mapping first, as PUBLIC when STUN saw the same address
    assert advertisement(m, stun, 3) == ([(EXT, PORT), stun], 1)
    # another address in front of the router (double NAT): the mapping is no public endpoint
    assert advertisement(m, ("203.0.113.5", 1), 3) == ([(EXT, PORT), ("203.0.113.5", 1)], 3)
    assert advertisement(None, stun, 3) == ([stun], 3)
    assert advertisement(m, None, 0) == ([(EXT, PORT)], 1)
    inside = PortMapping(Method.PCP, ("100.64.3.4", PORT), PORT, 7200, 7200.0)
    assert not claims_public(inside, None) and not claims_public(None, EXT)


def test_log_lines_warn_for_refusals_only() -> None:
    assert describe(MethodRefused(Method.PCP, "not authorized", refused=True)) == (
        "the router refused pcp: not authorized", True)
    assert describe(MethodRefused(Method.PCP, "no answer")) == ("pcp: no answer", False)
    assert describe(NoMapping(("pcp: no answer",))) == (
        "no router answered (pcp: no answer); traversal goes on without", False)
    assert describe(NoMapping(("pcp: not authorized",), refused=True)) == (
        "the router offers no mapping (pcp: not authorized); traversal goes on without", True)
    m = PortMapping(Method.UPNP, (EXT, PORT), PORT, 7200, 7200.0)
    assert describe(MappingGranted(m, True)) == (
        f"upnp granted {EXT}:{PORT} -> {PORT} for 7200 s", False)
    assert describe(MappingLost(Method.UPNP, "no answer"))[1]
