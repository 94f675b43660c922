"""Sans-IO coordinated punch of `meshguard connect`: two nodes that exchanged pairing tokens
(identity/pairing_token.py) probe each other at the agreed time until a path is proven.

The generating side's token names a punch time and window; the joining side's reply repeats
them. From the punch time on, each side sends a probe (wire/pairing_probe.py) to every
candidate endpoint of the other (its local addresses first, then its STUN mapping) every
`interval` seconds. With two port-restricted cone NATs, the first probes of each side open its
own NAT toward the other's mapping, so the other's probes get through from then on. Every
probe carries a fresh challenge, and the prober remembers where each went; a probe draws one
answer, to its source, echoing its challenge. An answer proves a path only if it echoes a
challenge of ours and comes from the very endpoint that challenge was sent to. Then the side
keeps answering for up to `linger` seconds (the original's confirmation probes), or until the
other side says it has proven a path too (a side that finishes on the other's word sends one
last probe saying it is through as well), and reports `PairingPunched`. A window that passes
without proof starts the next attempt (`windows`, the original's 3 attempts); after the last
one the core reports `PairingPunchFailed`.

Authentication: probes are MACed under a key from X25519 of the two WireGuard keys the signed
tokens carry and both token nonces (`probe_key`), so someone who saw both tokens still cannot
forge one. Cheap checks first: length and magic, the sender's nonce and key tag, the MAC (one
BLAKE2s over 33 bytes), then a token from the source budget (nat/budget.py), which forged
probes therefore cannot use up. Each challenge draws one answer (a replayed
probe draws nothing), an answer draws none and is no larger than its probe (no amplification),
and an answer is taken once. A valid probe from an endpoint not yet probed, on one of the hosts
the token names (the other side's NAT mapped it to another port), adds that endpoint to the
candidates, at most `max_reflexive` of them; a host the token does not name never is (a captured
probe re-sent from there would make its sender a relay that the punch proves and saves).
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass, field

from meshguard.crypto.hashes import blake2s, blake3, equal, mac
from meshguard.crypto.keys import X25519PrivateKey
from meshguard.errors import WireFormatError
from meshguard.nat.budget import SourceBudget
from meshguard.rng import Rng
from meshguard.sansio import Endpoint, SendDatagram
from meshguard.wire import pairing_probe as wire
from meshguard.wire.pairing_probe import FLAG_ANSWER, FLAG_PROVEN, PairingProbe

KEY_CONTEXT = b"meshguard pairing probe v1"
MAX_SENT = 256  # challenges remembered (the newest)
MAX_SEEN = 1024  # challenges answered (the newest)
ZERO8 = bytes(8)


def probe_key(own_wg: X25519PrivateKey, peer_wg: bytes, offer_nonce: bytes,
              reply_nonce: bytes) -> bytes:
    """The MAC key both sides derive; raises CryptoError for a low-order WireGuard key."""
    return blake2s(KEY_CONTEXT, own_wg.exchange(peer_wg), offer_nonce, reply_nonce)


def key_tag(identity_key: bytes) -> bytes:
    """Bytes 12..15 of a probe (the original's sender tag)."""
    return blake3(identity_key, 4)


@dataclass(frozen=True, slots=True)
class PairingPunched:
    endpoint: Endpoint  # where the other side answered from
    attempt: int  # 1-based
    proven_at: float  # monotonic time of the proof


@dataclass(frozen=True, slots=True)
class PairingPunchFailed:
    attempts: int


Action = SendDatagram | PairingPunched | PairingPunchFailed


def _budget() -> SourceBudget:
    return SourceBudget(200.0, 400.0, 2000.0, 4000.0)


@dataclass
class PairingPunch:
    rng: Rng
    key: bytes  # probe_key(...)
    own_nonce: bytes
    own_identity: bytes
    peer_nonce: bytes
    peer_identity: bytes
    candidates: list[Endpoint]
    windows: list[tuple[float, float]]  # monotonic [start, end) of each attempt
    interval: float = 0.1
    linger: float = 3.0
    max_reflexive: int = 2
    counters: Counter[str] = field(default_factory=Counter)
    budget: SourceBudget = field(default_factory=_budget)
    proven: Endpoint | None = None
    done: bool = False
    _attempt: int = 0
    _next_probe: float = float("-inf")
    _proven_at: float = 0.0
    _peer_proven: bool = False
    _told: bool = False  # a message of ours said we are through
    _reflexive: int = 0
    _own_tag: bytes = b""
    _peer_tag: bytes = b""
    _hosts: frozenset[str] = frozenset()  # the token's hosts: where a reflexive port may be
    _sent: OrderedDict[bytes, Endpoint] = field(default_factory=OrderedDict)
    _seen: OrderedDict[bytes, None] = field(default_factory=OrderedDict)

    def __post_init__(self) -> None:
        self._own_tag = key_tag(self.own_identity)
        self._peer_tag = key_tag(self.peer_identity)
        self._hosts = frozenset(h for h, _ in self.candidates)
        if not self.windows:
            raise ValueError("a punch needs at least one window")

    # sending -------------------------------------------------------------------------------

    def _message(self, flags: int, challenge: bytes, echo: bytes) -> bytes:
        if self.proven is not None:
            flags |= FLAG_PROVEN
            self._told = True
        body = wire.encode_body(PairingProbe(self.own_nonce, self._own_tag, flags, challenge,
                                             echo))
        return body + mac(self.key, body)

    def _probe(self, ep: Endpoint) -> SendDatagram:
        challenge = self.rng.bytes(8)
        self._sent[challenge] = ep
        while len(self._sent) > MAX_SENT:
            self._sent.popitem(last=False)
        self.counters["probes_sent"] += 1
        return SendDatagram(self._message(0, challenge, ZERO8), ep)

    def _finish(self) -> list[Action]:
        assert self.proven is not None
        self.done = True
        return [PairingPunched(self.proven, self._attempt + 1, self._proven_at)]

    # timers --------------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        if self.done:
            return None
        if self.proven is not None:
            return min(self._next_probe, self._proven_at + self.linger)
        start, end = self.windows[self._attempt]
        return max(start, min(self._next_probe, end))

    def tick(self, now: float, wall: float) -> list[Action]:
        if self.done:
            return []
        if self.proven is not None:
            if now >= self._proven_at + self.linger:
                return self._finish()
            if now >= self._next_probe:
                self._next_probe = now + self.interval
                return [self._probe(self.proven)]
            return []
        start, end = self.windows[self._attempt]
        if now >= end:
            self.counters["attempts_failed"] += 1
            self._attempt += 1
            self._next_probe = float("-inf")
            if self._attempt >= len(self.windows):
                self.done = True
                return [PairingPunchFailed(len(self.windows))]
            return self.tick(now, wall)
        if now < start or now < self._next_probe:
            return []
        self._next_probe = now + self.interval
        return [self._probe(ep) for ep in self.candidates]

    # receiving -----------------------------------------------------------------------------

    def receive(self, now: float, wall: float, data: bytes, src: Endpoint) -> list[Action]:
        if self.done:
            self.counters["after_done"] += 1
            return []
        try:
            p = wire.decode(data)
        except WireFormatError:
            self.counters["not_a_probe"] += 1
            return []
        if p.nonce != self.peer_nonce or p.sender_tag != self._peer_tag:
            self.counters["wrong_peer"] += 1
            return []
        if not equal(p.mac, mac(self.key, data[:wire.BODY_LEN])):
            self.counters["bad_mac"] += 1
            return []
        # the budget after the MAC (one BLAKE2s over 33 bytes): whoever read the tokens knows
        # the nonce and key tag, and forged probes must not use up the peer's answers
        limited = self.budget.take(now, src[0])
        if limited is not None:
            self.counters[limited] += 1
            return []
        out: list[Action] = []
        if p.answer:
            self._take_answer(now, p, src)
        else:
            if p.challenge in self._seen:
                self.counters["replayed"] += 1
                return []
            self._seen[p.challenge] = None
            while len(self._seen) > MAX_SEEN:
                self._seen.popitem(last=False)
            if (src not in self.candidates and src[0] in self._hosts
                    and self._reflexive < self.max_reflexive):
                self._reflexive += 1
                self.candidates.append(src)
                self.counters["reflexive_added"] += 1
            self.counters["answers_sent"] += 1
            out.append(SendDatagram(self._message(FLAG_ANSWER, ZERO8, p.challenge), src))
        if p.proven:
            self._peer_proven = True
        if self.proven is not None and self._peer_proven:
            if not self._told:
                # the peer has not heard that we are through: our last word says so, or it
                # would wait out its linger
                out.append(self._probe(self.proven))
            out += self._finish()
        return out

    def _take_answer(self, now: float, p: PairingProbe, src: Endpoint) -> None:
        sent_to = self._sent.get(p.echo)
        if sent_to is None:
            self.counters["unknown_echo"] += 1
            return
        if sent_to != src:
            self.counters["answer_from_elsewhere"] += 1
            return
        del self._sent[p.echo]  # each answer is taken once
        self.counters["answers_taken"] += 1
        if self.proven is None:
            self.proven = src
            self._proven_at = now
            self._next_probe = now  # tell the other side at once that we are through


def punch_windows(now: float, wall: float, punch_time: float, window: float,
                  attempts: int = 3, idle: float = 60.0) -> list[tuple[float, float]]:
    """The attempts' monotonic windows: the original starts attempt k at punch_time +
    k * (window + idle) and probes for `window` seconds."""
    start = now + (punch_time - wall)
    return [(start + k * (window + idle), start + k * (window + idle) + window)
            for k in range(attempts)]
