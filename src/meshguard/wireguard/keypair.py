"""Transport keypairs and the replay window (paper section 5.4.6, RFC 6479).

A peer holds up to three keypairs (paper 6.1 / wireguard-go): `previous` (still accepted for
receiving so that packets in flight during a re-key are not lost), `current` (used to send) and
`next` (the responder's new keypair, promoted to current when the initiator first uses it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from meshguard.crypto.aead import TransportCipher
from meshguard.wireguard.constants import (
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME,
    REPLAY_BLOCK_BITS,
    REPLAY_RING_BLOCKS,
    REPLAY_WINDOW,
)

if TYPE_CHECKING:
    from meshguard.wireguard.peer import Peer

_BLOCK_SHIFT = REPLAY_BLOCK_BITS.bit_length() - 1  # 6
_BLOCK_MASK = REPLAY_RING_BLOCKS - 1
_BIT_MASK = REPLAY_BLOCK_BITS - 1


class Replay(Protocol):
    """What the receive policy asks of a replay window (ReplayWindow, or SharedKeys)."""

    def check(self, counter: int) -> bool: ...

    def accept(self, counter: int) -> bool: ...


class SharedKeys(Replay, Protocol):
    """A keypair's counters shared with a data path outside the interpreter (the C data-path
    thread's KeyState, docs/performance.md#data-path-thread): an atomic send counter and a
    locked replay window, so the Device and that thread never reuse a nonce or accept a
    counter twice."""

    def reserve(self, n: int, /) -> int | None: ...

    @property
    def sent(self) -> int: ...


class ReplayWindow:
    """RFC 6479 sliding window: a ring of 64-bit blocks; whole blocks are cleared as it slides.

    `check` is read-only (a cheap pre-check before decrypting); `accept` records a counter of
    an authenticated packet and returns False if it was already seen or is too old.
    """

    __slots__ = ("_blocks", "last")

    def __init__(self) -> None:
        self._blocks = [0] * REPLAY_RING_BLOCKS
        self.last = -1  # highest counter accepted so far

    def check(self, counter: int) -> bool:
        if counter >= REJECT_AFTER_MESSAGES or counter < 0:
            return False
        if counter > self.last:
            return True
        if self.last - counter >= REPLAY_WINDOW:
            return False
        block = (counter >> _BLOCK_SHIFT) & _BLOCK_MASK
        return not (self._blocks[block] >> (counter & _BIT_MASK)) & 1

    def export(self) -> tuple[int, list[int]]:
        """(highest counter accepted or -1, the ring's blocks): to carry the window over."""
        return self.last, list(self._blocks)

    def accept(self, counter: int) -> bool:
        if counter >= REJECT_AFTER_MESSAGES or counter < 0:
            return False
        blocks = self._blocks
        index = counter >> _BLOCK_SHIFT
        if counter > self.last:
            current = self.last >> _BLOCK_SHIFT if self.last >= 0 else -1
            diff = index - current
            if diff > 0:
                for i in range(1, min(diff, REPLAY_RING_BLOCKS) + 1):
                    blocks[(current + i) & _BLOCK_MASK] = 0
            self.last = counter
        elif self.last - counter >= REPLAY_WINDOW:
            return False
        block = index & _BLOCK_MASK
        bit = 1 << (counter & _BIT_MASK)
        if blocks[block] & bit:
            return False
        blocks[block] |= bit
        return True


@dataclass(eq=False, slots=True)
class Keypair:
    """One direction pair of transport keys with its counters (also the fast-path handle).

    `local_index` is what the remote puts in its transport headers to reach this keypair;
    `remote_index` is what we put in ours.
    """

    send: TransportCipher
    receive: TransportCipher
    local_index: int
    remote_index: int
    initiator: bool
    created: float
    peer: Peer
    created_wall: float = 0.0
    # the initiator re-keys a session this old (the Device's option; REKEY_AFTER_TIME)
    rekey_after_time: float = REKEY_AFTER_TIME
    send_counter: int = 0
    replay: Replay = field(default_factory=ReplayWindow)
    # Set when this keypair has been used to receive at least once.
    confirmed: bool = False
    # the counters, once shared with a data path outside the interpreter (share)
    shared: SharedKeys | None = None

    def reserve(self, n: int) -> int | None:
        """Reserve n send counters; the first one, or None when the keypair is exhausted."""
        shared = self.shared
        if shared is not None:
            return shared.reserve(n)
        first = self.send_counter
        if first + n > REJECT_AFTER_MESSAGES:
            return None
        self.send_counter = first + n
        return first

    @property
    def sent(self) -> int:
        """Send counters handed out so far."""
        shared = self.shared
        return self.send_counter if shared is None else shared.sent

    def share(self, keys: SharedKeys) -> None:
        """From now on reserve counters from, and check the replay window in, `keys` (made
        from this keypair's counter and window: see replay_state)."""
        self.shared = keys
        self.replay = keys

    def replay_state(self) -> tuple[int, list[int]]:
        """(highest counter accepted or -1, window blocks) of an unshared keypair."""
        replay = self.replay
        if not isinstance(replay, ReplayWindow):
            raise TypeError("the keypair's counters are shared already")
        return replay.export()

    def send_expired(self, now: float) -> bool:
        """Must not be used to send any more (paper 6.2: REJECT_AFTER_*)."""
        return now - self.created >= REJECT_AFTER_TIME or self.sent >= REJECT_AFTER_MESSAGES

    def receive_expired(self, now: float) -> bool:
        return now - self.created >= REJECT_AFTER_TIME

    def wants_rekey(self, now: float) -> bool:
        """Paper 6.2: re-key after REKEY_AFTER_MESSAGES, or after rekey_after_time if we
        initiated this session."""
        return self.sent >= REKEY_AFTER_MESSAGES or (
            self.initiator and now - self.created >= self.rekey_after_time
        )

    def __repr__(self) -> str:
        return (
            f"Keypair(local={self.local_index:#x}, remote={self.remote_index:#x}, "
            f"initiator={self.initiator}, created={self.created}, sent={self.sent})"
        )


# Name used by the fast-path contract for the receive handle.
ReceiveKeypair = Keypair


@dataclass(slots=True)
class Keypairs:
    previous: Keypair | None = None
    current: Keypair | None = None
    next: Keypair | None = None

    def all(self) -> list[Keypair]:
        return [k for k in (self.previous, self.current, self.next) if k is not None]
