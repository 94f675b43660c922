"""How a userspace mesh node is plugged into the data-plane engine: the mesh behind the engine's
typed ports (dataplane/ports.py, mesh/engine_ports.py), with split-port mode's send router, and
the read-only UAPI backend for `wg show`."""

from __future__ import annotations

import errno
from collections.abc import Callable

from meshguard.daemon.uapi_protocol import DeviceState, SetRequest, UapiError
from meshguard.daemon.wg_interface import DeviceUapiBackend
from meshguard.dataplane.engine import Engine
from meshguard.mesh.engine_ports import MeshFastPath, MeshSlowPath, SplitPortRouter
from meshguard.mesh.node import MeshNode
from meshguard.sansio import SendDatagram
from meshguard.wireguard.device import Device


def connect_mesh(engine: Engine, node: MeshNode, device: Device, *, split_port: bool,
                 send_gossip: Callable[[list[SendDatagram]], None]) -> None:
    """Put the mesh behind the engine's ports (mesh/engine_ports.py): the Device serves the
    fast path (a relayed peer excepted), the node the slow path; with `split_port` the
    engine's port is WireGuard's only, and gossip and STUN leave through `send_gossip`."""
    router = SplitPortRouter(send_gossip) if split_port else None
    engine.connect(MeshFastPath(device), MeshSlowPath(node, wireguard_only=split_port), router)


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
