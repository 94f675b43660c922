"""Sans-IO relay through a public member (RelayData 0x31) for members that cannot punch.

Client side (a member behind a NAT): every `register_interval` seconds it registers with each
PUBLIC member (an empty RelayData to that member), which keeps the NAT mapping toward it open,
tells the relay the address it really sees (a symmetric NAT's port differs from the advertised
one), and measures the round-trip time from the echo (smoothed, RFC 6298 style). The echo
carries the address the relay saw (`observed`): behind a symmetric NAT that is the only address
of ours a public member can reach, so the mesh layer advertises it (the STUN mapping, made
toward another destination, is useless there). A peer that cannot be reached directly (the
hole punch failed) is relayed through the member with the lowest measured RTT. WireGuard keeps
its end-to-end encryption; the relay only moves its datagrams.

The WireGuard device addresses a relayed peer by a placeholder endpoint (RELAY_HOST, n), which
is never a real destination: `wrap(endpoint, data)` turns a device datagram to a placeholder
into a RelayData hop to the relay, and `receive` turns a relayed datagram into a
`RelayDelivered` (payload, placeholder source) for the device, so roaming keeps the placeholder
while traffic is relayed.

The core sees the members through `members`, a callable returning the current view (identity
key -> RelayPeer), given at construction or bound later by the mesh node. `receive` and `tick`
return `RelayAction`s: `SendDatagram`s, `RelayDelivered`, and `RelayObserved` when a relay's echo
reports a new address of ours.

Relay side (a public member): a hop from a current member, with a valid MAC, for another
current member is re-MACed and sent to the address that member last confirmed (or its gossip
endpoint). Each origin is rate-limited (`rate` datagrams per second, with a burst of the same
size).

Authentication: each hop carries a keyed BLAKE2s MAC under a key the two hop ends share:
BLAKE2s(label, X25519(their WireGuard keys), sorted identity keys), as for gossip. A relayed
datagram also carries the origin's end-to-end tag under the key the origin shares with the
target, over the relay's identity too (wire/relay.py): the target takes a relayed datagram for
origin X only if X made it and sent it to this very relay, so no member can claim to relay
for another, nor pass on what X sent through someone else.

Freshness: every message carries its origin's counter (one more per message; its high bits
are the origin's wall-clock second, restarted from the clock whenever it lags more than
`COUNTER_LAG` seconds, so it also grows across restarts). Each receiver keeps a replay window
per (origin, target) (nat/replay.py), so a hop is forwarded once and a datagram delivered
once, and refuses counters more than `max_skew` seconds off its own clock, so nothing old is
taken after a restart either. A registration only moves where a member's traffic goes once
the member confirms it: the echo carries a cookie (a MAC under the relay's secret over the
member and the address the registration came from, valid for two `COOKIE_PERIOD`s), and only
a confirmation with that cookie, MACed by the member and arriving from that address, sets it.
A registration replayed from elsewhere, or a captured confirmation, moves nothing.

Cost of bad input, cheapest first: decode and member lookups (no crypto); the counter's time
and replay window (read-only); then, unless this source already proved itself for this hop
sender, a token from the source's and from the global budget (nat/budget.py); only then one
MAC (the DH behind the pair key happens once per member and is cached), and for a relayed
datagram the end-to-end tag. Every drop is counted in `counters` by reason.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from meshguard.crypto.hashes import blake2s, mac
from meshguard.crypto.hashes import equal as _eq
from meshguard.crypto.keys import X25519PrivateKey
from meshguard.errors import CryptoError, WireFormatError
from meshguard.nat.budget import SourceBudget, TokenBucket
from meshguard.nat.replay import Windows
from meshguard.sansio import Endpoint, SendDatagram
from meshguard.wire import relay as wire
from meshguard.wire.gossip import EP_LEN, decode_endpoint, encode_endpoint
from meshguard.wire.relay import COUNTER_TIME_SHIFT, NO_TAG, RelayMessage

RELAY_HOST = "0.0.0.0"  # placeholder endpoints (RELAY_HOST, n): never a real destination
LABEL = b"meshguard relay key v2"  # v2: counters and end-to-end tags
COOKIE_LABEL = b"meshguard relay cookie v1"
NAT_PUBLIC = 1
COOKIE_LEN = 16
COOKIE_PERIOD = 60.0  # seconds; a cookie is valid in its period and the next
COUNTER_LAG = 10  # seconds the counter's time may lag the clock before it jumps to it
MAX_KNOWN_SOURCES = 4096


@dataclass(frozen=True)
class RelayPeer:
    identity_key: bytes
    wg_key: bytes | None
    gossip_endpoint: Endpoint | None
    nat_type: int
    alive: bool


@dataclass(frozen=True, slots=True)
class RelayDelivered:
    """A relayed datagram for us: `payload` for the WireGuard device from the placeholder
    `source`; `new_path` when its origin was not reached through a relay before."""

    payload: bytes
    source: Endpoint
    new_path: bool


@dataclass(frozen=True, slots=True)
class RelayObserved:
    """Relay `relay` echoed a new address of ours: `endpoint` is where it sees us."""

    relay: bytes
    endpoint: Endpoint


RelayAction = SendDatagram | RelayDelivered | RelayObserved


def _no_members() -> Mapping[bytes, RelayPeer]:
    return {}


def _default_budget() -> SourceBudget:
    # checks for sources that have not proved themselves: 20/s per host (bursts of 50),
    # 500/s in all (bursts of 1000); proven sources are not limited here
    return SourceBudget(20.0, 50.0, 500.0, 1000.0)


@dataclass
class Relay:
    identity_key: bytes
    wg_private: X25519PrivateKey
    register_interval: float = 5.0
    rate: float = 20000.0
    register_rate: float = 1.0  # registrations answered per member per second (bursts of 5)
    max_skew: float = 120.0  # seconds a counter's time may be off our clock
    counters: Counter[str] = field(default_factory=Counter)
    behind_nat: bool = False
    rtt: dict[bytes, float] = field(default_factory=dict)  # relay identity -> smoothed RTT
    via: dict[bytes, bytes] = field(default_factory=dict)  # relayed peer -> relay identity
    # relay identity -> our address as that relay sees it (its registration echo says)
    observed: dict[bytes, Endpoint] = field(default_factory=dict)
    cookie_secret: bytes = b""  # 32 random bytes from the caller's Rng (required)
    budget: SourceBudget = field(default_factory=_default_budget)
    members: Callable[[], Mapping[bytes, RelayPeer]] = _no_members  # identity -> member
    _keys: dict[tuple[bytes, bytes], bytes] = field(default_factory=dict)
    _seen_at: dict[bytes, Endpoint] = field(default_factory=dict)  # confirmed addresses
    _pending: dict[bytes, float] = field(default_factory=dict)  # registration sent at
    _next_register: float = float("-inf")
    _placeholder: dict[bytes, Endpoint] = field(default_factory=dict)
    _by_placeholder: dict[Endpoint, bytes] = field(default_factory=dict)
    _buckets: dict[bytes, tuple[float, float]] = field(default_factory=dict)
    _reg_buckets: dict[bytes, TokenBucket] = field(default_factory=dict)
    _windows: Windows = field(default_factory=Windows)
    _proven: dict[Endpoint, bytes] = field(default_factory=dict)  # source -> hop it MACed as
    _counter: int = 0  # the last counter we used
    _wall: float = 0.0  # the latest wall-clock time we were given

    # placeholders ------------------------------------------------------------------------

    def placeholder(self, peer: bytes) -> Endpoint:
        ep = self._placeholder.get(peer)
        if ep is None:
            ep = (RELAY_HOST, len(self._placeholder) + 1)
            self._placeholder[peer] = ep
            self._by_placeholder[ep] = peer
        return ep

    def peer_of(self, placeholder: Endpoint) -> bytes | None:
        """The member a placeholder endpoint stands for."""
        return self._by_placeholder.get(placeholder)

    @staticmethod
    def is_placeholder(ep: Endpoint | None) -> bool:
        return ep is not None and ep[0] == RELAY_HOST

    def relay_endpoint(self, peer: bytes) -> Endpoint | None:
        members = self.members()
        r = self.via.get(peer)
        m = members.get(r) if r is not None else None
        return m.gossip_endpoint if m is not None else None

    # choosing a relay --------------------------------------------------------------------

    def best_relay(self, exclude: bytes = b"") -> bytes | None:
        """The alive public member with the lowest measured RTT (None if none answered)."""
        members = self.members()
        best: tuple[float, bytes] | None = None
        for k, rtt in self.rtt.items():
            m = members.get(k)
            if k in (exclude, self.identity_key) or m is None or not m.alive \
                    or m.nat_type != NAT_PUBLIC:
                continue
            if best is None or (rtt, k) < best:
                best = (rtt, k)
        return best[1] if best else None

    def start(self, peer: bytes) -> bool:
        r = self.best_relay(exclude=peer)
        if r is None:
            self.counters["relay_unavailable"] += 1
            return False
        self.via[peer] = r
        self.counters["relay_started"] += 1
        return True

    def stop(self, peer: bytes) -> None:
        self.via.pop(peer, None)

    # client timers -----------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        return self._next_register if self.behind_nat else None

    def tick(self, now: float, wall: float) -> list[RelayAction]:
        self._wall = wall
        if not self.behind_nat or now < self._next_register:
            return []
        self._next_register = now + self.register_interval
        members = self.members()
        out: list[RelayAction] = []
        for k, m in members.items():
            if m.alive and m.nat_type == NAT_PUBLIC and m.gossip_endpoint is not None:
                data = self._hop(m, self.identity_key, k, self._next_counter(), b"")
                if data is not None:
                    self._pending[k] = now
                    out.append(SendDatagram(data, m.gossip_endpoint))
        self.prune()
        return out

    def prune(self) -> bool:
        """Forget relayed peers that are gone and relays that died; True if any was."""
        members = self.members()
        gone = [k for k, r in self.via.items()
                if k not in members or not members[k].alive
                or r not in members or not members[r].alive]
        for k in gone:
            del self.via[k]
        return bool(gone)

    # datagrams ---------------------------------------------------------------------------

    def wrap(self, endpoint: Endpoint, data: bytes) -> SendDatagram | None:
        """A device datagram to a placeholder endpoint -> the RelayData hop to its relay."""
        members = self.members()
        peer = self._by_placeholder.get(endpoint)
        r = self.via.get(peer) if peer is not None else None
        m = members.get(r) if r is not None else None
        t = members.get(peer) if peer is not None else None
        if peer is None or m is None or m.gossip_endpoint is None or t is None:
            self.counters["relay_no_route"] += 1
            return None
        counter = self._next_counter()
        tag = self._tag(t, m.identity_key, peer, counter, data)
        out = self._hop(m, self.identity_key, peer, counter, data, tag) if tag else None
        if out is None:
            self.counters["relay_no_key"] += 1
            return None
        self.counters["relay_tx"] += 1
        self.counters["relay_tx_bytes"] += len(data)  # WireGuard bytes, not the hop's
        return SendDatagram(out, m.gossip_endpoint)

    def receive(self, now: float, wall: float, data: bytes, src: Endpoint
                ) -> list[RelayAction]:
        """Hops to send, or the payload for the device (RelayDelivered)."""
        self._wall = wall
        try:
            m = wire.decode(data)
        except WireFormatError:
            self.counters["relay_garbage"] += 1
            return []
        # cheap checks first: lookups, the counter's time and the replay window
        members = self.members()
        hop = members.get(m.hop)
        if hop is None or not hop.alive or m.hop == self.identity_key:
            self.counters["relay_unknown_hop"] += 1
            return []
        direct = m.origin == m.hop
        for_us = m.target == self.identity_key
        if not for_us and not direct:
            self.counters["relay_not_forwarded"] += 1  # no relay chains, no reflection
            return []
        origin = hop if direct else members.get(m.origin)
        if origin is None or not origin.alive or m.origin == self.identity_key:
            self.counters["relay_unknown_origin"] += 1
            return []
        sent = m.counter >> COUNTER_TIME_SHIFT
        if not wall - self.max_skew - COUNTER_LAG <= sent <= wall + self.max_skew:
            self.counters["relay_stale"] += 1
            return []
        wkey = (m.origin, m.target)
        if not self._windows.check(wkey, m.counter):
            self.counters["relay_replayed"] += 1
            return []
        if self._proven.get(src) != m.hop:
            limited = self.budget.take(now, src[0])
            if limited is not None:
                self.counters["relay_" + limited] += 1
                return []
        key = self._key(hop)
        if key is None or not _eq(mac(key, data[:-wire.MAC_LEN]), m.mac):
            self.counters["relay_bad_mac"] += 1
            return []
        if self._proven.get(src) != m.hop:
            if len(self._proven) >= MAX_KNOWN_SOURCES:
                self._proven.clear()
            self._proven[src] = m.hop
        if for_us and not direct:
            okey = self._key(origin)
            if okey is None or not _eq(mac(okey, wire.end_to_end_part(m.hop, m)), m.tag):
                self.counters["relay_bad_origin"] += 1
                return []
        if not self._windows.accept(wkey, m.counter):
            self.counters["relay_replayed"] += 1
            return []
        if for_us and direct:
            return self._direct(now, m, hop, src)
        if for_us:
            # a relayed datagram for us, made by its origin for this relay: answer through it
            new_path = m.origin not in self.via
            self.via[m.origin] = m.hop
            self.counters["relay_rx"] += 1
            self.counters["relay_rx_bytes"] += len(m.payload)
            return [RelayDelivered(m.payload, self.placeholder(m.origin), new_path)]
        return self._forward(now, m, members)

    # helpers -----------------------------------------------------------------------------

    def _direct(self, now: float, m: RelayMessage, hop: RelayPeer, src: Endpoint
                ) -> list[RelayAction]:
        """A registration, a confirmation or an echo (origin == hop, target == us)."""
        n = len(m.payload)
        if n == 0:  # a registration: echo the address it came from (and a cookie to confirm)
            b = self._reg_buckets.get(m.hop)
            if b is None:
                if len(self._reg_buckets) > 4096:
                    self._reg_buckets.clear()
                b = self._reg_buckets[m.hop] = TokenBucket(self.register_rate, 5.0)
            if not b.take(now):  # (a member spoofing a victim's address gets few echoes)
                self.counters["relay_registration_limited"] += 1
                return []
            self.counters["relay_registrations"] += 1
            payload = encode_endpoint(src)
            if self._seen_at.get(m.hop) != src:
                payload += self._cookie(now, m.hop, src)
            echo = self._hop(hop, self.identity_key, m.hop, self._next_counter(), payload)
            return [SendDatagram(echo, src)] if echo is not None else []
        if n == COOKIE_LEN:  # a confirmation: from now on the member's traffic goes to src
            if not any(_eq(self._cookie(now - d, m.hop, src), m.payload)
                       for d in (0.0, COOKIE_PERIOD)):
                self.counters["relay_bad_cookie"] += 1
                return []
            if self._seen_at.get(m.hop) != src:
                self.counters["relay_address_confirmed"] += 1
            self._seen_at[m.hop] = src
            return []
        if n in (EP_LEN, EP_LEN + COOKIE_LEN):  # an echo of our registration
            sent_at = self._pending.pop(m.hop, None)
            if sent_at is None:
                self.counters["relay_unexpected_echo"] += 1
                return []
            sample = now - sent_at
            old = self.rtt.get(m.hop)
            self.rtt[m.hop] = sample if old is None else 0.875 * old + 0.125 * sample
            self.counters["relay_rtt_samples"] += 1
            try:
                ep = decode_endpoint(m.payload[:EP_LEN])
            except WireFormatError:
                self.counters["relay_garbage"] += 1
                return []
            observed: list[RelayAction] = []
            if self.observed.get(m.hop) != ep:
                self.observed[m.hop] = ep
                observed.append(RelayObserved(m.hop, ep))
            if n == EP_LEN:
                return observed
            confirm = self._hop(hop, self.identity_key, m.hop, self._next_counter(),
                                m.payload[EP_LEN:])
            sends: list[RelayAction] = [SendDatagram(confirm, src)] if confirm is not None else []
            return sends + observed
        self.counters["relay_not_forwarded"] += 1
        return []

    def _forward(self, now: float, m: RelayMessage, members: Mapping[bytes, RelayPeer]
                 ) -> list[RelayAction]:
        """We are the relay: pass the origin's hop on to the target."""
        target = members.get(m.target)
        dst = self._seen_at.get(m.target) or (target.gossip_endpoint if target else None)
        if target is None or not target.alive or dst is None:
            self.counters["relay_not_forwarded"] += 1
            return []
        level, last = self._buckets.get(m.origin, (self.rate, now))
        level = min(self.rate, level + (now - last) * self.rate)
        if level < 1.0:
            self._buckets[m.origin] = (level, now)
            self.counters["relay_rate_limited"] += 1
            return []
        self._buckets[m.origin] = (level - 1.0, now)
        if len(self._buckets) > 4096:
            self._buckets.clear()
        out = self._hop(target, m.origin, m.target, m.counter, m.payload, m.tag)
        if out is None:
            self.counters["relay_no_key"] += 1
            return []
        self.counters["relay_forwarded"] += 1
        self.counters["relay_forwarded_bytes"] += len(m.payload)
        return [SendDatagram(out, dst)]

    def _key(self, m: RelayPeer) -> bytes | None:
        if m.wg_key is None:
            return None
        k = self._keys.get((m.identity_key, m.wg_key))
        if k is None:
            try:
                shared = self.wg_private.exchange(m.wg_key)
            except CryptoError:
                return None
            mine = self.wg_private.public_key.raw
            w0, w1 = sorted((mine, m.wg_key))
            i0, i1 = sorted((self.identity_key, m.identity_key))
            k = blake2s(LABEL, shared, w0, w1, i0, i1)
            if len(self._keys) > 4096:
                self._keys.clear()
            self._keys[(m.identity_key, m.wg_key)] = k
        return k

    def _next_counter(self) -> int:
        base = int(self._wall) << COUNTER_TIME_SHIFT
        c = self._counter + 1
        if c < base - (COUNTER_LAG << COUNTER_TIME_SHIFT):
            c = base  # first use, or the counter lags the clock: jump to it
        self._counter = c
        return c

    def __post_init__(self) -> None:
        if len(self.cookie_secret) != 32:
            raise ValueError("Relay needs cookie_secret: 32 random bytes (Rng.bytes(32))")

    def _cookie(self, now: float, member: bytes, src: Endpoint) -> bytes:
        period = int(now // COOKIE_PERIOD).to_bytes(8, "little", signed=True)
        return mac(self.cookie_secret, COOKIE_LABEL, member, encode_endpoint(src), period)

    def _tag(self, target: RelayPeer, relay: bytes, peer: bytes, counter: int, payload: bytes
             ) -> bytes | None:
        key = self._key(target)
        if key is None:
            return None
        m = RelayMessage(relay, self.identity_key, peer, payload, counter)
        return mac(key, wire.end_to_end_part(relay, m))

    def _hop(self, to: RelayPeer, origin: bytes, target: bytes, counter: int, payload: bytes,
             tag: bytes = NO_TAG) -> bytes | None:
        key = self._key(to)
        if key is None:
            return None
        body = wire.authenticated_part(RelayMessage(self.identity_key, origin, target, payload,
                                                    counter, tag))
        return body + mac(key, body)
