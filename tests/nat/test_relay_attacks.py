"""Attacks on the relay core (nat/relay.py): replayed registrations and hops, a rogue relay
forging the origin, and floods from strangers. Each test performs the attack."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import meshguard.nat.relay as relay_mod
from meshguard.nat.relay import RelayPeer
from meshguard.sansio import SendDatagram
from meshguard.wire import relay as wire

from .helpers import A_EP, B_EP, R_EP, Member, on, split, view

WALL = 1_700_000_000.0
A_AT_R = ("203.0.113.21", 5555)  # A's NAT mapping toward R
B_AT_R = ("203.0.113.22", 7777)
EVIL = ("198.51.100.66", 4444)


def recv(m: Member, now: float, data: bytes, src: tuple[str, int], everyone: list[Member]
         ) -> tuple[list[SendDatagram], tuple[bytes, tuple[str, int]] | None]:
    return split(on(m, view(m, *everyone)).receive(now, WALL + now, data, src))


def register(c: Member, r: Member, now: float, seen_as: tuple[str, int],
             everyone: list[Member]) -> list[bytes]:
    """A full registration of `c` with `r` from `seen_as`; the datagrams c sent to r."""
    sent: list[bytes] = []
    c.core._next_register = float("-inf")
    to_r = [s for s in on(c, view(c, *everyone)).tick(now, WALL + now) if s.endpoint == r.ep]
    queue = [x.data for x in to_r]
    while queue:
        data = queue.pop(0)
        sent.append(data)
        answers, _ = recv(r, now, data, seen_as, everyone)
        for a in answers:
            assert a.endpoint == seen_as
            back, _ = recv(c, now + 0.01, a.data, r.ep, everyone)
            queue += [b.data for b in back if b.endpoint == r.ep]
    return sent


@pytest.fixture
def mesh() -> tuple[Member, Member, Member, Member]:
    # r: public relay; a, b: behind NATs; m: a public member that turns rogue
    return (Member(1, R_EP, 1), Member(2, A_EP, 3), Member(3, B_EP, 3),
            Member(5, ("203.0.113.12", 51821), 1))


def hop_from(c: Member, to: Member, target: Member, payload: bytes,
             everyone: list[Member]) -> bytes:
    """The hop `c` sends to relay `to` for `target` (c relays through `to`)."""
    c.core.via[target.ident] = to.ident
    c.core._wall = c.core._wall or WALL
    s = on(c, view(c, *everyone)).wrap(c.core.placeholder(target.ident), payload)
    assert s is not None and s.endpoint == to.ep
    return s.data


def test_replayed_registration_from_another_address_does_not_move_traffic(
        mesh: tuple[Member, Member, Member, Member]) -> None:
    r, a, b, _m = mesh
    everyone = [r, a, b]
    captured = register(a, r, 0.0, A_AT_R, everyone)
    register(b, r, 0.0, B_AT_R, everyone)
    # much later (within the clock-skew allowance) the attacker replays every datagram of
    # A's registration, from its own address, and again after A registered once more
    for t in (30.0, 60.0):
        if t == 60.0:
            register(a, r, 55.0, A_AT_R, everyone)
        for data in captured:
            out, _ = recv(r, t, data, EVIL, everyone)
            assert all(s.endpoint == EVIL for s in out)  # at most an echo to the sender
        hop = hop_from(b, r, a, b"\x04\x00\x00\x00data", everyone)
        fwd, _ = recv(r, t + 0.1, hop, B_AT_R, everyone)
        assert [s.endpoint for s in fwd] == [A_AT_R]  # A's traffic still goes to A
    assert r.core.counters["relay_replayed"] >= len(captured)


def test_replayed_hop_is_forwarded_once(mesh: tuple[Member, Member, Member, Member]) -> None:
    r, a, b, _m = mesh
    everyone = [r, a, b]
    register(a, r, 0.0, A_AT_R, everyone)
    register(b, r, 0.0, B_AT_R, everyone)
    hop = hop_from(a, r, b, b"\x04\x00\x00\x00data", everyone)
    forwarded = 0
    for i in range(5000):
        fwd, _ = recv(r, 1.0 + i * 1e-4, hop, A_AT_R, everyone)
        forwarded += len(fwd)
    assert forwarded == 1
    assert r.core.counters["relay_forwarded"] == 1
    assert r.core.counters["relay_replayed"] == 4999
    # ... also from other addresses (a reflector toward a victim)
    for i in range(100):
        assert recv(r, 2.0, hop, ("192.0.2.1", 1000 + i), everyone)[0] == []


def test_final_receiver_rejects_a_replayed_relayed_datagram(
        mesh: tuple[Member, Member, Member, Member]) -> None:
    r, a, b, _m = mesh
    everyone = [r, a, b]
    register(a, r, 0.0, A_AT_R, everyone)
    register(b, r, 0.0, B_AT_R, everyone)
    fwd, _ = recv(r, 1.0, hop_from(a, r, b, b"\x04\x00\x00\x00data", everyone), A_AT_R,
                  everyone)
    assert len(fwd) == 1
    delivered = [recv(b, 1.0 + i, fwd[0].data, R_EP, everyone)[1] for i in range(50)]
    assert sum(d is not None for d in delivered) == 1
    assert b.core.counters["relay_replayed"] == 49


def test_rogue_relay_cannot_claim_another_members_origin(
        mesh: tuple[Member, Member, Member, Member]) -> None:
    """M (a current member) tells B "this comes from A": B must not take it, nor start
    sending its traffic for A through M."""
    r, a, b, m = mesh
    everyone = [r, a, b, m]
    register(b, m, 0.0, B_EP, everyone)
    forged = m.core._hop(b.peer(), a.ident, b.ident, m.core._next_counter(),
                         b"\x01\x00\x00\x00handshake")
    assert forged is not None
    out, delivered = recv(b, 1.0, forged, m.ep, everyone)
    assert delivered is None and out == []
    assert b.core.via.get(a.ident) != m.ident
    assert b.core.counters["relay_bad_origin"] == 1


def test_rogue_relay_cannot_pass_on_a_hop_meant_for_another_relay(
        mesh: tuple[Member, Member, Member, Member]) -> None:
    """M captured A's hop to R (for B) and forwards it to B as if A had picked M."""
    r, a, b, m = mesh
    everyone = [r, a, b, m]
    register(a, r, 0.0, A_AT_R, everyone)
    register(b, r, 0.0, B_AT_R, everyone)
    hop = hop_from(a, r, b, b"\x04\x00\x00\x00data", everyone)
    msg = wire.decode(hop)
    # M re-MACs everything A wrote (including A's end-to-end tag) under its key with B
    key = m.core._key(b.peer())
    assert key is not None
    fields = {k: getattr(msg, k) for k in msg.__dataclass_fields__ if k != "mac"}
    fields["hop"] = m.ident
    body = wire.authenticated_part(wire.RelayMessage(**fields))
    _, delivered = recv(b, 1.0, body + relay_mod.mac(key, body), m.ep, everyone)
    assert delivered is None and b.core.via.get(a.ident) != m.ident
    assert b.core.counters["relay_bad_origin"] == 1
    # the genuine path still works
    fwd, _ = recv(r, 1.0, hop, A_AT_R, everyone)
    _, got = recv(b, 1.0, fwd[0].data, R_EP, everyone)
    assert got is not None and b.core.via[a.ident] == r.ident


