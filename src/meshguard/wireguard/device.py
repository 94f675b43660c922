"""The multi-peer WireGuard device: a sans-IO core (docs/architecture.md#the-sans-io-contract).

Nothing here does I/O. Every entry point takes `now` (monotonic seconds) and, where a TAI64N
timestamp may be needed, `wall` (unix seconds); randomness comes from the injected Rng.
The mechanisms live one per module, as in wireguard-go's device/: handshakes in handshake.py,
transport framing, sealing and the receive policy in transport.py, peers in peer.py, timers in
timers.py and what their expiry does in timer_actions.py; this module holds the peer set,
routing and the two paths that use them.

Slow path (returns a list of actions, see actions.py: SendDatagram, WriteTun,
HandshakeCompleted, PeerKeysExpired, HandshakeGaveUp):

    receive(now, wall, data, src)  a UDP datagram from `src`
    send_packet(now, wall, ip_packet)       an IP packet read from the TUN
    tick(now, wall)                         run due timers; call again at next_deadline()
    send_keepalive(now, wall, peer)         e.g. when persistent keepalive is switched on
    initiate_handshake(now, wall, peer)     start a handshake (rate limited)

Receive checks run cheapest first: type and length, then the handshake guard
(cookie.HandshakeGuard: under load a per-source token bucket before any MAC, mac1, under load
mac2 / a cookie reply within a global budget and a per-source DH bucket), then DH and AEAD,
then the per-peer initiation rate and TAI64N replay check. The data-plane engine may swap the
guard for its C twin (use_guard) and run it on handshake messages as they are read; it then
reports what it refused with count_verdicts. Garbage is counted in `device.counters` under one
reason and dropped; receive never raises for remote input.

Fast path (for a data plane moving batches of packets per wake-up). Per batch, not per packet:

    send:    b = device.prepare_send(now, dst_address_bytes)      # None -> use send_packet()
             (or device.route(dst) to group by peer, then device.prepare_send_peer(now, peer))
             first = b.reserve(n)                                   # None -> use send_packet()
             data = transport.seal_batch(b.cipher.aead, b.receiver_index, first, packets)
                         (or the C fast path's seal_segments: the same bytes)
             actions = device.note_sent(now, b.peer, n, total_bytes, n_keepalive=0)
    receive: kp = device.keypair_for_receive(receiver_index, now)  # None -> unknown_index
             open the run of messages under kp.receive (fastpath.open_batch), then
             n, nbytes, keep = transport.accept_batch(kp, results, device.source_allowed,
                                                      src_ok, tun, drops)
             actions = device.note_received(now, kp, n, nbytes, src_endpoint,
                                            n_keepalive=keep)
             device.note_dropped(reason, n) for each drop reason counted

`route` caches destination -> peer lookups (the cache is cleared whenever allowed IPs
change). `note_sent` / `note_received` run the timer and statistics bookkeeping of the whole
batch once (keepalive timers, rekey after time/messages, promoting the `next` keypair on its
first use, roaming to the source endpoint, sending packets queued for a handshake). The slow
path is built from these same calls and the same accept_batch, so both paths give identical
bytes, verdicts and state (tests/wireguard/test_fastpath.py). `note_sent`/`note_received` may
start a handshake and need a wall time for its TAI64N: pass `wall=`, or the device
extrapolates from the last slow path call.

Knobs (constructor keywords; defaults and reasons in constants.py): under_load_threshold
(handshake messages per second before mac2 is demanded, default 200), under_load_hold (1 s),
rekey_after_time (the initiator's re-key age, REKEY_AFTER_TIME = 120 s; tests shorten it to
watch re-keying).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable

from meshguard.crypto.keys import X25519PrivateKey, X25519PublicKey
from meshguard.errors import CryptoError, MeshguardError, WireFormatError
from meshguard.rng import Rng
from meshguard.wire import wireguard as wire
from meshguard.wireguard.actions import (
    Action,
    Endpoint,
    HandshakeCompleted,
    SendDatagram,
    WriteTun,
)
from meshguard.wireguard.allowed_ips import AllowedIPs, IPNetwork
from meshguard.wireguard.constants import (
    MAX_STAGED_PACKETS,
    REKEY_AFTER_TIME,
    REKEY_ON_RECEIVE_AGE,
    REKEY_TIMEOUT,
    UNDER_LOAD_HANDSHAKES_PER_SECOND,
    UNDER_LOAD_HOLD_TIME,
)
from meshguard.wireguard.cookie import (
    Guard,
    HandshakeGuard,
    LoadView,
    cookie_key,
    mac1_key,
)
from meshguard.wireguard.counters import Counters
from meshguard.wireguard.handshake import Handshakes
from meshguard.wireguard.index import IndexTable
from meshguard.wireguard.keypair import Keypair, ReceiveKeypair
from meshguard.wireguard.peer import NO_PSK, DataPathTables, HandshakeState, Peer, SendBatch
from meshguard.wireguard.timer_actions import TimerActions
from meshguard.wireguard.timers import DeadlineBound
from meshguard.wireguard.transport import (
    DROP_REASONS,
    HEADER,
    accept_batch,
    inner_destination,
    inner_packet,
    open_result,
    open_transport,
    seal_batch,
    seal_transport,
)

__all__ = [
    "NO_PSK",
    "Device",
    "DeviceError",
    "Endpoint",
    "HandshakeState",
    "Peer",
    "ReceiveKeypair",
    "SendBatch",
    "inner_destination",
    "inner_packet",
    "open_transport",
    "seal_transport",
]

# removed peers whose greatest initiation timestamp is remembered, so an initiation captured
# before a removal is still a replay after the peer is added again (oldest forgotten first)
MAX_RETIRED_TIMESTAMPS = 4096
# static keys whose initiation was refused (no such peer yet), remembered for knocked()
MAX_KNOCKED = 256
_DST_CACHE_MAX = 4096


class DeviceError(MeshguardError):
    """Local misuse of the device API (bad peer key, bad allowed IP, ...)."""


# -- the device -------------------------------------------------------------------------


class Device(Handshakes, TimerActions):
    """A WireGuard interface's protocol state: peers, keys, timers, routing (sans-IO)."""

    def __init__(
        self,
        rng: Rng,
        private_key: X25519PrivateKey | None = None,
        *,
        under_load_threshold: int = UNDER_LOAD_HANDSHAKES_PER_SECOND,
        under_load_hold: float = UNDER_LOAD_HOLD_TIME,
        rekey_after_time: float = REKEY_AFTER_TIME,
    ) -> None:
        if not rekey_after_time > 0:
            raise DeviceError("rekey_after_time must be positive")
        self.rng = rng
        # applies to keypairs made from now on
        self.rekey_after_time = rekey_after_time
        self.listen_port = 0
        self.fwmark = 0
        self.counters = Counters()
        # the cheap-first checks of handshake messages (a C twin may replace it: use_guard)
        self.guard: Guard = HandshakeGuard(rng, under_load_threshold, under_load_hold)
        self._private_key: X25519PrivateKey | None = None
        self._peers: dict[bytes, Peer] = {}
        self._indices: IndexTable[Peer | Keypair] = IndexTable(rng)
        self._allowed: AllowedIPs[Peer] = AllowedIPs()
        self._dst_cache: dict[bytes, Peer | None] = {}
        self._static_static_map: dict[bytes, bytes] = {}
        self._retired_timestamps: dict[bytes, bytes] = {}  # public key -> greatest TAI64N
        # static key -> when its last initiation was refused for want of a peer (knocked())
        self._knocked: dict[bytes, float] = {}
        self._wall_offset: float | None = None
        self._ticked = float("-inf")  # `now` of the last tick
        self._bound = DeadlineBound()
        self.generation = 0  # see changed()
        self._on_change: Callable[[], None] | None = None
        self.set_private_key(private_key)

    # -- configuration ----------------------------------------------------------------------
    @property
    def private_key(self) -> X25519PrivateKey | None:
        return self._private_key

    @property
    def public_key(self) -> X25519PublicKey | None:
        return self._private_key.public_key if self._private_key is not None else None

    def set_private_key(self, key: X25519PrivateKey | None) -> None:
        """Change the static key: sessions are dropped, a peer with our own key is removed."""
        if key is not None and self._private_key is not None and key == self._private_key:
            return
        self._private_key = key
        self.changed()
        self._set_guard_keys()
        if key is not None:
            own = self._peers.get(key.public_key.raw)
            if own is not None:
                self.remove_peer(own.public_key)
        for peer in self._peers.values():
            self._clear_session_state(peer)
            self._precompute(peer)

    def _set_guard_keys(self) -> None:
        key = self._private_key
        if key is None:
            self.guard.set_keys(b"", b"")
        else:
            pub = key.public_key.raw
            self.guard.set_keys(mac1_key(pub), cookie_key(pub))

    @property
    def load(self) -> LoadView:
        """The load meter (threshold, hold, under_load(now)) of the handshake guard."""
        return self.guard.load

    @property
    def receiver_indices(self) -> dict[int, Peer | Keypair]:
        """The live receiver-index table (index -> Peer or Keypair), read only: the data plane
        drops transport messages naming no index in it before entering Python; they count as
        unknown_index either way."""
        return self._indices._entries

    def use_guard(self, guard: Guard) -> None:
        """Check handshake messages with `guard` from now on (the C twin of HandshakeGuard,
        built with the current guard's parameters; its buckets and load start afresh)."""
        self.guard = guard
        self._set_guard_keys()

    def count_verdicts(self, counts: Iterable[int]) -> None:
        """Count handshake messages the guard refused or answered (n per verdict, in the
        order of cookie.VERDICTS), e.g. those the data plane handled on its own."""
        for verdict, n in enumerate(counts):
            if n:
                self._count_verdict(verdict, n)

    def _precompute(self, peer: Peer) -> None:
        raw = peer.public_key.raw
        peer.static_static = None
        self._static_static_map.pop(raw, None)
        if self._private_key is None:
            return
        try:
            ss = self._private_key.exchange(raw)
        except CryptoError:
            return  # low-order peer key: it can never complete a handshake
        peer.static_static = ss
        self._static_static_map[raw] = ss

    def changed(self) -> None:
        """Say that peers, endpoints, keypairs or allowed IPs changed: `generation` moves on,
        and a data path holding a copy of the tables (datapath_tables) takes them again.
        The Device calls it itself; whoever sets a peer's endpoint directly calls it too."""
        self.generation += 1
        if self._on_change is not None:
            self._on_change()

    def watch_changes(self, callback: Callable[[], None] | None) -> None:
        """Call `callback` (with no arguments, at once) whenever `generation` moves: a data
        path that copied the tables schedules taking them again (None: stop)."""
        self._on_change = callback

    def datapath_tables(self) -> DataPathTables:
        """What a data path outside the interpreter needs to move transport data on its own:
        per peer its endpoint and current send keypair, the live receive keypairs (with
        whether each is the peer's `next`), and the allowed-IPs routes. A snapshot: take it
        again when `generation` moved."""
        peers: list[tuple[Peer, Endpoint | None, Keypair | None]] = []
        receive: list[tuple[Keypair, bool]] = []
        for peer in self._peers.values():
            kps = peer.keypairs
            peers.append((peer, peer.endpoint, kps.current))
            for kp in (kps.previous, kps.current, kps.next):
                if kp is not None and self._indices.get(kp.local_index) is kp:
                    receive.append((kp, kp is kps.next))
        return DataPathTables(peers, receive, self._allowed.entries())

    def peer(self, pub: X25519PublicKey) -> Peer | None:
        return self._peers.get(pub.raw)

    @property
    def peers(self) -> list[Peer]:
        return list(self._peers.values())

    def add_peer(self, pub: X25519PublicKey) -> Peer:
        """The peer with this key, created if new (idempotent)."""
        existing = self._peers.get(pub.raw)
        if existing is not None:
            return existing
        if self._private_key is not None and pub == self._private_key.public_key:
            raise DeviceError("a peer cannot have the interface's own public key")
        peer = Peer(pub, routes=self._allowed)
        peer.greatest_timestamp = self._retired_timestamps.pop(pub.raw, peer.greatest_timestamp)
        peer.timers.bound = self._bound
        self._peers[pub.raw] = peer
        self._precompute(peer)
        self.changed()
        return peer

    def note_knock(self, now: float, key: bytes) -> None:
        """An authenticated initiation came from `key`, which has no peer here (yet)."""
        knocked = self._knocked
        knocked.pop(key, None)
        if len(knocked) >= MAX_KNOCKED:
            knocked.pop(next(iter(knocked)))
        knocked[key] = now

    def knocked(self, key: bytes) -> bool:
        """An initiation from `key` was refused (no such peer) within REKEY_TIMEOUT of the
        last tick: its sender now waits REKEY_TIMEOUT to retransmit, so a peer added for it
        had better initiate at once (the mesh's DeviceBackend does)."""
        at = self._knocked.get(key)
        return at is not None and self._ticked - at <= REKEY_TIMEOUT

    def remove_peer(self, pub: X25519PublicKey) -> None:
        peer = self._peers.pop(pub.raw, None)
        if peer is None:
            return
        if any(peer.greatest_timestamp):
            retired = self._retired_timestamps
            retired.pop(pub.raw, None)
            if len(retired) >= MAX_RETIRED_TIMESTAMPS:
                retired.pop(next(iter(retired)))
            retired[pub.raw] = peer.greatest_timestamp
        self._clear_session_state(peer)
        peer.timers.stop_all()
        peer.timers.bound = None
        self._bound.valid = False
        self._allowed.remove_value(peer)
        peer.routes = None
        self._dst_cache.clear()
        self._static_static_map.pop(pub.raw, None)
        self.changed()

    def remove_all_peers(self) -> None:
        for peer in list(self._peers.values()):
            self.remove_peer(peer.public_key)

    def set_allowed_ips(
        self, peer: Peer, nets: Iterable[IPNetwork | str], replace: bool = True
    ) -> None:
        """Route these networks to peer (a network moves from any other peer to this one)."""
        parsed: list[IPNetwork] = []
        for n in nets:
            try:
                parsed.append(ipaddress.ip_network(n, strict=False))
            except ValueError as e:
                raise DeviceError(f"bad allowed IP {n!r}: {e}") from None
        if self._peers.get(peer.public_key.raw) is not peer:
            raise DeviceError("peer does not belong to this device")
        if replace:
            self._allowed.remove_value(peer)
        for net in parsed:
            self._allowed.insert(net, peer)
        self._dst_cache.clear()
        self.changed()

    def allowed_ips(self, peer: Peer) -> list[IPNetwork]:
        return self._allowed.networks_of(peer)

    def lookup_peer(self, address: bytes) -> Peer | None:
        """Longest-prefix match of a raw destination address."""
        return self._allowed.lookup(address)

    # -- fast path --------------------------------------------------------------------------
    def route(self, dst: bytes) -> Peer | None:
        cache = self._dst_cache
        try:
            return cache[dst]
        except KeyError:
            pass
        peer = self._allowed.lookup(dst)
        if len(cache) >= _DST_CACHE_MAX:
            cache.clear()
        cache[bytes(dst)] = peer
        return peer

    def prepare_send_peer(self, now: float, peer: Peer) -> SendBatch | None:
        """The peer's current send keypair and endpoint; None if a handshake is needed first
        (then hand the packets to send_packet, which queues them and starts it)."""
        kp = peer.keypairs.current
        ep = peer.endpoint
        if kp is None or ep is None or kp.send_expired(now):
            return None
        return SendBatch(peer, kp, ep, kp.send, kp.remote_index)

    def prepare_send(self, now: float, dst: bytes) -> SendBatch | None:
        peer = self.route(dst)
        if peer is None:
            return None
        return self.prepare_send_peer(now, peer)

    def note_sent(
        self,
        now: float,
        peer: Peer,
        n_packets: int,
        n_bytes: int,
        n_keepalive: int = 0,
        wall: float | None = None,
    ) -> list[Action]:
        """Bookkeeping after sending n_packets transport messages (n_bytes on the wire)."""
        peer.tx_bytes += n_bytes
        c = self.counters
        c.packets_sent += n_packets
        c.keepalives_sent += n_keepalive
        t = peer.timers
        t.any_authenticated_sent()
        t.traversal(now, peer.persistent_keepalive)
        if n_packets > n_keepalive:
            t.data_sent(now)
        kp = peer.keypairs.current
        if kp is not None and kp.wants_rekey(now):
            return self._initiate(now, self._wall(now, wall), peer, retry=False)
        return []

    def keypair_for_receive(self, index: int, now: float | None = None) -> ReceiveKeypair | None:
        """The keypair that `index` names, or None (unknown index; with `now`, also expired
        keys). Per packet the caller then runs kp.replay.check, kp.receive.open_or_none and
        kp.replay.accept (see the module docstring)."""
        kp = self._indices.get(index)
        if type(kp) is not Keypair:
            return None
        if now is not None and kp.receive_expired(now):
            return None
        return kp

    def source_allowed(self, peer: Peer, src: bytes) -> bool:
        return self._allowed.lookup(src) is peer

    def note_received(
        self,
        now: float,
        keypair: Keypair,
        n_packets: int,
        n_bytes: int,
        src: Endpoint | None = None,
        n_keepalive: int = 0,
        wall: float | None = None,
    ) -> list[Action]:
        """Bookkeeping after n_packets authenticated transport messages on `keypair` (n_bytes
        on the wire; n_keepalive of them empty). Promotes `next`, roams to `src`."""
        peer = keypair.peer
        peer.rx_bytes += n_bytes
        c = self.counters
        c.packets_received += n_packets
        c.keepalives_received += n_keepalive
        if src is not None and src != peer.endpoint:
            peer.endpoint = src
            self.changed()
        actions: list[Action] = []
        keypair.confirmed = True
        kps = peer.keypairs
        if kps.next is keypair:
            # The initiator used the session we answered: it becomes current (paper 5.4.6).
            peer.rtt.sample(now - keypair.created)  # response sent -> its first message
            if kps.previous is not None:
                self._drop_keypair(kps.previous)
            kps.previous = kps.current
            kps.current = keypair
            kps.next = None
            self.changed()
            self._handshake_complete(peer, keypair)
            actions.append(HandshakeCompleted(peer.public_key))
            actions += self._send_staged(now, peer)
        t = peer.timers
        t.any_authenticated_received()
        t.traversal(now, peer.persistent_keepalive)
        n_data = n_packets - n_keepalive
        if n_data > 0:
            t.data_received(now)
            if n_data > 1:
                # as if received one by one: the second arms "another keepalive owed"
                t.data_received(now)
        cur = kps.current
        if (
            cur is keypair
            and cur.initiator
            and not t.sent_last_minute_handshake
            and now - cur.created >= REKEY_ON_RECEIVE_AGE
        ):
            t.sent_last_minute_handshake = True
            actions += self._initiate(now, self._wall(now, wall), peer, retry=False)
        return actions

    def note_dropped(self, reason: str, n: int = 1) -> None:
        """Count n packets dropped by the data plane (reason: a Counters drop field)."""
        if reason not in Counters.DROP_REASONS:
            raise DeviceError(f"unknown drop reason {reason!r}")
        setattr(self.counters, reason, getattr(self.counters, reason) + n)

    # -- slow path: sending -------------------------------------------------------------------
    def send_packet(self, now: float, wall: float, ip_packet: bytes) -> list[Action]:
        """An IP packet from the TUN: encrypt to its peer, or queue it and start a handshake."""
        self._wall_offset = wall - now
        dst = inner_destination(ip_packet)
        if dst is None:
            self.counters.bad_inner += 1
            return []
        peer = self.route(dst)
        if peer is None:
            self.counters.no_route += 1
            return []
        batch = self.prepare_send_peer(now, peer)
        if batch is not None:
            first = batch.reserve(1)
            if first is not None:
                data = seal_transport(batch.cipher, batch.receiver_index, first, ip_packet)
                actions: list[Action] = [SendDatagram(data, batch.endpoint)]
                actions += self.note_sent(now, peer, 1, len(data), wall=wall)
                return actions
        return self._stage(now, wall, peer, ip_packet)

    def send_keepalive(self, now: float, wall: float, peer: Peer) -> list[Action]:
        """Send an empty transport message now (or start a handshake if there are no keys)."""
        self._wall_offset = wall - now
        return self._keepalive(now, peer)

    def keepalive_to(self, peer_key: bytes, now: float, wall: float) -> list[Action]:
        """A keepalive to the peer with this public key now (a handshake without a session):
        after our own address changed, its first authenticated packet moves the peer's
        endpoint to our new source. An unknown peer: nothing."""
        peer = self.peer(X25519PublicKey(peer_key))
        return [] if peer is None else self.send_keepalive(now, wall, peer)

    def keepalive_soon(self, peer: Peer, delay: float) -> None:
        """Send a keepalive (a handshake, with no session) `delay` seconds after the last tick:
        what switching persistent keepalive on does, without the caller knowing the time."""
        t = peer.timers
        t.persistent_keepalive = d = self._ticked + delay
        if t.bound is not None:
            t.bound.lower(d)

    def initiate_handshake(self, now: float, wall: float, peer: Peer) -> list[Action]:
        """Start a handshake now (subject to the one-per-REKEY_TIMEOUT rate limit)."""
        self._wall_offset = wall - now
        return self._initiate(now, wall, peer, retry=False)

    def _stage(self, now: float, wall: float, peer: Peer, packet: bytes) -> list[Action]:
        if len(peer.staged) >= MAX_STAGED_PACKETS:
            peer.staged.popleft()
            self.counters.staged_overflow += 1
        peer.staged.append(packet)
        return self._initiate(now, wall, peer, retry=False)

    def _keepalive(self, now: float, peer: Peer) -> list[Action]:
        batch = self.prepare_send_peer(now, peer)
        if batch is None:
            if not peer.staged:
                return self._stage(now, self._wall(now, None), peer, b"")
            return self._initiate(now, self._wall(now, None), peer, retry=False)
        first = batch.reserve(1)
        if first is None:
            return []
        data = seal_transport(batch.cipher, batch.receiver_index, first, b"")
        actions: list[Action] = [SendDatagram(data, batch.endpoint)]
        actions += self.note_sent(now, peer, 1, len(data), n_keepalive=1)
        return actions

    def _send_staged(self, now: float, peer: Peer) -> list[Action]:
        if not peer.staged:
            return []
        batch = self.prepare_send_peer(now, peer)
        if batch is None:
            return []
        packets = list(peer.staged)
        peer.staged.clear()
        first = batch.reserve(len(packets))
        if first is None:
            return []
        sealed = seal_batch(batch.cipher.aead, batch.receiver_index, first, packets)
        ep = batch.endpoint
        actions: list[Action] = [SendDatagram(data, ep) for data in sealed]
        total = sum(len(data) for data in sealed)
        keepalives = sum(not p for p in packets)
        actions += self.note_sent(now, peer, len(packets), total, n_keepalive=keepalives)
        return actions

    def _wall(self, now: float, wall: float | None) -> float:
        if wall is not None:
            return wall
        if self._wall_offset is None:
            return now
        return now + self._wall_offset

    # -- slow path: receiving -----------------------------------------------------------------
    def receive(self, now: float, wall: float, data: bytes, src: Endpoint) -> list[Action]:
        """A UDP datagram addressed to the WireGuard port. Never raises for remote input."""
        self._wall_offset = wall - now
        n = len(data)
        t = wire.message_type(data)
        try:
            if t == wire.MESSAGE_TRANSPORT:
                if n < wire.TRANSPORT_MIN_SIZE:
                    self.counters.bad_length += 1
                    return []
                return self._receive_transport(now, data, src)
            if t == wire.MESSAGE_INITIATION:
                if n != wire.INITIATION_SIZE:
                    self.counters.bad_length += 1
                    return []
                return self._receive_initiation(now, wall, data, src)
            if t == wire.MESSAGE_RESPONSE:
                if n != wire.RESPONSE_SIZE:
                    self.counters.bad_length += 1
                    return []
                return self._receive_response(now, wall, data, src)
            if t == wire.MESSAGE_COOKIE_REPLY:
                if n != wire.COOKIE_REPLY_SIZE:
                    self.counters.bad_length += 1
                    return []
                return self._receive_cookie_reply(now, data, src)
        except (WireFormatError, CryptoError):
            self.counters.bad_handshake += 1
            return []
        self.counters.bad_type += 1
        return []

    def _receive_transport(self, now: float, data: bytes, src: Endpoint) -> list[Action]:
        _, receiver, counter = HEADER.unpack_from(data)
        kp = self.keypair_for_receive(receiver, now)
        if kp is None:
            self.counters.unknown_index += 1
            return []
        if not kp.replay.check(counter):
            # accept_batch would say replay too; checking first saves the AEAD
            self.counters.replay += 1
            return []
        opened = open_result(
            counter, kp.receive.open_or_none(counter, data[wire.TRANSPORT_HEADER_SIZE :]),
            len(data))
        tun: list[bytes] = []
        drops = dict.fromkeys(DROP_REASONS, 0)
        n, nbytes, keep = accept_batch(kp, (opened,), self.source_allowed, {}, tun, drops)
        for reason, k in drops.items():
            if k:
                self.note_dropped(reason, k)
        if not n:
            return []
        actions: list[Action] = [WriteTun(p) for p in tun]
        actions += self.note_received(now, kp, n, nbytes, src, n_keepalive=keep)
        return actions

    def new_path(self, peer_key: bytes, now: float, wall: float,
                 endpoint: Endpoint | None = None, initiate: bool = True) -> list[Action]:
        """The mesh found a new path to the peer (a hole punch, or a relay): move the peer to
        `endpoint` when given and, with `initiate`, start a handshake now. An initiation sent
        into the old path does not count against the one-per-REKEY_TIMEOUT limit: the path is
        new. An unknown peer: nothing."""
        peer = self.peer(X25519PublicKey(peer_key))
        if peer is None:
            return []
        if endpoint is not None:
            peer.endpoint = endpoint
            self.changed()
        if not initiate:
            return []
        peer.last_initiation_sent = float("-inf")
        return self.initiate_handshake(now, wall, peer)
