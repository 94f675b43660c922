"""The handshake mechanism of the Device: initiations, responses, cookie replies (paper 5.4).

`Handshakes` is the part of `Device` (wireguard/device.py) that creates and consumes
handshake messages and turns a completed handshake into a keypair; the Device adds
configuration, the transport paths and the timers. Received messages pass the handshake guard
(cookie.HandshakeGuard or its C twin) before any DH work.
"""

from __future__ import annotations

import struct

from meshguard.crypto.aead import TransportCipher
from meshguard.crypto.keys import X25519PrivateKey
from meshguard.crypto.tai64n import TAI64N_LEN, tai64n
from meshguard.errors import CryptoError
from meshguard.rng import Rng
from meshguard.sansio import Endpoint
from meshguard.wire import wireguard as wire
from meshguard.wireguard import noise
from meshguard.wireguard.actions import Action, HandshakeCompleted, SendDatagram
from meshguard.wireguard.constants import (
    MAX_INITIATIONS_PER_PEER_PER_SECOND,
    REKEY_AFTER_TIME,
    REKEY_TIMEOUT,
    REKEY_TIMEOUT_JITTER_MAX,
)
from meshguard.wireguard.cookie import (
    COOKIE,
    COOKIE_LIMITED,
    NO_KEY,
    PASS,
    RATE_LIMITED,
    VERDICTS,
    Guard,
    source_keys,
)
from meshguard.wireguard.counters import Counters
from meshguard.wireguard.index import IndexTable
from meshguard.wireguard.keypair import Keypair, Keypairs
from meshguard.wireguard.peer import HandshakeState, Peer

__all__ = ["Handshakes"]

_INITIATION_INTERVAL = 1.0 / MAX_INITIATIONS_PER_PEER_PER_SECOND


