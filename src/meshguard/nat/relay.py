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
into a RelayData hop to the relay, and `receive` turns a relayed datagram into (payload,
placeholder source) for the device, so roaming keeps the placeholder while traffic is relayed.

Relay side (a public member): a hop from a current member, with a valid MAC, for another
current member is re-MACed and sent to the address that member last registered from (or its
gossip endpoint). Each origin is rate-limited (`rate` datagrams per second, with a burst of the
same size).

Authentication: each hop carries a keyed BLAKE2s MAC under a key the two hop ends share:
BLAKE2s(label, X25519(their WireGuard keys), sorted identity keys), as for gossip.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from meshguard.crypto.hashes import blake2s, mac
from meshguard.crypto.keys import X25519PrivateKey
from meshguard.errors import CryptoError, WireFormatError
from meshguard.wire import relay as wire
from meshguard.wire.gossip import EP_LEN, decode_endpoint, encode_endpoint
from meshguard.wire.relay import RelayMessage

Endpoint = tuple[str, int]
RELAY_HOST = "0.0.0.0"  # placeholder endpoints (RELAY_HOST, n): never a real destination
LABEL = b"meshguard relay key v1"
NAT_PUBLIC = 1


@dataclass(frozen=True)
class RelayPeer:
    identity_key: bytes
    wg_key: bytes | None
    gossip_endpoint: Endpoint | None
    nat_type: int
    alive: bool


@dataclass(frozen=True)
class Send:
    data: bytes
    endpoint: Endpoint


def _eq(a: bytes, b: bytes) -> bool:
    if len(a) != len(b):
        return False
    r = 0
    for x, y in zip(a, b, strict=True):
        r |= x ^ y
    return r == 0


