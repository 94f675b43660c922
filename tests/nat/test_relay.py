"""Relay core (nat/relay.py) and RelayData codec: registration, RTT-based relay choice,
forwarding, authentication and limits."""

from __future__ import annotations

import pytest

from meshguard.errors import WireFormatError
from meshguard.nat.relay import (
    RELAY_HOST,
    RelayDelivered,
    RelayObserved,
    RelayPeer,
)
from meshguard.wire import relay as wire

from .helpers import A_EP, B_EP, R_EP, Member, on, split, view

WALL = 1_700_000_000.0
R2_EP = ("203.0.113.11", 51821)


@pytest.fixture
def mesh() -> tuple[Member, Member, Member, Member]:
    return Member(1, R_EP, 1), Member(2, A_EP, 3), Member(3, B_EP, 3), Member(4, R2_EP, 1)


def hop(c: Member, to: Member, origin: bytes, target: bytes, payload: bytes) -> bytes:
    """A hop MACed by `c` for `to` (no end-to-end tag)."""
    c.core._wall = WALL
    out = c.core._hop(to.peer(), origin, target, c.core._next_counter(), payload)
    assert out is not None
    return out


def register(c: Member, relays: list[Member], now: float, rtts: dict[bytes, float],
             seen_as: dict[bytes, tuple[str, int]], everyone: list[Member]) -> None:
    sends = on(c, view(c, *everyone)).tick(now, WALL + now)
    assert {s.endpoint for s in sends} == {r.ep for r in relays}
    for s in sends:
        r = next(x for x in relays if x.ep == s.endpoint)
        src = seen_as[r.ident]
        echo, delivered = split(on(r, view(r, *everyone)).receive(
            now + 0.001, WALL + now, s.data, src))
        assert delivered is None and len(echo) == 1 and echo[0].endpoint == src
        known = c.core.observed.get(r.ident)
        acts = on(c, view(c, *everyone)).receive(now + rtts[r.ident], WALL + now,
                                                 echo[0].data, r.ep)
        out, delivered = split(acts)
        assert delivered is None
        observed = [a for a in acts if isinstance(a, RelayObserved)]
        assert observed == ([] if known == src else [RelayObserved(r.ident, src)])
        for confirm in out:  # the relay saw a new address: confirm it from there
            assert confirm.endpoint == r.ep
            assert split(on(r, view(r, *everyone)).receive(
                now + rtts[r.ident], WALL + now, confirm.data, src)) == ([], None)
        assert r.core._seen_at[c.ident] == src


def test_registration_measures_rtt_and_learns_observed_address(
        mesh: tuple[Member, Member, Member, Member]) -> None:
    r, a, b, r2 = mesh
    everyone = [r, a, b, r2]
    mapped_r, mapped_r2 = ("203.0.113.21", 5555), ("203.0.113.21", 6666)
    register(a, [r, r2], 0.0, {r.ident: 0.030, r2.ident: 0.010},
             {r.ident: mapped_r, r2.ident: mapped_r2}, everyone)
    assert a.core.rtt[r.ident] == pytest.approx(0.030)
    assert a.core.rtt[r2.ident] == pytest.approx(0.010)
    assert a.core.observed == {r.ident: mapped_r, r2.ident: mapped_r2}
    assert on(a, view(a, *everyone)).best_relay() == r2.ident
    # r2 gets slow: the smoothed RTT moves toward the new samples and the choice follows
    for i in range(1, 30):
        register(a, [r, r2], 5.0 * i, {r.ident: 0.030, r2.ident: 0.100},
                 {r.ident: mapped_r, r2.ident: mapped_r2}, everyone)
    assert on(a, view(a, *everyone)).best_relay() == r.ident
    assert a.core.counters["relay_rtt_samples"] == 60
    # not before the interval
    assert on(a, view(a, *everyone)).tick(5.0 * 29 + 1.0, WALL) == []
    # public members do not register
    assert on(r, view(r, *everyone)).tick(0.0, WALL) == []
    # the address was confirmed once per relay; later echoes carry no cookie
    assert r.core.counters["relay_address_confirmed"] == 1
    assert r.core.counters["relay_registrations"] == 30


def test_relayed_datagrams_both_ways(mesh: tuple[Member, Member, Member, Member]) -> None:
    r, a, b, _r2 = mesh
    everyone = [r, a, b]
    b_at_r = ("203.0.113.22", 7777)  # B's symmetric mapping toward R
    register(a, [r], 0.0, {r.ident: 0.02}, {r.ident: ("203.0.113.21", 5555)}, everyone)
    register(b, [r], 0.0, {r.ident: 0.02}, {r.ident: b_at_r}, everyone)
    assert on(a, view(a, *everyone)).start(b.ident)
    ph = a.core.placeholder(b.ident)
    assert ph[0] == RELAY_HOST and a.core.is_placeholder(ph)
    hop1 = on(a, view(a, *everyone)).wrap(ph, b"\x01\x00\x00\x00wireguard")
    assert hop1 is not None and hop1.endpoint == R_EP
    fwd, delivered = split(on(r, view(r, *everyone)).receive(
        1.0, WALL + 1.0, hop1.data, ("203.0.113.21", 5555)))
    assert delivered is None and len(fwd) == 1
    assert fwd[0].endpoint == b_at_r  # where B registered from, not its advertised endpoint
    acts = on(b, view(b, *everyone)).receive(1.0, WALL + 1.0, fwd[0].data, R_EP)
    assert [a.new_path for a in acts if isinstance(a, RelayDelivered)] == [True]
    out, got = split(acts)
    assert out == [] and got is not None
    payload, src = got
    assert payload == b"\x01\x00\x00\x00wireguard" and src == b.core.placeholder(a.ident)
    assert b.core.via == {a.ident: r.ident}  # B answers through the same relay
    back = on(b, view(b, *everyone)).wrap(src, b"reply")
    assert back is not None and back.endpoint == R_EP
    fwd2, _ = split(on(r, view(r, *everyone)).receive(1.1, WALL + 1.1, back.data, b_at_r))
    assert fwd2[0].endpoint == ("203.0.113.21", 5555)
    acts = on(a, view(a, *everyone)).receive(1.1, WALL + 1.1, fwd2[0].data, R_EP)
    assert [x.new_path for x in acts if isinstance(x, RelayDelivered)] == [False]  # a asked
    _, got2 = split(acts)
    assert got2 == (b"reply", ph)
    assert r.core.counters["relay_forwarded"] == 2
    a.core.stop(b.ident)
    assert on(a, view(a, *everyone)).wrap(ph, b"x") is None
    assert a.core.counters["relay_no_route"] == 1


