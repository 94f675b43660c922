"""Userspace mode: a TUN device and the data-plane engine (dataplane/engine.py) carry the
tunnels. The mesh sits behind the engine's ports (engine_wiring.py): transport data takes the
Device's fast path, everything else reaches `MeshNode.receive`, and the engine's
timers tick the node. With `split_port`, gossip has its own socket as in kernel mode, and the
engine's send router sends gossip and STUN from it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from meshguard.clock import Clock
from meshguard.crypto.keys import X25519PrivateKey
from meshguard.daemon.daemon_config import DaemonConfig, StartupError, bind_error
from meshguard.daemon.engine_wiring import MeshUapi, connect_mesh
from meshguard.daemon.gossip_socket import GossipSocket
from meshguard.daemon.startup_trace import mark
from meshguard.daemon.status import PeerStats
from meshguard.daemon.uapi_server import UapiServer
from meshguard.dataplane.engine import Engine
from meshguard.dataplane.tun import DEFAULT_MTU, TunDevice, TunError
from meshguard.errors import MeshguardError
from meshguard.identity.addressing import mesh_ipv4, mesh_ipv6
from meshguard.mesh.node import Action, MeshNode, PeerDown, PeerUp
from meshguard.rng import Rng
from meshguard.wireguard.actions import HandshakeCompleted, SendDatagram
from meshguard.wireguard.device import Device

log = logging.getLogger("meshguard.daemon")


class UserspaceRunner:
    mode = "userspace"

    def __init__(self, cfg: DaemonConfig, clock: Clock,
                 on_actions: Callable[[list[Action]], None]) -> None:
        self.cfg = cfg
        self.clock = clock
        self._on_actions = on_actions
        self.device: Device | None = None
        self.engine: Engine | None = None
        self.tun: TunDevice | None = None
        self.gossip: GossipSocket | None = None

    async def open(self, stack: contextlib.AsyncExitStack, identity_key: bytes,
                   wg_private: X25519PrivateKey, rng: Rng, gossip_port: int) -> Device:
        """Bind the UDP port, create and address the TUN, serve UAPI reads; split-port mode
        binds the gossip socket too. Returns the WireGuard device the node will drive."""
        cfg = self.cfg
        device = Device(rng, wg_private)
        device.listen_port = cfg.port
        engine = Engine(device, -1, self.clock, on_actions=self._engine_actions)
        try:
            engine.bind(cfg.port)
        except OSError as exc:
            engine.close()
            raise bind_error(exc, cfg.port) from None
        mark("udp")
        stack.callback(engine.close)
        try:
            tun = TunDevice.open(cfg.interface, mtu=DEFAULT_MTU)
        except TunError as exc:
            raise StartupError(str(exc)) from None
        stack.callback(tun.close)
        try:
            tun.add_address(f"{mesh_ipv4(identity_key)}/16")
            tun.add_address(f"{mesh_ipv6(identity_key)}/64")
            tun.up()
        except (TunError, OSError) as exc:
            raise StartupError(f"cannot configure {cfg.interface}: {exc}") from None
        mark("tun")
        engine.tun_fd = tun.fd
        self.engine = engine
        self.tun = tun
        self.device = device
        uapi = UapiServer(cfg.interface, MeshUapi(device, cfg.port))
        try:
            await uapi.start()
            stack.push_async_callback(uapi.close)
            mark("uapi")
        except MeshguardError as exc:
            log.warning("no UAPI socket for `wg show`: %s", exc)
        if cfg.split:
            gossip = GossipSocket.bind(gossip_port, self.clock, self.execute,
                                       drop_wireguard=cfg.split_port)
            stack.callback(gossip.close)
            self.gossip = gossip
        return device

    def attach(self, node: MeshNode, loop: asyncio.AbstractEventLoop,
               stack: contextlib.AsyncExitStack) -> None:
        """Hand the node to the engine and start it; start the gossip reader if split."""
        engine = self.engine
        assert engine is not None
        assert self.device is not None
        connect_mesh(engine, node, self.device, split_port=self.cfg.split,
                     send_gossip=self._send_gossip)
        engine.start(loop)
        gossip = self.gossip
        if gossip is not None:
            gossip.node = node
            loop.add_reader(gossip.fileno(), gossip.readable)
            stack.callback(loop.remove_reader, gossip.fileno())

    def _engine_actions(self, actions: list[object]) -> None:
        # the engine passes on what its ports returned: the node's actions (and the Device's,
        # a part of them)
        if any(isinstance(a, HandshakeCompleted) for a in actions):
            mark("handshake")
        self._on_actions([a for a in actions if isinstance(a, Action)])

    def _send_gossip(self, grams: list[SendDatagram]) -> None:
        if self.gossip is not None:
            self._on_actions(self.gossip.send(list(grams)))

    def execute(self, actions: list[Action]) -> None:
        if not actions:
            return
        engine = self.engine
        assert engine is not None
        engine.execute(actions)
        engine.kick()

    def peers_changed(self, changes: list[PeerUp | PeerDown]) -> None:
        """The node has already given its tunnels to the Device the engine runs."""

    async def peer_stats(self) -> PeerStats | None:
        return None  # the node's backend has them

    def counters(self) -> dict[str, int]:
        if self.engine is None:
            return {}
        return {f"engine_{k}": v for k, v in self.engine.stats.as_dict().items()}
