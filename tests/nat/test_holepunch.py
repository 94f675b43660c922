"""Hole punching: the codec, and the sans-IO core in a simulated network with NAT routers.

The simulated NATs follow Linux behaviour measured in a NAT lab (docs/nat-testbed.md): a cone NAT
maps an inner endpoint to one public port for every destination (endpoint-independent mapping),
a symmetric NAT gives every destination a new port; both filter inbound packets by address and
port (only a remote endpoint the inner host has sent to may answer). The simulated network and
its NATs are in helpers.py.
"""

from __future__ import annotations

import pytest

from meshguard.crypto.keys import Ed25519PrivateKey
from meshguard.errors import WireFormatError
from meshguard.nat.holepunch import NAT_PUBLIC, PunchFailed, PunchSucceeded
from meshguard.sansio import SendDatagram
from meshguard.wire import holepunch as wire

from .helpers import NAT_CONE, NAT_SYMMETRIC, Nat, Net, cone_mesh, deliver, signed_request

# codec ----------------------------------------------------------------------------------


def _msg(**kw: object) -> wire.PunchMessage:
    base: dict[str, object] = dict(type=wire.HOLEPUNCH_REQUEST, stage=wire.STAGE_RENDEZVOUS,
                                   origin=b"\x01" * 32, target=b"\x02" * 32, session=7,
                                   wall_ms=1_700_000_000_000,
                                   endpoints=(("203.0.113.21", 51821), ("fd00::1", 9)),
                                   signature=b"\x05" * 64)
    base.update(kw)
    return wire.PunchMessage(**base)  # type: ignore[arg-type]


def test_codec_roundtrip_and_header() -> None:
    m = _msg()
    raw = wire.encode(m)
    assert raw[0] == 0x33 and raw[1:3] == b"MG"
    assert len(raw) == wire.HEAD_LEN + 2 * 19 + 64
    assert wire.decode(raw) == m
    r = _msg(type=wire.HOLEPUNCH_RESPONSE, stage=wire.STAGE_PROBE, endpoints=())
    assert wire.decode(wire.encode(r)) == r
    assert wire.encode(r)[0] == 0x34


@pytest.mark.parametrize("mutate", [
    lambda b: b[:-1],                                   # short
    lambda b: b + b"\x00",                              # long (count mismatch)
    lambda b: b"\x35" + b[1:],                          # wrong type
    lambda b: b[:1] + b"XX" + b[3:],                    # bad magic
    lambda b: b[:5] + b"\x07" + b[6:],                  # bad stage
    lambda b: b[:94] + b"\x01" + b[95:],                # endpoint count says 1, has 2
    lambda b: b"",
])
def test_codec_rejects_garbage(mutate: object) -> None:
    raw = wire.encode(_msg())
    with pytest.raises(WireFormatError):
        wire.decode(mutate(raw))  # type: ignore[operator]


def test_codec_local_misuse_raises() -> None:
    with pytest.raises(WireFormatError):
        wire.encode(_msg(signature=b"short"))
    with pytest.raises(WireFormatError):
        wire.encode(_msg(endpoints=(("1.2.3.4", 1),) * 5))
    with pytest.raises(WireFormatError):
        wire.encode(_msg(origin=b"x"))


# simulated network ----------------------------------------------------------------------


def test_cone_to_cone_punch_through_rendezvous() -> None:
    net, r, a, b = cone_mesh()
    # without help, A's packets to B's mapping are filtered by B's NAT
    net.send(a, b"x", b.advertised[0])
    net.run(0.1)
    assert b.nat is not None and b.nat.dropped == 1
    net.run(8.0)
    ok_a = [x for x in a.results if isinstance(x, PunchSucceeded)]
    ok_b = [x for x in b.results if isinstance(x, PunchSucceeded)]
    assert [x.identity_key for x in ok_a] == [b.ident]
    assert [x.identity_key for x in ok_b] == [a.ident]
    assert ok_a[0].endpoint == ("203.0.113.22", 51821)
    assert ok_b[0].endpoint == ("203.0.113.21", 51821)
    # both stalled at once and both asked; the lower key's session went on
    lo, hi = (a, b) if a.ident < b.ident else (b, a)
    ok_lo = [x for x in lo.results if isinstance(x, PunchSucceeded)]
    ok_hi = [x for x in hi.results if isinstance(x, PunchSucceeded)]
    assert ok_lo[0].rtt is not None and 0 < ok_lo[0].rtt < 1.0
    assert ok_hi[0].rtt is None
    assert lo.hp.counters["punch_crossed"] == 1
    assert hi.hp.counters["punch_responses_received"] == 0
    # the peer's probes (one hop) may prove the path before its response (two hops) arrives
    assert (lo.hp.counters["punch_responses_received"]
            + lo.hp.counters["punch_unexpected_response"]) == 1
    # two requests and one response went through R
    assert r.hp.counters["punch_forwarded"] == 3
    # nothing failed, nothing is left running, nothing bad was seen
    for h in (r, a, b):
        assert h.hp.sessions == 0
        assert not [x for x in h.results if isinstance(x, PunchFailed)]
        assert h.hp.counters["punch_bad_signature"] == 0


