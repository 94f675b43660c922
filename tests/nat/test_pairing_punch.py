"""The coordinated punch of `meshguard connect` (nat/pairing_punch.py), in a simulated network
with the NAT routers of helpers.py (port-restricted cone or symmetric), and the attacks on it:
forged, replayed and re-sourced probes change nothing."""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import pytest

from meshguard.crypto.hashes import mac
from meshguard.crypto.keys import Ed25519PrivateKey, X25519PrivateKey
from meshguard.nat.pairing_punch import (
    PairingPunch,
    PairingPunched,
    PairingPunchFailed,
    key_tag,
    probe_key,
    punch_windows,
)
from meshguard.sansio import Endpoint, SendDatagram
from meshguard.testing.rng import SeededRng
from meshguard.wire import pairing_probe as wire

from .helpers import LATENCY, Nat

A_ID, B_ID = (Ed25519PrivateKey(bytes([s]) * 32) for s in (1, 2))
A_WG, B_WG = (X25519PrivateKey(bytes([s]) * 32) for s in (11, 12))
A_NONCE, B_NONCE = b"offer-nc", b"reply-nc"
A_LOCAL, B_LOCAL = ("192.168.10.2", 51821), ("192.168.20.2", 51821)
A_PUB, B_PUB = ("203.0.113.21", 51821), ("203.0.113.22", 51821)
ATTACKER = ("198.51.100.66", 4444)


def _core(me: str, start: float = 1.0, window: float = 10.0, attempts: int = 1,
          candidates: list[Endpoint] | None = None) -> PairingPunch:
    wins = punch_windows(0.0, 1000.0, 1000.0 + start, window, attempts, idle=5.0)
    if me == "a":
        return PairingPunch(SeededRng(1), probe_key(A_WG, B_WG.public_key.raw, A_NONCE, B_NONCE),
                            A_NONCE, A_ID.public_key.raw, B_NONCE, B_ID.public_key.raw,
                            candidates if candidates is not None else [B_LOCAL, B_PUB], wins)
    return PairingPunch(SeededRng(2), probe_key(B_WG, A_WG.public_key.raw, A_NONCE, B_NONCE),
                        B_NONCE, B_ID.public_key.raw, A_NONCE, A_ID.public_key.raw,
                        candidates if candidates is not None else [A_LOCAL, A_PUB], wins)


@dataclass
class Side:
    core: PairingPunch
    local: Endpoint
    nat: Nat
    events: list[object] = field(default_factory=list)
    received: list[tuple[bytes, Endpoint]] = field(default_factory=list)
    done_at: float = -1.0


class World:
    """A and B behind their own NATs on one simulated internet (20 ms one way)."""

    def __init__(self, a: PairingPunch, b: PairingPunch, b_symmetric: bool = False,
                 a_symmetric: bool = False) -> None:
        self.sides = {"a": Side(a, A_LOCAL, Nat(A_PUB[0], symmetric=a_symmetric)),
                      "b": Side(b, B_LOCAL, Nat(B_PUB[0], symmetric=b_symmetric))}
        self.queue: list[tuple[float, int, bytes, Endpoint, Endpoint]] = []
        self.seq = 0
        self.now = 0.0
        self.sent: list[tuple[str, bytes, Endpoint]] = []

    def send(self, name: str, data: bytes, dst: Endpoint) -> None:
        s = self.sides[name]
        src = s.nat.outbound(s.local, dst)
        self.sent.append((name, data, dst))
        self.seq += 1
        heapq.heappush(self.queue, (self.now + LATENCY, self.seq, data, src, dst))

    def apply(self, name: str, actions: list[object]) -> None:
        for act in actions:
            if isinstance(act, SendDatagram):
                self.send(name, act.data, act.endpoint)
            else:
                self.sides[name].events.append(act)
                self.sides[name].done_at = self.now

    def run(self, until: float, step: float = 0.01) -> None:
        while self.now < until:
            while self.queue and self.queue[0][0] <= self.now:
                _, _, data, src, dst = heapq.heappop(self.queue)
                for name, s in self.sides.items():
                    if s.nat.public_ip == dst[0] and s.nat.inbound(src, dst) is not None:
                        s.received.append((data, src))
                        self.apply(name, s.core.receive(self.now, 1000 + self.now, data, src))
            for name, s in self.sides.items():
                self.apply(name, s.core.tick(self.now, 1000 + self.now))
            self.now = round(self.now + step, 6)


