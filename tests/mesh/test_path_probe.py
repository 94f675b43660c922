"""The path prober (mesh/path_probe.py) and its codec (wire/path_probe.py): DPLPMTUD search
over a fake link that drops datagrams above a size, black-hole detection, RTT samples, and
the attacks: a stranger's or forged probe draws no answer, a replayed or forged ack changes no
RTT or MTU."""

from __future__ import annotations

import pytest

from meshguard.crypto.keys import X25519PrivateKey
from meshguard.errors import WireFormatError
from meshguard.mesh import path_probe as pp
from meshguard.mesh.demux import Kind, classify
from meshguard.sansio import Endpoint, SendDatagram
from meshguard.testing.rng import SeededRng
from meshguard.wire import path_probe as wire

EP_A: Endpoint = ("10.0.0.1", 51821)
EP_B: Endpoint = ("10.0.0.2", 51821)
ID_A, ID_B = b"\x0a" * 32, b"\x0b" * 32


class Pair:
    """Two probers that know each other, over a link that carries datagrams of at most
    `mtu` IP bytes and takes `delay` seconds."""

    def __init__(self, mtu: int, max_mtu: int = 1500, delay: float = 0.01) -> None:
        self.mtu, self.delay, self.now = mtu, delay, 0.0
        ka = X25519PrivateKey.generate(bytes(range(32)))
        kb = X25519PrivateKey.generate(bytes(range(1, 33)))
        self.wa, self.wb = ka.public_key.raw, kb.public_key.raw
        self.a = pp.PathProber(SeededRng(1), ka, ID_A, max_mtu=lambda ep: max_mtu)
        self.b = pp.PathProber(SeededRng(2), kb, ID_B, max_mtu=lambda ep: max_mtu)
        self.a.member_of = {self.wb: ID_B}.get
        self.b.member_of = {self.wa: ID_A}.get
        self.a.targets = lambda: [pp.ProbeTarget(self.wb, ID_B, EP_B)]
        self.b.targets = lambda: []
        self.mtus: list[tuple[float, int | None]] = []
        self.a.on_mtu = lambda k, m: self.mtus.append((self.now, m))
        self.wire: list[tuple[float, bytes, Endpoint, Endpoint]] = []  # due, data, to, src
        self.captured: list[bytes] = []

    def send(self, grams: list[SendDatagram], src: Endpoint) -> None:
        for g in grams:
            self.captured.append(g.data)
            if len(g.data) + 28 <= self.mtu:
                self.wire.append((self.now + self.delay, g.data, g.endpoint, src))

    def run(self, until: float) -> None:
        while self.now < until:
            for due, data, to, src in [w for w in self.wire if w[0] <= self.now]:
                self.wire.remove((due, data, to, src))
                if to == EP_B:
                    self.send(self.b.receive(self.now, 0.0, data, src), EP_B)
                else:
                    self.send(self.a.receive(self.now, 0.0, data, src), EP_A)
            self.send(self.a.tick(self.now, 0.0), EP_A)
            self.send(self.b.tick(self.now, 0.0), EP_B)
            self.now = round(self.now + 0.005, 6)

    @property
    def path(self) -> pp.PathState:
        return self.a.paths[self.wb]


def test_codec_round_trip_and_bounds() -> None:
    body = wire.probe_body(7, 200, b"\x01" * 32)
    m = wire.decode(body + b"\x02" * 16)
    assert (m.kind, m.nonce, m.size, m.sender_wg) == (wire.PATH_PROBE, 7, 200, b"\x01" * 32)
    ack = wire.ack_body(7, 200, b"\x01" * 32) + b"\x03" * 16
    assert len(ack) == wire.ACK_LEN == wire.PROBE_MIN
    assert wire.decode(ack).size == 200
    assert classify(ack) is Kind.GOSSIP
    bad = bytearray(body + b"\x02" * 16)
    bad[20] = 1  # padding must be zero
    for junk in (bytes(bad), body[:-1] + b"\x02" * 16, ack + b"\x00", b"\x51MG\x01"):
        with pytest.raises(WireFormatError):
            wire.decode(junk)


@pytest.mark.parametrize("mtu", [1280, 1400, 1437, 1500])
def test_search_converges_to_the_link_mtu(mtu: int) -> None:
    pair = Pair(mtu)
    pair.run(12.0)
    p = pair.path
    assert p.state == "done"
    assert p.mtu == mtu
    assert pair.mtus[-1][1] == mtu
    assert p.converged_after is not None and p.converged_after < 8.0
    assert p.rtt == pytest.approx(0.02, abs=0.011)


def test_no_probe_leaves_above_the_interface_mtu() -> None:
    pair = Pair(9000, max_mtu=1400)
    pair.run(5.0)
    assert pair.path.mtu == 1400
    assert max(len(d) for d in pair.captured) + 28 <= 1400


def test_black_hole_falls_back_and_searches_again() -> None:
    pair = Pair(1500)
    pair.run(3.0)
    assert pair.path.mtu == 1500
    pair.mtu = 1300  # the path shrinks without a word
    pair.run(3.0 + pp.CONFIRM_INTERVAL + 10.0)
    assert pair.a.counters["probe_black_hole"] == 1
    assert pair.path.mtu == 1300
    assert pp.BASE_PLPMTU in [m for _, m in pair.mtus]