def test_one_side_stalls_first() -> None:
    net, r, a, b = cone_mesh()
    b.connected.add(a.ident)  # B believes its path works (e.g. an old handshake)
    net.run(8.0)
    ok_a = [x for x in a.results if isinstance(x, PunchSucceeded)]
    assert len(ok_a) == 1 and ok_a[0].endpoint == ("203.0.113.22", 51821)
    assert a.hp.counters["punch_requests_sent"] == 1
    assert b.hp.counters["punch_requests_sent"] == 0
    assert b.hp.counters["punch_requests_received"] == 1
    assert r.hp.counters["punch_forwarded"] == 2
    assert [x.endpoint for x in b.results if isinstance(x, PunchSucceeded)] == [
        ("203.0.113.21", 51821)]


def test_no_request_before_stall_or_when_connected() -> None:
    net, _r, a, b = cone_mesh(stall=4.0)
    net.run(3.9)
    assert a.hp.counters["punch_requests_sent"] == 0
    assert b.hp.counters["punch_requests_sent"] == 0
    net2, _r2, a2, b2 = cone_mesh()
    a2.connected.add(b2.ident)
    b2.connected.add(a2.ident)
    net2.run(10.0)
    assert net2.delivered == 0


def test_public_members_never_ask() -> None:
    net, _r, a, b = cone_mesh()
    a.hp.set_self(a.advertised, behind_nat=False)
    b.hp.set_self(b.advertised, behind_nat=False)
    net.run(10.0)
    assert a.hp.counters["punch_requests_sent"] == 0
    assert net.delivered == 0


def test_symmetric_nat_fails_and_backs_off() -> None:
    net, _r, a, b = cone_mesh(b_symmetric=True, retry_after=4.0)
    net.run(30.0)
    fails = [x for x in a.results if isinstance(x, PunchFailed)]
    assert fails and all(x.identity_key == b.ident for x in fails)
    assert not [x for x in a.results if isinstance(x, PunchSucceeded)]
    # both ask at ~4 s (crossed), then after 4 s and 8 s of backoff (plus 5 s timeouts
    # each): three tries each in 30 s, not one per tick
    assert a.hp.counters["punch_requests_sent"] == 3
    assert b.hp.counters["punch_requests_sent"] == 3
    # B's symmetric NAT maps the rendezvous' traffic to a port B never advertised, so
    # nothing forwarded reaches B (its NAT drops it) and nobody gets as far as probing
    assert b.nat is not None and b.nat.dropped >= 3
    assert a.hp.counters["punch_probes_sent"] + b.hp.counters["punch_probes_sent"] == 0


def test_no_rendezvous_no_request() -> None:
    net, _r, a, _b = cone_mesh()
    del net.hosts["r"]
    net.run(6.0)
    assert a.hp.counters["punch_no_rendezvous"] >= 1
    assert a.hp.counters["punch_requests_sent"] == 0


def test_at_most_max_sessions_at_once() -> None:
    net = Net()
    r = net.add("r", ("203.0.113.10", 51821), None, 1)
    net.stun(r, NAT_PUBLIC)
    a = net.add("a", ("192.168.10.2", 51821), Nat("203.0.113.21"), 2)
    net.stun(a, NAT_CONE)
    for i in range(6):  # six members behind symmetric NATs that nobody can reach
        h = net.add(f"s{i}", ("192.168.30.2", 51821), Nat(f"203.0.113.{40 + i}", True), 10 + i)
        net.stun(h, NAT_SYMMETRIC)
        h.hp.set_self(h.advertised, behind_nat=False)  # they never ask themselves
    a.connected.add(r.ident)
    net.run(4.3)
    assert a.hp.counters["punch_requests_sent"] == 4
    assert a.hp.sessions == 4


