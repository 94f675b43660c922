"""Path probes: RTT and path MTU of every direct path to a member (sans-IO).

Each member with a tunnel and a direct endpoint gets a `PathState`, driven by PathProbe /
PathProbeAck (0x51/0x52, wire/path_probe.py) sent straight to the member's WireGuard
endpoint, on the port WireGuard uses, so a probe takes the path the tunnel takes.

**Path MTU** (DPLPMTUD, RFC 8899; sizes are IP datagram sizes, outer IP + UDP included):

* BASE: PROBE_COPIES probes of BASE_PLPMTU (1280) bytes; no answer within the probe timeout
  for MAX_PROBES rounds -> ERROR (no MTU known; retried every ERROR_RETRY seconds);
* SEARCH: a binary search between the largest size answered (low) and the largest size not
  yet refused (high, first the underlay interface MTU `max_mtu(endpoint)`), one round of
  PROBE_COPIES probes per size: an answer raises low, a round without one lowers high;
  high <= low -> SEARCH_COMPLETE at low;
* SEARCH_COMPLETE: every CONFIRM_INTERVAL seconds the path is confirmed with full-size
  probes; MAX_PROBES rounds without an answer is a black hole: the MTU falls back to the
  base and the search starts again below the size that was lost. Every RAISE_INTERVAL
  seconds a search from the current MTU up looks for a larger path MTU.

Probes leave with DF set and are never fragmented: the engine's socket uses
IP_PMTUDISC_PROBE (dataplane/udp_io.py). The result feeds `on_mtu(wg_key, mtu)`, which the
shell turns into the TCP MSS clamp of that peer (wire/tcp_mss.py).

**RTT**: every answered probe is a sample (`rtt` the last, `srtt` smoothed as in RFC 6298).
`ping` sends one probe on request (`meshguard ping`) and `ping_result` reports its answer.
A relayed member is not probed (state "relayed", no MTU); a ping to it probes the relay hop.

**Hostile input** (docs/security.md): cheap checks first: length, type and zero padding,
then the sender's WireGuard key must be a member with a tunnel (a dictionary lookup); an ack
must answer an outstanding nonce (a random u64, taken once) from the member it was sent to
before its MAC is computed, so a replayed or forged ack changes no RTT or MTU; a probe is
answered only after its MAC verified (one keyed BLAKE2s over at most one datagram, no more
than decrypting it would cost) and then within a per-source and global budget
(nat/budget.py), which forged probes therefore cannot use up. An ack
is never larger than the probe it answers. Everything dropped is counted in `counters`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from meshguard.crypto.hashes import equal, mac
from meshguard.crypto.keys import X25519PrivateKey
from meshguard.errors import WireFormatError
from meshguard.mesh.link_keys import derive_link_key
from meshguard.nat.budget import SourceBudget
from meshguard.rng import Rng
from meshguard.sansio import Endpoint, SendDatagram
from meshguard.wire import path_probe as wire

if TYPE_CHECKING:
    from meshguard.mesh.node import MeshNode

LINK_LABEL = b"meshguard path probe v1"
BASE_PLPMTU = 1280
DEFAULT_MAX_MTU = 1500
PROBE_COPIES = 2  # probes per round (one lost probe is not a verdict on its size)
MAX_PROBES = 3  # rounds without an answer before BASE or a confirmation fails
CONFIRM_INTERVAL = 15.0
RAISE_INTERVAL = 600.0
ERROR_RETRY = 10.0
FIRST_TIMEOUT = 1.0  # probe timeout before any RTT is known
MIN_TIMEOUT = 0.3
MAX_TIMEOUT = 3.0
SCAN_INTERVAL = 1.0  # seconds between looks at the member list for new or moved paths
MAX_OUTSTANDING = 4096
MAX_PINGS = 256
MAX_KEYS = 4096
UDP_V4, UDP_V6 = 28, 48  # outer IP + UDP header bytes
# answers: a member probes a few times per second at most; a source beyond this is cut off
ANSWER_RATE, ANSWER_BURST = 20.0, 40.0
ANSWER_GLOBAL_RATE, ANSWER_GLOBAL_BURST = 1000.0, 2000.0


@dataclass(frozen=True, slots=True)
class ProbeTarget:
    """A member to probe: its keys and direct endpoint (None when relayed, then the relay)."""

    wg_key: bytes
    identity_key: bytes
    endpoint: Endpoint | None
    relay_wg: bytes | None = None
    relay_endpoint: Endpoint | None = None


@dataclass
class PathState:
    """What the prober knows of one member's path."""

    endpoint: Endpoint | None
    max_mtu: int
    state: str = "base"  # base, search, done, error, relayed
    mtu: int | None = None  # the confirmed PLPMTU
    low: int = 0
    high: int = 0
    size: int = 0  # the size of the round in flight
    round: int = 0
    answered: bool = True
    fails: int = 0
    due: float = float("-inf")
    raise_at: float = float("inf")
    rtt: float | None = None
    srtt: float | None = None
    started: float = 0.0
    converged_after: float | None = None  # seconds from the first probe to SEARCH_COMPLETE


