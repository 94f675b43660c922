"""How a userspace mesh node is plugged into the data-plane engine: the device the engine sees,
the send routing of split-port mode, and the read-only UAPI backend for `wg show`."""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

from meshguard.daemon.uapi_protocol import DeviceState, SetRequest, UapiError
from meshguard.daemon.wg_interface import DeviceUapiBackend
from meshguard.dataplane.engine import Engine
from meshguard.mesh.demux import Kind, classify
from meshguard.mesh.node import MeshNode
from meshguard.wireguard.actions import SendDatagram
from meshguard.wireguard.device import Device

RELAY_HOST = "0.0.0.0"  # nat.relay.RELAY_HOST: placeholder endpoints of relayed peers


class EngineDevice:
    """What the data-plane engine sees as its WireGuard device: the real Device for the batched
    fast path (route, prepare_send_peer, keypair_for_receive, note_*), the MeshNode for the slow
    path, so every non-transport datagram goes through the node's demultiplexer (handshakes to
    the Device, gossip to SWIM, STUN, garbage counted) and timers cover SWIM as well."""

    def __init__(self, node: MeshNode, device: Any, wireguard_only: bool = False) -> None:
        self._node = node
        self._device = device
        self._wireguard_only = wireguard_only

    def __getattr__(self, name: str) -> Any:
        return getattr(self._device, name)

    def receive_datagram(self, now: float, wall: float, data: bytes, src: tuple[str, int]
                         ) -> list[Any]:
        if self._wireguard_only and classify(data) is not Kind.WIREGUARD:
            self._node.counters["garbage_dropped"] += 1  # a kernel device would drop it too
            return []
        return self._node.receive_datagram(now, wall, data, src)

    def send_packet(self, now: float, wall: float, ip_packet: bytes) -> list[Any]:
        return self._node.send_packet(now, wall, ip_packet)

    def prepare_send_peer(self, now: float, peer: Any) -> Any:
        # a relayed peer's datagrams must be wrapped (RelayData) by the node: slow path
        ep = peer.endpoint
        if ep is not None and ep[0] == RELAY_HOST:
            return None
        return self._device.prepare_send_peer(now, peer)

    def tick(self, now: float, wall: float) -> list[Any]:
        return self._node.tick(now, wall)

    def next_deadline(self) -> float | None:
        return self._node.next_deadline()


def route_engine_sends(engine: Engine, send_other: Callable[[list[SendDatagram]], None]
                       ) -> None:
    """Split-port userspace: WireGuard leaves from the engine's port, everything else (gossip,
    STUN) through `send_other` (the gossip socket), exactly as a kernel-mode node sends it."""
    wg_send = engine.send_datagrams

    def route(grams: list[tuple[bytes, tuple[str, int]]]) -> None:
        wg = [g for g in grams if classify(g[0]) is Kind.WIREGUARD]
        if len(wg) != len(grams):
            send_other([SendDatagram(d, ep) for d, ep in grams
                        if classify(d) is not Kind.WIREGUARD])
        if wg:
            wg_send(wg)

    engine.send_datagrams = route  # type: ignore[method-assign]


class MeshUapi(DeviceUapiBackend):
    """Read-only UAPI backend: `wg show <iface>` works on a userspace mesh interface; `wg set`
    is refused, since the mesh owns the peer set (it would be overwritten at the next
    membership change anyway). Reads are DeviceUapiBackend's, with the mesh port reported."""

    def __init__(self, device: Device, port: int) -> None:
        super().__init__(device)
        self.port = port

    def uapi_get(self) -> DeviceState:
        state = super().uapi_get()
        state.listen_port = self.port
        return state

    def uapi_set(self, req: SetRequest) -> None:
        raise UapiError(errno.EPERM, "the mesh manages this interface; use meshguard trust")
