"""Sans-IO rendezvous-mediated UDP hole punching between two members behind cone NATs.

When this node has had no WireGuard handshake with a member for `stall` seconds, both sides are
behind a NAT (this node learned a STUN mapping that is not its local address, the member does
not advertise PUBLIC) and a PUBLIC member is alive, this node (A) asks that rendezvous R to tell
the member (B):

    A --HolepunchRequest(stage 0, A's endpoints)--> R --same bytes--> B
    B --HolepunchResponse(stage 0, B's endpoints)--> R --same bytes--> A
    A <==probes (0x33 stage 1) / answers (0x34 stage 1)==> B   to every advertised endpoint,
                                                              every `probe_interval` seconds

The candidates are probed LAN first (nat/path_select.py's `order_endpoints`: private
addresses in one of our subnets, other private ones, then the reflexive ones), so two members
behind one NAT find each other's LAN address, and the first answered probe wins.
B starts probing as soon as it has the request, A as soon as it has the response, so both
NATs open their mappings toward each other at about the same time. Every probe carries a fresh
nonce, and the prober remembers where it sent it; an answer proves the path only if it echoes
a nonce of ours and comes from the very endpoint that nonce was sent to (it went through both
NATs and back). That endpoint is reported as `PunchSucceeded`, and the mesh layer points the
WireGuard peer there and starts a handshake. A probe that arrives from a port the peer never
advertised (a peer-reflexive candidate: its NAT maps per destination) is answered, and its
source, if on one of the peer's advertised hosts, is probed at once like any candidate; a
probe proves nothing by itself, so one re-sent from elsewhere moves no endpoint. A session that has
not succeeded after `timeout` seconds is `PunchFailed`, and the member is tried again after a
backoff (doubling from `retry_after`, or what the mesh layer sets with `schedule`). At
most `max_sessions` sessions run at once. When both
sides ask at the same time, the session of the lower identity key goes on.

Kernel mode (`probe=False`): the node does not own its WireGuard port, so it sends no probes.
Stage 0 runs as above on the gossip port and ends, on both sides, in `PunchRendezvous` (the
peer's signed endpoints); the kernel's own handshakes then punch (nat/kernel_punch.py), whose
proof ends the session through `proven`; `timeout` still ends it as `PunchFailed`. Stage-1
messages (a userspace peer's probes) are not answered: they reached the gossip port.

The core sees the members through `members`, a callable returning the current view (identity
key -> PeerInfo), and asks `connected(peer)` whether a recent WireGuard handshake proves a direct
path; both are given at construction or bound later by the mesh node. `receive` and `tick` return
`Action`s: `SendDatagram`s and the `PunchSucceeded`/`PunchFailed` events.

Authentication: every message is signed by its origin's identity key (Ed25519) over a context
string, the origin must be a current member, the target must be this node (or, at a
rendezvous, a member it forwards to), the signed wall-clock time must be within `max_skew`, and
rendezvous messages are accepted once (session id cache). A rendezvous checks the signature
before forwarding, forwards only stage-0 messages between two members, and rate-limits each
origin (after the signature, so forgeries do not spend a member's allowance), so it is no open
reflector. Probes and answers must name a session this node runs (or has just finished) with
their origin; probes are accepted once each (origin, session, nonce cache) and draw one
answer, to the probe's source, no larger than the probe (no amplification).

Cost of bad input, cheapest first: decode, member lookups, the signed time, the replay
caches and the session match (no crypto), then a token from the source's and from the
global budget (nat/budget.py; one pair for unsolicited messages - requests and forwards -,
one for messages that match a session, so a flood of the former cannot starve a running
punch), and only then one Ed25519 verification. Every drop is counted in `counters`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from meshguard.crypto.keys import Ed25519PrivateKey, ed25519_verify
from meshguard.errors import WireFormatError
from meshguard.nat.budget import SourceBudget, TokenBucket
from meshguard.nat.path_select import order_endpoints
from meshguard.rng import Rng
from meshguard.sansio import Endpoint, SendDatagram
from meshguard.wire import holepunch as wire
from meshguard.wire.holepunch import (
    HOLEPUNCH_REQUEST,
    HOLEPUNCH_RESPONSE,
    STAGE_PROBE,
    STAGE_RENDEZVOUS,
    PunchMessage,
)

NAT_PUBLIC = 1  # nat.stun_client.NatType.PUBLIC
MAX_SENT = 64  # probe nonces remembered per session (the newest)
MAX_REFLEXIVE = 2  # peer-reflexive candidates probed per session
MAX_SEEN = 8192


def _no_members() -> Mapping[bytes, PeerInfo]:
    return {}


def _never_connected(peer: PeerInfo) -> bool:
    return False


def _unsolicited_budget() -> SourceBudget:
    # requests and forwards: 20/s per source host (bursts of 40), 200/s in all (bursts of 400)
    return SourceBudget(20.0, 40.0, 200.0, 400.0)


def _session_budget() -> SourceBudget:
    # probes, answers, responses of a running session: 100/s per host, 1000/s in all
    return SourceBudget(100.0, 200.0, 1000.0, 2000.0)


@dataclass(frozen=True)
class PeerInfo:
    """One member as the hole puncher sees it (built by the mesh layer)."""

    identity_key: bytes
    wg_key: bytes | None
    gossip_endpoint: Endpoint | None
    endpoints: tuple[Endpoint, ...]
    nat_type: int  # low 7 bits of the record's nat_type
    alive: bool


@dataclass(frozen=True)
class PunchSucceeded:
    identity_key: bytes
    endpoint: Endpoint
    rtt: float | None  # request -> first proof, on the initiating side


@dataclass(frozen=True)
class PunchFailed:
    identity_key: bytes


@dataclass(frozen=True)
class PunchRendezvous:
    """Kernel mode: stage 0 is done; punch toward the peer's signed `endpoints` now."""

    identity_key: bytes
    endpoints: tuple[Endpoint, ...]
    initiator: bool


