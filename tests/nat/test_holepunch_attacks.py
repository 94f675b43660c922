"""Attacks on the hole-punch core (nat/holepunch.py): signature floods from strangers, and
probes or answers re-sent from another address. Each test performs the attack."""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any

import pytest

import meshguard.nat.holepunch as hp_mod
from meshguard.crypto.keys import Ed25519PrivateKey
from meshguard.nat.holepunch import PunchSucceeded
from meshguard.sansio import Endpoint, SendDatagram
from meshguard.wire import holepunch as wire

from .helpers import Host, Net, cone_mesh, deliver, signed_request

EVIL = ("198.51.100.66", 4444)


def _count_verifies(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    real: Callable[..., bool] = hp_mod.ed25519_verify

    def counting(*args: Any) -> bool:
        calls[0] += 1
        return real(*args)

    monkeypatch.setattr(hp_mod, "ed25519_verify", counting)
    return calls


def _forged(origin: bytes, target: bytes, wall: float, session: int,
            stage: int = wire.STAGE_RENDEZVOUS, t: int = wire.HOLEPUNCH_REQUEST) -> bytes:
    m = wire.PunchMessage(t, stage, origin, target, session, int(wall * 1000), ())
    return wire.signed_part(m) + b"\x07" * 64


def test_signature_flood_from_one_source_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    net, r, a, b = cone_mesh()
    calls = _count_verifies(monkeypatch)
    wall = 1e9
    # requests "from A" to B with garbage signatures, from one address
    for i in range(5000):
        net.now = i * 1e-5
        assert deliver(b, net, _forged(a.ident, b.ident, wall, i), EVIL) == []
    assert calls[0] <= 60
    assert b.hp.counters["punch_source_limited"] >= 4940
    # ... and through the rendezvous
    calls[0] = 0
    for i in range(5000):
        assert deliver(r, net, _forged(a.ident, b.ident, wall, i), EVIL) == []
    assert calls[0] <= 60
    assert r.hp.counters["punch_forwarded"] == 0
    # the forgeries did not spend A's forwarding allowance at R: A's real request goes on
    good = signed_request(a.key, b.ident, wall, session=77)
    assert deliver(r, net, good, ("203.0.113.21", 51821)) == [SendDatagram(good, b.advertised[0])]


def test_signature_flood_from_many_sources_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    net, _r, a, b = cone_mesh()
    calls = _count_verifies(monkeypatch)
    for i in range(5000):
        net.now = i * 1e-5
        src = (f"10.{i >> 8 & 255}.{i & 255}.1", 1000 + i)
        assert deliver(b, net, _forged(a.ident, b.ident, 1e9, i), src) == []
    assert calls[0] <= 1100
    assert b.hp.counters["punch_global_limited"] >= 3900


def test_stage_one_junk_costs_no_signature_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """Probes and answers must name a session this node runs with their origin, which a
    stranger does not know: anything else is dropped before any signature check."""
    net, _r, a, b = cone_mesh()
    calls = _count_verifies(monkeypatch)
    for i in range(3000):
        t = wire.HOLEPUNCH_REQUEST if i % 2 else wire.HOLEPUNCH_RESPONSE
        assert deliver(b, net, _forged(a.ident, b.ident, 1e9, i, wire.STAGE_PROBE, t),
                       EVIL) == []
    assert calls[0] == 0
    assert b.hp.counters["punch_no_session"] == 3000


def _intercept(net: Net, pred: Callable[[bytes, Endpoint, Endpoint], bool], until: float
               ) -> tuple[bytes, Endpoint, Endpoint]:
    """Run the simulation until a datagram matching `pred` is in flight; take it out."""
    while net.now < until:
        for item in net.queue:
            _, _, data, src, dst = item
            if pred(data, src, dst):
                net.queue.remove(item)
                heapq.heapify(net.queue)
                return data, src, dst
        net.run(net.now + 0.01, step=0.01)
    raise AssertionError("no such datagram")


def _is(t: int, stage: int, origin: Host) -> Callable[[bytes, Endpoint, Endpoint], bool]:
    def pred(data: bytes, src: Endpoint, dst: Endpoint) -> bool:
        try:
            m = wire.decode(data)
        except Exception:
            return False
        return m.type == t and m.stage == stage and m.origin == origin.ident
    return pred


def _succeeded(h: Host) -> list[PunchSucceeded]:
    return [x for x in h.results if isinstance(x, PunchSucceeded)]


def test_probe_resent_from_another_address_does_not_move_the_endpoint() -> None:
    net, _r, a, b = cone_mesh()
    b.connected.add(a.ident)  # only A asks: B answers and probes
    probe, _src, _dst = _intercept(net, _is(wire.HOLEPUNCH_REQUEST, wire.STAGE_PROBE, b), 8.0)
    wall = 1e9 + net.now
    out = a.hp.receive(net.now, wall, probe, EVIL)
    assert not [x for x in out if isinstance(x, PunchSucceeded)]
    # the same probe again (from anywhere) draws nothing more
    again = a.hp.receive(net.now, wall, probe, EVIL)
    assert again == []
    assert a.hp.counters["punch_replayed"] >= 1
    # the punch itself still works, and only at B's real address
    net.run(net.now + 6.0)
    ok = _succeeded(a)
    assert ok and all(x.endpoint == ("203.0.113.22", 51821) for x in ok)
    assert all(x.endpoint != EVIL for x in _succeeded(a) + _succeeded(b))


def test_answer_resent_from_another_address_does_not_move_the_endpoint() -> None:
    net, _r, a, b = cone_mesh()
    b.connected.add(a.ident)
    answer, _src, _dst = _intercept(net, _is(wire.HOLEPUNCH_RESPONSE, wire.STAGE_PROBE, b),
                                    8.0)
    wall = 1e9 + net.now
    out = a.hp.receive(net.now, wall, answer, EVIL)
    assert not [x for x in out if isinstance(x, PunchSucceeded)]
    assert a.hp.counters["punch_wrong_path"] == 1
    net.run(net.now + 6.0)
    assert all(x.endpoint != EVIL for x in _succeeded(a) + _succeeded(b))
    assert _succeeded(a)


def test_forged_probe_signature_is_caught() -> None:
    net, _r, a, b = cone_mesh()
    b.connected.add(a.ident)
    probe, src, _dst = _intercept(net, _is(wire.HOLEPUNCH_REQUEST, wire.STAGE_PROBE, b), 8.0)
    m = wire.decode(probe)
    bad = wire.encode(wire.PunchMessage(m.type, m.stage, m.origin, m.target, m.session,
                                        m.wall_ms, m.endpoints,
                                        Ed25519PrivateKey(b"\x09" * 32).sign(b"x"), m.nonce))
    assert a.hp.receive(net.now, 1e9 + net.now, bad, src) == []
    assert a.hp.counters["punch_bad_signature"] == 1


def test_member_requests_with_a_victims_address_draw_few_probes() -> None:
    """A rogue member sends fresh signed requests straight to B with a victim's source
    address (and endpoints): B starts a few sessions per second, not one per request."""
    net, _r, a, b = cone_mesh()
    victim = ("192.0.2.77", 53)
    sends = 0
    for i in range(100):
        net.now = 1.0 + i * 0.001
        m = wire.PunchMessage(wire.HOLEPUNCH_REQUEST, wire.STAGE_RENDEZVOUS, a.ident,
                              b.ident, 1000 + i, int((1e9 + net.now) * 1000), (victim,))
        body = wire.signed_part(m)
        req = body + a.key.sign(wire.SIGN_CONTEXT + body)
        sends += sum(isinstance(x, SendDatagram) for x in deliver(b, net, req, victim))
    assert sends <= 3 * 2  # three requests' worth: a response and a probe each
    assert b.hp.counters["punch_request_limited"] >= 30
    assert (b.hp.counters["punch_request_limited"]
            + b.hp.counters["punch_source_limited"]) >= 97
