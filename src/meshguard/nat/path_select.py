"""Sans-IO path selection for a member pair: direct, or through a relay
(docs/nat-testbed.md#path-selection).

The mesh node (mesh/node.py) owns the WireGuard peers, the hole puncher (nat/holepunch.py) and
the relay (nat/relay.py); this module decides, per member, when to move between a direct path
and a relay, and remembers why, so `status` can say it:

* **Relayed -> direct.** While relayed, a punch is tried again with backoff (`BASE_BACKOFF`
  doubling to `MAX_BACKOFF`, jittered with the injected Rng). The backoff starts again,
  with a punch `RESET_DELAY` later (the rendezvous must learn the new record first), when
  either side's advertised endpoints or NAT type change (`observe` compares a fingerprint
  of both). The relay stays in use while punching; only a punch's proof (an
  answered probe, nat/holepunch.py) moves the WireGuard peer, and relayed datagrams that
  were in flight when the pair went direct are still delivered for `GRACE` seconds without
  moving it back.
* **Direct -> relay.** While direct, `observe` reads the device's per-peer counters: data sent
  (more than keepalives) after the last packet received starts a watch; after `PROBE_AFTER`
  seconds a handshake initiation is sent on the direct path (`Decision.PROBE`); when neither a
  packet nor a handshake came back `DEAD_AFTER` seconds after the first unanswered send and at
  least `PROBE_WAIT` after the probe, the path is dead (`Decision.FALL_BACK`). Punching then
  goes on with the current backoff: it is reset only after `STABLE` seconds of a working
  direct path, so a flaky path does not flap.
* **Every endpoint, LAN first.** `order_endpoints` ranks a member's advertised endpoints:
  private addresses in one of our subnets first, then other private ones, then public
  (reflexive) ones; `first_endpoint` picks the LAN address for the first handshake when the
  member sits behind our own public address (one NAT, one LAN), so two such members never
  need a hairpin or a relay.

Nothing here reads the network: `observe` takes the counters the node reads from its device,
and the decisions come back as values the node executes. Every transition is counted in
`counters` (`path_direct_to_relay`, `path_relay_to_direct`, ...).
"""

from __future__ import annotations

import enum
import ipaddress
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from meshguard.rng import Rng
from meshguard.sansio import Endpoint

BASE_BACKOFF = 5.0  # seconds before the first re-punch of a relayed pair
MAX_BACKOFF = 60.0
JITTER = 0.2  # the backoff is scaled by a factor in [1 - JITTER, 1 + JITTER]
RESET_DELAY = 2.0  # seconds from a record change to the punch (the record spreads first)
CHECK_EVERY = 0.5  # seconds between two looks at the device's counters
PROBE_AFTER = 1.5  # seconds of unanswered data before a handshake probes the direct path
PROBE_EVERY = 5.0  # at most one probe per this many seconds per peer
PROBE_WAIT = 2.0  # a probe unanswered this long counts
DEAD_AFTER = 5.0  # seconds of unanswered data (with a probe unanswered) before falling back
GRACE = 3.0  # seconds after going direct during which relayed arrivals keep the direct path
STABLE = 60.0  # seconds of a working direct path after which the backoff starts again
KEEPALIVE_SLACK = 64  # bytes sent without an answer that are keepalives, not data

NAT_NAMES = {0: "unknown", 1: "public", 2: "cone", 3: "symmetric"}  # nat.stun_client.NatType

# addresses that are only reachable on a LAN (ipaddress' is_private also counts the
# documentation ranges, which tests and some labs use as public addresses)
_LAN_NETS = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16",
    "fc00::/7", "fe80::/10"))


def nat_name(nat_type: int | None) -> str:
    return "unknown" if nat_type is None else NAT_NAMES.get(nat_type & 0x7F, "unknown")


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return None


def is_lan(host: str) -> bool:
    ip = _ip(host)
    return ip is not None and any(ip in n for n in _LAN_NETS)