def test_no_relay_without_an_answering_public_member(
        mesh: tuple[Member, Member, Member, Member]) -> None:
    r, a, b, _ = mesh
    assert not on(a, view(a, r, b)).start(b.ident)  # no RTT measured yet
    assert a.core.counters["relay_unavailable"] == 1


def test_relay_drops_forged_unknown_and_chained(
        mesh: tuple[Member, Member, Member, Member]) -> None:
    r, a, b, r2 = mesh
    everyone = [r, a, b, r2]
    good = wire.authenticated_part(wire.RelayMessage(a.ident, a.ident, b.ident, b"data",
                                                     int(WALL) << 24))
    assert split(on(r, view(r, *everyone)).receive(
        0.0, WALL, good + b"\x00" * 16, A_EP)) == ([], None)
    assert r.core.counters["relay_bad_mac"] == 1
    stranger = Member(9, ("6.6.6.6", 1), 3)
    h = hop(stranger, r, stranger.ident, b.ident, b"data")
    assert split(on(r, view(r, *everyone)).receive(0.0, WALL + 0.0, h, stranger.ep)) == ([], None)
    assert r.core.counters["relay_unknown_hop"] == 1
    # a hop whose origin is not its sender (relay chaining / reflection) is not forwarded
    chained = hop(a, r, r2.ident, b.ident, b"data")
    assert split(on(r, view(r, *everyone)).receive(0.0, WALL + 0.0, chained, A_EP)) == ([], None)
    # a target that is not a member is not forwarded
    nobody = hop(a, r, a.ident, b"\x55" * 32, b"data")
    assert split(on(r, view(r, *everyone)).receive(0.0, WALL + 0.0, nobody, A_EP)) == ([], None)
    assert r.core.counters["relay_not_forwarded"] == 2
    assert split(on(r, view(r, *everyone)).receive(0.0, WALL, b"\x31MG\x01\x00short", A_EP)) == (
        [], None)
    assert r.core.counters["relay_garbage"] == 1
    # a MAC made for another hop receiver fails here
    for_r2 = hop(a, r2, a.ident, b.ident, b"data")
    assert split(on(r, view(r, *everyone)).receive(0.0, WALL + 0.0, for_r2, A_EP)) == ([], None)
    assert r.core.counters["relay_bad_mac"] == 2


def test_relay_rate_limits_each_origin(mesh: tuple[Member, Member, Member, Member]) -> None:
    r, a, b, _ = mesh
    r.core.rate = 10.0
    everyone = [r, a, b]
    hops = [hop(a, r, a.ident, b.ident, b"x") for _ in range(26)]
    sent = sum(len(split(on(r, view(r, *everyone)).receive(0.0, WALL + 0.0, h, A_EP))[0])
               for h in hops[:25])
    assert sent == 10 and r.core.counters["relay_rate_limited"] == 15
    assert len(split(on(r, view(r, *everyone)).receive(1.0, WALL + 1.0, hops[25], A_EP))[0]) == 1


def test_codec() -> None:
    m = wire.RelayMessage(b"\x01" * 32, b"\x02" * 32, b"\x03" * 32, b"payload", 2**63 + 5,
                          b"\x05" * 16, b"\x04" * 16)
    raw = wire.authenticated_part(m) + m.mac
    assert raw[0] == 0x31 and raw[1:3] == b"MG" and len(raw) == wire.OVERHEAD + 7
    assert wire.decode(raw) == m
    assert wire.decode(raw[:-16 - 7 - 16] + raw[-32:]).payload == b""
    with pytest.raises(WireFormatError):
        wire.decode(raw[: wire.OVERHEAD - 1])
    with pytest.raises(WireFormatError):
        wire.decode(b"\x32" + raw[1:])
    with pytest.raises(WireFormatError):
        wire.authenticated_part(wire.RelayMessage(b"x", b"\x02" * 32, b"\x03" * 32, b""))
    with pytest.raises(WireFormatError):
        wire.authenticated_part(wire.RelayMessage(b"\x01" * 32, b"\x02" * 32, b"\x03" * 32,
                                                  b"", 2**64))



def test_dead_relay_is_forgotten(mesh: tuple[Member, Member, Member, Member]) -> None:
    r, a, b, _ = mesh
    everyone = [r, a, b]
    register(a, [r], 0.0, {r.ident: 0.02}, {r.ident: A_EP}, everyone)
    assert on(a, view(a, *everyone)).start(b.ident)
    assert not on(a, view(a, *everyone)).prune()
    dead = view(a, *everyone)
    dead[r.ident] = RelayPeer(r.ident, r.wg.public_key.raw, R_EP, 1, False)
    assert on(a, dead).prune() and a.core.via == {}