def _punched(s: Side) -> PairingPunched:
    done = [e for e in s.events if isinstance(e, PairingPunched)]
    assert len(done) == 1, s.events
    return done[0]


def test_two_cone_nats_punch_at_the_agreed_time() -> None:
    w = World(_core("a"), _core("b"))
    w.run(5.0)
    a, b = w.sides["a"], w.sides["b"]
    pa, pb = _punched(a), _punched(b)
    # each reached the other's mapping (the LAN addresses are not theirs to reach)
    assert pa.endpoint == B_PUB and pb.endpoint == A_PUB
    assert pa.attempt == pb.attempt == 1
    # proof within a few probe rounds of the punch time
    assert 1.0 <= pa.proven_at < 1.5 and 1.0 <= pb.proven_at < 1.5
    # both said they were through, so neither lingered the 3 s a silent peer gets
    assert a.core.done and b.core.done
    assert a.done_at - pa.proven_at < 0.2 and b.done_at - pb.proven_at < 0.2, (a.done_at,
                                                                              b.done_at)
    assert a.core.counters["bad_mac"] == b.core.counters["bad_mac"] == 0


def test_nothing_is_sent_before_the_punch_time() -> None:
    w = World(_core("a", start=2.0), _core("b", start=2.0))
    w.run(1.99)
    assert w.sent == []
    w.run(4.0)
    assert _punched(w.sides["a"]).proven_at >= 2.0


def test_a_late_side_still_meets_the_early_one_in_the_window() -> None:
    # B's clock (or its user) is 3 s late: A probes alone, then B joins and both get through
    w = World(_core("a", start=1.0), _core("b", start=4.0))
    w.run(8.0)
    assert _punched(w.sides["a"]).endpoint == B_PUB and _punched(w.sides["b"]).endpoint == A_PUB


def test_a_silent_peer_fails_after_every_attempt() -> None:
    a = _core("a", window=2.0, attempts=2)
    w = World(a, _core("b", start=100.0))
    w.run(12.0)
    fails = [e for e in w.sides["a"].events if isinstance(e, PairingPunchFailed)]
    assert fails == [PairingPunchFailed(2)] and a.done and a.proven is None
    assert a.counters["attempts_failed"] == 2
    # probes went out only inside the two windows (1..3 s and 8..10 s), 10 rounds each
    assert a.counters["probes_sent"] == 2 * 2 * 20
    assert a.next_deadline() is None and a.tick(20.0, 1020.0) == []


@pytest.mark.parametrize("a_symmetric", [False, True], ids=["cone-symmetric",
                                                          "symmetric-symmetric"])
def test_a_symmetric_nat_fails(a_symmetric: bool) -> None:
    # B's NAT maps each destination to a new port, and both NATs filter by address and port:
    # A's probes go to a port B never sent from, B's come from one A never sent to
    w = World(_core("a", window=2.0), _core("b", window=2.0), a_symmetric=a_symmetric,
              b_symmetric=True)
    w.run(5.0)
    for side in w.sides.values():
        assert [e for e in side.events if isinstance(e, PairingPunchFailed)] == [
            PairingPunchFailed(1)]
        assert side.core.proven is None


def test_a_probe_draws_one_answer_of_the_same_size_and_an_answer_draws_none() -> None:
    b = _core("b", start=0.0)
    a = _core("a", start=0.0)
    probes = [x for x in a.tick(0.0, 1000.0) if isinstance(x, SendDatagram)]
    assert len(probes) == 2 and all(len(p.data) == wire.PROBE_LEN for p in probes)
    answers = b.receive(0.0, 1000.0, probes[1].data, A_PUB)
    assert len(answers) == 1 and isinstance(answers[0], SendDatagram)
    assert answers[0].endpoint == A_PUB and len(answers[0].data) == len(probes[1].data)
    assert a.receive(0.01, 1000.0, answers[0].data, B_PUB) == []  # no answer to an answer
    assert a.proven == B_PUB


