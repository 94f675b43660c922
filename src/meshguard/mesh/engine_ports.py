"""The mesh behind the data-plane engine's ports (dataplane/ports.py).

A userspace mesh node runs one Engine whose

- fast-path port is `MeshFastPath`: the node's WireGuard Device, except that a relayed
  peer (its endpoint a nat.relay placeholder) gets no send batch, so its packets take the
  slow path, where the node wraps them for the relay (and the engine's data-path thread
  gets no endpoint for it);
- slow-path port is `MeshSlowPath`: the MeshNode, whose demultiplexer classifies each
  datagram once (WireGuard to the Device, gossip to SWIM, STUN, NAT and org messages) and
  whose timers cover SWIM, STUN and the NAT helpers as well as the Device. On a WireGuard-only
  port (split-port mode: gossip has its own socket) anything that is not WireGuard is dropped
  as garbage, as a kernel device would;
- send router is `SplitPortRouter` in split-port mode: WireGuard leaves from the engine's
  socket, gossip and STUN from the gossip socket, as a kernel-mode node sends them.

The engine's types are matched structurally (this layer does not import the data plane).
"""

from __future__ import annotations

from collections.abc import Callable

from meshguard.mesh.demux import Kind, classify
from meshguard.mesh.node import Action, MeshNode
from meshguard.nat.relay import RELAY_HOST
from meshguard.sansio import Endpoint, SendDatagram
from meshguard.wireguard.cookie import Guard
from meshguard.wireguard.device import Device
from meshguard.wireguard.keypair import Keypair
from meshguard.wireguard.peer import DataPathTables, Peer, SendBatch

__all__ = ["MeshFastPath", "MeshSlowPath", "SplitPortRouter"]

Datagram = tuple[bytes, Endpoint]


class MeshFastPath:
    """The engine's fast-path port: the mesh's Device, relayed peers excepted."""

    def __init__(self, device: Device) -> None:
        self._device = device
        # the per-batch calls go straight to the Device (bound once: no extra call per batch)
        self.route = device.route
        self.keypair_for_receive = device.keypair_for_receive
        self.source_allowed = device.source_allowed
        self.note_sent = device.note_sent
        self.note_received = device.note_received
        self.note_dropped = device.note_dropped
        self.use_guard = device.use_guard
        self.count_verdicts = device.count_verdicts

    def prepare_send_peer(self, now: float, peer: Peer) -> SendBatch | None:
        # a relayed peer's datagrams must be wrapped (RelayData) by the node: slow path
        ep = peer.endpoint
        if ep is not None and ep[0] == RELAY_HOST:
            return None
        return self._device.prepare_send_peer(now, peer)

    @property
    def guard(self) -> Guard:
        return self._device.guard

    @property
    def receiver_indices(self) -> dict[int, Peer | Keypair]:
        return self._device.receiver_indices

    @property
    def generation(self) -> int:
        return self._device.generation

    def watch_changes(self, callback: Callable[[], None] | None) -> None:
        self._device.watch_changes(callback)

    def datapath_tables(self) -> DataPathTables:
        # a relayed peer has no endpoint for the data path: its packets take the slow path
        t = self._device.datapath_tables()
        t.peers = [(p, None if ep is not None and ep[0] == RELAY_HOST else ep, kp)
                   for p, ep, kp in t.peers]
        return t


class MeshSlowPath:
    """The engine's slow-path port: the MeshNode (on a WireGuard-only port, its WireGuard)."""

    def __init__(self, node: MeshNode, wireguard_only: bool = False) -> None:
        self._node = node
        self._wireguard_only = wireguard_only
        self.send_packet = node.send_packet
        self.tick = node.tick
        self.next_deadline = node.next_deadline

    def receive(self, now: float, wall: float, data: bytes, src: Endpoint
                         ) -> list[Action]:
        node = self._node
        if not self._wireguard_only:
            return node.receive(now, wall, data, src)
        if classify(data) is not Kind.WIREGUARD:
            node.counters["garbage_dropped"] += 1  # a kernel device would drop it too
            return []
        return node.receive_wireguard(now, wall, data, src)


class SplitPortRouter:
    """Split-port mode: WireGuard from the engine's socket; the rest to `send_other` (the
    gossip socket's sender)."""

    def __init__(self, send_other: Callable[[list[SendDatagram]], None]) -> None:
        self._send_other = send_other

    def route(self, grams: list[Datagram]) -> list[Datagram]:
        wireguard: list[Datagram] = []
        other: list[SendDatagram] = []
        for data, ep in grams:
            if classify(data) is Kind.WIREGUARD:
                wireguard.append((data, ep))
            else:
                other.append(SendDatagram(data, ep))
        if other:
            self._send_other(other)
        return wireguard

