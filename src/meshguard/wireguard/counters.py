"""Device counters: every dropped packet is counted under one reason."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(slots=True)
class Counters:
    # drops, cheapest check first
    bad_type: int = 0  # not a WireGuard message type
    bad_length: int = 0  # known type, wrong length
    bad_mac1: int = 0
    bad_mac2: int = 0  # under load without a valid cookie (answered with a cookie reply)
    rate_limited: int = 0  # under load, too many handshake messages from one address
    bad_cookie_reply: int = 0  # cookie reply for no handshake of ours, or not decrypting
    handshake_flood: int = 0  # initiations from one peer faster than the per-peer limit
    bad_handshake: int = 0  # initiation/response that did not authenticate (DH/AEAD)
    unknown_peer: int = 0  # initiation from a static key we have no peer for
    handshake_replay: int = 0  # initiation whose TAI64N timestamp did not increase
    stale_response: int = 0  # response for no initiation in flight
    unknown_index: int = 0  # transport message for no (live) keypair
    replay: int = 0  # transport counter seen before or outside the window
    bad_auth: int = 0  # transport message failing AEAD authentication
    bad_inner: int = 0  # decrypted payload not an IPv4/IPv6 packet
    bad_source: int = 0  # inner source address not in the peer's allowed IPs
    no_route: int = 0  # outgoing packet to an address no peer is allowed
    no_private_key: int = 0  # the device has no private key
    staged_overflow: int = 0  # queue of packets waiting for a handshake was full
    handshake_gave_up: int = 0  # packets dropped when giving up a handshake
    # events
    no_endpoint: int = 0  # a handshake was due but the peer has no endpoint (packets wait)
    cookie_replies_sent: int = 0
    cookies_received: int = 0
    initiations_sent: int = 0
    initiations_received: int = 0
    responses_sent: int = 0
    handshakes_completed: int = 0
    keepalives_sent: int = 0
    keepalives_received: int = 0
    packets_sent: int = 0
    packets_received: int = 0

    DROP_REASONS = (
        "bad_type",
        "bad_length",
        "bad_mac1",
        "bad_mac2",
        "rate_limited",
        "bad_cookie_reply",
        "handshake_flood",
        "bad_handshake",
        "unknown_peer",
        "handshake_replay",
        "stale_response",
        "unknown_index",
        "replay",
        "bad_auth",
        "bad_inner",
        "bad_source",
        "no_route",
        "no_private_key",
        "staged_overflow",
        "handshake_gave_up",
    )

    def dropped(self) -> int:
        return sum(int(getattr(self, r)) for r in self.DROP_REASONS)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)