@dataclass
class Relay:
    identity_key: bytes
    wg_private: X25519PrivateKey
    register_interval: float = 5.0
    rate: float = 20000.0
    counters: Counter[str] = field(default_factory=Counter)
    behind_nat: bool = False
    rtt: dict[bytes, float] = field(default_factory=dict)  # relay identity -> smoothed RTT
    via: dict[bytes, bytes] = field(default_factory=dict)  # relayed peer -> relay identity
    # relay identity -> our address as that relay sees it (its registration echo says)
    observed: dict[bytes, Endpoint] = field(default_factory=dict)
    _keys: dict[tuple[bytes, bytes], bytes] = field(default_factory=dict)
    _seen_at: dict[bytes, Endpoint] = field(default_factory=dict)  # where members register from
    _pending: dict[bytes, float] = field(default_factory=dict)  # registration sent at
    _next_register: float = float("-inf")
    _placeholder: dict[bytes, Endpoint] = field(default_factory=dict)
    _by_placeholder: dict[Endpoint, bytes] = field(default_factory=dict)
    _buckets: dict[bytes, tuple[float, float]] = field(default_factory=dict)

    # placeholders ------------------------------------------------------------------------

    def placeholder(self, peer: bytes) -> Endpoint:
        ep = self._placeholder.get(peer)
        if ep is None:
            ep = (RELAY_HOST, len(self._placeholder) + 1)
            self._placeholder[peer] = ep
            self._by_placeholder[ep] = peer
        return ep

    @staticmethod
    def is_placeholder(ep: Endpoint | None) -> bool:
        return ep is not None and ep[0] == RELAY_HOST

    def relay_endpoint(self, peer: bytes, members: Mapping[bytes, RelayPeer]) -> Endpoint | None:
        r = self.via.get(peer)
        m = members.get(r) if r is not None else None
        return m.gossip_endpoint if m is not None else None

    # choosing a relay --------------------------------------------------------------------

    def best_relay(self, members: Mapping[bytes, RelayPeer], exclude: bytes = b""
                   ) -> bytes | None:
        """The alive public member with the lowest measured RTT (None if none answered)."""
        best: tuple[float, bytes] | None = None
        for k, m in members.items():
            if k in (exclude, self.identity_key) or not m.alive or m.nat_type != NAT_PUBLIC:
                continue
            rtt = self.rtt.get(k)
            if rtt is not None and (best is None or (rtt, k) < best):
                best = (rtt, k)
        return best[1] if best else None

    def start(self, peer: bytes, members: Mapping[bytes, RelayPeer]) -> bool:
        r = self.best_relay(members, exclude=peer)
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

    def tick(self, now: float, members: Mapping[bytes, RelayPeer]) -> list[Send]:
        if not self.behind_nat or now < self._next_register:
            return []
        self._next_register = now + self.register_interval
        out: list[Send] = []
        for k, m in members.items():
            if m.alive and m.nat_type == NAT_PUBLIC and m.gossip_endpoint is not None:
                data = self._hop(m, self.identity_key, k, b"")
                if data is not None:
                    self._pending[k] = now
                    out.append(Send(data, m.gossip_endpoint))
        self.prune(members)
        return out

    def prune(self, members: Mapping[bytes, RelayPeer]) -> bool:
        """Forget relayed peers that are gone and relays that died; True if any was."""
        gone = [k for k, r in self.via.items()
                if k not in members or not members[k].alive
                or r not in members or not members[r].alive]
        for k in gone:
            del self.via[k]
        return bool(gone)

    # datagrams ---------------------------------------------------------------------------

    def wrap(self, endpoint: Endpoint, data: bytes, members: Mapping[bytes, RelayPeer]
             ) -> Send | None:
        """A device datagram to a placeholder endpoint -> the RelayData hop to its relay."""
        peer = self._by_placeholder.get(endpoint)
        r = self.via.get(peer) if peer is not None else None
        m = members.get(r) if r is not None else None
        if peer is None or m is None or m.gossip_endpoint is None:
            self.counters["relay_no_route"] += 1
            return None
        out = self._hop(m, self.identity_key, peer, data)
        if out is None:
            return None
        self.counters["relay_tx"] += 1
        return Send(out, m.gossip_endpoint)

    def receive(self, now: float, data: bytes, src: Endpoint,
                members: Mapping[bytes, RelayPeer]
                ) -> tuple[list[Send], tuple[bytes, Endpoint] | None]:
        """-> (hops to send, (payload, placeholder source) for the device or None)."""
        try:
            m = wire.decode(data)
        except WireFormatError:
            self.counters["relay_garbage"] += 1
            return [], None
        hop = members.get(m.hop)
        if hop is None or not hop.alive or m.hop == self.identity_key:
            self.counters["relay_unknown_hop"] += 1
            return [], None
        key = self._key(hop)
        if key is None or not _eq(mac(key, wire.authenticated_part(m)), m.mac):
            self.counters["relay_bad_mac"] += 1
            return [], None
        if m.target == self.identity_key:
            if m.origin == m.hop:
                if m.hop in self._pending and len(m.payload) == EP_LEN:  # our echo
                    sample = now - self._pending.pop(m.hop)
                    old = self.rtt.get(m.hop)
                    self.rtt[m.hop] = sample if old is None else 0.875 * old + 0.125 * sample
                    self.counters["relay_rtt_samples"] += 1
                    try:
                        self.observed[m.hop] = decode_endpoint(m.payload)
                    except WireFormatError:
                        self.counters["relay_garbage"] += 1
                    return [], None
                if not m.payload:  # a registration: remember the address, echo it
                    self._seen_at[m.hop] = src
                    self.counters["relay_registrations"] += 1
                    echo = self._hop(hop, self.identity_key, m.hop, encode_endpoint(src))
                    return ([Send(echo, src)] if echo is not None else []), None
                self.counters["relay_not_forwarded"] += 1
                return [], None
            if m.origin not in members:
                self.counters["relay_unknown_origin"] += 1
                return [], None
            # a relayed datagram for us: answer through the same relay
            self.via[m.origin] = m.hop
            self.counters["relay_rx"] += 1
            return [], (m.payload, self.placeholder(m.origin))
        # we are the relay
        if m.origin != m.hop:
            self.counters["relay_not_forwarded"] += 1
            return [], None
        self._seen_at[m.hop] = src
        target = members.get(m.target)
        dst = self._seen_at.get(m.target) or (target.gossip_endpoint if target else None)
        if target is None or not target.alive or dst is None:
            self.counters["relay_not_forwarded"] += 1
            return [], None
        level, last = self._buckets.get(m.origin, (self.rate, now))
        level = min(self.rate, level + (now - last) * self.rate)
        if level < 1.0:
            self._buckets[m.origin] = (level, now)
            self.counters["relay_rate_limited"] += 1
            return [], None
        self._buckets[m.origin] = (level - 1.0, now)
        out = self._hop(target, m.origin, m.target, m.payload)
        if out is None:
            return [], None
        self.counters["relay_forwarded"] += 1
        return [Send(out, dst)], None

    # helpers -----------------------------------------------------------------------------

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

    def _hop(self, to: RelayPeer, origin: bytes, target: bytes, payload: bytes) -> bytes | None:
        key = self._key(to)
        if key is None:
            return None
        body = wire.authenticated_part(RelayMessage(self.identity_key, origin, target, payload))
        return body + mac(key, body)
