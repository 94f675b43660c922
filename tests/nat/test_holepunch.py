"""Hole punching: the codec, and the sans-IO core in a simulated network with NAT routers.

The simulated NATs follow Linux behaviour measured in a NAT lab (docs/nat-testbed.md): a cone NAT
maps an inner endpoint to one public port for every destination (endpoint-independent mapping),
a symmetric NAT gives every destination a new port; both filter inbound packets by address and
port (only a remote endpoint the inner host has sent to may answer).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import pytest

from meshguard.crypto.keys import Ed25519PrivateKey
from meshguard.errors import WireFormatError
from meshguard.nat.holepunch import (
    NAT_PUBLIC,
    HolePuncher,
    PeerInfo,
    PunchFailed,
    PunchSucceeded,
)
from meshguard.sansio import Endpoint, SendDatagram
from meshguard.testing.rng import SeededRng
from meshguard.wire import holepunch as wire

NAT_CONE = 2
NAT_SYMMETRIC = 3
LATENCY = 0.02


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


@dataclass
class Nat:
    public_ip: str
    symmetric: bool = False
    next_port: int = 40000
    maps: dict[tuple[Endpoint, Endpoint | None], int] = field(default_factory=dict)
    allowed: set[tuple[int, Endpoint]] = field(default_factory=set)  # (public port, remote)
    inner: dict[int, Endpoint] = field(default_factory=dict)
    dropped: int = 0

    def outbound(self, src: Endpoint, dst: Endpoint) -> Endpoint:
        key = (src, dst if self.symmetric else None)
        port = self.maps.get(key)
        if port is None:
            port = src[1] if not self.symmetric and src[1] not in self.inner else self.next_port
            self.next_port += 7
            self.maps[key] = port
            self.inner[port] = src
        self.allowed.add((port, dst))
        return (self.public_ip, port)

    def inbound(self, src: Endpoint, dst: Endpoint) -> Endpoint | None:
        if (dst[1], src) not in self.allowed:
            self.dropped += 1
            return None
        return self.inner[dst[1]]


@dataclass
class Host:
    name: str
    key: Ed25519PrivateKey
    local: Endpoint
    nat: Nat | None
    hp: HolePuncher
    nat_type: int = 0
    advertised: tuple[Endpoint, ...] = ()
    connected: set[bytes] = field(default_factory=set)
    results: list[object] = field(default_factory=list)

    @property
    def ident(self) -> bytes:
        return self.key.public_key.raw


class Net:
    def __init__(self) -> None:
        self.hosts: dict[str, Host] = {}
        self.queue: list[tuple[float, int, bytes, Endpoint, Endpoint]] = []
        self.seq = 0
        self.now = 0.0
        self.delivered = 0
        self.tap: list[tuple[str, bytes, Endpoint]] = []  # what each host received

    def add(self, name: str, local: Endpoint, nat: Nat | None, seed: int, **kw: float) -> Host:
        key = Ed25519PrivateKey(bytes([seed]) * 32)
        h = Host(name, key, local, nat, HolePuncher(key, SeededRng(seed), **kw))  # type: ignore[arg-type]
        h.hp.members = lambda: self.view(h)
        h.hp.connected = lambda p: p.identity_key in h.connected
        self.hosts[name] = h
        return h

    def stun(self, h: Host, nat_type: int) -> None:
        """What STUN would tell the host: its mapping toward a public server."""
        mapped = h.nat.outbound(h.local, ("198.51.100.1", 3478)) if h.nat else h.local
        h.nat_type = nat_type
        h.advertised = (mapped,)
        h.hp.set_self(h.advertised, behind_nat=h.nat is not None)

    def view(self, me: Host) -> dict[bytes, PeerInfo]:
        out = {}
        for h in self.hosts.values():
            if h is me:
                continue
            # gossip reaches every member through the public seed; the gossip endpoint is the
            # advertised one (the rendezvous is public, so it is reachable)
            out[h.ident] = PeerInfo(h.ident, b"W" + h.ident[:31], h.advertised[0],
                                    h.advertised, h.nat_type, True)
        return out

    def send(self, h: Host, data: bytes, dst: Endpoint) -> None:
        src = h.nat.outbound(h.local, dst) if h.nat else h.local
        self.seq += 1
        heapq.heappush(self.queue, (self.now + LATENCY, self.seq, data, src, dst))

    def _host_at(self, ep: Endpoint) -> Host | None:
        for h in self.hosts.values():
            if h.nat is None and h.local == ep:
                return h
            if h.nat is not None and h.nat.public_ip == ep[0]:
                return h
        return None

    def _apply(self, h: Host, actions: list[object]) -> None:
        for a in actions:
            if isinstance(a, SendDatagram):
                self.send(h, a.data, a.endpoint)
            else:
                h.results.append(a)
                if isinstance(a, PunchSucceeded):
                    h.connected.add(a.identity_key)

    def run(self, until: float, step: float = 0.05) -> None:
        while self.now < until:
            while self.queue and self.queue[0][0] <= self.now:
                _, _, data, src, dst = heapq.heappop(self.queue)
                h = self._host_at(dst)
                if h is None:
                    continue
                if h.nat is not None and h.nat.inbound(src, dst) is None:
                    continue
                self.delivered += 1
                self.tap.append((h.name, data, src))
                self._apply(h, h.hp.receive(self.now, 1e9 + self.now, data, src))
            for h in self.hosts.values():
                self._apply(h, h.hp.tick(self.now, 1e9 + self.now))
            self.now = round(self.now + step, 6)


def cone_mesh(b_symmetric: bool = False, **kw: float) -> tuple[Net, Host, Host, Host]:
    net = Net()
    r = net.add("r", ("203.0.113.10", 51821), None, 1, **kw)
    a = net.add("a", ("192.168.10.2", 51821), Nat("203.0.113.21"), 2, **kw)
    b = net.add("b", ("192.168.20.2", 51821), Nat("203.0.113.22", symmetric=b_symmetric), 3,
                **kw)
    net.stun(r, NAT_PUBLIC)
    net.stun(a, NAT_CONE)
    net.stun(b, NAT_SYMMETRIC if b_symmetric else NAT_CONE)
    r.connected |= {a.ident, b.ident}
    for h in (a, b):  # members gossip with the seed, so their NATs let the seed in
        assert h.nat is not None
        h.nat.outbound(h.local, r.local)
    a.connected.add(r.ident)
    b.connected.add(r.ident)
    return net, r, a, b


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


def _deliver(h: Host, net: Net, data: bytes, src: Endpoint) -> list[object]:
    return list(h.hp.receive(net.now, 1e9 + net.now, data, src))


def _request(sender: Ed25519PrivateKey, target: bytes, wall: float, session: int = 1,
             stage: int = wire.STAGE_RENDEZVOUS, signer: Ed25519PrivateKey | None = None
             ) -> bytes:
    m = wire.PunchMessage(wire.HOLEPUNCH_REQUEST, stage, sender.public_key.raw, target,
                          session, int(wall * 1000), (("203.0.113.21", 51821),))
    body = wire.signed_part(m)
    return body + (signer or sender).sign(wire.SIGN_CONTEXT + body)


def test_rendezvous_forwards_only_signed_member_requests() -> None:
    net, r, a, b = cone_mesh()
    wall = 1e9
    good = _request(a.key, b.ident, wall)
    out = _deliver(r, net, good, ("203.0.113.21", 51821))
    assert out == [SendDatagram(good, b.advertised[0])]
    forged = _request(a.key, b.ident, wall, session=2, signer=Ed25519PrivateKey(b"\x09" * 32))
    assert _deliver(r, net, forged, ("6.6.6.6", 1)) == []
    assert r.hp.counters["punch_bad_signature"] == 1
    stranger = Ed25519PrivateKey(b"\x77" * 32)
    assert _deliver(r, net, _request(stranger, b.ident, wall), ("6.6.6.6", 1)) == []
    assert r.hp.counters["punch_unknown_origin"] == 1
    # probes are never forwarded (a rendezvous is no relay)
    probe = _request(a.key, b.ident, wall, stage=wire.STAGE_PROBE)
    assert _deliver(r, net, probe, ("203.0.113.21", 51821)) == []
    assert r.hp.counters["punch_not_forwarded"] == 1
    assert _deliver(r, net, b"\x33MG\x01garbage", ("6.6.6.6", 1)) == []
    assert r.hp.counters["punch_garbage"] == 1


def test_rendezvous_rate_limits_each_origin() -> None:
    net, r, a, b = cone_mesh(forward_rate=5.0)
    sent = sum(len(_deliver(r, net, _request(a.key, b.ident, 1e9, session=i),
                            ("203.0.113.21", 51821))) for i in range(20))
    assert sent == 5
    assert r.hp.counters["punch_rate_limited"] == 15


def test_target_rejects_replay_stale_and_forged() -> None:
    net, r, a, b = cone_mesh()
    wall = 1e9
    req = _request(a.key, b.ident, wall, session=42)
    out = _deliver(b, net, req, r.local)
    assert any(isinstance(x, SendDatagram) and x.endpoint == r.local for x in out)  # response via R
    assert any(isinstance(x, SendDatagram) and x.endpoint == ("203.0.113.21", 51821) for x in out)
    assert _deliver(b, net, req, r.local) == []
    assert b.hp.counters["punch_replayed"] == 1
    assert _deliver(b, net, _request(a.key, b.ident, wall - 600, session=43), r.local) == []
    assert b.hp.counters["punch_stale"] == 1
    forged = _request(a.key, b.ident, wall, session=44, signer=r.key)
    assert _deliver(b, net, forged, r.local) == []
    assert b.hp.counters["punch_bad_signature"] == 1
    # an answer to a session nobody started is ignored
    resp = wire.PunchMessage(wire.HOLEPUNCH_RESPONSE, wire.STAGE_RENDEZVOUS, b.ident,
                             a.ident, 99, int(wall * 1000), ())
    body = wire.signed_part(resp)
    raw = body + b.key.sign(wire.SIGN_CONTEXT + body)
    assert _deliver(a, net, raw, r.local) == []
    assert a.hp.counters["punch_unexpected_response"] == 1


def test_probe_answer_is_not_larger_than_probe() -> None:
    net, _r, a, b = cone_mesh()
    b.connected.add(a.ident)  # A asks; B's probes reach A
    while not any(x[2][0] == wire.HOLEPUNCH_REQUEST and x[2][5] == wire.STAGE_PROBE
                  and x[4] == a.advertised[0] for x in net.queue):
        net.run(net.now + 0.01, step=0.01)
    probe = next(x[2] for x in net.queue if x[2][0] == wire.HOLEPUNCH_REQUEST
                 and x[2][5] == wire.STAGE_PROBE and x[4] == a.advertised[0])
    sends = [x for x in _deliver(a, net, probe, ("203.0.113.22", 51821))
             if isinstance(x, SendDatagram)]
    out = [x for x in sends if x.data[0] == wire.HOLEPUNCH_RESPONSE]
    assert len(out) == 1  # one answer (and A's own probe of that endpoint, once)
    assert len(sends) <= 2
    assert len(out[0].data) <= len(probe)
    assert out[0].endpoint == ("203.0.113.22", 51821)
    # a probe without a session draws nothing
    stray = _request(a.key, b.ident, 1e9 + net.now, session=5, stage=wire.STAGE_PROBE)
    assert _deliver(b, net, stray, ("203.0.113.21", 51821)) == []
