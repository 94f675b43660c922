"""mac1 / mac2 and cookies: WireGuard's DoS mitigation (paper section 5.3 and 5.4.4, 5.4.7).

- mac1 = MAC(HASH("mac1----" || S_pub_receiver), msg[:mac1 offset]); checked first and cheaply,
  it proves the sender knows our public key.
- Under load the responder wants proof of a round trip: mac2 = MAC(cookie, msg[:mac2 offset])
  with cookie = MAC(R, source address and port), R a secret replaced every COOKIE_REFRESH_TIME.
  Without a valid mac2 the message is answered with a cookie reply (no DH work done):
  XChaCha20-Poly1305(key = HASH("cookie--" || S_pub_responder), random 24-byte nonce,
  cookie, ad = the mac1 of the message being answered).
- The initiator stores the cookie and adds mac2 to its next handshake messages.

`HandshakeGuard` runs these checks cheapest first on every received handshake message (see its
docstring); the C fast path has a twin with the same verdicts (dataplane/_fastpath.c), which
the data-plane engine installs so a flood is handled without entering Python.
"""

from __future__ import annotations

import functools
import ipaddress
import struct
from collections.abc import Hashable
from typing import Protocol

from meshguard.crypto.aead import xchacha20poly1305_open, xchacha20poly1305_seal
from meshguard.crypto.hashes import blake2s, mac
from meshguard.crypto.hashes import equal as _equal
from meshguard.errors import CryptoError
from meshguard.rng import Rng
from meshguard.wire.wireguard import COOKIE_NONCE_LEN, MAC_LEN, CookieReply
from meshguard.wireguard.constants import (
    COOKIE_LIFETIME,
    COOKIE_REFRESH_TIME,
    LABEL_COOKIE,
    LABEL_MAC1,
    UNDER_LOAD_HANDSHAKES_PER_SECOND,
    UNDER_LOAD_HOLD_TIME,
    UNDER_LOAD_PER_SOURCE_BURST,
    UNDER_LOAD_PER_SOURCE_RATE,
)

Endpoint = tuple[str, int]
_PORT = struct.Struct("!H")
_ZERO_MAC = bytes(MAC_LEN)
_OVERFLOW = b""  # the bucket key new sources share once MAX_SOURCES buckets are live

# Under load, every handshake message is first held to a token bucket per source address
# before any MAC is computed: a one-address flood then costs a dictionary look-up per message,
# and its cookie replies are bounded. A legitimate source needs about two messages per
# handshake (one answered with a cookie, one carrying mac2), so this is generous; many peers
# behind one NAT share it.
UNDER_LOAD_SOURCE_RATE = 50.0
UNDER_LOAD_SOURCE_BURST = 50
# Cookie replies per network (an IPv4 address, an IPv6 /64: one host can use every address of
# its /64), so a host cycling through its addresses gets a bounded share of the global budget,
# while a legitimate peer on the same /64 as a one-address attacker is not starved.
UNDER_LOAD_NET_COOKIE_RATE = 1_000.0
UNDER_LOAD_NET_COOKIE_BURST = 100
# Cookie replies, all sources together (spoofed sources defeat per-source buckets): replies
# beyond this are not sent (the message is counted as bad_mac2 without cookie_replies_sent).
# Cookie replies *received* per source address: a responder sends one per handshake message of
# ours (at most one per peer and REKEY_TIMEOUT), so only a flood meets this.
RECEIVED_COOKIE_REPLY_RATE = 20.0
RECEIVED_COOKIE_REPLY_BURST = 40
COOKIE_REPLIES_PER_SECOND = 10_000.0
COOKIE_REPLY_BURST = 1_000
MAX_SOURCES = 65_536  # token buckets per limiter (then new sources share one)

# HandshakeGuard.precheck verdicts
PASS = 0
NO_KEY = 1
RATE_LIMITED = 2
BAD_MAC1 = 3
COOKIE = 4  # answered with the cookie reply returned alongside
COOKIE_LIMITED = 5  # mac2 missing, but the global cookie budget is spent: dropped
VERDICTS = ("pass", "no_key", "rate_limited", "bad_mac1", "cookie", "cookie_limited")