class Handshakes:
    """Handshake creation and consumption over the Device's peers, indices and guard."""

    # the Device's state this mechanism works on (set in Device.__init__)
    rng: Rng
    counters: Counters
    guard: Guard
    rekey_after_time: float = REKEY_AFTER_TIME
    _private_key: X25519PrivateKey | None
    _peers: dict[bytes, Peer]
    _indices: IndexTable[Peer | Keypair]
    _static_static_map: dict[bytes, bytes]
    # bumped on every change a data path's copy of the tables must follow (Device.changed)
    generation: int = 0

    def _send_staged(self, now: float, peer: Peer) -> list[Action]:
        raise NotImplementedError  # the Device's send path

    def _keepalive(self, now: float, peer: Peer) -> list[Action]:
        raise NotImplementedError  # the Device's send path

    def note_knock(self, now: float, key: bytes) -> None:
        raise NotImplementedError  # the Device's peer table

    def _count_verdict(self, verdict: int, n: int = 1) -> None:
        c = self.counters
        if verdict == NO_KEY:
            c.no_private_key += n
        elif verdict == RATE_LIMITED:
            c.rate_limited += n
        elif verdict == COOKIE:
            c.bad_mac2 += n
            c.cookie_replies_sent += n
        elif verdict == COOKIE_LIMITED:
            c.bad_mac2 += n
        elif verdict != PASS and verdict < len(VERDICTS):
            c.bad_mac1 += n


    def _initiate(self, now: float, wall: float, peer: Peer, retry: bool) -> list[Action]:
        """Send a handshake initiation to peer, at most one per REKEY_TIMEOUT (paper 6.1)."""
        if not retry:
            if now - peer.last_initiation_sent < REKEY_TIMEOUT:
                return []
            peer.timers.handshake_attempts = 0
        key = self._private_key
        if key is None:
            self.counters.no_private_key += 1
            return []
        if peer.endpoint is None:
            self.counters.no_endpoint += 1
            return []
        if peer.static_static is None:
            return []
        endpoint = peer.endpoint
        self._forget_handshake(peer)
        ephemeral = X25519PrivateKey.generate(self.rng.bytes(32))
        timestamp = tai64n(wall)
        if timestamp <= peer.last_sent_timestamp:
            # TAI64N must increase for the responder to accept it (paper 5.1).
            secs, nanos = struct.unpack(">QI", peer.last_sent_timestamp)
            nanos += 1 << 24
            if nanos >= 1_000_000_000:
                secs, nanos = secs + 1, 0
            timestamp = struct.pack(">QI", secs, nanos)
        peer.last_sent_timestamp = timestamp
        try:
            body, state = noise.create_initiation(
                key, peer.public_key.raw, ephemeral, timestamp, static_static=peer.static_static
            )
        except CryptoError:
            return []
        index = self._indices.new_index(peer)
        peer.handshake_state = HandshakeState.INITIATION_SENT
        peer.handshake_index = index
        peer.initiator_state = state
        peer.last_initiation_sent = now
        peer.rtt.sent_at = now
        msg = wire.Initiation(
            index, body.ephemeral, body.encrypted_static, body.encrypted_payload
        ).encode()
        assert peer.cookie is not None
        msg = peer.cookie.add_macs(now, msg, wire.INITIATION_MAC1_OFFSET)
        t = peer.timers
        t.handshake_initiated(now, self.rng.uniform(0.0, REKEY_TIMEOUT_JITTER_MAX))
        t.traversal(now, peer.persistent_keepalive)
        t.any_authenticated_sent()
        self.counters.initiations_sent += 1
        return [SendDatagram(msg, endpoint)]

    def _forget_handshake(self, peer: Peer) -> None:
        if peer.handshake_index and self._indices.get(peer.handshake_index) is peer:
            self._indices.remove(peer.handshake_index)
        peer.handshake_index = 0
        peer.handshake_state = HandshakeState.NONE
        peer.initiator_state = None

    def _new_keypair(
        self,
        now: float,
        wall: float,
        peer: Peer,
        session: noise.Session,
        initiator: bool,
        local_index: int,
        remote_index: int,
    ) -> Keypair:
        send, recv = session.transport_keys(initiator)
        kp = Keypair(
            send=TransportCipher(send),
            receive=TransportCipher(recv),
            local_index=local_index,
            remote_index=remote_index,
            initiator=initiator,
            created=now,
            peer=peer,
            created_wall=wall,
            rekey_after_time=self.rekey_after_time,
        )
        self._indices.replace(local_index, kp)
        self.generation += 1
        return kp

    def _drop_keypair(self, kp: Keypair) -> None:
        self.generation += 1
        if self._indices.get(kp.local_index) is kp:
            self._indices.remove(kp.local_index)

    def _handshake_complete(self, peer: Peer, kp: Keypair) -> None:
        peer.timers.handshake_complete()
        peer.last_handshake_wall = kp.created_wall
        self.counters.handshakes_completed += 1

    def _clear_session_state(self, peer: Peer) -> None:
        self.generation += 1
        self._forget_handshake(peer)
        for kp in peer.keypairs.all():
            self._drop_keypair(kp)
        peer.keypairs = Keypairs()


    def _handshake_precheck(self, now: float, data: bytes, src: Endpoint) -> list[Action] | None:
        """The guard's checks (cookie.HandshakeGuard: per-source bucket under load, mac1,
        then under load mac2 / cookie reply and the DH bucket). None means go on; a list is
        the final answer."""
        if self._private_key is None:
            self.counters.no_private_key += 1
            return []
        key, binding = source_keys(src)
        verdict, reply = self.guard.precheck(now, data, key, binding)
        if verdict == PASS:
            return None
        self._count_verdict(verdict)
        if reply is not None:
            return [SendDatagram(reply, src)]
        return []

    def _receive_initiation(
        self, now: float, wall: float, data: bytes, src: Endpoint
    ) -> list[Action]:
        early = self._handshake_precheck(now, data, src)
        if early is not None:
            return early
        msg = wire.Initiation.decode(data)
        key = self._private_key
        assert key is not None
        body = noise.InitiationBody(msg.ephemeral, msg.encrypted_static, msg.encrypted_timestamp)
        try:
            state = noise.consume_initiation(key, body, static_static_for=self._static_static_map)
        except CryptoError:
            self.counters.bad_handshake += 1
            return []
        peer = self._peers.get(state.remote_static)
        if peer is None:
            self.counters.unknown_peer += 1
            self.note_knock(now, state.remote_static)
            return []
        if len(state.payload) != TAI64N_LEN or state.payload <= peer.greatest_timestamp:
            self.counters.handshake_replay += 1
            return []
        if now - peer.last_initiation_consumed < _INITIATION_INTERVAL:
            self.counters.handshake_flood += 1
            return []
        self.counters.initiations_received += 1
        peer.greatest_timestamp = state.payload
        peer.last_initiation_consumed = now
        # Respond: <- e, ee, se, psk, {}
        ephemeral = X25519PrivateKey.generate(self.rng.bytes(32))
        try:
            rbody, session = noise.create_response(state, ephemeral, peer.preshared_key)
        except CryptoError:
            self.counters.bad_handshake += 1
            return []
        # An initiation of our own in flight stays valid (crossing initiations, e.g. both
        # sides had a packet queued): its response still completes it, so each side ends up
        # with two good sessions and neither waits REKEY_TIMEOUT for a retransmission
        # (docs/performance.md#start-up). wireguard-go and the kernel keep one handshake per
        # peer and drop the response to theirs; with them our initiation's session carries
        # the traffic.
        index = self._indices.new_index(peer)
        kp = self._new_keypair(now, wall, peer, session, False, index, msg.sender)
        kps = peer.keypairs
        if kps.next is not None:
            self._drop_keypair(kps.next)
        if kps.previous is not None:
            self._drop_keypair(kps.previous)
        kps.next = kp
        kps.previous = None
        peer.endpoint = src
        resp = wire.Response(index, msg.sender, rbody.ephemeral, rbody.encrypted_payload).encode()
        assert peer.cookie is not None
        resp = peer.cookie.add_macs(now, resp, wire.RESPONSE_MAC1_OFFSET)
        t = peer.timers
        t.any_authenticated_received()
        t.traversal(now, peer.persistent_keepalive)
        t.session_derived(now)
        t.any_authenticated_sent()
        self.counters.responses_sent += 1
        return [SendDatagram(resp, src)]

    def _receive_response(
        self, now: float, wall: float, data: bytes, src: Endpoint
    ) -> list[Action]:
        early = self._handshake_precheck(now, data, src)
        if early is not None:
            return early
        msg = wire.Response.decode(data)
        peer = self._indices.get(msg.receiver)
        if (
            not isinstance(peer, Peer)
            or peer.handshake_state is not HandshakeState.INITIATION_SENT
            or peer.handshake_index != msg.receiver
            or peer.initiator_state is None
        ):
            self.counters.stale_response += 1
            return []
        key = self._private_key
        assert key is not None
        try:
            session = noise.consume_response(
                peer.initiator_state,
                key,
                noise.ResponseBody(msg.ephemeral, msg.encrypted_empty),
                peer.preshared_key,
            )
        except CryptoError:
            self.counters.bad_handshake += 1
            return []
        peer.rtt.sample(now - peer.rtt.sent_at)  # the answer to this very initiation
        index = peer.handshake_index
        peer.handshake_state = HandshakeState.NONE
        peer.initiator_state = None
        peer.handshake_index = 0
        kp = self._new_keypair(now, wall, peer, session, True, index, msg.sender)
        kps = peer.keypairs
        if kps.next is not None:
            if kps.current is not None:
                self._drop_keypair(kps.current)
            if kps.previous is not None:
                self._drop_keypair(kps.previous)
            kps.previous = kps.next
            kps.next = None
        else:
            if kps.previous is not None:
                self._drop_keypair(kps.previous)
            kps.previous = kps.current
        kps.current = kp
        peer.endpoint = src
        t = peer.timers
        t.any_authenticated_received()
        t.traversal(now, peer.persistent_keepalive)
        t.session_derived(now)
        self._handshake_complete(peer, kp)
        actions: list[Action] = [HandshakeCompleted(peer.public_key)]
        # Confirm the session to the responder: queued packets, or else a keepalive.
        if peer.staged:
            actions += self._send_staged(now, peer)
        else:
            actions += self._keepalive(now, peer)
        return actions

    def _receive_cookie_reply(self, now: float, data: bytes, src: Endpoint) -> list[Action]:
        if not self.guard.cookie_reply(now, data, source_keys(src)[0]):
            self.counters.rate_limited += 1
            return []
        msg = wire.CookieReply.decode(data)
        entry = self._indices.get(msg.receiver)
        peer = entry.peer if isinstance(entry, Keypair) else entry
        if peer is None or peer.cookie is None or not peer.cookie.consume_reply(now, msg):
            self.counters.bad_cookie_reply += 1
            return []
        self.counters.cookies_received += 1
        return []

