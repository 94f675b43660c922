"""Sans-IO STUN client: discover this node's public (server-reflexive) endpoint and guess the
NAT's mapping behaviour, over the mesh's own UDP port (so the mapping found is the one peers
will see).

    client = StunClient(rng, [("198.51.100.1", 3478), ("203.0.113.9", 3478)])
    sends = client.start(now)                     # [SendDatagram, ...] to put on the socket
    acts = client.receive(now, wall, data, src)   # for datagrams the demux classified as STUN
    acts = client.tick(now, wall)                 # at client.next_deadline(): retransmissions
    client.done, client.mapped, client.nat_type

`receive` and `tick` return `StunAction`s: `SendDatagram`s, a `StunAnswered` for every response
that matched one of our requests, and one `StunFinished` when every server has answered or
been given up on.

Retransmission follows RFC 5389 section 7.2.1 with a shorter budget: RTO starts at
`initial_rto` (500 ms, the RFC's default) and doubles per try, `max_tries` (4) transmissions per
server, so a silent server is given up after 0.5+1+2+4 = 7.5 s instead of 39.5 s: a daemon
should not wait that long at start-up. Responses are matched by transaction id and source;
anything else is counted and dropped.

NAT type (RFC 4787 terms), from the mapped endpoints reported by different servers:
  PUBLIC        a mapped endpoint equals one of our local endpoints (no NAT)
  CONE          every server saw the same mapped endpoint (endpoint-independent mapping)
  SYMMETRIC     servers saw different mapped ports (endpoint-dependent mapping: hole punching
                will not work, a relay is needed)
  UNKNOWN       fewer than two answers (or none)
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from meshguard.errors import WireFormatError
from meshguard.rng import Rng
from meshguard.sansio import Endpoint, SendDatagram, unmap_host
from meshguard.wire import stun

INITIAL_RTO = 0.5
MAX_TRIES = 4


class NatType(enum.IntEnum):
    UNKNOWN = 0
    PUBLIC = 1
    CONE = 2
    SYMMETRIC = 3


@dataclass(frozen=True, slots=True)
class StunAnswered:
    """`server` answered one of our requests: with our mapped endpoint, or None (an error)."""

    server: Endpoint
    mapped: Endpoint | None


@dataclass(frozen=True, slots=True)
class StunFinished:
    """Discovery is over: the public endpoint (None if no server answered) and NAT type."""

    mapped: Endpoint | None
    nat_type: NatType


StunAction = SendDatagram | StunAnswered | StunFinished


@dataclass
class _Query:
    server: Endpoint
    txid: bytes
    tries: int = 0
    rto: float = INITIAL_RTO
    deadline: float = 0.0
    mapped: Endpoint | None = None
    failed: bool = False


@dataclass
class StunClient:
    rng: Rng
    servers: Sequence[Endpoint]
    local: Iterable[Endpoint] = ()
    initial_rto: float = INITIAL_RTO
    max_tries: int = MAX_TRIES
    counters: Counter[str] = field(default_factory=Counter)
    _queries: list[_Query] = field(default_factory=list)
    _finished: bool = False

    def start(self, now: float) -> list[SendDatagram]:
        self._queries = [_Query(s, self.rng.bytes(stun.TXID_LEN), rto=self.initial_rto)
                         for s in self.servers]
        return self._send_due(now, force=True)

    def _send_due(self, now: float, force: bool = False) -> list[SendDatagram]:
        out: list[SendDatagram] = []
        for q in self._queries:
            if q.mapped is not None or q.failed:
                continue
            if not force and now < q.deadline:
                continue
            if q.tries >= self.max_tries:
                q.failed = True
                self.counters["server_timeouts"] += 1
                continue
            if q.tries:
                q.rto *= 2
            q.tries += 1
            q.deadline = now + q.rto
            out.append(SendDatagram(stun.encode_binding_request(q.txid), q.server))
            self.counters["requests_sent"] += 1
        return out

    def tick(self, now: float, wall: float) -> list[StunAction]:
        out: list[StunAction] = list(self._send_due(now))
        return out + self._finish()

    def _finish(self) -> list[StunAction]:
        """The one StunFinished, once the last query is answered or given up."""
        if self._finished or not self._queries or not self.done:
            return []
        self._finished = True
        return [StunFinished(self.mapped, self.nat_type)]

    def next_deadline(self) -> float | None:
        pending = [q.deadline for q in self._queries if q.mapped is None and not q.failed]
        return min(pending) if pending else None

    def receive(self, now: float, wall: float, data: bytes, src: Endpoint
                ) -> list[StunAction]:
        """Handle a STUN datagram: a StunAnswered when it answered one of our requests."""
        try:
            msg = stun.decode(data)
        except WireFormatError:
            self.counters["malformed"] += 1
            return []
        for q in self._queries:
            if q.txid != msg.transaction_id:
                continue
            if q.mapped is not None or q.failed or not _same_endpoint(q.server, src):
                break
            if msg.msg_type != stun.BINDING_SUCCESS or msg.mapped is None:
                q.failed = True
                self.counters["error_responses"] += 1
                return [StunAnswered(q.server, None), *self._finish()]
            q.mapped = msg.mapped
            self.counters["responses"] += 1
            return [StunAnswered(q.server, q.mapped), *self._finish()]
        self.counters["unmatched"] += 1
        return []

    @property
    def done(self) -> bool:
        return all(q.mapped is not None or q.failed for q in self._queries)

    @property
    def mapped(self) -> Endpoint | None:
        """The public endpoint (the most common answer), None before any answer."""
        answers = [q.mapped for q in self._queries if q.mapped is not None]
        if not answers:
            return None
        return Counter(answers).most_common(1)[0][0]

    @property
    def nat_type(self) -> NatType:
        answers = [q.mapped for q in self._queries if q.mapped is not None]
        if not answers:
            return NatType.UNKNOWN
        local = {_norm(e) for e in self.local}
        if any(_norm(a) in local for a in answers):
            return NatType.PUBLIC
        if len(answers) < 2:
            return NatType.UNKNOWN
        return NatType.CONE if len(set(answers)) == 1 else NatType.SYMMETRIC


def _norm(ep: Endpoint) -> Endpoint:
    host, port = ep
    return (unmap_host(host).lower(), port)


def _same_endpoint(a: Endpoint, b: Endpoint) -> bool:
    return _norm(a) == _norm(b)
