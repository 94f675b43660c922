"""`meshguard up`: the asyncio shell around one MeshNode.

Start-up, in an order that fails before anything is created whenever it can:

1. identity, WireGuard key and trust store are loaded (an empty trust store refuses to start
   unless `open_mesh`); kernel mode checks for the WireGuard module; seeds are resolved;
2. the control socket path is claimed (another daemon on this interface -> refuse);
3. userspace: the UDP port is bound (busy -> one clear line), then the TUN is created with the
   node's mesh IPv4 /16 and IPv6 /64 (the prefixes give the routes) and brought up; the
   data-plane `Engine` (dataplane/engine.py) drives the MeshNode as its "device", so transport
   data takes the WireGuard fast path and everything else (handshakes, gossip, STUN, garbage)
   reaches `MeshNode.receive_datagram`;
   kernel: the kernel WireGuard link is created and configured over netlink, the gossip socket
   is bound on port + 1 (kernel_wg.py explains the port design), peers go to the kernel;
4. the control socket starts; the node joins through the seeds; READY=1 goes to systemd (and
   to a backgrounding `meshguard up`) once joined, or at once when there are no seeds.

Everything created is recorded on an exit stack and undone on any failure or at shutdown, so a
failed start leaves no interface and no socket behind. SIGTERM/SIGINT and the `down` request
leave the mesh gracefully; SIGHUP and a change of any file under authorized_keys/,
trusted_orgs/ or revocations (mtimes polled every TRUST_POLL seconds) reload the trust store.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshguard import __version__
from meshguard.clock import Clock, SystemClock
from meshguard.config import resolve_config_dir
from meshguard.daemon import sd_notify
from meshguard.daemon.control_server import ControlServer, claim_socket_path
from meshguard.daemon.gossip_state import load_high_water, save_high_water
from meshguard.daemon.kernel_wg import (
    KernelPeer,
    KernelWireGuard,
    build_set_device,
    ensure_module,
    gossip_port_for,
)
from meshguard.daemon.runtime import socket_path
from meshguard.daemon.uapi_protocol import DeviceState, SetRequest, UapiError
from meshguard.daemon.wg_interface import DeviceUapiBackend
from meshguard.errors import MeshguardError
from meshguard.identity import store
from meshguard.identity.trust import Revocation, TrustStore, trust_stamp
from meshguard.mesh import org_gossip
from meshguard.mesh.demux import Kind, classify
from meshguard.mesh.node import (
    Joined,
    MeshNode,
    PeerDown,
    PeerUp,
    ReflexiveEndpoint,
    RevocationLearned,
    SelfAddressChanged,
    StunResult,
)
from meshguard.rng import SystemRng
from meshguard.wire.control import (
    MemberStatus,
    Request,
    SelfStatus,
    StatusReport,
    format_endpoint,
)
from meshguard.wire.org import CertRevocation
from meshguard.wireguard.actions import SendDatagram
from meshguard.wireguard.device import Device

log = logging.getLogger("meshguard.daemon")

TRUST_POLL = 2.0  # seconds between trust-store mtime polls
LEAVE_LINGER = 0.3  # seconds to let the leave datagrams go out before closing the socket
GOSSIP_STATE_SAVE = 60.0  # seconds between saves of the gossip high-water marks


class StartupError(MeshguardError):
    """The daemon cannot start (the message names the fix)."""


@dataclass
class DaemonConfig:
    interface: str
    port: int
    seeds: list[tuple[str, int]]
    announce: str | None = None
    stun: list[tuple[str, int]] = field(default_factory=list)
    kernel: bool = False
    # userspace WireGuard with the kernel mode's port layout (gossip on port + 1): lets tests
    # check that split-port and single-port nodes interoperate on a machine without the module
    split_port: bool = False
    open_mesh: bool = False
    run_dir: Path = Path("/run/meshguard")
    log_level: str = "info"
    config_dir: Path | None = None
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    dns: bool = True  # serve *.mesh on the mesh addresses (daemon/dns_server.py)
    dns_port: int = 53


class TrustHolder:
    """The admission policy handed to SWIM and the node; the store inside is swapped on reload."""

    def __init__(self, trust: TrustStore) -> None:
        self.store = trust

    def admit(self, node_key: bytes, certificate: bytes | None, now_wall: float) -> Any:
        return self.store.admit(node_key, certificate, now_wall)

    def trusted_org_keys(self) -> list[bytes]:
        """Orgs whose signed revocations and aliases this node accepts."""
        return [k for k in self.store.orgs.values() if not self.store.is_org_revoked(k)]

    def signed_revocations(self) -> list[CertRevocation]:
        """The `cert` lines of `revocations` that carry their org signature (re-gossiped)."""
        out = []
        for r in self.store.revocations:
            if r.kind == "cert" and r.org_key is not None:
                sr = org_gossip.from_label(r.org_key, r.key, r.label)
                if sr is not None:
                    out.append(sr)
        return out


CAP_NET_ADMIN = 12
ALIAS_FILE = "alias"  # org/alias: this org's signed alias (`meshguard org-alias`)


def has_net_admin(status_path: str = "/proc/self/status") -> bool:
    """Whether this process holds CAP_NET_ADMIN in its effective set (root, or systemd's
    AmbientCapabilities=CAP_NET_ADMIN)."""
    try:
        with open(status_path, encoding="ascii") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except (OSError, ValueError):
        pass
    return os.geteuid() == 0


def resolve_seeds(seeds: list[tuple[str, int]]) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for host, port in seeds:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        except socket.gaierror as exc:
            raise StartupError(f"cannot resolve seed {host}: {exc.strerror}") from None
        # prefer IPv4 (the mesh's usual underlay), keep one address per seed
        infos.sort(key=lambda i: 0 if i[0] == socket.AF_INET else 1)
        addr = str(infos[0][4][0]).split("%")[0]
        out.append((addr, port))
    return out


def local_addresses(exclude_ifname: str) -> list[str]:
    """Global unicast addresses of this host (the endpoints advertised without --announce)."""
    from pyroute2 import IPRoute

    found: list[str] = []
    with IPRoute() as ipr:
        names = {ln["index"]: ln.get_attr("IFLA_IFNAME") for ln in ipr.get_links()}
        for a in ipr.get_addr():
            if names.get(a["index"]) == exclude_ifname:
                continue
            text = a.get_attr("IFA_ADDRESS")
            if not text:
                continue
            ip = ipaddress.ip_address(text)
            if ip.is_loopback or ip.is_link_local or ip.is_multicast:
                continue
            if ip in ipaddress.ip_network("10.99.0.0/16") or (
                    ip.version == 6 and ip in ipaddress.ip_network("fd99:6d67::/64")):
                continue
            found.append(str(ip))
    found.sort(key=lambda s: (":" in s, s))
    return found


def route_source(dest: str) -> str | None:
    """The local address the kernel would use to reach `dest` (no packet is sent)."""
    fam = socket.AF_INET6 if ":" in dest else socket.AF_INET
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        try:
            s.connect((dest, 9))
            return str(s.getsockname()[0])
        except OSError:
            return None


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


GOSSIP_ERROR_LOG_INTERVAL = 60.0  # seconds between warnings about datagrams that raised


class MeshDaemon:
    _gossip_error_logged = float("-inf")  # when the gossip reader last logged an exception

    def __init__(self, config: DaemonConfig, clock: Clock | None = None) -> None:
        self.cfg = config
        self.clock: Clock = clock or SystemClock()
        self.rng = SystemRng()
        self.config_dir = config.config_dir or resolve_config_dir(config.env)
        self.started_at = self.clock.wall()
        self.node: MeshNode | None = None
        self.engine: Any = None
        self.tun: Any = None
        self.kernel: KernelWireGuard | None = None
        self.gossip_sock: socket.socket | None = None
        self.trust: TrustHolder | None = None
        self.control: ControlServer | None = None
        self.joined = asyncio.Event()
        self.stop_event = asyncio.Event()
        self.exit_code = 0
        self._trust_fp: tuple[Any, ...] = ()
        self._timer: asyncio.TimerHandle | None = None
        self._membership: Any = None
        self.name: str | None = None
        self._ready_sent = False
        self.dns_server: Any = None
        self._resolver: Any = None
        self._names_version = -1
        self._dns_task: asyncio.Task[None] | None = None

    # ---- start-up --------------------------------------------------------------------

    def preflight(self) -> None:
        cfg = self.cfg
        if not has_net_admin():
            raise StartupError("must run as root or with CAP_NET_ADMIN (creating the interface "
                               "needs it)")
        claim_socket_path(socket_path(cfg.interface, cfg.run_dir), cfg.interface)
        self.identity = store.load_identity(self.config_dir)
        self.wg_private = store.load_wireguard_key(self.config_dir)
        trust = TrustStore.load(self.config_dir)
        for p in trust.problems:
            log.warning("trust store: %s", p)
        if trust.is_empty() and not cfg.open_mesh:
            raise StartupError(
                f"the trust store in {self.config_dir} is empty, so no member could be admitted;"
                " trust a peer with `meshguard trust` (or start anyway with --open)")
        self.trust = TrustHolder(trust)
        self._trust_fp = trust_stamp(self.config_dir)
        if cfg.kernel:
            ensure_module()
        elif not os.path.exists("/dev/net/tun"):
            raise StartupError("/dev/net/tun does not exist (load the tun module)")
        from meshguard.dataplane.tun import interface_exists

        if interface_exists(cfg.interface):
            raise StartupError(f"interface {cfg.interface} already exists "
                               "(another VPN or a crashed daemon?); remove it with "
                               f"`ip link del {cfg.interface}`")
        self.seeds = resolve_seeds(cfg.seeds)
        self.stun_servers = resolve_seeds(cfg.stun)
        self.cert = store.load_node_certificate(self.config_dir)
        if self.cert is not None:
            self.name = self.cert.name

    def _advertised(self, gossip_port: int) -> list[tuple[str, int]]:
        cfg = self.cfg
        if cfg.announce:
            hosts = [cfg.announce]
        else:
            hosts = []
            for s, _ in self.seeds:
                src = route_source(s)
                if src and src not in hosts and not ipaddress.ip_address(src).is_loopback:
                    hosts.append(src)
            if not hosts:
                hosts = local_addresses(cfg.interface)
        return [(h, gossip_port) for h in hosts[:4]]

    def _bind_error(self, exc: OSError, port: int) -> StartupError:
        if exc.errno == errno.EADDRINUSE:
            return StartupError(f"UDP port {port} is already in use; pick another with --port")
        if exc.errno == errno.EACCES:
            return StartupError(f"cannot bind UDP port {port}: permission denied")
        return StartupError(f"cannot bind UDP port {port}: {exc.strerror}")

    async def start(self, stack: contextlib.AsyncExitStack) -> None:
        cfg = self.cfg
        self.preflight()
        ctl_path = socket_path(cfg.interface, cfg.run_dir)
        loop = asyncio.get_running_loop()
        split = cfg.kernel or cfg.split_port
        gport = gossip_port_for(split, cfg.port)
        from meshguard.mesh.swim_port import build_membership

        assert self.trust is not None
        if cfg.kernel:
            await self._start_kernel(stack, gport)
            device = None
        else:
            device = await self._start_userspace(stack)
            if split:
                self._bind_gossip(stack, gport)
        endpoints = await asyncio.to_thread(self._advertised, gport)
        self._membership = build_membership(
            identity=self.identity, wg_private=self.wg_private,
            certificate=self.cert.to_bytes() if self.cert is not None else None,
            endpoints=endpoints, kernel=split, admitter=self.trust,
            rng=self.rng, now=self.clock.monotonic(), wall=self.clock.wall())
        marks, bad = await asyncio.to_thread(load_high_water, self.config_dir)
        if bad:
            log.warning("%s: skipped %d unreadable lines", self.config_dir / "gossip.state", bad)
        self._membership.core.remember(marks)
        backend = None
        if device is not None:
            from meshguard.mesh.wg_backend import DeviceBackend

            backend = DeviceBackend(device)
        self.node = MeshNode(
            identity_key=self.identity.public_key.raw,
            wg_key=self.wg_private.public_key.raw,
            membership=self._membership, trust=self.trust, device=device, backend=backend,
            org=org_gossip.OrgGossip(self.rng, self.wg_private,
                                     identity_key=self.identity.public_key.raw),
            certificate=self.cert.to_bytes() if self.cert is not None else None)
        if device is not None and not split:
            # WireGuard and gossip share one port, so a punched gossip path is the tunnel's
            from meshguard.nat.holepunch import HolePuncher
            from meshguard.nat.relay import Relay

            self.node.holepunch = HolePuncher(self.identity, self.rng)
            self.node.relay = Relay(self.identity.public_key.raw, self.wg_private,
                                    cookie_secret=self.rng.bytes(32))
        self._load_org_items()
        if cfg.dns:
            await self._start_dns(stack)
        if self.engine is not None:
            self.engine.device = EngineDevice(self.node, device, wireguard_only=split)
            if split:
                self._route_engine_sends(self.engine)
            self.engine.start(loop)
        else:
            self._arm_timer()
        if self.gossip_sock is not None:
            loop.add_reader(self.gossip_sock.fileno(), self._gossip_readable)
            stack.callback(loop.remove_reader, self.gossip_sock.fileno())
        self.control = ControlServer(ctl_path, cfg.interface, self._control)
        await self.control.start()
        stack.push_async_callback(self.control.close)
        self._install_signals(stack)
        self._poller = loop.create_task(self._trust_poller())
        stack.callback(self._poller.cancel)
        log.info("meshguard %s on %s: identity %s, mesh %s %s, port %d%s", __version__,
                 cfg.interface, self.identity.public_key.b64()[:12], self.node.self_ipv4,
                 self.node.self_ipv6, cfg.port,
                 f" (gossip {gport})" if gport != cfg.port else "")
        self._execute(self._membership.join_actions(self.seeds, self.clock.monotonic(),
                                                    self.clock.wall()))
        if self.stun_servers:
            from meshguard.nat.stun_client import StunClient

            client = StunClient(self.rng, self.stun_servers, local=endpoints)
            self._execute(self.node.start_stun(client, self.clock.monotonic()))
        if not self.seeds:
            self._ready("first node: no seeds to join")

    async def _start_userspace(self, stack: contextlib.AsyncExitStack) -> Any:
        from meshguard.dataplane.engine import Engine
        from meshguard.dataplane.tun import DEFAULT_MTU, TunDevice, TunError

        cfg = self.cfg
        device = Device(self.rng, self.wg_private)
        device.listen_port = cfg.port
        engine = Engine(device, -1, self.clock, on_actions=self._on_actions)
        try:
            engine.bind(cfg.port)
        except OSError as exc:
            engine.close()
            raise self._bind_error(exc, cfg.port) from None
        stack.callback(engine.close)
        try:
            tun = TunDevice.open(cfg.interface, mtu=DEFAULT_MTU)
        except TunError as exc:
            raise StartupError(str(exc)) from None
        stack.callback(tun.close)
        from meshguard.identity.addressing import mesh_ipv4, mesh_ipv6

        pub = self.identity.public_key.raw
        try:
            tun.add_address(f"{mesh_ipv4(pub)}/16")
            tun.add_address(f"{mesh_ipv6(pub)}/64")
            tun.up()
        except (TunError, OSError) as exc:
            raise StartupError(f"cannot configure {cfg.interface}: {exc}") from None
        engine.tun_fd = tun.fd
        self.engine = engine
        self.tun = tun
        from meshguard.daemon.uapi_server import UapiServer

        uapi = UapiServer(cfg.interface, MeshUapi(device, cfg.port))
        try:
            await uapi.start()
            stack.push_async_callback(uapi.close)
        except MeshguardError as exc:
            log.warning("no UAPI socket for `wg show`: %s", exc)
        return device

    def _bind_gossip(self, stack: contextlib.ExitStack | contextlib.AsyncExitStack,
                     gport: int) -> None:
        from meshguard.dataplane.engine import make_udp_socket

        try:
            sock = make_udp_socket(gport)
        except OSError as exc:
            raise self._bind_error(exc, gport) from None
        stack.callback(sock.close)
        self.gossip_sock = sock

    def _route_engine_sends(self, engine: Any) -> None:
        """Split-port userspace: WireGuard leaves from the engine's port, everything else (gossip,
        STUN) from the gossip socket, exactly as a kernel-mode node sends it."""
        from meshguard.mesh.demux import Kind, classify

        wg_send = engine.send_datagrams

        def route(grams: list[tuple[bytes, tuple[str, int]]]) -> None:
            wg = [g for g in grams if classify(g[0]) is Kind.WIREGUARD]
            if len(wg) != len(grams):
                self._execute_kernel([SendDatagram(d, ep) for d, ep in grams
                                      if classify(d) is not Kind.WIREGUARD])
            if wg:
                wg_send(wg)

        engine.send_datagrams = route

    async def _start_kernel(self, stack: contextlib.AsyncExitStack, gport: int) -> None:
        from meshguard.identity.addressing import mesh_ipv4, mesh_ipv6

        cfg = self.cfg
        self._bind_gossip(stack, gport)
        kwg = KernelWireGuard(cfg.interface)
        await asyncio.to_thread(kwg.create_link)
        stack.push_async_callback(asyncio.to_thread, kwg.delete_link)
        self.kernel = kwg
        pub = self.identity.public_key.raw

        def configure() -> None:
            kwg.configure(self.wg_private.raw, cfg.port)
            from pyroute2 import IPRoute

            with IPRoute() as ipr:
                idx = ipr.link_lookup(ifname=cfg.interface)[0]
                ipr.addr("add", index=idx, address=str(mesh_ipv4(pub)), prefixlen=16)
                ipr.addr("add", index=idx, address=str(mesh_ipv6(pub)), prefixlen=64)
                ipr.link("set", index=idx, state="up")

        try:
            await asyncio.to_thread(configure)
        except OSError as exc:
            raise StartupError(f"UDP port {cfg.port} could not be given to the kernel "
                               f"device: {exc}") from None

    # ---- event plumbing --------------------------------------------------------------

    # ---- org revocations and aliases, DNS ------------------------------------------------

    def _load_org_items(self) -> list[Any]:
        """Signed revocations from the `revocations` file and this org's alias (org/alias):
        the new ones take effect and start spreading."""
        node, trust = self.node, self.trust
        if node is None or trust is None:
            return []
        actions = node.announce_revocations(trust.signed_revocations(), self.clock.wall())
        path = self.config_dir / store.ORG_DIR / ALIAS_FILE
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            text = ""
        alias = org_gossip.parse_alias_line(text) if text else None
        if alias is not None and node.announce_alias(alias, self.clock.wall()):
            log.info("announcing the org alias %s.mesh", alias.alias)
        return actions

    def _persist_revocation(self, r: CertRevocation) -> None:
        """A revocation learned from gossip goes into `revocations` (atomic, under its lock),
        so it survives a restart; then SWIM re-checks admissions too."""
        if self.trust is None or self.node is None:
            return
        rev = Revocation("cert", r.node_key, r.org_key, org_gossip.format_label(r))
        try:
            self.trust.store.revoke(rev)
        except (MeshguardError, OSError) as exc:
            log.error("cannot record the revocation in %s: %s", self.config_dir, exc)
        c = self.clock
        acts = self.node.set_trust(self.trust, c.wall())
        acts += self._membership.trust_changed(c.monotonic(), c.wall())
        asyncio.get_running_loop().call_soon(self._execute, acts)

    def current_resolver(self) -> Any:
        from meshguard.dns.resolver import Resolver, build_table

        if self._resolver is None:
            self._resolver = Resolver()
        node = self.node
        if node is not None and node.names_version != self._names_version:
            self._names_version = node.names_version
            self._resolver.set_table(build_table(node.dns_table(self.clock.wall())))
        return self._resolver

    async def _start_dns(self, stack: contextlib.AsyncExitStack) -> None:
        from meshguard.daemon.dns_server import DnsServer

        node = self.node
        assert node is not None
        server = DnsServer(self.current_resolver, self.cfg.dns_port)
        addrs = [str(a) for a in (node.self_ipv4, node.self_ipv6) if a is not None]
        await server.start(addrs)
        stack.push_async_callback(server.close)
        self.dns_server = server

    def _execute(self, actions: list[Any]) -> None:
        if not actions:
            return
        if self.engine is not None:
            self.engine.execute(actions)
            self.engine.kick()
        else:
            self._execute_kernel(actions)
            self._arm_timer()

    def _execute_kernel(self, actions: list[Any]) -> None:
        other: list[Any] = []
        sock = self.gossip_sock
        for a in actions:
            if isinstance(a, SendDatagram):
                if sock is None:
                    continue
                host, port = a.endpoint
                try:
                    if sock.family == socket.AF_INET6:
                        if ":" not in host:
                            host = "::ffff:" + host
                        sock.sendto(a.data, (host, port, 0, 0))
                    else:
                        sock.sendto(a.data, (host, port))
                except OSError:
                    if self.node is not None:
                        self.node.counters["udp_send_errors"] += 1
            else:
                other.append(a)
        self._on_actions(other)

    def _on_actions(self, actions: list[Any]) -> None:
        peers: list[KernelPeer] = []
        for a in actions:
            if isinstance(a, PeerUp):
                p = a.peer
                log.info("tunnel up to %s at %s", p.identity_key.hex()[:12],
                         format_endpoint(p.endpoint))
                peers.append(KernelPeer(p.wg_key, p.endpoint, p.keepalive, p.allowed_ips))
            elif isinstance(a, PeerDown):
                log.info("tunnel down to %s (%s)", a.identity_key.hex()[:12], a.reason)
                peers.append(KernelPeer(a.wg_key, remove=True))
            elif isinstance(a, SelfAddressChanged):
                log.warning("mesh IPv4 collision: our address moves from %s to %s",
                            a.old, a.new)
                self._readdress(a)
            elif isinstance(a, StunResult):
                self._on_stun(a)
            elif isinstance(a, ReflexiveEndpoint):
                self._on_reflexive(a)
            elif isinstance(a, Joined):
                self._ready("joined the mesh")
            elif isinstance(a, RevocationLearned):
                self._persist_revocation(a.revocation)
            else:
                log.debug("event: %s", a)
        if peers and self.kernel is not None:
            kwg = self.kernel
            msg = build_set_device(kwg.ifname, peers=peers)
            try:
                kwg.apply(msg)
            except MeshguardError as exc:
                log.error("kernel WireGuard: %s", exc)

    def _on_stun(self, res: StunResult) -> None:
        if res.mapped is None:
            log.warning("STUN: no server answered; advertising local endpoints only")
            return
        from meshguard.nat.stun_client import NatType

        log.info("STUN: public endpoint %s, NAT %s", format_endpoint(res.mapped),
                 NatType(res.nat_type).name.lower())
        self._membership.set_public_endpoint(self.clock.monotonic(), res.mapped, res.nat_type)
        hp = self.node.holepunch if self.node is not None else None
        if hp is not None:
            hp.set_self(self._membership.core.record.endpoints,
                        behind_nat=res.nat_type != NatType.PUBLIC)
        rl = self.node.relay if self.node is not None else None
        if rl is not None:
            rl.behind_nat = res.nat_type != NatType.PUBLIC

    def _on_reflexive(self, a: ReflexiveEndpoint) -> None:
        from meshguard.nat.stun_client import NatType

        node = self.node
        if node is None or node.holepunch is None:
            return
        if self._membership.set_public_endpoint(self.clock.monotonic(), a.endpoint,
                                                NatType.SYMMETRIC):
            log.info("NAT maps per destination (symmetric): advertising %s, the address "
                     "public member %s sees", format_endpoint(a.endpoint), a.relay.hex()[:12])
        node.holepunch.set_self(self._membership.core.record.endpoints, behind_nat=True)

    def _readdress(self, change: SelfAddressChanged) -> None:
        import subprocess

        for addr, op in ((change.old, "del"), (change.new, "add")):
            if addr is not None:
                subprocess.run(["ip", "addr", op, f"{addr}/16", "dev", self.cfg.interface],
                               capture_output=True, check=False, timeout=10)
        if self.dns_server is not None and self.node is not None:
            addrs = [str(x) for x in (self.node.self_ipv4, self.node.self_ipv6) if x is not None]
            self._dns_task = asyncio.get_running_loop().create_task(
                self.dns_server.rebind(addrs))

    def _gossip_readable(self) -> None:
        sock = self.gossip_sock
        node = self.node
        if sock is None or node is None:
            return
        out: list[Any] = []
        for _ in range(64):
            try:
                data, addr = sock.recvfrom(65535)
            except BlockingIOError:
                break
            except OSError:
                node.counters["udp_recv_errors"] += 1
                continue
            host = addr[0]
            if host.startswith("::ffff:") and "." in host:
                host = host[7:]
            if self.cfg.split_port and classify(data) is Kind.WIREGUARD:
                node.counters["garbage_dropped"] += 1  # not WireGuard's port
                continue
            c = self.clock
            try:
                out += node.receive_datagram(c.monotonic(), c.wall(), data, (host, addr[1]))
            except Exception:
                # a bug reached by network input: count it, warn now and then, read on
                node.counters["gossip_reader_errors"] += 1
                now = c.monotonic()
                if now - self._gossip_error_logged >= GOSSIP_ERROR_LOG_INTERVAL:
                    self._gossip_error_logged = now
                    log.exception("gossip reader: a datagram from %s raised (%d so far)",
                                  host, node.counters["gossip_reader_errors"])
        self._execute(out)

    def _arm_timer(self) -> None:
        if self.node is None:
            return
        loop = asyncio.get_running_loop()
        if self._timer is not None:
            self._timer.cancel()
        deadline = self.node.next_deadline()
        delay = 1.0 if deadline is None else max(0.0, deadline - self.clock.monotonic())
        self._timer = loop.call_later(min(delay, 1.0), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.node is None:
            return
        c = self.clock
        try:
            self._execute_kernel(self.node.tick(c.monotonic(), c.wall()))
        except Exception:
            # a bug must not stop the timers for good: count it, warn now and then, go on
            self.node.counters["timer_errors"] += 1
            now = c.monotonic()
            if now - self._gossip_error_logged >= GOSSIP_ERROR_LOG_INTERVAL:
                self._gossip_error_logged = now
                log.exception("timer: node tick raised (%d so far)",
                              self.node.counters["timer_errors"])
        finally:
            self._arm_timer()

    def _ready(self, status: str) -> None:
        if self._ready_sent:
            return
        self._ready_sent = True
        self.joined.set()
        log.info("ready: %s", status)
        sd_notify.notify(f"READY=1\nSTATUS={status}", self.cfg.env)

    # ---- trust reload ----------------------------------------------------------------

    def reload_trust(self, why: str) -> None:
        if self.node is None or self.trust is None:
            return
        try:
            new = TrustStore.load(self.config_dir)
        except MeshguardError as exc:
            log.error("trust reload (%s) failed, keeping the old trust store: %s", why, exc)
            return
        self._trust_fp = trust_stamp(self.config_dir)
        self.trust.store = new
        log.info("trust store reloaded (%s): %d keys, %d orgs", why, len(new.peers),
                 len(new.orgs))
        actions = self.node.set_trust(self.trust, self.clock.wall())
        actions += self._membership.trust_changed(self.clock.monotonic(), self.clock.wall())
        actions += self._load_org_items()
        self._execute(actions)

    async def _trust_poller(self) -> None:
        saved = self.clock.monotonic()
        while not self.stop_event.is_set():
            await asyncio.sleep(TRUST_POLL)
            fp = await asyncio.to_thread(trust_stamp, self.config_dir)
            if fp != self._trust_fp:
                self.reload_trust("files changed")
            if self.clock.monotonic() - saved >= GOSSIP_STATE_SAVE:
                saved = self.clock.monotonic()
                await asyncio.to_thread(self._save_gossip_state)

    def _save_gossip_state(self) -> None:
        """Persist the highest incarnation seen per member, so a restarted node still refuses
        records older than those (see daemon/gossip_state.py)."""
        if self._membership is None:
            return
        core = self._membership.core
        horizon = int((self.clock.wall() - core.config.record_max_age) * 1000)
        try:
            save_high_water(self.config_dir, core.high_water(), horizon)
        except (MeshguardError, OSError) as exc:
            log.warning("cannot save the gossip state in %s: %s", self.config_dir, exc)

    # ---- control ---------------------------------------------------------------------

    async def _control(self, req: Request) -> dict[str, Any]:
        if req.op == "hello":
            return {"interface": self.cfg.interface, "pid": os.getpid(), "version": __version__}
        if req.op == "status":
            if self.kernel is not None:
                stats = await asyncio.to_thread(self._kernel_stats)
            else:
                stats = None
            return self.status(stats).to_json()
        if req.op == "down":
            log.info("down requested over the control socket")
            asyncio.get_running_loop().call_soon(self.stop_event.set)
            return {"leaving": True}
        raise MeshguardError(f"unsupported op {req.op}")

    def _kernel_stats(self) -> dict[bytes, tuple[float, int, int, tuple[str, int] | None]]:
        assert self.kernel is not None
        try:
            return {s.public_key: (s.last_handshake_wall, s.rx_bytes, s.tx_bytes, s.endpoint)
                    for s in self.kernel.peer_stats()}
        except Exception as exc:
            log.warning("kernel peer stats: %s", exc)
            return {}

    def status(self, kernel_stats: dict[bytes, Any] | None = None) -> StatusReport:
        import base64

        from meshguard.identity.addressing import mesh_ipv6

        node = self.node
        assert node is not None and self.trust is not None
        wall = self.clock.wall()

        def b64(k: bytes) -> str:
            return base64.b64encode(k).decode()

        peers = node.peers
        v4_of = {p.identity_key: next((str(n.network_address) for n in p.allowed_ips
                                       if n.version == 4), None) for p in peers.values()}
        from meshguard.identity.addressing import mesh_ipv4

        names: dict[str, list[str]] = {}
        for name, addrs in node.dns_table(wall):
            for v6 in addrs.ipv6:
                names.setdefault(str(v6), []).append(name)
        members = []
        for m in node.membership.members():
            if m.identity_key == node.identity_key:
                continue
            adm = node.admission(m, wall)
            ipv6 = str(mesh_ipv6(m.identity_key))
            tunnel = m.wg_key is not None and m.wg_key in peers
            hs, rx, tx, ep = (0.0, 0, 0, None)
            path = "direct"
            if tunnel and m.wg_key is not None:
                if kernel_stats is not None:
                    hs, rx, tx, ep = kernel_stats.get(m.wg_key, (0.0, 0, 0, None))
                elif node.backend is not None:
                    hs, rx, tx, ep = node.backend.stats(m.wg_key)
                    path, via = node.path_of(m.wg_key)
                    if path == "relayed":
                        ep = via
            members.append(MemberStatus(
                name=adm.name,
                identity_key=b64(m.identity_key),
                wireguard_key=b64(m.wg_key) if m.wg_key else None,
                mesh_ipv4=v4_of.get(m.identity_key) or str(mesh_ipv4(m.identity_key)),
                mesh_ipv6=ipv6,
                endpoint=format_endpoint(ep or m.wg_endpoint),
                state=m.state,
                trusted=adm.admitted,
                tunnel=tunnel,
                last_handshake=hs or None,
                rx_bytes=rx,
                tx_bytes=tx,
                path=path,
                dns_names=tuple(sorted(names.get(ipv6, ()))),
            ))
        members.sort(key=lambda s: (s.name or "~", s.identity_key))
        counters = {k: int(v) for k, v in node.counters.items()}
        if self.engine is not None:
            counters.update({f"engine_{k}": v for k, v in self.engine.stats.as_dict().items()})
        dev = node.device
        if dev is not None:
            dc = getattr(dev, "counters", None)
            as_dict = getattr(dc, "as_dict", None)
            if callable(as_dict):
                counters.update({f"wireguard_{k}": int(v) for k, v in as_dict().items()})
        counters.update(self._membership.counters())
        if node.holepunch is not None:
            counters.update({k: int(v) for k, v in node.holepunch.counters.items()})
        if node.relay is not None:
            counters.update({k: int(v) for k, v in node.relay.counters.items()})
        if node.org is not None:  # org_* drop reasons (mesh/org_gossip.py)
            counters.update({k: int(v) for k, v in node.org.counters.items()})
        dns_counters = getattr(self.dns_server, "counters", None)
        if dns_counters is not None:  # dns_foreign_source, ... (daemon/dns_server.py)
            counters.update({k: int(v) for k, v in dns_counters.items()})
        return StatusReport(
            interface=self.cfg.interface,
            mode="kernel" if self.cfg.kernel else "userspace",
            pid=os.getpid(),
            started_at=self.started_at,
            self_=SelfStatus(
                name=self.name,
                identity_key=b64(node.identity_key),
                wireguard_key=b64(node.wg_key),
                mesh_ipv4=str(node.self_ipv4) if node.self_ipv4 else "",
                mesh_ipv6=str(node.self_ipv6),
                wg_port=self.cfg.port,
                gossip_port=gossip_port_for(self.cfg.kernel or self.cfg.split_port,
                                            self.cfg.port),
            ),
            members=tuple(members),
            counters=counters,
        )

    # ---- signals and shutdown --------------------------------------------------------

    def _install_signals(self, stack: contextlib.AsyncExitStack) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop_event.set)
            stack.callback(loop.remove_signal_handler, sig)
        loop.add_signal_handler(signal.SIGHUP, self.reload_trust, "SIGHUP")
        stack.callback(loop.remove_signal_handler, signal.SIGHUP)

    async def leave(self) -> None:
        if self.node is None:
            return
        c = self.clock
        log.info("leaving the mesh")
        with contextlib.suppress(Exception):
            self._execute(self.node.leave(c.monotonic(), c.wall()))
            await asyncio.sleep(LEAVE_LINGER)
        self._save_gossip_state()

    async def run(self) -> int:
        async with contextlib.AsyncExitStack() as stack:
            await self.start(stack)
            await self.stop_event.wait()
            sd_notify.notify("STOPPING=1", self.cfg.env)
            await self.leave()
        log.info("stopped; interface %s removed", self.cfg.interface)
        return self.exit_code


def _quiet_libraries(record: logging.LogRecord) -> bool:
    """pyroute2 and asyncio debug chatter drowns our own debug output: keep their warnings."""
    noisy = record.name.startswith(("pyroute2", "asyncio"))
    return record.levelno >= logging.WARNING or not noisy


def setup_logging(level: str) -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for h in logging.getLogger().handlers:
        h.addFilter(_quiet_libraries)


def run_foreground(config: DaemonConfig, on_error: Callable[[str], None] | None = None) -> int:
    setup_logging(config.log_level)
    try:
        return asyncio.run(MeshDaemon(config).run())
    except MeshguardError as exc:
        # tell a backgrounding `meshguard up` (or systemd) why we failed
        sd_notify.notify(f"STATUS={exc}\nERRNO=1", config.env)
        raise
