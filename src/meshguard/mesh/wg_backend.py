"""PeerBackend for the userspace WireGuard Device: applies the node's peer set to it."""

from __future__ import annotations

from dataclasses import dataclass

from meshguard.crypto.keys import X25519PublicKey
from meshguard.mesh.actions import PeerConfig
from meshguard.sansio import Endpoint
from meshguard.wireguard.device import Device

INITIAL_KEEPALIVE_DELAY = 2.0  # seconds (see DeviceBackend.upsert)


@dataclass
class DeviceBackend:
    device: Device

    def upsert(self, peer: PeerConfig) -> None:
        pub = X25519PublicKey(peer.wg_key)
        p = self.device.add_peer(pub)
        if peer.endpoint is not None and p.endpoint != peer.endpoint:
            # a roamed endpoint (learned from authenticated traffic) is newer than the record
            # only while the record is unchanged; a record change is an explicit move
            moved = p.endpoint is not None and p.keypairs.current is not None
            p.endpoint = peer.endpoint
            self.device.changed()
            if moved and peer.keepalive > 0 and p.persistent_keepalive > 0:
                # the member moved (mesh/roaming.py): a keepalive on the session we have, to
                # the new endpoint at once, opens our NAT towards it so its packets get in
                # (without a session the handshake timers are in charge, as for a new peer)
                self.device.keepalive_soon(p, 0.0)
        was = p.persistent_keepalive
        p.persistent_keepalive = peer.keepalive
        if peer.keepalive > 0 and was == 0:
            # Switched on: a keepalive (a handshake, with no session yet), as wireguard-go and
            # the kernel do, so NAT mappings open and a restarted peer is re-keyed before any
            # traffic. Two members usually configure each other at the same moment: the lower
            # WireGuard key goes first, the other a little later (by then it has a session and
            # sends a plain keepalive), so the two initiations do not cross (crossing ones
            # cost a second handshake, not a stall: wireguard/handshake.py). If the other one
            # went first already and was refused (it was not our peer yet), it retransmits
            # only after REKEY_TIMEOUT: initiate at once instead.
            own = self.device.public_key
            first = own is None or own.raw < peer.wg_key or self.device.knocked(peer.wg_key)
            self.device.keepalive_soon(p, 0.0 if first else INITIAL_KEEPALIVE_DELAY)
        self.device.set_allowed_ips(p, peer.allowed_ips, replace=True)

    def remove(self, wg_key: bytes) -> None:
        self.device.remove_peer(X25519PublicKey(wg_key))

    def stats(self, wg_key: bytes) -> tuple[float, int, int, Endpoint | None]:
        p = self.device.peer(X25519PublicKey(wg_key))
        if p is None:
            return (0.0, 0, 0, None)
        return (p.last_handshake_wall, p.rx_bytes, p.tx_bytes, p.endpoint)

    def handshake_rtt(self, wg_key: bytes) -> float | None:
        """The peer's smoothed end-to-end RTT from its handshakes (wireguard/handshake_rtt.py),
        None before the first sample or for an unknown peer."""
        p = self.device.peer(X25519PublicKey(wg_key))
        return None if p is None else p.rtt.smoothed
