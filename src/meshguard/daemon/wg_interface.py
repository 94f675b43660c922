"""A userspace WireGuard interface: TUN + Device + Engine + UAPI socket, like `wireguard-go IF`.

    iface = WireGuardInterface("wg0")
    await iface.start()            # TUN created (down, no address), UAPI socket listening
    await iface.wait_closed()      # until close() (e.g. from a signal handler)
    await iface.close()            # socket removed, interface gone

The interface is configured only through UAPI (`wg set`, `wg setconf`, ...), as with
wireguard-go; addresses and link state through `ip`. The UDP port is bound at start (random
until `listen_port` is set).

Test knob: `MESHGUARD_TEST_REKEY_AFTER_TIME=<seconds>` in the environment shortens the
initiator's re-key interval (REKEY_AFTER_TIME, 120 s) so re-keying can be observed in tests.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
from collections.abc import Callable, Mapping

from meshguard.clock import Clock, SystemClock
from meshguard.crypto.keys import X25519PrivateKey, X25519PublicKey
from meshguard.daemon.startup_trace import mark
from meshguard.daemon.uapi_protocol import (
    EADDRINUSE,
    EINVAL,
    DeviceState,
    IPNetwork,
    PeerState,
    SetRequest,
    UapiError,
)
from meshguard.daemon.uapi_server import DEFAULT_RUN_DIR, UapiServer, socket_in_use, socket_path
from meshguard.dataplane.engine import Engine
from meshguard.dataplane.tun import DEFAULT_MTU, TunDevice, TunError, interface_exists
from meshguard.errors import MeshguardError
from meshguard.rng import Rng, SystemRng
from meshguard.wireguard.actions import HandshakeCompleted
from meshguard.wireguard.device import Device, Peer

log = logging.getLogger(__name__)

REKEY_ENV = "MESHGUARD_TEST_REKEY_AFTER_TIME"


class InterfaceError(MeshguardError):
    """The userspace interface could not be created."""


def preflight(ifname: str, run_dir: str = DEFAULT_RUN_DIR) -> None:
    """Fail early with one clear line: not root, no /dev/net/tun, name in use."""
    if os.geteuid() != 0:
        raise InterfaceError("must run as root (creating a TUN interface needs CAP_NET_ADMIN)")
    if not os.path.exists("/dev/net/tun"):
        raise InterfaceError("/dev/net/tun does not exist (load the tun module)")
    if interface_exists(ifname):
        raise InterfaceError(f"interface {ifname} already exists")
    path = socket_path(ifname, run_dir)
    if os.path.exists(path) and socket_in_use(path):
        raise InterfaceError(f"{path} is in use by another process")


def apply_test_knobs(device: Device, env: Mapping[str, str]) -> None:
    """Test-only timing overrides from the environment (see module docstring)."""
    value = env.get(REKEY_ENV)
    if not value:
        return
    try:
        seconds = float(value)
    except ValueError:
        raise InterfaceError(f"{REKEY_ENV} must be a number of seconds") from None
    if not seconds > 0:
        raise InterfaceError(f"{REKEY_ENV} must be positive")
    device.rekey_after_time = seconds
    log.warning("test knob: rekey_after_time = %s s", seconds)


class DeviceUapiBackend:
    """UAPI get/set (uapi_server.UapiBackend) over a Device and the Engine owning its socket.

    Reusable by any owner of a Device (the `meshguard wireguard` interface, the mesh daemon in
    userspace mode): `UapiServer(ifname, DeviceUapiBackend(device, engine))`. Set requests are
    validated as a whole (uapi_protocol) and the one step that can still fail, binding a new
    listen port, happens before any change, so a refused request changes nothing. Allowed IPs
    are reported in the order they were configured, as wireguard-go does.
    """

    def __init__(
        self, device: Device, engine: Engine | None = None, clock: Clock | None = None
    ) -> None:
        self.device = device
        self.engine = engine
        self.clock: Clock = clock or SystemClock()
        self._ip_order: dict[bytes, dict[IPNetwork, None]] = {}

    def uapi_get(self) -> DeviceState:
        dev = self.device
        priv = dev.private_key
        state = DeviceState(
            private_key=priv.raw if priv is not None else None,
            listen_port=self.engine.port if self.engine is not None else dev.listen_port,
            fwmark=dev.fwmark,
        )
        for peer in dev.peers:
            pub = peer.public_key
            state.peers.append(
                PeerState(
                    public_key=pub.raw,
                    preshared_key=bytes(peer.preshared_key),
                    endpoint=peer.endpoint,
                    last_handshake_ns=round(peer.last_handshake_wall * 1e9),
                    tx_bytes=peer.tx_bytes,
                    rx_bytes=peer.rx_bytes,
                    persistent_keepalive=peer.persistent_keepalive,
                    allowed_ips=self._ordered_allowed_ips(peer),
                )
            )
        return state

    def _ordered_allowed_ips(self, peer: Peer) -> list[IPNetwork]:
        """The peer's networks in the order they were configured (as wireguard-go lists them)."""
        nets = self.device.allowed_ips(peer)
        present = set(nets)
        order = self._ip_order.get(peer.public_key.raw, {})
        out = [n for n in order if n in present]
        out += [n for n in nets if n not in order]
        return out

    def _record_allowed_ips(self, peer: Peer, nets: list[IPNetwork], replace: bool) -> None:
        order = self._ip_order.setdefault(peer.public_key.raw, {})
        if replace:
            order.clear()
        for n in nets:
            order.pop(n, None)
            order[n] = None

    def uapi_set(self, req: SetRequest) -> None:
        dev = self.device
        engine = self.engine
        # 1. everything that can fail, before any change
        private = None
        if req.private_key_given and req.private_key is not None:
            try:
                private = X25519PrivateKey(req.private_key)
            except MeshguardError as exc:
                raise UapiError(EINVAL, str(exc)) from None
        peer_keys = []
        for pu in req.peers:
            try:
                peer_keys.append(X25519PublicKey(pu.public_key))
            except MeshguardError as exc:
                raise UapiError(EINVAL, str(exc)) from None
        if req.listen_port is not None and engine is not None:
            try:
                engine.bind(req.listen_port)
            except OSError as exc:
                code = exc.errno if exc.errno == errno.EADDRINUSE else EADDRINUSE
                raise UapiError(code, f"cannot bind port {req.listen_port}: {exc}") from None
            dev.listen_port = engine.port
        elif req.listen_port is not None:
            dev.listen_port = req.listen_port
        # 2. apply
        if req.private_key_given:
            dev.set_private_key(private)
            if private is not None:
                own = private.public_key
                if dev.peer(own) is not None:
                    dev.remove_peer(own)
        if req.fwmark is not None:
            dev.fwmark = req.fwmark
            if engine is not None:
                engine.set_fwmark(req.fwmark)
        if req.replace_peers:
            dev.remove_all_peers()
            self._ip_order.clear()
        own_pub = private.public_key if private is not None else dev.public_key
        for pu, key in zip(req.peers, peer_keys, strict=True):
            if own_pub is not None and key == own_pub:
                continue  # wireguard-go ignores a peer with our own key
            peer = dev.peer(key)
            if pu.remove:
                if peer is not None:
                    dev.remove_peer(key)
                self._ip_order.pop(key.raw, None)
                continue
            if peer is None:
                if pu.update_only:
                    continue
                peer = dev.add_peer(key)
            if pu.preshared_key is not None:
                peer.preshared_key = pu.preshared_key
            if pu.endpoint is not None:
                peer.endpoint = pu.endpoint
                dev.changed()
            if pu.replace_allowed_ips or pu.allowed_ips:
                nets = list(pu.allowed_ips)
                dev.set_allowed_ips(peer, nets, replace=pu.replace_allowed_ips)
                self._record_allowed_ips(peer, nets, pu.replace_allowed_ips)
            if pu.persistent_keepalive is not None:
                self._set_keepalive(peer, pu.persistent_keepalive)
        if engine is not None:
            engine.kick()
        mark("configured")

    def _set_keepalive(self, peer: Peer, interval: int) -> None:
        was = peer.persistent_keepalive
        peer.persistent_keepalive = interval
        if interval and not was and peer.endpoint is not None and self.engine is not None:
            # as wireguard-go: enabling persistent keepalive sends one at once
            c = self.clock
            self.engine.execute(self.device.send_keepalive(c.monotonic(), c.wall(), peer))


