"""mac1 / mac2 and cookies: WireGuard's DoS mitigation (paper section 5.3 and 5.4.4, 5.4.7).

- mac1 = MAC(HASH("mac1----" || S_pub_receiver), msg[:mac1 offset]); checked first and cheaply,
  it proves the sender knows our public key.
- Under load the responder wants proof of a round trip: mac2 = MAC(cookie, msg[:mac2 offset])
  with cookie = MAC(R, source address and port), R a secret replaced every COOKIE_REFRESH_TIME.
  Without a valid mac2 the message is answered with a cookie reply (no DH work done):
  XChaCha20-Poly1305(key = HASH("cookie--" || S_pub_responder), random 24-byte nonce,
  cookie, ad = the mac1 of the message being answered).
- The initiator stores the cookie and adds mac2 to its next handshake messages.
"""

from __future__ import annotations

import ipaddress
import struct

from meshguard.crypto.aead import xchacha20poly1305_open, xchacha20poly1305_seal
from meshguard.crypto.hashes import blake2s, mac
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
    """Token bucket per source address (not port): `rate` per second, bursts of `burst`."""

    __slots__ = ("_buckets", "_last_gc", "burst", "rate")

    def __init__(
        self, rate: float = UNDER_LOAD_PER_SOURCE_RATE, burst: int = UNDER_LOAD_PER_SOURCE_BURST
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}  # host -> (tokens, time)
        self._last_gc = float("-inf")

    def allow(self, now: float, host: str) -> bool:
        if now - self._last_gc >= 1.0:
            # a bucket idle long enough to be full again carries no information
            full_after = self.burst / self.rate
            self._buckets = {h: v for h, v in self._buckets.items() if now - v[1] < full_after}
            self._last_gc = now
        tokens, last = self._buckets.get(host, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[host] = (tokens, now)
            return False
        self._buckets[host] = (tokens - 1.0, now)
        return True

    def __len__(self) -> int:
        return len(self._buckets)


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


def _equal(a: bytes, b: bytes) -> bool:
    """Constant-time comparison (without importing hmac outside crypto/)."""
    if len(a) != len(b):
        return False
    diff = 0
    for x, y in zip(a, b, strict=True):
        diff |= x ^ y
    return diff == 0