def _subnet(host: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    ip = _ip(host)
    if ip is None:
        return None
    return ipaddress.ip_network(f"{ip}/{24 if ip.version == 4 else 64}", strict=False)


def order_endpoints(endpoints: Iterable[Endpoint], own: Iterable[Endpoint]
                    ) -> tuple[Endpoint, ...]:
    """`endpoints` ranked LAN first: private addresses in one of our own subnets (a /24 or
    /64 around each of our advertised addresses), then other private ones, then public ones;
    the advertised order is kept within a rank. Duplicates are dropped."""
    mine = {s for s in (_subnet(h) for h, _ in own if is_lan(h)) if s is not None}

    def rank(ep: Endpoint) -> int:
        if not is_lan(ep[0]):
            return 2
        return 0 if _subnet(ep[0]) in mine else 1

    eps = list(dict.fromkeys(endpoints))
    return tuple(sorted(eps, key=rank))  # sorted() is stable


def first_endpoint(endpoints: Sequence[Endpoint], own: Sequence[Endpoint],
                   default: Endpoint | None) -> Endpoint | None:
    """The endpoint for the first handshake: a LAN address in one of our subnets when the
    member is behind our own public address (or advertises no public one), else `default`
    (its record's first endpoint)."""
    ranked = order_endpoints(endpoints, own)
    if not ranked or not is_lan(ranked[0][0]) or ranked[0] not in endpoints:
        return default
    best = ranked[0]
    if _subnet(best[0]) not in {_subnet(h) for h, _ in own if is_lan(h)}:
        return default
    theirs = {h for h, _ in endpoints if not is_lan(h)}
    ours = {h for h, _ in own if not is_lan(h)}
    if theirs and not theirs & ours:
        return default  # a LAN like ours, but behind another NAT
    return best


_ROAMED = {"direct": "the peer's traffic reached us directly",
           "relayed": "the peer's traffic came through the relay",
           "none": "no endpoint"}


class Decision(enum.Enum):
    PROBE = "probe"  # send a handshake initiation on the direct path
    FALL_BACK = "fall back"  # the direct path is dead: move to a relay


@dataclass(frozen=True)
class Observed:
    """What `observe` returns for one peer: decisions, and a punch due time to set (None:
    leave the hole puncher's schedule alone)."""

    decisions: tuple[Decision, ...] = ()
    punch_at: float | None = None


@dataclass(frozen=True)
class PathReport:
    """Why a peer's traffic takes the path it takes (MeshNode.path_report, `status`)."""

    path: str  # "direct" | "relayed" | "none"
    endpoint: Endpoint | None  # where WireGuard sends: the peer, or the relay
    via: bytes | None  # the relay's identity key
    via_endpoint: Endpoint | None
    own_nat: str
    peer_nat: str
    last_punch: str | None  # "succeeded" | "failed" | "no rendezvous" | None
    last_punch_age: float | None  # seconds
    next_punch_in: float | None  # seconds; None: none planned
    reason: str  # one line


@dataclass
class _Peer:
    mode: str = "none"  # as last observed: "direct" | "relayed" | "none"
    since: float = 0.0  # in this mode since
    why: str = ""  # why it is in this mode
    backoff: float = 0.0  # 0: the next failure waits BASE_BACKOFF
    fingerprint: object = None
    last_punch: str | None = None
    last_punch_at: float | None = None
    rx: int = -1
    hs: float = -1.0
    tx: int = 0  # tx bytes at the last sign of life
    alive_at: float = 0.0  # the last sign of life (rx or handshake moved)
    unanswered: float | None = None  # data sent after alive_at, noticed at
    probe_at: float | None = None


@dataclass
class PathSelector:
    rng: Rng
    counters: Counter[str] = field(default_factory=Counter)
    own_seen: object = None  # our own endpoints as last seen by the mesh node
    _peers: dict[bytes, _Peer] = field(default_factory=dict)
    _next_check: float = float("-inf")

    # timers ------------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        return self._next_check if self._peers else None

    def due(self, now: float) -> bool:
        """Whether the node should observe its peers now (at most every CHECK_EVERY)."""
        if now < self._next_check:
            return False
        self._next_check = now + CHECK_EVERY
        return True

    # observations ------------------------------------------------------------------------

    def observe(self, now: float, peer: bytes, mode: str, handshake: float, rx: int, tx: int,
                fingerprint: object) -> Observed:
        """One look at a peer: `mode` is the path its WireGuard endpoint takes now ("direct",
        "relayed", or "none" without an endpoint), `handshake`/`rx`/`tx` the device's last
        handshake time and byte counters, `fingerprint` both sides' advertised endpoints and
        NAT types."""
        st = self._peers.get(peer)
        if st is None:
            st = self._peers[peer] = _Peer(since=now, alive_at=now)
        if mode != st.mode:  # not moved by the node: authenticated traffic roamed it
            self._enter(now, peer, st, mode, _ROAMED[mode])
        punch_at: float | None = None
        if st.fingerprint is not None and fingerprint != st.fingerprint and mode != "direct":
            # an endpoint or a NAT type changed on either side: try again now
            # (after RESET_DELAY: the rendezvous must know the new record to forward to it)
            st.backoff = 0.0
            punch_at = now + RESET_DELAY * self.rng.uniform(1 - JITTER, 1 + JITTER)
            self.counters["path_punch_reset"] += 1
        st.fingerprint = fingerprint
        decisions: list[Decision] = []
        if handshake != st.hs or rx != st.rx:
            st.hs, st.rx, st.tx, st.alive_at = handshake, rx, tx, now
            st.unanswered = None
        elif tx - st.tx > KEEPALIVE_SLACK and st.unanswered is None:
            st.unanswered = now
        if mode == "direct":
            if now - st.since >= STABLE and st.backoff:
                st.backoff = 0.0  # the direct path has held: the next failure starts over
            u = st.unanswered
            if u is not None and now - u >= PROBE_AFTER:
                probed = st.probe_at is not None and st.probe_at >= st.alive_at
                if probed and st.probe_at is not None:
                    if now - st.probe_at >= PROBE_WAIT and now - u >= DEAD_AFTER:
                        decisions.append(Decision.FALL_BACK)
                        self.counters["path_direct_dead"] += 1
                elif st.probe_at is None or now - st.probe_at >= PROBE_EVERY:
                    st.probe_at = now
                    decisions.append(Decision.PROBE)
                    self.counters["path_probes_sent"] += 1
        else:
            st.unanswered = st.probe_at = None
        return Observed(tuple(decisions), punch_at)

    def _enter(self, now: float, peer: bytes, st: _Peer, mode: str, why: str) -> None:
        if st.mode in ("direct", "relayed") and mode in ("direct", "relayed"):
            self.counters[f"path_{'relay' if st.mode == 'relayed' else 'direct'}_to_"
                          f"{'relay' if mode == 'relayed' else 'direct'}"] += 1
        elif mode != "none":
            self.counters[f"path_first_{mode}"] += 1
        st.mode, st.since, st.why = mode, now, why
        st.unanswered = st.probe_at = None

    def moved(self, now: float, peer: bytes, mode: str, why: str) -> None:
        """The node moved the peer to `mode` itself (a punch, a fallback, following the
        peer), for `why` (one line)."""
        st = self._peers.get(peer)
        if st is None:
            st = self._peers[peer] = _Peer(since=now, alive_at=now)
        if st.mode != mode:
            self._enter(now, peer, st, mode, why)
        else:
            st.why = why

    def in_grace(self, now: float, peer: bytes) -> bool:
        """Whether the peer went direct less than GRACE seconds ago (relayed datagrams then
        are ones that were in flight)."""
        st = self._peers.get(peer)
        return st is not None and st.mode == "direct" and now - st.since < GRACE

    # punches -----------------------------------------------------------------------------

    def punched(self, now: float, peer: bytes, result: str) -> float | None:
        """A punch ended with `result` ("succeeded", "failed", "no rendezvous"); for a
        failure, the time the next one is due (the backoff doubles, jittered)."""
        st = self._peers.get(peer)
        if st is None:
            st = self._peers[peer] = _Peer(since=now, alive_at=now)
        st.last_punch, st.last_punch_at = result, now
        self.counters[f"path_punch_{result.replace(' ', '_')}"] += 1
        if result == "succeeded":
            return None
        return now + self._next_backoff(st)

    def after_fallback(self, now: float, peer: bytes) -> float:
        """When to punch again after the direct path died (the backoff is not reset)."""
        st = self._peers.get(peer)
        if st is None:
            st = self._peers[peer] = _Peer(since=now, alive_at=now)
        return now + self._next_backoff(st)

    def _next_backoff(self, st: _Peer) -> float:
        b = BASE_BACKOFF if st.backoff <= 0 else min(st.backoff * 2, MAX_BACKOFF)
        st.backoff = b
        return b * self.rng.uniform(1 - JITTER, 1 + JITTER)

    def forget(self, keep: Iterable[bytes]) -> None:
        """Drop the state of peers no longer configured."""
        k = set(keep)
        for p in [p for p in self._peers if p not in k]:
            del self._peers[p]

    # what the user sees ------------------------------------------------------------------

    def state(self, peer: bytes) -> tuple[str, str, float] | None:
        """(mode, why, since) of a peer, None if never observed."""
        st = self._peers.get(peer)
        return None if st is None else (st.mode, st.why, st.since)

    def last_punch(self, now: float, peer: bytes) -> tuple[str | None, float | None]:
        st = self._peers.get(peer)
        if st is None or st.last_punch_at is None:
            return None, None
        return st.last_punch, now - st.last_punch_at