@dataclass(frozen=True)
class PunchNoRendezvous:
    """A punch was due but no public member could introduce us."""

    identity_key: bytes


Action = (SendDatagram | PunchSucceeded | PunchFailed | PunchRendezvous
          | PunchNoRendezvous)


@dataclass
class _Session:
    peer: bytes
    session: int
    initiator: bool
    started: float
    candidates: tuple[Endpoint, ...] = ()
    punching: bool = False
    next_probe: float = 0.0
    rendezvous: Endpoint | None = None
    sent: dict[int, Endpoint] = field(default_factory=dict)  # probe nonce -> where it went
    reflexive: int = 0  # peer-reflexive candidates added


@dataclass
class HolePuncher:
    identity: Ed25519PrivateKey
    rng: Rng
    stall: float = 4.0
    timeout: float = 5.0
    probe_interval: float = 0.2
    retry_after: float = 10.0
    max_retry: float = 120.0
    max_sessions: int = 4
    max_skew: float = 120.0
    forward_rate: float = 20.0  # stage-0 messages per second forwarded per origin (burst)
    request_rate: float = 1.0  # requests taken per origin per second (bursts of 3)
    counters: Counter[str] = field(default_factory=Counter)
    self_endpoints: tuple[Endpoint, ...] = ()
    behind_nat: bool = False
    probe: bool = True  # False in kernel mode: no stage-1 probes (module docstring)
    _key: bytes = b""
    _stalled_since: dict[bytes, float] = field(default_factory=dict)
    _next_try: dict[bytes, float] = field(default_factory=dict)
    _backoff: dict[bytes, float] = field(default_factory=dict)
    _sessions: dict[bytes, _Session] = field(default_factory=dict)
    _seen: dict[tuple[bytes, int, int], float] = field(default_factory=dict)
    _probes_seen: dict[tuple[bytes, int, int], float] = field(default_factory=dict)
    _recent: dict[bytes, tuple[int, float]] = field(default_factory=dict)  # ended sessions
    _buckets: dict[bytes, tuple[float, float]] = field(default_factory=dict)
    _req_buckets: dict[bytes, TokenBucket] = field(default_factory=dict)
    unsolicited_budget: SourceBudget = field(default_factory=_unsolicited_budget)
    session_budget: SourceBudget = field(default_factory=_session_budget)
    members: Callable[[], Mapping[bytes, PeerInfo]] = _no_members  # identity key -> member
    connected: Callable[[PeerInfo], bool] = _never_connected  # a recent handshake with it

    def __post_init__(self) -> None:
        self._key = self.identity.public_key.raw

    # configuration -----------------------------------------------------------------------

    def set_self(self, endpoints: Iterable[Endpoint], behind_nat: bool) -> None:
        """Our advertised endpoints (STUN mapping first) and whether we are behind a NAT."""
        self.self_endpoints = tuple(endpoints)[:wire.MAX_ENDPOINTS]
        self.behind_nat = behind_nat

    @property
    def sessions(self) -> int:
        return len(self._sessions)

    def running(self, peer: bytes) -> bool:
        """Whether a punch session with `peer` is running."""
        return peer in self._sessions

    def proven(self, now: float, peer: bytes, endpoint: Endpoint) -> list[Action]:
        """Kernel mode: an authenticated WireGuard handshake proved the path to `peer` at
        `endpoint` (nat/kernel_punch.py); ends its session as a success."""
        s = self._sessions.get(peer)
        if s is None or not s.punching:
            return []
        return [self._succeed(s, now, endpoint)]

    def schedule(self, peer: bytes, at: float) -> None:
        """Try `peer` again no earlier than `at` (the mesh layer's backoff, nat/path_select.py);
        the core's own backoff starts over."""
        self._next_try[peer] = at
        self._backoff.pop(peer, None)

    def due(self, peer: bytes) -> float | None:
        """When the next punch to `peer` may start (None: once it has stalled)."""
        return self._next_try.get(peer)

    # timers ------------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        ds: list[float] = []
        for s in self._sessions.values():
            ds.append(s.started + self.timeout)
            if s.punching and self.probe:
                ds.append(s.next_probe)
        ds += [t + self.stall for t in self._stalled_since.values()]
        return min(ds) if ds else None

    def tick(self, now: float, wall: float) -> list[Action]:
        peers = self.members()
        out: list[Action] = []
        # forget what is gone or connected
        for k in list(self._stalled_since):
            p = peers.get(k)
            connected = p is not None and self.connected(p)
            if p is None or connected or not p.alive:
                del self._stalled_since[k]
                if connected:
                    self._backoff.pop(k, None)
                    self._next_try.pop(k, None)
        for k, s in list(self._sessions.items()):
            p = peers.get(k)
            if p is None or not p.alive:
                del self._sessions[k]
            elif now >= s.started + self.timeout:
                del self._sessions[k]
                self.counters["punch_failed"] += 1
                b = min(self._backoff.get(k, self.retry_after / 2) * 2, self.max_retry)
                self._backoff[k] = b
                self._next_try[k] = now + b
                out.append(PunchFailed(k))
            elif s.punching and self.probe and now >= s.next_probe:
                s.next_probe = now + self.probe_interval
                out += self._probes(s, wall)
        for seen in [x for x, t in self._seen.items() if t < now]:
            del self._seen[seen]
        for seen in [x for x, t in self._probes_seen.items() if t < now]:
            del self._probes_seen[seen]
        for k in [k for k, (_, until) in self._recent.items() if until < now]:
            del self._recent[k]
        if not self.behind_nat or not self.self_endpoints:
            return out
        rendezvous = sorted((p for p in peers.values()
                             if p.alive and p.nat_type == NAT_PUBLIC
                             and p.gossip_endpoint is not None), key=lambda p: p.identity_key)
        for k, p in peers.items():
            if (k == self._key or self.connected(p) or not p.alive or p.wg_key is None
                    or p.nat_type == NAT_PUBLIC or not p.endpoints):
                continue
            since = self._stalled_since.setdefault(k, now)
            if (now < since + self.stall or k in self._sessions
                    or now < self._next_try.get(k, 0.0)
                    or len(self._sessions) >= self.max_sessions):
                continue
            rs = [r for r in rendezvous if r.identity_key not in (k, self._key)]
            if not rs:
                self.counters["punch_no_rendezvous"] += 1
                self._next_try[k] = now + self.retry_after
                out.append(PunchNoRendezvous(k))
                continue
            r = rs[self.rng.randrange(len(rs))]
            assert r.gossip_endpoint is not None
            sid = int.from_bytes(self.rng.bytes(8), "little")
            s = _Session(k, sid, True, now, rendezvous=r.gossip_endpoint)
            self._sessions[k] = s
            self.counters["punch_requests_sent"] += 1
            out.append(SendDatagram(self._sign(HOLEPUNCH_REQUEST, STAGE_RENDEZVOUS, k, sid, wall,
                                               self.self_endpoints), r.gossip_endpoint))
        return out

    # datagrams ---------------------------------------------------------------------------

    def receive(self, now: float, wall: float, data: bytes, src: Endpoint) -> list[Action]:
        try:
            m = wire.decode(data)
        except WireFormatError:
            self.counters["punch_garbage"] += 1
            return []
        peers = self.members()
        origin = peers.get(m.origin)
        if origin is None or not origin.alive or m.origin == self._key:
            self.counters["punch_unknown_origin"] += 1
            return []
        if abs(m.wall_ms / 1000.0 - wall) > self.max_skew:
            self.counters["punch_stale"] += 1
            return []
        if m.target != self._key:
            return self._forward(now, data, m, src, peers)
        if m.stage == STAGE_RENDEZVOUS:
            seen = (m.origin, m.session, m.type)
            if seen in self._seen:
                self.counters["punch_replayed"] += 1
                return []
            if m.type == HOLEPUNCH_RESPONSE:
                s = self._sessions.get(m.origin)
                if s is None or not s.initiator or s.session != m.session or s.punching:
                    self.counters["punch_unexpected_response"] += 1
                    return []
            budget = (self.unsolicited_budget if m.type == HOLEPUNCH_REQUEST
                      else self.session_budget)
            if not self._afford(budget, now, src) or not self._verify(m):
                return []
            self._seen[seen] = now + 2 * self.max_skew
            if len(self._seen) > MAX_SEEN:
                self._seen.clear()
            if m.type == HOLEPUNCH_REQUEST:
                return self._on_request(now, wall, m, src)
            return self._on_response(now, wall, m)
        if not self.probe:
            # kernel mode: a probe came to the gossip port, so an answer would prove a path
            # the tunnel does not take (the kernel's own handshakes punch its port)
            self.counters["punch_probe_ignored"] += 1
            return []
        return self._on_stage1(now, wall, m, src, origin)

    def _on_stage1(self, now: float, wall: float, m: PunchMessage, src: Endpoint,
                   origin: PeerInfo) -> list[Action]:
        """A probe (answer it) or an answer to one of our probes (the path works)."""
        s = self._sessions.get(m.origin)
        live = s is not None and s.session == m.session
        if not live:
            recent = self._recent.get(m.origin)
            if m.type != HOLEPUNCH_REQUEST or recent is None or recent[0] != m.session:
                self.counters["punch_no_session"] += 1
                return []
        if m.type == HOLEPUNCH_RESPONSE:
            assert s is not None
            went_to = s.sent.get(m.nonce)
            if went_to is None:
                self.counters["punch_unexpected_answer"] += 1
                return []
            if went_to != src:
                self.counters["punch_wrong_path"] += 1
                return []
            if not self._afford(self.session_budget, now, src) or not self._verify(m):
                return []
            return [self._succeed(s, now, src)]
        seen = (m.origin, m.session, m.nonce)
        if seen in self._probes_seen:
            self.counters["punch_replayed"] += 1
            return []
        if not self._afford(self.session_budget, now, src) or not self._verify(m):
            return []
        self._probes_seen[seen] = now + 2 * self.timeout + 1.0
        if len(self._probes_seen) > MAX_SEEN:
            self._probes_seen.clear()
        self.counters["punch_probes_answered"] += 1
        out: list[Action] = [SendDatagram(self._sign(
            HOLEPUNCH_RESPONSE, STAGE_PROBE, m.origin, m.session, wall, (), m.nonce), src)]
        if live and s is not None and src not in s.candidates:
            hosts = {h for h, _ in (*s.candidates, *origin.endpoints)}
            if origin.gossip_endpoint is not None:
                hosts.add(origin.gossip_endpoint[0])
            if src[0] in hosts and s.reflexive < MAX_REFLEXIVE:
                # a peer-reflexive candidate: probe it now (only an answer proves it)
                s.reflexive += 1
                s.candidates = (*s.candidates, src)
                self.counters["punch_reflexive_candidates"] += 1
                out += self._probes(s, wall, (src,))
            else:
                self.counters["punch_reflexive_refused"] += 1
        return out

    def _on_request(self, now: float, wall: float, m: PunchMessage, src: Endpoint
                    ) -> list[Action]:
        self.counters["punch_requests_received"] += 1
        b = self._req_buckets.get(m.origin)
        if b is None:
            if len(self._req_buckets) > 4096:
                self._req_buckets.clear()
            b = self._req_buckets[m.origin] = TokenBucket(self.request_rate, 3.0)
        if not b.take(now):  # each request starts probing: a member gets few per second
            self.counters["punch_request_limited"] += 1
            return []
        mine = self._sessions.get(m.origin)
        if mine is not None and mine.initiator and self._key < m.origin:
            # both asked at once: the lower key's session goes on, the peer answers ours
            self.counters["punch_crossed"] += 1
            return []
        if len(self._sessions) >= self.max_sessions and m.origin not in self._sessions:
            self.counters["punch_busy"] += 1
            return []
        s = _Session(m.origin, m.session, False, now,
                     order_endpoints(m.endpoints, self.self_endpoints), True, now, src)
        self._sessions[m.origin] = s
        out: list[Action] = [SendDatagram(self._sign(
            HOLEPUNCH_RESPONSE, STAGE_RENDEZVOUS, m.origin, m.session, wall, self.self_endpoints),
            src)]
        s.next_probe = now + self.probe_interval
        if not self.probe:
            return [*out, PunchRendezvous(m.origin, s.candidates, False)]
        return out + self._probes(s, wall)

    def _on_response(self, now: float, wall: float, m: PunchMessage) -> list[Action]:
        s = self._sessions.get(m.origin)
        if s is None or not s.initiator or s.session != m.session or s.punching:
            self.counters["punch_unexpected_response"] += 1  # (checked before the signature)
            return []
        self.counters["punch_responses_received"] += 1
        s.candidates = order_endpoints((*m.endpoints, *s.candidates), self.self_endpoints)
        s.punching = True
        s.next_probe = now + self.probe_interval
        if not self.probe:
            return [PunchRendezvous(m.origin, s.candidates, True)]
        return list(self._probes(s, wall))

    def _forward(self, now: float, data: bytes, m: PunchMessage, src: Endpoint,
                 peers: Mapping[bytes, PeerInfo]) -> list[Action]:
        target = peers.get(m.target)
        if (m.stage != STAGE_RENDEZVOUS or target is None or not target.alive
                or target.gossip_endpoint is None):
            self.counters["punch_not_forwarded"] += 1
            return []
        seen = (m.origin, m.session, m.type)
        if seen in self._seen:  # forwarded once: a replay makes us no reflector
            self.counters["punch_replayed"] += 1
            return []
        if not self._afford(self.unsolicited_budget, now, src) or not self._verify(m):
            return []
        self._seen[seen] = now + 2 * self.max_skew
        if len(self._seen) > MAX_SEEN:
            self._seen.clear()
        # the origin's allowance is spent only by what it signed
        level, last = self._buckets.get(m.origin, (self.forward_rate, now))
        level = min(self.forward_rate, level + (now - last) * self.forward_rate)
        if level < 1.0:
            self.counters["punch_rate_limited"] += 1
            self._buckets[m.origin] = (level, now)
            return []
        self._buckets[m.origin] = (level - 1.0, now)
        if len(self._buckets) > 4096:
            self._buckets.clear()
        self.counters["punch_forwarded"] += 1
        return [SendDatagram(data, target.gossip_endpoint)]

    # helpers -----------------------------------------------------------------------------

    def _succeed(self, s: _Session, now: float, endpoint: Endpoint) -> PunchSucceeded:
        del self._sessions[s.peer]
        self._recent[s.peer] = (s.session, now + self.timeout)
        self._backoff.pop(s.peer, None)
        # give the WireGuard handshake time before another punch
        self._next_try[s.peer] = now + self.retry_after
        self._stalled_since.pop(s.peer, None)
        self.counters["punch_succeeded"] += 1
        return PunchSucceeded(s.peer, endpoint, now - s.started if s.initiator else None)

    def _probes(self, s: _Session, wall: float, to: tuple[Endpoint, ...] | None = None
                ) -> list[Action]:
        """One probe to each candidate (or to `to`), each with a fresh nonce remembered
        with the endpoint it went to."""
        out: list[Action] = []
        for ep in s.candidates if to is None else to:
            nonce = int.from_bytes(self.rng.bytes(8), "little")
            s.sent[nonce] = ep
            out.append(SendDatagram(self._sign(HOLEPUNCH_REQUEST, STAGE_PROBE, s.peer,
                                               s.session, wall, (), nonce), ep))
        while len(s.sent) > MAX_SENT:
            del s.sent[next(iter(s.sent))]
        self.counters["punch_probes_sent"] += len(out)
        return out

    def _afford(self, budget: SourceBudget, now: float, src: Endpoint) -> bool:
        """A token for one signature check on a datagram from src (counted if none)."""
        limited = budget.take(now, src[0])
        if limited is not None:
            self.counters["punch_" + limited] += 1
            return False
        return True

    def _sign(self, t: int, stage: int, target: bytes, session: int, wall: float,
              eps: tuple[Endpoint, ...], nonce: int = 0) -> bytes:
        m = PunchMessage(t, stage, self._key, target, session, max(0, int(wall * 1000)), eps,
                         nonce=nonce)
        body = wire.signed_part(m)
        return body + self.identity.sign(wire.SIGN_CONTEXT + body)

    def _verify(self, m: PunchMessage) -> bool:
        body = wire.signed_part(m)
        if not ed25519_verify(m.origin, m.signature, wire.SIGN_CONTEXT + body):
            self.counters["punch_bad_signature"] += 1
            return False
        return True