def test_a_forged_probe_changes_nothing() -> None:
    # the attacker saw both tokens (nonces, identity keys) but holds neither WireGuard key
    a = _core("a", start=0.0)
    a.tick(0.0, 1000.0)
    wrong_key = probe_key(X25519PrivateKey(bytes([99]) * 32), A_WG.public_key.raw, A_NONCE,
                          B_NONCE)
    forged = 0
    for flags in (0, wire.FLAG_ANSWER, wire.FLAG_ANSWER | wire.FLAG_PROVEN):
        for echo in [bytes(8), *list(a._sent)]:
            body = wire.encode_body(wire.PairingProbe(B_NONCE, key_tag(B_ID.public_key.raw),
                                                      flags, b"c" * 8, echo))
            assert a.receive(0.1, 1000.1, body + mac(wrong_key, body), B_PUB) == []
            forged += 1
    assert a.proven is None and a.counters["bad_mac"] == forged
    assert a.counters["answers_sent"] == 0 and a.candidates == [B_LOCAL, B_PUB]
    # garbage and probes of other pairings are dropped before the MAC
    assert a.receive(0.2, 1000.2, b"MGCP" + bytes(45), ATTACKER) == []
    assert a.receive(0.2, 1000.2, b"x" * 10, ATTACKER) == []
    assert a.counters["wrong_peer"] == 1 and a.counters["not_a_probe"] == 1


def test_forged_probes_spend_no_answer_budget() -> None:
    # the token reader floods forged probes (right nonce and key tag, no key) from the peer's
    # own address and from thousands of others; the peer's real probe is still answered
    a, b = _core("a", start=0.0), _core("b", start=0.0)
    probe = next(x for x in a.tick(0.0, 1000.0) if isinstance(x, SendDatagram))
    body = wire.encode_body(wire.PairingProbe(A_NONCE, key_tag(A_ID.public_key.raw), 0,
                                              b"c" * 8, bytes(8)))
    forged = body + bytes(wire.MAC_LEN)
    for _ in range(500):
        assert b.receive(0.0, 1000.0, forged, A_PUB) == []
    for i in range(5000):
        assert b.receive(0.0, 1000.0, forged, (f"198.18.{i >> 8}.{i & 255}", 4444)) == []
    assert b.counters["bad_mac"] == 5500
    assert len(b.receive(0.0, 1000.0, probe.data, A_PUB)) == 1


def test_replays_change_nothing() -> None:
    a = _core("a", start=0.0)
    b = _core("b", start=0.0)
    probe = next(x for x in a.tick(0.0, 1000.0) if isinstance(x, SendDatagram)
                 and x.endpoint == B_PUB)
    (answer,) = b.receive(0.0, 1000.0, probe.data, A_PUB)
    # the same probe again, from where it came or from the attacker: no second answer, and
    # the attacker's address does not become a candidate
    assert b.receive(0.01, 1000.0, probe.data, A_PUB) == []
    assert b.receive(0.01, 1000.0, probe.data, ATTACKER) == []
    assert b.counters["replayed"] == 2 and b.counters["answers_sent"] == 1
    assert ATTACKER not in b.candidates
    assert isinstance(answer, SendDatagram)
    a.receive(0.02, 1000.0, answer.data, B_PUB)
    assert a.proven == B_PUB
    # the answer again, from anywhere: taken once, the proven endpoint stays
    assert a.receive(0.03, 1000.0, answer.data, ATTACKER) == []
    assert a.receive(0.03, 1000.0, answer.data, B_PUB) == []
    assert a.proven == B_PUB and a.counters["answers_taken"] == 1
    assert a.counters["unknown_echo"] == 2


