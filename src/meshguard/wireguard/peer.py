"""A configured WireGuard peer and the send handle the data plane batches under."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum

from meshguard.crypto.aead import TransportCipher
from meshguard.crypto.keys import X25519PublicKey
from meshguard.crypto.tai64n import TAI64N_LEN
from meshguard.sansio import Endpoint
from meshguard.wireguard import noise
from meshguard.wireguard.allowed_ips import AllowedIPs, IPNetwork
from meshguard.wireguard.cookie import CookieGenerator
from meshguard.wireguard.handshake_rtt import HandshakeRtt
from meshguard.wireguard.keypair import Keypair, Keypairs
from meshguard.wireguard.timers import PeerTimers

__all__ = ["NO_PSK", "DataPathTables", "HandshakeState", "Peer", "SendBatch"]

NO_PSK = bytes(32)


class HandshakeState(Enum):
    NONE = 0
    INITIATION_SENT = 1


@dataclass(eq=False)
class Peer:
    """One configured peer: configuration and statistics, then protocol state (the Device's)."""

    public_key: X25519PublicKey
    preshared_key: bytes = NO_PSK
    endpoint: Endpoint | None = None
    persistent_keepalive: int = 0
    rx_bytes: int = 0
    tx_bytes: int = 0
    last_handshake_wall: float = 0.0
    # the inner MTU TCP SYNs to and from this peer are clamped to (wire/tcp_mss.py); 0: none.
    # Whoever sets it calls Device.changed(), so the data-path thread takes it too
    clamp_mtu: int = 0
    # protocol state (owned by the device)
    keypairs: Keypairs = field(default_factory=Keypairs)
    timers: PeerTimers = field(default_factory=PeerTimers)
    handshake_state: HandshakeState = HandshakeState.NONE
    handshake_index: int = 0
    initiator_state: noise.InitiatorState | None = None
    last_initiation_sent: float = float("-inf")
    last_sent_timestamp: bytes = bytes(TAI64N_LEN)
    last_initiation_consumed: float = float("-inf")
    greatest_timestamp: bytes = bytes(TAI64N_LEN)
    staged: deque[bytes] = field(default_factory=deque)
    static_static: bytes | None = None
    cookie: CookieGenerator | None = None
    routes: AllowedIPs[Peer] | None = field(default=None, repr=False)
    # the end-to-end round trip measured on handshakes (handshake_rtt.py)
    rtt: HandshakeRtt = field(default_factory=HandshakeRtt)

    def __post_init__(self) -> None:
        if self.cookie is None:
            self.cookie = CookieGenerator(self.public_key.raw)

    def __repr__(self) -> str:
        return f"Peer({self.public_key.b64()}, endpoint={self.endpoint})"

    @property
    def allowed_ips(self) -> list[IPNetwork]:
        """The networks routed to this peer (set with Device.set_allowed_ips)."""
        return self.routes.networks_of(self) if self.routes is not None else []

    @property
    def current_keypair(self) -> Keypair | None:
        return self.keypairs.current


@dataclass(slots=True)
class DataPathTables:
    """A snapshot of what a data path outside the interpreter moves transport data by
    (Device.datapath_tables): (peer, endpoint, current send keypair) per peer, (keypair, is the
    peer's next) per live receiver index, (raw network address, prefix, peer) per allowed IP.
    An endpoint of None: the peer's packets take the slow path."""

    peers: list[tuple[Peer, Endpoint | None, Keypair | None]]
    receive: list[tuple[Keypair, bool]]
    routes: list[tuple[bytes, int, Peer]]


@dataclass(slots=True)
class SendBatch:
    """Everything the data plane needs to send a batch to one peer."""

    peer: Peer
    keypair: Keypair
    endpoint: Endpoint
    cipher: TransportCipher
    receiver_index: int

    def reserve(self, n: int) -> int | None:
        """First of n consecutive send counters, or None when the keypair is exhausted."""
        return self.keypair.reserve(n)

