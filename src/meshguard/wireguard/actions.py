"""Actions returned by the sans-IO WireGuard device (docs/architecture.md)."""

from __future__ import annotations

from dataclasses import dataclass

from meshguard.crypto.keys import X25519PublicKey
from meshguard.sansio import Endpoint, SendDatagram

__all__ = ["Action", "Endpoint", "HandshakeCompleted", "HandshakeGaveUp", "PeerKeysExpired",
           "SendDatagram", "WriteTun"]


@dataclass(frozen=True, slots=True)
class WriteTun:
    packet: bytes


@dataclass(frozen=True, slots=True)
class HandshakeCompleted:
    peer_key: X25519PublicKey


@dataclass(frozen=True, slots=True)
class PeerKeysExpired:
    """All key material of the peer was zeroed (3 * REJECT_AFTER_TIME without a handshake)."""

    peer_key: X25519PublicKey


@dataclass(frozen=True, slots=True)
class HandshakeGaveUp:
    """No handshake completed within REKEY_ATTEMPT_TIME; queued packets were dropped."""

    peer_key: X25519PublicKey


Action = SendDatagram | WriteTun | HandshakeCompleted | PeerKeysExpired | HandshakeGaveUp
