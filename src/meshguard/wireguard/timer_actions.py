"""What the Device does when a peer's timer expires (paper section 6).

`TimerActions` is the part of `Device` (wireguard/device.py) that runs the timers kept per
peer in timers.py: `tick` takes every expired one and acts on it (retransmit or give up a
handshake, send a keepalive, start a new handshake, zero the keys), and `next_deadline` says
when to call `tick` again. The handshakes it starts are Handshakes' (handshake.py), the
keepalives the Device's send path.
"""

from __future__ import annotations

from meshguard.wireguard.actions import Action, HandshakeGaveUp, PeerKeysExpired
from meshguard.wireguard.constants import KEEPALIVE_TIMEOUT, MAX_HANDSHAKE_ATTEMPTS
from meshguard.wireguard.counters import Counters
from meshguard.wireguard.peer import Peer
from meshguard.wireguard.timers import DeadlineBound, Timer

__all__ = ["TimerActions"]


class TimerActions:
    """Timer expiry over the Device's peers (a mixin of Device)."""

    # the Device's state this mechanism works on (set in Device.__init__)
    counters: Counters
    _peers: dict[bytes, Peer]
    _bound: DeadlineBound
    _wall_offset: float | None
    _ticked: float

    def _keepalive(self, now: float, peer: Peer) -> list[Action]:
        raise NotImplementedError  # the Device's send path

    def _initiate(self, now: float, wall: float, peer: Peer, retry: bool) -> list[Action]:
        raise NotImplementedError  # Handshakes

    def _forget_handshake(self, peer: Peer) -> None:
        raise NotImplementedError  # Handshakes

    def _clear_session_state(self, peer: Peer) -> None:
        raise NotImplementedError  # Handshakes

    def next_deadline(self) -> float | None:
        """When tick() should run next (monotonic seconds), None when no timer is armed.

        Cheap after packet batches: a shared lower bound kept up to date as timers are armed;
        at worst early, and the tick at that time then finds nothing due."""
        bound = self._bound
        if bound.valid:
            return bound.value
        best: float | None = None
        for peer in self._peers.values():
            d = peer.timers.next_deadline()
            if d is not None and (best is None or d < best):
                best = d
        bound.value = best
        bound.valid = True
        return best

    def tick(self, now: float, wall: float) -> list[Action]:
        """Run every timer that is due (paper section 6)."""
        self._wall_offset = wall - now
        self._ticked = now
        actions: list[Action] = []
        for peer in list(self._peers.values()):
            for timer in peer.timers.expired(now):
                actions += self._on_timer(now, wall, peer, timer)
        self._bound.valid = False
        return actions

    def _on_timer(self, now: float, wall: float, peer: Peer, timer: Timer) -> list[Action]:
        t = peer.timers
        if timer is Timer.RETRANSMIT_HANDSHAKE:
            if t.handshake_attempts >= MAX_HANDSHAKE_ATTEMPTS - 1:
                # Give up (paper 6.4): drop queued packets; keys are zeroed later.
                self.counters.handshake_gave_up += len(peer.staged)
                peer.staged.clear()
                t.send_keepalive = None
                self._forget_handshake(peer)
                if t.zero_keys is None:
                    t.session_derived(now)
                return [HandshakeGaveUp(peer.public_key)]
            t.handshake_attempts += 1
            return self._initiate(now, wall, peer, retry=True)
        if timer is Timer.SEND_KEEPALIVE:
            actions = self._keepalive(now, peer)
            if t.need_another_keepalive:
                t.need_another_keepalive = False
                t.send_keepalive = now + KEEPALIVE_TIMEOUT
            return actions
        if timer is Timer.NEW_HANDSHAKE:
            return self._initiate(now, wall, peer, retry=False)
        if timer is Timer.ZERO_KEYS:
            self._clear_session_state(peer)
            peer.staged.clear()
            return [PeerKeysExpired(peer.public_key)]
        if timer is Timer.PERSISTENT_KEEPALIVE and peer.persistent_keepalive > 0:
            return self._keepalive(now, peer)
        return []