def mac1_key(public_key: bytes) -> bytes:
    return blake2s(LABEL_MAC1, public_key)


def cookie_key(public_key: bytes) -> bytes:
    return blake2s(LABEL_COOKIE, public_key)


def endpoint_bytes(endpoint: Endpoint) -> bytes:
    """Source address and port as bytes (what a cookie is bound to)."""
    host, port = endpoint
    try:
        packed = ipaddress.ip_address(host).packed
    except ValueError:
        packed = host.encode("utf-8", "replace")
    return packed + _PORT.pack(port & 0xFFFF)


class LoadMeter:
    """Decides "under load": more than `threshold` handshake messages within one second.

    The device stays under load for `hold` seconds after the last over-threshold second.
    """

    __slots__ = ("_count", "_under_until", "_window_start", "hold", "threshold")

    def __init__(
        self,
        threshold: int = UNDER_LOAD_HANDSHAKES_PER_SECOND,
        hold: float = UNDER_LOAD_HOLD_TIME,
    ) -> None:
        self.threshold = threshold
        self.hold = hold
        self._window_start = float("-inf")
        self._count = 0
        self._under_until = float("-inf")

    def record(self, now: float) -> None:
        if now - self._window_start >= 1.0:
            self._window_start = now
            self._count = 0
        self._count += 1
        if self._count > self.threshold:
            self._under_until = now + self.hold

    def under_load(self, now: float) -> bool:
        return now < self._under_until