def _count_macs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    real: Callable[..., bytes] = relay_mod.mac

    def counting(*args: Any) -> bytes:
        calls[0] += 1
        return real(*args)

    monkeypatch.setattr(relay_mod, "mac", counting)
    return calls


def test_stranger_flood_costs_no_crypto_and_is_bounded(
        mesh: tuple[Member, Member, Member, Member], monkeypatch: pytest.MonkeyPatch) -> None:
    r, a, b, _m = mesh
    everyone = [r, a, b]
    register(a, r, 0.0, A_AT_R, everyone)
    calls = _count_macs(monkeypatch)
    # a hop claiming a non-member sender: no MAC, no DH at all
    junk = wire.authenticated_part(wire.RelayMessage(b"\x66" * 32, b"\x66" * 32, b.ident,
                                                     b"x" * 100, int(WALL) << 24))
    for i in range(5000):
        assert recv(r, 1.0 + i * 1e-5, junk + b"\x00" * 16, EVIL, everyone) == ([], None)
    assert calls[0] == 0 and r.core.counters["relay_unknown_hop"] == 5000
    # claiming a member (A) with a random MAC, from one address: a few MAC checks, then the
    # source's budget is spent and the rest cost nothing
    forged = bytearray(hop_from(a, r, b, b"x" * 100, everyone))
    forged[-1] ^= 1
    calls[0] = 0
    for i in range(5000):
        assert recv(r, 1.0 + i * 1e-5, bytes(forged), EVIL, everyone) == ([], None)
    assert calls[0] <= 100
    assert r.core.counters["relay_source_limited"] >= 4900
    # ... from many addresses: the global budget caps the MAC checks
    calls[0] = 0
    for i in range(5000):
        src = (f"10.{i >> 8 & 255}.{i & 255}.1", 1000 + i)
        assert recv(r, 1.0 + i * 1e-5, bytes(forged), src, everyone) == ([], None)
    assert calls[0] <= 1100
    assert r.core.counters["relay_global_limited"] >= 3900
    # A itself, from its registered address, is not limited by the flood
    fwd, _ = recv(r, 1.1, hop_from(a, r, b, b"ok", everyone), A_AT_R, everyone)
    assert len(fwd) == 1


