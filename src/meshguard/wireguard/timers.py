"""The per-peer timer state machine of the WireGuard paper, section 6 (as wireguard-go runs it).

Timers are deadlines (monotonic seconds, None = not armed). Protocol events arm and cancel them;
`expired(now)` returns and disarms the ones that are due, and the device acts on them:

    event                               effect
    handshake initiation sent           retransmit_handshake = now + REKEY_TIMEOUT + jitter
    handshake complete                  retransmit cancelled, attempts = 0
    session derived                     zero_keys = now + 3 * REJECT_AFTER_TIME
    data sent (not keepalive)           new_handshake = now + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT
                                        unless already armed (paper 6.5: the peer went silent)
    any authenticated packet received   new_handshake cancelled
    data received (not keepalive)       send_keepalive = now + KEEPALIVE_TIMEOUT unless armed,
                                        else remember that another keepalive is owed (6.5)
    any authenticated packet sent       send_keepalive cancelled
    any authenticated packet either way persistent_keepalive = now + interval (if enabled)

    expiry                              action (timer_actions.py)
    retransmit_handshake                attempts < MAX (REKEY_ATTEMPT_TIME / REKEY_TIMEOUT): resend
                                        the initiation; else give up: drop queued packets and
                                        arm zero_keys if not armed (6.4)
    send_keepalive                      send a keepalive (empty transport message)
    new_handshake                       start a new handshake
    zero_keys                           forget every keypair and handshake state (6.3)
    persistent_keepalive                send a keepalive
"""

from __future__ import annotations

from enum import Enum

from meshguard.wireguard.constants import (
    KEEPALIVE_TIMEOUT,
    NEW_HANDSHAKE_AFTER,
    REKEY_TIMEOUT,
    ZERO_KEYS_AFTER,
)


class Timer(Enum):
    RETRANSMIT_HANDSHAKE = "retransmit_handshake"
    SEND_KEEPALIVE = "send_keepalive"
    NEW_HANDSHAKE = "new_handshake"
    ZERO_KEYS = "zero_keys"
    PERSISTENT_KEEPALIVE = "persistent_keepalive"


class DeadlineBound:
    """A lower bound on the earliest timer of many peers, shared by their PeerTimers.

    Arming a timer lowers it; disarming leaves it (early is safe: the owner then ticks, finds
    nothing due and recomputes). So a device answers next_deadline() without scanning every
    peer after each packet batch.
    """

    __slots__ = ("valid", "value")

    def __init__(self) -> None:
        self.value: float | None = None
        self.valid = False

    def lower(self, deadline: float) -> None:
        if self.valid and (self.value is None or deadline < self.value):
            self.value = deadline


class PeerTimers:
    __slots__ = (
        "bound",
        "handshake_attempts",
        "need_another_keepalive",
        "new_handshake",
        "persistent_keepalive",
        "retransmit_handshake",
        "send_keepalive",
        "sent_last_minute_handshake",
        "zero_keys",
    )

    def __init__(self) -> None:
        self.retransmit_handshake: float | None = None
        self.send_keepalive: float | None = None
        self.new_handshake: float | None = None
        self.zero_keys: float | None = None
        self.persistent_keepalive: float | None = None
        self.handshake_attempts = 0
        self.need_another_keepalive = False
        self.sent_last_minute_handshake = False
        self.bound: DeadlineBound | None = None

    # -- events ---------------------------------------------------------------------------
    def handshake_initiated(self, now: float, jitter: float) -> None:
        self.retransmit_handshake = d = now + REKEY_TIMEOUT + jitter
        if self.bound is not None:
            self.bound.lower(d)

    def handshake_complete(self) -> None:
        self.retransmit_handshake = None
        self.handshake_attempts = 0
        self.sent_last_minute_handshake = False

    def session_derived(self, now: float) -> None:
        self.zero_keys = d = now + ZERO_KEYS_AFTER
        if self.bound is not None:
            self.bound.lower(d)

    def data_sent(self, now: float) -> None:
        if self.new_handshake is None:
            self.new_handshake = d = now + NEW_HANDSHAKE_AFTER
            if self.bound is not None:
                self.bound.lower(d)

    def any_authenticated_received(self) -> None:
        self.new_handshake = None

    def data_received(self, now: float) -> None:
        if self.send_keepalive is None:
            self.send_keepalive = d = now + KEEPALIVE_TIMEOUT
            if self.bound is not None:
                self.bound.lower(d)
        else:
            self.need_another_keepalive = True

    def any_authenticated_sent(self) -> None:
        self.send_keepalive = None

    def traversal(self, now: float, persistent_interval: int) -> None:
        if persistent_interval > 0:
            self.persistent_keepalive = d = now + persistent_interval
            if self.bound is not None:
                self.bound.lower(d)

    def stop_all(self) -> None:
        self.retransmit_handshake = None
        self.send_keepalive = None
        self.new_handshake = None
        self.zero_keys = None
        self.persistent_keepalive = None

    # -- expiry ---------------------------------------------------------------------------
    def next_deadline(self) -> float | None:
        best: float | None = None
        for d in (
            self.retransmit_handshake,
            self.send_keepalive,
            self.new_handshake,
            self.zero_keys,
            self.persistent_keepalive,
        ):
            if d is not None and (best is None or d < best):
                best = d
        return best

    def expired(self, now: float) -> list[Timer]:
        """Timers due at `now`, disarmed, in a fixed order."""
        out: list[Timer] = []
        if self.retransmit_handshake is not None and self.retransmit_handshake <= now:
            self.retransmit_handshake = None
            out.append(Timer.RETRANSMIT_HANDSHAKE)
        if self.send_keepalive is not None and self.send_keepalive <= now:
            self.send_keepalive = None
            out.append(Timer.SEND_KEEPALIVE)
        if self.new_handshake is not None and self.new_handshake <= now:
            self.new_handshake = None
            out.append(Timer.NEW_HANDSHAKE)
        if self.zero_keys is not None and self.zero_keys <= now:
            self.zero_keys = None
            out.append(Timer.ZERO_KEYS)
        if self.persistent_keepalive is not None and self.persistent_keepalive <= now:
            self.persistent_keepalive = None
            out.append(Timer.PERSISTENT_KEEPALIVE)
        return out