class SourceRateLimiter:
    """Token bucket per source (a key: an address, or `source_keys`' bucket key): `rate` per
    second, bursts of `burst`. At most `max_sources` buckets (memory stays bounded under a
    spoofed flood): when that many are live, every new source shares one overflow bucket, or
    with `overflow_pass` goes through untracked (for a first stage that a global budget backs:
    sources a spoofed flood makes up must not crowd out a real newcomer)."""

    __slots__ = ("_buckets", "_last_gc", "burst", "max_sources", "overflow_pass", "rate")

    def __init__(
        self,
        rate: float = UNDER_LOAD_PER_SOURCE_RATE,
        burst: float = UNDER_LOAD_PER_SOURCE_BURST,
        max_sources: int = MAX_SOURCES,
        overflow_pass: bool = False,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.max_sources = max_sources
        self.overflow_pass = overflow_pass
        self._buckets: dict[Hashable, tuple[float, float]] = {}  # key -> (tokens, time)
        self._last_gc = float("-inf")

    def allow(self, now: float, host: Hashable) -> bool:
        if now - self._last_gc >= 1.0:
            # a bucket idle long enough to be full again carries no information
            full_after = self.burst / self.rate
            if any(now - v[1] >= full_after for v in self._buckets.values()):
                self._buckets = {h: v for h, v in self._buckets.items()
                                 if now - v[1] < full_after}
            self._last_gc = now
        if host not in self._buckets and len(self._buckets) >= self.max_sources:
            if self.overflow_pass:
                return True
            host = _OVERFLOW
        tokens, last = self._buckets.get(host, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[host] = (tokens, now)
            return False
        self._buckets[host] = (tokens - 1.0, now)
        return True

    def __len__(self) -> int:
        return len(self._buckets)


@functools.lru_cache(maxsize=4096)
def source_keys(src: Endpoint) -> tuple[bytes, bytes]:
    """(token-bucket key, cookie binding) of a source endpoint: the key is the packed address
    (HandshakeGuard derives the network, an IPv6 /64, from it), the binding the address and
    port (endpoint_bytes)."""
    host, port = src
    try:
        packed = ipaddress.ip_address(host.partition("%")[0]).packed
    except ValueError:
        packed = host.encode("utf-8", "replace")[:16]
    return packed, packed + _PORT.pack(port & 0xFFFF)


class CookieChecker:
    """Responder side: verifies mac1/mac2 on received handshake messages, makes cookie replies."""

    __slots__ = ("_cookie_key", "_mac1_key", "_rng", "_secret", "_secret_time")

    def __init__(self, rng: Rng, public_key: bytes | None = None) -> None:
        self._rng = rng
        self._secret = b""
        self._secret_time = float("-inf")
        self._mac1_key = b""
        self._cookie_key = b""
        self.set_public_key(public_key)

    def set_public_key(self, public_key: bytes | None) -> None:
        self._mac1_key = mac1_key(public_key) if public_key is not None else b""
        self._cookie_key = cookie_key(public_key) if public_key is not None else b""

    def check_mac1(self, msg: bytes, mac1_offset: int) -> bool:
        if not self._mac1_key:
            return False
        expected = mac(self._mac1_key, msg[:mac1_offset])
        return _equal(expected, msg[mac1_offset : mac1_offset + MAC_LEN])

    def _current_secret(self, now: float) -> bytes:
        if now - self._secret_time >= COOKIE_REFRESH_TIME:
            self._secret = self._rng.bytes(32)
            self._secret_time = now
        return self._secret

    def cookie_for(self, now: float, src: Endpoint) -> bytes:
        return mac(self._current_secret(now), endpoint_bytes(src))

    def cookie_for_binding(self, now: float, binding: bytes) -> bytes:
        """The cookie for a source given as endpoint_bytes / source_keys' binding."""
        return mac(self._current_secret(now), binding)

    def reply_bytes(self, now: float, msg: bytes, mac1_offset: int, binding: bytes) -> bytes:
        """The encoded cookie reply to `msg` (its sender index at bytes 4..8)."""
        nonce = self._rng.bytes(COOKIE_NONCE_LEN)
        sealed = xchacha20poly1305_seal(self._cookie_key, nonce,
                                        self.cookie_for_binding(now, binding),
                                        msg[mac1_offset : mac1_offset + MAC_LEN])
        return b"\x03\x00\x00\x00" + msg[4:8] + nonce + sealed

    def check_mac2(self, now: float, msg: bytes, mac2_offset: int, src: Endpoint) -> bool:
        got = msg[mac2_offset : mac2_offset + MAC_LEN]
        if _equal(got, _ZERO_MAC):
            return False
        expected = mac(self.cookie_for(now, src), msg[:mac2_offset])
        return _equal(expected, got)

    def make_reply(
        self, now: float, msg: bytes, mac1_offset: int, sender_index: int, src: Endpoint
    ) -> CookieReply:
        nonce = self._rng.bytes(COOKIE_NONCE_LEN)
        msg_mac1 = msg[mac1_offset : mac1_offset + MAC_LEN]
        sealed = xchacha20poly1305_seal(
            self._cookie_key, nonce, self.cookie_for(now, src), msg_mac1
        )
        return CookieReply(sender_index, nonce, sealed)


class LoadView(Protocol):
    """The load meter of a handshake guard (LoadMeter, or the C guard itself)."""

    threshold: int
    hold: float

    def under_load(self, now: float) -> bool: ...


class Guard(Protocol):
    """What the Device needs of a handshake guard: HandshakeGuard below, or its C twin
    (dataplane/_fastpath.pyi), which the engine installs with Device.use_guard."""

    @property
    def load(self) -> LoadView: ...

    def set_keys(self, mac1: bytes, cookie: bytes) -> None: ...

    def set_ticket(self, mac1: bytes) -> None: ...

    def take_counts(self) -> tuple[int, ...]: ...

    def cookie_reply(self, now: float, msg: bytes, source_key: bytes) -> bool: ...

    def precheck(
        self, now: float, msg: bytes, source_key: bytes, binding: bytes
    ) -> tuple[int, bytes | None]: ...


class HandshakeGuard:
    """The cheap-first checks of a received handshake message (initiation or response, type
    and length already checked), run by the Device before any DH work:

      1. ticket: the data plane already checked this very message (set_ticket): pass
      2. no private key: NO_KEY
      3. under load, and the source is over its bucket (UNDER_LOAD_SOURCE_RATE, before any
         MAC is computed): RATE_LIMITED; the message still counts as load (sources beyond
         MAX_SOURCES are not tracked here nor in the network cookie buckets: the global
         cookie budget bounds their cost, and made-up sources cannot crowd out a newcomer)
      4. mac1 wrong: BAD_MAC1
      5. the message counts as load (LoadMeter)
      6. under load: mac2 wrong -> COOKIE with a cookie reply while the source network's
         cookie bucket (UNDER_LOAD_NET_COOKIE_RATE; the network is the IPv4 address or the
         IPv6 /64) and the global cookie budget last, else COOKIE_LIMITED; mac2 right -> the
         network's DH bucket (UNDER_LOAD_PER_SOURCE_RATE): RATE_LIMITED when spent
      7. PASS
    and on each received cookie reply a per-source bucket (cookie_reply).

    `precheck(now, msg, source_key, source_binding)` (see source_keys) returns (verdict,
    cookie reply bytes or None). The C fast path's HandshakeGuard is a twin with the same
    arguments and verdicts (tests compare them); the engine installs it (Device.use_guard)
    and runs it on handshake messages straight from the socket."""

    __slots__ = ("_cookie_bucket", "_cookies", "_dh", "_net", "_pre", "_replies", "_ticket",
                 "load")

    def __init__(
        self,
        rng: Rng,
        threshold: int = UNDER_LOAD_HANDSHAKES_PER_SECOND,
        hold: float = UNDER_LOAD_HOLD_TIME,
        source_rate: float = UNDER_LOAD_SOURCE_RATE,
        source_burst: float = UNDER_LOAD_SOURCE_BURST,
        net_rate: float = UNDER_LOAD_NET_COOKIE_RATE,
        net_burst: float = UNDER_LOAD_NET_COOKIE_BURST,
        dh_rate: float = UNDER_LOAD_PER_SOURCE_RATE,
        dh_burst: float = UNDER_LOAD_PER_SOURCE_BURST,
        cookie_rate: float = COOKIE_REPLIES_PER_SECOND,
        cookie_burst: float = COOKIE_REPLY_BURST,
        reply_rate: float = RECEIVED_COOKIE_REPLY_RATE,
        reply_burst: float = RECEIVED_COOKIE_REPLY_BURST,
        max_sources: int = MAX_SOURCES,
    ) -> None:
        self.load = LoadMeter(threshold, hold)
        self._cookies = CookieChecker(rng)
        self._pre = SourceRateLimiter(source_rate, source_burst, max_sources, overflow_pass=True)
        self._net = SourceRateLimiter(net_rate, net_burst, max_sources, overflow_pass=True)
        self._dh = SourceRateLimiter(dh_rate, dh_burst, max_sources)
        self._cookie_bucket = SourceRateLimiter(cookie_rate, cookie_burst, 1)
        self._replies = SourceRateLimiter(reply_rate, reply_burst, max_sources,
                                          overflow_pass=True)
        self._ticket = b""

    @property
    def threshold(self) -> int:
        return self.load.threshold

    @property
    def hold(self) -> float:
        return self.load.hold

    @property
    def sources(self) -> int:
        return len(self._pre) + len(self._net) + len(self._dh) + len(self._replies)

    def params(self) -> dict[str, float]:
        """The constructor's keyword arguments (a twin is built with the same ones)."""
        return {"threshold": self.load.threshold, "hold": self.load.hold,
                "source_rate": self._pre.rate, "source_burst": self._pre.burst,
                "net_rate": self._net.rate, "net_burst": self._net.burst,
                "dh_rate": self._dh.rate, "dh_burst": self._dh.burst,
                "cookie_rate": self._cookie_bucket.rate,
                "cookie_burst": self._cookie_bucket.burst,
                "reply_rate": self._replies.rate, "reply_burst": self._replies.burst,
                "max_sources": self._pre.max_sources}

    def set_keys(self, mac1: bytes, cookie: bytes) -> None:
        """mac1_key(our public key) and cookie_key(it), or b"" and b"" without a key."""
        self._cookies._mac1_key = mac1
        self._cookies._cookie_key = cookie

    def set_ticket(self, mac1: bytes) -> None:
        """The next check of the message whose bytes [-32:-16] (mac1 of a handshake message)
        are these passes at once: the data plane checked it already."""
        self._ticket = mac1

    def under_load(self, now: float) -> bool:
        return self.load.under_load(now)

    def take_counts(self) -> tuple[int, ...]:
        return (0,) * len(VERDICTS)  # only the C data plane handles messages on its own

    def cookie_reply(self, now: float, msg: bytes, source_key: bytes) -> bool:
        """A received cookie reply (64 bytes) may go on (False: its source is over its bucket,
        RECEIVED_COOKIE_REPLY_RATE; the data plane may have checked it already: ticket)."""
        if self._ticket and _equal(self._ticket, msg[-32:-16]):
            self._ticket = b""
            return True
        return self._replies.allow(now, source_key)

    def precheck(
        self, now: float, msg: bytes, source_key: bytes, binding: bytes
    ) -> tuple[int, bytes | None]:
        n = len(msg)
        m1 = n - 2 * MAC_LEN
        m2 = n - MAC_LEN
        if self._ticket and _equal(self._ticket, msg[m1:m2]):
            self._ticket = b""
            return PASS, None
        c = self._cookies
        if not c._mac1_key:
            return NO_KEY, None
        load = self.load
        if load.under_load(now) and not self._pre.allow(now, source_key):
            load.record(now)
            return RATE_LIMITED, None
        if not c.check_mac1(msg, m1):
            return BAD_MAC1, None
        load.record(now)
        if not load.under_load(now):
            return PASS, None
        net = source_key[:8] if len(source_key) == 16 else source_key
        got = msg[m2:]
        if _equal(got, _ZERO_MAC) or not _equal(mac(c.cookie_for_binding(now, binding),
                                                     msg[:m2]), got):
            if (not self._net.allow(now, net)
                    or not self._cookie_bucket.allow(now, _OVERFLOW)):
                return COOKIE_LIMITED, None
            return COOKIE, c.reply_bytes(now, msg, m1, binding)
        if not self._dh.allow(now, net):
            return RATE_LIMITED, None
        return PASS, None


class CookieGenerator:
    """Initiator side, one per peer: adds mac1 (and mac2 when holding a fresh cookie)."""

    __slots__ = ("_cookie", "_cookie_key", "_cookie_time", "_last_mac1", "_mac1_key")

    def __init__(self, peer_public_key: bytes) -> None:
        self._mac1_key = mac1_key(peer_public_key)
        self._cookie_key = cookie_key(peer_public_key)
        self._cookie = b""
        self._cookie_time = float("-inf")
        self._last_mac1 = b""

    def has_cookie(self, now: float) -> bool:
        return bool(self._cookie) and now - self._cookie_time < COOKIE_LIFETIME

    def add_macs(self, now: float, msg: bytes, mac1_offset: int) -> bytes:
        """Fill in mac1 and mac2 of a handshake message whose MAC fields are zero."""
        body = msg[:mac1_offset]
        m1 = mac(self._mac1_key, body)
        self._last_mac1 = m1
        m2 = mac(self._cookie, body + m1) if self.has_cookie(now) else _ZERO_MAC
        return body + m1 + m2

    def consume_reply(self, now: float, reply: CookieReply) -> bool:
        """Store the cookie of a reply to our last handshake message; False if it is not one."""
        if not self._last_mac1:
            return False
        try:
            cookie = xchacha20poly1305_open(
                self._cookie_key, reply.nonce, reply.encrypted_cookie, self._last_mac1
            )
        except CryptoError:
            return False
        self._cookie = cookie
        self._cookie_time = now
        return True