def test_dead_path_reports_no_mtu() -> None:
    pair = Pair(0)
    pair.run(5.0)
    assert pair.path.state == "error" and pair.path.mtu is None


def test_forged_or_stranger_probe_draws_no_ack() -> None:
    pair = Pair(1500)
    kc = X25519PrivateKey.generate(bytes(range(2, 34)))
    stranger = pp.PathProber(SeededRng(3), kc, b"\x0c" * 32)
    stranger.member_of = {pair.wb: ID_B}.get
    stranger.targets = lambda: [pp.ProbeTarget(pair.wb, ID_B, EP_B)]
    probes = stranger.tick(0.0, 0.0)
    assert probes
    for g in probes:  # not a member of B's
        assert pair.b.receive(0.0, 0.0, g.data, ("10.0.0.3", 1)) == []
    assert pair.b.counters["probe_not_member"] == len(probes)
    # a member's key, a MAC made without the link key
    forged = wire.probe_body(1, 100, pair.wa) + b"\x00" * 16
    assert pair.b.receive(0.0, 0.0, forged, EP_A) == []
    assert pair.b.counters["probe_bad_mac"] == 1
    assert pair.b.counters["probe_answered"] == 0


def test_replayed_or_forged_ack_changes_nothing() -> None:
    pair = Pair(1300)
    acks: list[bytes] = []
    orig = pair.a.receive

    def spy(now: float, wall: float, data: bytes, src: Endpoint) -> list[SendDatagram]:
        if data[0] == wire.PATH_PROBE_ACK:
            acks.append(data)
        return orig(now, wall, data, src)

    pair.a.receive = spy  # type: ignore[method-assign]
    pair.run(8.0)
    before = (pair.path.mtu, pair.path.rtt, pair.path.srtt, pair.path.state)
    assert before[0] == 1300 and acks
    for ack in acks:  # every ack again, much later: each nonce was taken once
        assert orig(100.0, 0.0, ack, EP_B) == []
    assert pair.a.counters["probe_ack_unknown"] >= len(acks)
    # a forged ack for a nonce in flight (the size of the search's next step)
    pair.run(8.0 + pp.CONFIRM_INTERVAL)
    inflight = list(pair.a._sent)
    assert inflight
    forged = wire.ack_body(inflight[0], 2000, pair.wb) + b"\x00" * 16
    assert orig(pair.now, 0.0, forged, EP_B) == []
    assert pair.a.counters["probe_bad_mac"] == 1
    assert inflight[0] in pair.a._sent  # a forger cannot cancel a probe either
    assert pair.path.mtu == 1300


def test_answers_are_rate_limited_per_source() -> None:
    pair = Pair(1500)
    pair.run(0.1)
    probe = pair.captured[0]
    answered = sum(bool(pair.b.receive(50.0, 0.0, probe, EP_A)) for _ in range(200))
    assert answered == pp.ANSWER_BURST
    assert pair.b.counters["probe_source_limited"] == 200 - pp.ANSWER_BURST


def test_forged_probes_spend_no_answer_budget() -> None:
    """Forged probes (a member's public key, no link key) from the member's own address and
    from thousands of others must not use up the answers a real probe gets: else anyone
    could silence every path's probes, turning MTUs to "error" and the MSS clamp off."""
    pair = Pair(1500)
    pair.run(0.1)
    probe = pair.captured[0]
    forged = wire.probe_body(1, len(probe), pair.wa) + b"\x00" * 16
    answered = pair.b.counters["probe_answered"]
    for _ in range(int(pp.ANSWER_BURST) + 10):  # spoofing the member's own source
        assert pair.b.receive(50.0, 0.0, forged, EP_A) == []
    for i in range(int(pp.ANSWER_GLOBAL_BURST) + 100):  # and a crowd of others
        src = (f"198.18.{i >> 8}.{i & 255}", 40000)
        assert pair.b.receive(50.0, 0.0, forged, src) == []
    assert pair.b.receive(50.0, 0.0, probe, EP_A) != []
    assert pair.b.counters["probe_answered"] == answered + 1


def test_ping_measures_rtt() -> None:
    pair = Pair(1500, delay=0.05)
    pair.run(1.0)
    got = pair.a.ping(pair.now, pair.wb)
    assert got is not None
    nonce, ep, grams = got
    assert ep == EP_B and len(grams[0].data) == wire.PROBE_MIN
    pair.send(grams, EP_A)
    pair.run(pair.now + 0.2)
    rtt = pair.a.ping_result(nonce, forget=True)
    assert rtt == pytest.approx(0.1, abs=0.011)
    assert pair.a.ping(0.0, b"\x99" * 32) is None


def test_relayed_member_is_not_probed_and_a_ping_goes_to_its_relay() -> None:
    pair = Pair(1500)
    far = b"\x0f" * 32
    pair.a.member_of = {pair.wb: ID_B, far: b"\x0e" * 32}.get
    pair.a.targets = lambda: [pp.ProbeTarget(pair.wb, ID_B, EP_B),
                              pp.ProbeTarget(far, b"\x0e" * 32, None, pair.wb, EP_B)]
    pair.run(2.0)
    assert pair.a.paths[far].state == "relayed" and pair.a.paths[far].mtu is None
    got = pair.a.ping(pair.now, far)
    assert got is not None and got[1] == EP_B  # the relay hop
    pair.send(got[2], EP_A)
    pair.run(pair.now + 0.1)
    assert pair.a.ping_result(got[0]) is not None