@dataclass(slots=True)
class _Sent:
    wg_key: bytes
    endpoint: Endpoint
    size: int  # IP datagram size
    payload: int
    at: float
    round: int  # -1: a ping


def ip_overhead(ep: Endpoint) -> int:
    return UDP_V6 if ":" in ep[0] else UDP_V4


def probe_targets(peers: Mapping[bytes, tuple[bytes, Endpoint | None]],
                  relayed: Mapping[bytes, bytes], endpoint_now: Callable[[bytes], Endpoint | None]
                  ) -> list[ProbeTarget]:
    """The targets for `PathProber.targets`: `peers` wg key -> (identity, endpoint), `relayed`
    identity -> relay identity, `endpoint_now` the device's current endpoint of a wg key."""
    wg_of = {ident: wg for wg, (ident, _) in peers.items()}
    out = []
    for wg, (ident, ep) in peers.items():
        relay = relayed.get(ident)
        if relay is not None:
            rwg = wg_of.get(relay)
            rep = endpoint_now(rwg) if rwg is not None else None
            out.append(ProbeTarget(wg, ident, None, rwg, rep))
            continue
        out.append(ProbeTarget(wg, ident, endpoint_now(wg) or ep))
    return out


def node_targets(node: MeshNode) -> list[ProbeTarget]:
    """The targets of a MeshNode: its peers, at the device's current endpoints."""
    be, rl = node.backend, node.relay
    return probe_targets({k: (p.identity_key, p.endpoint) for k, p in node.peers.items()},
                         rl.via if rl is not None else {},
                         (lambda k: be.stats(k)[3]) if be is not None else (lambda k: None))


def _no_targets() -> Sequence[ProbeTarget]:
    return ()


def _default_max(ep: Endpoint) -> int:
    return DEFAULT_MAX_MTU