def test_forged_echo_does_not_set_observed_address(
        mesh: tuple[Member, Member, Member, Member]) -> None:
    r, a, b, _m = mesh
    everyone = [r, a, b]
    register(a, r, 0.0, A_AT_R, everyone)
    assert a.core.observed[r.ident] == A_AT_R
    # replay R's echo of the first registration after A moved: A keeps the newer answer
    a.core._next_register = float("-inf")
    regs = [s for s in on(a, view(a, *everyone)).tick(10.0, WALL + 10) if s.endpoint == R_EP]
    echo, _ = recv(r, 10.0, regs[0].data, ("203.0.113.21", 6000), everyone)
    old = echo[0].data
    for s in echo:
        recv(a, 10.01, s.data, R_EP, everyone)
    assert a.core.observed[r.ident] == ("203.0.113.21", 6000)
    recv(a, 11.0, old, R_EP, everyone)
    assert a.core.observed[r.ident] == ("203.0.113.21", 6000)
    assert a.core.counters["relay_replayed"] >= 1


def test_member_view_without_key_is_dropped(mesh: tuple[Member, Member, Member, Member]
                                            ) -> None:
    r, a, b, _m = mesh
    everyone = [r, a, b]
    members = view(r, *everyone)
    members[a.ident] = RelayPeer(a.ident, None, A_EP, 3, True)
    hop = hop_from(a, r, b, b"x", everyone)
    assert split(on(r, members).receive(1.0, WALL + 1, hop, A_AT_R)) == ([], None)
    assert r.core.counters["relay_bad_mac"] == 1


def test_registration_replayed_to_a_restarted_relay_moves_nothing(
        mesh: tuple[Member, Member, Member, Member]) -> None:
    """The relay restarted (no replay windows): the captured registration and confirmation
    are fresh to it, but the confirmation's cookie names the address A confirmed from."""
    r, a, b, _m = mesh
    everyone = [r, a, b]
    captured = register(a, r, 0.0, A_AT_R, everyone)
    assert len(captured) == 2  # the registration and its confirmation
    r.core = relay_mod.Relay(r.ident, r.wg, cookie_secret=b"\x01" * 32)
    for data in captured:
        recv(r, 20.0, data, EVIL, everyone)
    assert a.ident not in r.core._seen_at
    assert r.core.counters["relay_bad_cookie"] == 1


def test_member_spoofing_a_victim_gets_few_echoes(
        mesh: tuple[Member, Member, Member, Member]) -> None:
    """A rogue member sends fresh registrations with a victim's source address: the relay
    answers only a few per second (no reflector)."""
    r, a, b, _m = mesh
    everyone = [r, a, b]
    victim = ("192.0.2.77", 53)
    echoes = 0
    for i in range(100):
        a.core._next_register = float("-inf")
        reg = [s for s in on(a, view(a, *everyone)).tick(1.0, WALL + 1) if s.endpoint == R_EP]
        out, _ = recv(r, 1.0 + i * 0.001, reg[0].data, victim, everyone)
        echoes += len(out)
    assert echoes <= 5
    assert r.core.counters["relay_registration_limited"] >= 95