# authentication -------------------------------------------------------------------------


def test_rendezvous_forwards_only_signed_member_requests() -> None:
    net, r, a, b = cone_mesh()
    wall = 1e9
    good = signed_request(a.key, b.ident, wall)
    out = deliver(r, net, good, ("203.0.113.21", 51821))
    assert out == [SendDatagram(good, b.advertised[0])]
    forged = signed_request(a.key, b.ident, wall, session=2, signer=Ed25519PrivateKey(b"\x09" * 32))
    assert deliver(r, net, forged, ("6.6.6.6", 1)) == []
    assert r.hp.counters["punch_bad_signature"] == 1
    stranger = Ed25519PrivateKey(b"\x77" * 32)
    assert deliver(r, net, signed_request(stranger, b.ident, wall), ("6.6.6.6", 1)) == []
    assert r.hp.counters["punch_unknown_origin"] == 1
    # probes are never forwarded (a rendezvous is no relay)
    probe = signed_request(a.key, b.ident, wall, stage=wire.STAGE_PROBE)
    assert deliver(r, net, probe, ("203.0.113.21", 51821)) == []
    assert r.hp.counters["punch_not_forwarded"] == 1
    assert deliver(r, net, b"\x33MG\x01garbage", ("6.6.6.6", 1)) == []
    assert r.hp.counters["punch_garbage"] == 1


def test_rendezvous_rate_limits_each_origin() -> None:
    net, r, a, b = cone_mesh(forward_rate=5.0)
    sent = sum(len(deliver(r, net, signed_request(a.key, b.ident, 1e9, session=i),
                           ("203.0.113.21", 51821))) for i in range(20))
    assert sent == 5
    assert r.hp.counters["punch_rate_limited"] == 15


def test_target_rejects_replay_stale_and_forged() -> None:
    net, r, a, b = cone_mesh()
    wall = 1e9
    req = signed_request(a.key, b.ident, wall, session=42)
    out = deliver(b, net, req, r.local)
    assert any(isinstance(x, SendDatagram) and x.endpoint == r.local for x in out)  # response via R
    assert any(isinstance(x, SendDatagram) and x.endpoint == ("203.0.113.21", 51821) for x in out)
    assert deliver(b, net, req, r.local) == []
    assert b.hp.counters["punch_replayed"] == 1
    assert deliver(b, net, signed_request(a.key, b.ident, wall - 600, session=43), r.local) == []
    assert b.hp.counters["punch_stale"] == 1
    forged = signed_request(a.key, b.ident, wall, session=44, signer=r.key)
    assert deliver(b, net, forged, r.local) == []
    assert b.hp.counters["punch_bad_signature"] == 1
    # an answer to a session nobody started is ignored
    resp = wire.PunchMessage(wire.HOLEPUNCH_RESPONSE, wire.STAGE_RENDEZVOUS, b.ident,
                             a.ident, 99, int(wall * 1000), ())
    body = wire.signed_part(resp)
    raw = body + b.key.sign(wire.SIGN_CONTEXT + body)
    assert deliver(a, net, raw, r.local) == []
    assert a.hp.counters["punch_unexpected_response"] == 1


def test_probe_answer_is_not_larger_than_probe() -> None:
    net, _r, a, b = cone_mesh()
    b.connected.add(a.ident)  # A asks; B's probes reach A
    while not any(x[2][0] == wire.HOLEPUNCH_REQUEST and x[2][5] == wire.STAGE_PROBE
                  and x[4] == a.advertised[0] for x in net.queue):
        net.run(net.now + 0.01, step=0.01)
    probe = next(x[2] for x in net.queue if x[2][0] == wire.HOLEPUNCH_REQUEST
                 and x[2][5] == wire.STAGE_PROBE and x[4] == a.advertised[0])
    sends = [x for x in deliver(a, net, probe, ("203.0.113.22", 51821))
             if isinstance(x, SendDatagram)]
    out = [x for x in sends if x.data[0] == wire.HOLEPUNCH_RESPONSE]
    assert len(out) == 1  # one answer (and A's own probe of that endpoint, once)
    assert len(sends) <= 2
    assert len(out[0].data) <= len(probe)
    assert out[0].endpoint == ("203.0.113.22", 51821)
    # a probe without a session draws nothing
    stray = signed_request(a.key, b.ident, 1e9 + net.now, session=5, stage=wire.STAGE_PROBE)
    assert deliver(b, net, stray, ("203.0.113.21", 51821)) == []