@dataclass
class PathProber:
    rng: Rng
    wg_private: X25519PrivateKey
    identity_key: bytes
    counters: Counter[str] = field(default_factory=Counter)
    # bound by the node: WireGuard key -> identity of a member with a tunnel; the targets
    member_of: Callable[[bytes], bytes | None] | None = None
    targets: Callable[[], Sequence[ProbeTarget]] = _no_targets
    # bound by the shell: the underlay MTU towards an endpoint; where a new path MTU goes
    max_mtu: Callable[[Endpoint], int] = _default_max
    on_mtu: Callable[[bytes, int | None], None] | None = None
    paths: dict[bytes, PathState] = field(default_factory=dict)  # by WireGuard key
    pings: dict[int, float | None] = field(default_factory=dict)  # nonce -> RTT when answered
    _sent: dict[int, _Sent] = field(default_factory=dict)
    _keys: dict[tuple[bytes, bytes], bytes | None] = field(default_factory=dict)
    _budget: SourceBudget = field(default_factory=lambda: SourceBudget(
        ANSWER_RATE, ANSWER_BURST, ANSWER_GLOBAL_RATE, ANSWER_GLOBAL_BURST))
    _next_scan: float = float("-inf")

    # keys and sealing ----------------------------------------------------------------

    def _key(self, wg_key: bytes, identity_key: bytes) -> bytes | None:
        k = (wg_key, identity_key)
        try:
            return self._keys[k]
        except KeyError:
            pass
        key = derive_link_key(self.wg_private, self.identity_key, wg_key, identity_key,
                              LINK_LABEL)
        if len(self._keys) >= MAX_KEYS:
            self._keys.clear()
        self._keys[k] = key
        return key

    def _seal(self, body: bytes, key: bytes) -> bytes:
        return body + mac(key, body)

    def _nonce(self) -> int:
        while True:
            n = int.from_bytes(self.rng.bytes(8), "little")
            if n not in self._sent:
                return n

    def _probe(self, now: float, wg_key: bytes, identity_key: bytes, ep: Endpoint, size: int,
               round_: int) -> tuple[int, SendDatagram] | None:
        key = self._key(wg_key, identity_key)
        payload = size - ip_overhead(ep)
        if key is None or payload < wire.PROBE_MIN:
            return None
        if len(self._sent) >= MAX_OUTSTANDING:
            self._expire(now, force=True)
        nonce = self._nonce()
        data = self._seal(wire.probe_body(nonce, payload, self.wg_private.public_key.raw), key)
        self._sent[nonce] = _Sent(wg_key, ep, size, payload, now, round_)
        self.counters["probe_tx"] += 1
        return nonce, SendDatagram(data, ep)

    # the state machine -----------------------------------------------------------------

    def timeout(self, p: PathState) -> float:
        if p.srtt is None:
            return FIRST_TIMEOUT
        return min(MAX_TIMEOUT, max(MIN_TIMEOUT, 4 * p.srtt))

    def _round(self, now: float, t: ProbeTarget, p: PathState, size: int
               ) -> list[SendDatagram]:
        assert t.endpoint is not None
        p.round += 1
        p.size, p.answered = size, False
        p.due = now + self.timeout(p)
        out = []
        for _ in range(PROBE_COPIES):
            d = self._probe(now, t.wg_key, t.identity_key, t.endpoint, size, p.round)
            if d is not None:
                out.append(d[1])
        return out

    def _set_mtu(self, wg_key: bytes, p: PathState, mtu: int | None) -> None:
        if p.mtu != mtu:
            p.mtu = mtu
            if self.on_mtu is not None:
                self.on_mtu(wg_key, mtu)

    def _next(self, now: float, t: ProbeTarget, p: PathState) -> list[SendDatagram]:
        """After a round: the next round of the search, or SEARCH_COMPLETE."""
        if p.high <= p.low:
            p.state, p.fails = "done", 0
            self._set_mtu(t.wg_key, p, p.low)
            if p.converged_after is None:
                p.converged_after = now - p.started
            p.due = now + CONFIRM_INTERVAL
            p.raise_at = now + RAISE_INTERVAL
            return []
        return self._round(now, t, p, (p.low + p.high + 1) // 2)

    def _answered(self, now: float, t: ProbeTarget, p: PathState) -> list[SendDatagram]:
        p.answered = True
        if p.state == "base" or p.state == "error":
            p.state, p.fails = "search", 0
            p.low = p.size
            p.high = p.high if p.low < p.high <= p.max_mtu else p.max_mtu
            if p.mtu is None or p.mtu > p.low:
                self._set_mtu(t.wg_key, p, p.low)
            return self._next(now, t, p) if p.high <= p.low else self._round(
                now, t, p, p.high)
        if p.state == "search":
            p.low = max(p.low, p.size)
            return self._next(now, t, p)
        p.fails = 0  # a confirmation
        p.due = now + CONFIRM_INTERVAL
        return []

    def _timed_out(self, now: float, t: ProbeTarget, p: PathState) -> list[SendDatagram]:
        if p.state == "search":
            p.high = p.size - 1
            return self._next(now, t, p)
        p.fails += 1
        if p.state == "done":
            if p.fails < MAX_PROBES:
                return self._round(now, t, p, p.size)
            # full-size probes lost: a black hole; back to the base, search below the loss
            self.counters["probe_black_hole"] += 1
            p.state, p.fails, p.high = "base", 0, p.size - 1
            self._set_mtu(t.wg_key, p, min(BASE_PLPMTU, p.max_mtu))
            return self._round(now, t, p, min(BASE_PLPMTU, p.max_mtu))
        if p.state == "base" and p.fails < MAX_PROBES:
            return self._round(now, t, p, p.size)
        p.state, p.fails = "error", 0
        self._set_mtu(t.wg_key, p, None)
        p.due = now + ERROR_RETRY
        return []

    def _start(self, now: float, t: ProbeTarget) -> PathState:
        if t.endpoint is None:
            p = PathState(None, 0, state="relayed")
        else:
            p = PathState(t.endpoint, max(BASE_PLPMTU, self.max_mtu(t.endpoint)),
                          started=now)
        old = self.paths.get(t.wg_key)
        if old is not None:
            p.rtt, p.srtt = old.rtt, old.srtt
            if old.mtu is not None and self.on_mtu is not None:
                self.on_mtu(t.wg_key, None)
        self.paths[t.wg_key] = p
        return p

    def _step(self, now: float, t: ProbeTarget, p: PathState) -> list[SendDatagram]:
        if p.state == "relayed" or now < p.due:
            return []
        if p.state == "error":
            p.state = "base"
            return self._round(now, t, p, min(BASE_PLPMTU, p.max_mtu))
        if not p.answered:
            return self._timed_out(now, t, p)
        if p.state == "base":
            return self._round(now, t, p, min(BASE_PLPMTU, p.max_mtu))
        if p.state == "done":
            if now >= p.raise_at and p.mtu is not None and p.mtu < p.max_mtu:
                p.state, p.low, p.high, p.size = "search", p.mtu, p.max_mtu, p.mtu
                return self._round(now, t, p, p.high)
            p.raise_at = max(p.raise_at, now)
            return self._round(now, t, p, p.mtu or BASE_PLPMTU)
        return []

    # the core's entry points ------------------------------------------------------------

    def tick(self, now: float, wall: float) -> list[SendDatagram]:
        out: list[SendDatagram] = []
        self._expire(now)
        due = [p.due for p in self.paths.values() if p.state != "relayed"]
        if now < self._next_scan and (not due or now < min(due)):
            return out
        scan = now >= self._next_scan
        if scan:
            self._next_scan = now + SCAN_INTERVAL
        targets = {t.wg_key: t for t in self.targets()}
        for gone in [k for k in self.paths if k not in targets]:
            del self.paths[gone]
        for t in targets.values():
            p = self.paths.get(t.wg_key)
            if p is None or p.endpoint != t.endpoint:
                p = self._start(now, t)
            out += self._step(now, t, p)
        return out

    def next_deadline(self) -> float | None:
        ds = [p.due for p in self.paths.values() if p.state != "relayed"]
        ds.append(self._next_scan)
        return min(ds)

    def _expire(self, now: float, force: bool = False) -> None:
        limit = MAX_TIMEOUT * (MAX_PROBES + 1)
        old = [n for n, s in self._sent.items() if force or now - s.at > limit]
        for n in old:
            del self._sent[n]

    def receive(self, now: float, wall: float, data: bytes, src: Endpoint
                ) -> list[SendDatagram]:
        try:
            m = wire.decode(data)
        except WireFormatError:
            self.counters["probe_garbage"] += 1
            return []
        ident = self.member_of(m.sender_wg) if self.member_of is not None else None
        if ident is None:
            self.counters["probe_not_member"] += 1
            return []
        if m.kind == wire.PATH_PROBE:
            return self._answer(now, data, m, ident, src)
        return self._on_ack(now, data, m, ident)

    def _answer(self, now: float, data: bytes, m: wire.ProbeMessage, ident: bytes,
                src: Endpoint) -> list[SendDatagram]:
        key = self._key(m.sender_wg, ident)
        if key is None or not equal(mac(key, data[: -wire.MAC_LEN]), m.mac):
            self.counters["probe_bad_mac"] += 1
            return []
        # the budget after the MAC: a forged probe (a member's key is public) must not use
        # up the answers the member's real probes get
        reason = self._budget.take(now, src[0])
        if reason is not None:
            self.counters[f"probe_{reason}"] += 1
            return []
        self.counters["probe_answered"] += 1
        ack = self._seal(wire.ack_body(m.nonce, len(data), self.wg_private.public_key.raw), key)
        return [SendDatagram(ack, src)]

    def _on_ack(self, now: float, data: bytes, m: wire.ProbeMessage, ident: bytes
                ) -> list[SendDatagram]:
        sent = self._sent.get(m.nonce)
        if sent is None or sent.wg_key != m.sender_wg:
            self.counters["probe_ack_unknown"] += 1  # a replay, or never sent
            return []
        key = self._key(m.sender_wg, ident)
        if key is None or not equal(mac(key, data[: -wire.MAC_LEN]), m.mac):
            self.counters["probe_bad_mac"] += 1
            return []
        del self._sent[m.nonce]
        self.counters["probe_ack_rx"] += 1
        rtt = max(0.0, now - sent.at)
        if sent.round < 0:
            if m.nonce in self.pings:
                self.pings[m.nonce] = rtt
            relay = self.paths.get(sent.wg_key)
            if relay is not None:
                self._sample(relay, rtt)
            return []
        p = self.paths.get(sent.wg_key)
        if p is None or p.endpoint != sent.endpoint:
            return []
        self._sample(p, rtt)
        if sent.round != p.round or p.answered or m.size != sent.payload:
            return []  # a late copy, or a size the path shortened
        t = ProbeTarget(sent.wg_key, ident, p.endpoint)
        return self._answered(now, t, p)

    @staticmethod
    def _sample(p: PathState, rtt: float) -> None:
        p.rtt = rtt
        p.srtt = rtt if p.srtt is None else 0.875 * p.srtt + 0.125 * rtt

    # pings (meshguard ping) -------------------------------------------------------------

    def ping(self, now: float, wg_key: bytes) -> tuple[int, Endpoint, list[SendDatagram]] | None:
        """One small probe to the member (to its relay when relayed), on the path the member
        has now: (nonce, where it went, what to send), or None without a path or a key."""
        t = next((x for x in self.targets() if x.wg_key == wg_key), None)
        if t is None:
            return None
        to, ep = (t.wg_key, t.endpoint) if t.endpoint is not None else (
            t.relay_wg, t.relay_endpoint)
        ident = self.member_of(to) if self.member_of is not None and to else None
        if to is None or ep is None or ident is None:
            return None
        d = self._probe(now, to, ident, ep, ip_overhead(ep) + wire.PROBE_MIN, -1)
        if d is None:
            return None
        nonce = d[0]
        if len(self.pings) >= MAX_PINGS:
            self.pings.pop(next(iter(self.pings)))
        self.pings[nonce] = None
        return nonce, ep, [d[1]]

    def ping_result(self, nonce: int, forget: bool = False) -> float | None:
        """The RTT of an answered ping (None: not yet); `forget` drops it."""
        return self.pings.pop(nonce, None) if forget else self.pings.get(nonce)


__all__ = ["BASE_PLPMTU", "PathProber", "PathState", "ProbeTarget", "node_targets",
           "probe_targets"]