class WireGuardInterface:
    def __init__(
        self,
        ifname: str,
        *,
        run_dir: str = DEFAULT_RUN_DIR,
        mtu: int = DEFAULT_MTU,
        clock: Clock | None = None,
        rng: Rng | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.ifname = ifname
        self.run_dir = run_dir
        self.mtu = mtu
        self.clock: Clock = clock or SystemClock()
        self.device = Device(rng or SystemRng())
        apply_test_knobs(self.device, os.environ if env is None else env)
        self.tun: TunDevice | None = None
        self.engine: Engine | None = None
        self.backend = DeviceUapiBackend(self.device, None, self.clock)
        self.uapi = UapiServer(ifname, self.backend, run_dir)
        self._closed = asyncio.Event()
        self._close_task: asyncio.Task[None] | None = None

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            self.tun = TunDevice.open(self.ifname, mtu=self.mtu)
        except TunError as exc:
            raise InterfaceError(str(exc)) from None
        mark("tun")
        try:
            self.engine = Engine(
                self.device,
                self.tun.fd,
                self.clock,
                on_actions=self._events,
                on_tun_gone=self._tun_gone,
            )
            self.backend.engine = self.engine
            self.engine.bind(0)
            self.device.listen_port = self.engine.port
            mark("udp")
            self.engine.start(asyncio.get_running_loop())
            await self.uapi.start()
            mark("uapi")
        except BaseException:
            await self.close()
            raise
        log.info("interface %s up, UAPI at %s (%s)", self.ifname, self.uapi.path,
                 self.engine.describe_offloads())

    async def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        await self.uapi.close()
        if self.engine is not None:
            log.info("interface %s engine stats: %s", self.ifname,
                     " ".join(f"{k}={v}" for k, v in self.engine.stats.as_dict().items() if v))
            self.engine.close()
        if self.tun is not None:
            self.tun.close()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    def _tun_gone(self, exc: OSError) -> None:
        log.error("interface %s was removed; shutting down", self.ifname)
        self._close_task = asyncio.get_running_loop().create_task(self.close())

    def _events(self, actions: list[object]) -> None:
        for a in actions:
            if isinstance(a, HandshakeCompleted):
                mark("handshake")
            log.debug("device event: %s", type(a).__name__)

    # --- UAPI backend (delegated) ----------------------------------------------------------

    def uapi_get(self) -> DeviceState:
        return self.backend.uapi_get()

    def uapi_set(self, req: SetRequest) -> None:
        self.backend.uapi_set(req)


async def serve(
    ifname: str,
    *,
    run_dir: str = DEFAULT_RUN_DIR,
    mtu: int = DEFAULT_MTU,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Create the interface, serve until SIGTERM/SIGINT, then remove socket and interface."""
    iface = WireGuardInterface(ifname, run_dir=run_dir, mtu=mtu)
    await iface.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(iface.close()))
    try:
        if on_ready is not None:
            on_ready()
        await iface.wait_closed()
    finally:
        await iface.close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