def test_an_answer_resent_from_elsewhere_proves_nothing() -> None:
    a = _core("a", start=0.0)
    b = _core("b", start=0.0)
    probe = next(x for x in a.tick(0.0, 1000.0) if isinstance(x, SendDatagram)
                 and x.endpoint == B_PUB)
    (answer,) = b.receive(0.0, 1000.0, probe.data, A_PUB)
    assert isinstance(answer, SendDatagram)
    # the attacker captured B's real answer and sends it to A from its own address first
    assert a.receive(0.01, 1000.0, answer.data, ATTACKER) == []
    assert a.proven is None and a.counters["answer_from_elsewhere"] == 1
    # the real one still counts, once
    a.receive(0.02, 1000.0, answer.data, B_PUB)
    assert a.proven == B_PUB
    a.receive(0.03, 1000.0, answer.data, B_PUB)
    assert a.counters["answers_taken"] == 1 and a.counters["unknown_echo"] == 1


def test_a_captured_probe_cannot_make_an_eavesdropper_the_saved_path() -> None:
    # the attacker saw one of B's probes go by and re-sends it from its own address: if A took
    # that address as a candidate, its probes there would reach B through the attacker, B's
    # answers would come back the same way, and A would save the attacker as B's endpoint
    a, b = _core("a", start=0.0), _core("b", start=0.0)
    a.tick(0.0, 1000.0)
    captured = next(x for x in b.tick(0.0, 1000.0) if isinstance(x, SendDatagram))
    a.receive(0.01, 1000.0, captured.data, ATTACKER)
    assert ATTACKER not in a.candidates
    for t in (0.1, 0.2, 0.3):
        for probe in [x for x in a.tick(t, 1000.0 + t) if isinstance(x, SendDatagram)]:
            if probe.endpoint != ATTACKER:
                continue
            for answer in b.receive(t, 1000.0 + t, probe.data, ATTACKER):  # relayed to B
                if isinstance(answer, SendDatagram):
                    a.receive(t + 0.01, 1000.0 + t, answer.data, ATTACKER)  # and back
    assert a.proven is None


def test_reflexive_candidates_are_capped() -> None:
    a = _core("a", start=0.0)
    b = _core("b", start=0.0)
    for i in range(10):
        (p, *_) = [x for x in b.tick(float(i), 1000.0 + i) if isinstance(x, SendDatagram)]
        a.receive(float(i), 1000.0 + i, p.data, ("203.0.113.22", 50000 + i))
    assert len(a.candidates) == 2 + a.max_reflexive


def test_the_windows_follow_the_originals_schedule() -> None:
    # attempt k at punch_time + k * (window + idle), as the original's retry loop does
    assert punch_windows(10.0, 1000.0, 1060.0, 60.0) == [(70.0, 130.0), (190.0, 250.0),
                                                          (310.0, 370.0)]


def test_the_side_that_finishes_first_tells_the_other() -> None:
    # A is proven first and says so; B learns it before its own proof, and finishes the moment
    # it is proven: its last datagram must say so, or A would wait out its linger
    a, b = _core("a", start=0.0), _core("b", start=0.0)
    pa = next(x for x in a.tick(0.0, 1000.0) if isinstance(x, SendDatagram)
              and x.endpoint == B_PUB)
    pb = next(x for x in b.tick(0.0, 1000.0) if isinstance(x, SendDatagram)
              and x.endpoint == A_PUB)
    (ans_to_a,) = b.receive(0.02, 1000.0, pa.data, A_PUB)
    assert isinstance(ans_to_a, SendDatagram)
    a.receive(0.04, 1000.0, ans_to_a.data, B_PUB)
    assert a.proven == B_PUB
    (proven_probe,) = [x for x in a.tick(0.04, 1000.0) if isinstance(x, SendDatagram)]
    b.receive(0.06, 1000.0, proven_probe.data, A_PUB)  # B hears "A is through"
    (ans_to_b,) = a.receive(0.06, 1000.0, pb.data, B_PUB)
    assert isinstance(ans_to_b, SendDatagram)
    last = b.receive(0.08, 1000.0, ans_to_b.data, A_PUB)
    assert b.done and any(isinstance(x, PairingPunched) for x in last)
    for x in last:
        if isinstance(x, SendDatagram):
            a.receive(0.1, 1000.0, x.data, B_PUB)
    assert a.done, "A still waits for word from B"
