"""`meshguard up`: the asyncio shell around one MeshNode.

Start-up, in an order that fails before anything is created whenever it can:

1. identity, WireGuard key and trust store are loaded (an empty trust store refuses to start
   unless `open_mesh`); kernel mode checks for the WireGuard module; seed names are looked up
   (a failure is a warning: daemon/seed_runner.py, docs/seeds.md);
2. the control socket path is claimed (another daemon on this interface -> refuse);
3. the mode's runner opens what carries the tunnels:
   userspace (userspace_runner.py): the UDP port is bound (busy -> one clear line), then the
   TUN is created with the node's mesh IPv4 /16 and IPv6 /64 (the prefixes give the routes)
   and brought up; the MeshNode sits behind the data-plane engine's ports;
   kernel (kernel_runner.py): the kernel WireGuard link is created and configured over
   netlink, the gossip socket is bound on port + 1 (kernel_wg.py explains the port design),
   peers go to the kernel;
4. the control socket starts; the node joins through the seeds (and keeps looking for them,
   with --mdns on the LAN too); READY=1 goes to systemd (and to a backgrounding
   `meshguard up`) once joined, or at once when there are no seeds to look for.

This module is what both modes share: configuration, identity, trust, membership, the node's
events, DNS and the control socket. Everything created is recorded on an exit stack and undone
on any failure or at shutdown, so a failed start leaves no interface and no socket behind.
SIGTERM/SIGINT and the `down` request leave the mesh gracefully; SIGHUP and `meshguard reload`
re-read the config file too (daemon/config_reload.py); SIGHUP and a change of any file
under authorized_keys/, trusted_orgs/, vouched/ or revocations (mtimes polled every TRUST_POLL
seconds) reload the trust store; the same poll follows devices/ (wg_device_peers.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import subprocess
from collections.abc import Callable
from typing import Protocol

from meshguard import __version__
from meshguard.clock import Clock, SystemClock
from meshguard.config import resolve_config_dir
from meshguard.crypto.keys import X25519PrivateKey
from meshguard.daemon import sd_notify
from meshguard.daemon.config_reload import ConfigReloader
from meshguard.daemon.control_server import ControlServer, claim_socket_path
from meshguard.daemon.daemon_config import ALIAS_FILE, DaemonConfig, StartupError
from meshguard.daemon.dns_server import DnsServer
from meshguard.daemon.gossip_state import load_high_water, save_high_water
from meshguard.daemon.host_probe import has_net_admin, resolve_seeds, underlay_hosts
from meshguard.daemon.kernel_module import ensure_module, gossip_port_for
from meshguard.daemon.log_format import register_secret, setup_logging
from meshguard.daemon.netlink_events import NetlinkEvents
from meshguard.daemon.path_probes import install_prober, ping_request
from meshguard.daemon.policy_runner import PolicyRunner
from meshguard.daemon.portmap_rehome import PortmapHolder
from meshguard.daemon.portmap_task import PortmapTask, start_portmap
from meshguard.daemon.resolved_link import ResolvedLink, routing_domains
from meshguard.daemon.route_manager import RouteManager, start_routes
from meshguard.daemon.runtime import socket_path
from meshguard.daemon.seed_runner import SeedRunner, open_mdns, seed_sources
from meshguard.daemon.startup_trace import mark
from meshguard.daemon.status import PeerStats, build_status
from meshguard.daemon.trust_holder import TrustHolder
from meshguard.daemon.underlay_watch import UnderlayWatch, seed_probe
from meshguard.daemon.userspace_runner import UserspaceRunner
from meshguard.daemon.wg_device_peers import WgDevicePeers, for_runner
from meshguard.dataplane.tun import interface_exists
from meshguard.dns.resolver import HostAddresses, Resolver, build_table
from meshguard.errors import MeshguardError
from meshguard.identity import org_aliases, store
from meshguard.identity.keygen import load_node_keys
from meshguard.identity.trust import Revocation, TrustStore, trust_stamp
from meshguard.mesh import org_gossip, org_wiring
from meshguard.mesh.node import (
    Action,
    AliasLearned,
    Joined,
    MeshNode,
    PeerDown,
    PeerUp,
    ReflexiveEndpoint,
    RevocationLearned,
    SelfAddressChanged,
    StunResult,
    VouchLearned,
)
from meshguard.mesh.policy_gossip import PolicyLearned
from meshguard.mesh.roaming import Reannounce, Roaming
from meshguard.mesh.swim_port import SwimPort, build_membership, wg_endpoints_of
from meshguard.mesh.wg_backend import DeviceBackend
from meshguard.nat.budget import TokenBucket
from meshguard.nat.holepunch import HolePuncher
from meshguard.nat.portmap import Method, PortmapAction, advertisement, describe
from meshguard.nat.relay import Relay
from meshguard.nat.stun_client import NatType, StunClient
from meshguard.rng import Rng, SystemRng
from meshguard.sansio import Endpoint
from meshguard.wire.control import Request, StatusReport, format_endpoint
from meshguard.wire.org import CertRevocation
from meshguard.wireguard.device import Device

__all__ = ["ALIAS_FILE", "DaemonConfig", "MeshDaemon", "StartupError", "run_foreground"]

log = logging.getLogger("meshguard.daemon")

TRUST_POLL = 2.0  # seconds between trust-store mtime polls
LEAVE_LINGER = 0.3  # seconds to let the leave datagrams go out before closing the socket
GOSSIP_STATE_SAVE = 60.0  # seconds between saves of the gossip high-water marks
# seconds a kernel-mode punch may take: the kernel initiates a handshake at most every 5 s
KERNEL_PUNCH_TIMEOUT = 12.0


class ModeRunner(Protocol):
    """What carries the tunnels in one mode (userspace_runner.py, kernel_runner.py)."""

    mode: str

    async def open(self, stack: contextlib.AsyncExitStack, identity_key: bytes,
                   wg_private: X25519PrivateKey, rng: Rng, gossip_port: int) -> Device | None:
        """Create what carries the tunnels; the userspace WireGuard device, if there is one."""
        ...

    def attach(self, node: MeshNode, loop: asyncio.AbstractEventLoop,
               stack: contextlib.AsyncExitStack) -> None: ...

    def execute(self, actions: list[Action]) -> None: ...

    def peers_changed(self, changes: list[PeerUp | PeerDown]) -> None: ...

    async def peer_stats(self) -> PeerStats | None: ...

    def counters(self) -> dict[str, int]: ...


class MeshDaemon:
    def __init__(self, config: DaemonConfig, clock: Clock | None = None) -> None:
        self.cfg = config
        self.clock: Clock = clock or SystemClock()
        self.rng = SystemRng()
        self.config_dir = config.config_dir or resolve_config_dir(config.env)
        self.started_at = self.clock.wall()
        self.runner: ModeRunner
        if config.kernel:
            # imported here, not at the top: it loads pyroute2's netlink stack (~12 MiB of
            # RSS and ~0.1 s of start-up) that a userspace daemon never uses
            from meshguard.daemon.kernel_runner import KernelRunner

            self.runner = KernelRunner(config, self.clock, self._on_actions)
        else:
            self.runner = UserspaceRunner(config, self.clock, self._on_actions)
        self.node: MeshNode | None = None
        self.trust: TrustHolder | None = None
        self.control: ControlServer | None = None
        self.joined = asyncio.Event()
        self.stop_event = asyncio.Event()
        self.exit_code = 0
        self._trust_fp: tuple[tuple[str, int, int], ...] = ()
        self._membership: SwimPort | None = None
        self.name: str | None = None
        self._ready_sent = False
        self.dns_server: DnsServer | None = None
        self._aliases_unsaved = False  # org aliases learned since org_aliases was written
        self._alias_writes = TokenBucket(1.0 / org_aliases.SAVE_INTERVAL, 1.0)
        self._resolver: Resolver | None = None
        self._names_version = -1
        self.routes: RouteManager | None = None  # set_grants() takes the policy's route grants
        self._dns_task: asyncio.Task[None] | None = None
        self._portmap: PortmapHolder | None = None  # follows the underlay (portmap_rehome.py)
        self._public: tuple[Endpoint | None, int] = (None, NatType.UNKNOWN)  # STUN or relay
        self._mapped: Endpoint | None = None  # the port mapping advertised
        self._watch: UnderlayWatch | None = None
        self.policies: PolicyRunner | None = None  # read at preflight (daemon/policy_runner.py)
        self._wg_devices: WgDevicePeers | None = None  # export-wg devices (wg_device_peers.py)
        self.config_reload = ConfigReloader(self)  # `reload` and SIGHUP (config_reload.py)

    @property
    def portmap(self) -> PortmapTask | None:
        return self._portmap.task if self._portmap is not None else None

    @property
    def membership(self) -> SwimPort:
        assert self._membership is not None, "the daemon has not started"
        return self._membership

    # ---- start-up --------------------------------------------------------------------

    def preflight(self) -> None:
        cfg = self.cfg
        if not has_net_admin():
            raise StartupError("must run as root or with CAP_NET_ADMIN (creating the interface "
                               "needs it)")
        claim_socket_path(socket_path(cfg.interface, cfg.run_dir), cfg.interface)
        # a dir from the original meshguard gets its derived key (identity/wg_key_source.py)
        keys = load_node_keys(self.config_dir, self.clock.wall())
        self.identity, self.wg_private = keys.identity, keys.wireguard
        for secret in (self.identity.seed, self.wg_private.raw):
            register_secret(secret)  # redacted from every log line (daemon/log_format.py)
        if keys.unsaved is not None:
            log.warning("WireGuard key: %s", keys.unsaved)
        trust = TrustStore.load(self.config_dir)
        for p in trust.problems:
            log.warning("trust store: %s", p)
        if trust.is_empty() and not cfg.open_mesh:
            raise StartupError(
                f"the trust store in {self.config_dir} is empty, so no member could be admitted;"
                " trust a peer with `meshguard trust` (or start anyway with --open)")
        self.trust = TrustHolder(trust)
        self.policies = PolicyRunner.load(self.config_dir, trust)  # "FILE:LINE: ..." stops up
        self._trust_fp = trust_stamp(self.config_dir)
        mark("keys loaded")
        if cfg.kernel:
            ensure_module()
        elif not os.path.exists("/dev/net/tun"):
            raise StartupError("/dev/net/tun does not exist (load the tun module)")
        if interface_exists(cfg.interface):
            raise StartupError(f"interface {cfg.interface} already exists "
                               "(another VPN or a crashed daemon?); remove it with "
                               f"`ip link del {cfg.interface}`")
        self.seed_runner = SeedRunner(seed_sources(cfg.seeds, cfg.seed_domains, cfg.mdns),
                                      self.clock, cfg.env, self._has_live_member)
        self.stun_servers = resolve_seeds(cfg.stun)
        self.cert = store.load_node_certificate(self.config_dir)
        if self.cert is not None:
            self.name = self.cert.name
        mark("preflight")

    def _advertised(self, gossip_port: int) -> list[Endpoint]:
        cfg = self.cfg
        hosts = [cfg.announce] if cfg.announce else underlay_hosts(self.seeds, cfg.interface)
        return [(h, gossip_port) for h in hosts[:4]]

    async def start(self, stack: contextlib.AsyncExitStack) -> None:
        cfg = self.cfg
        self.preflight()
        self.seeds = await self.seed_runner.first_lookup()  # a failure is a warning
        ctl_path = socket_path(cfg.interface, cfg.run_dir)
        loop = asyncio.get_running_loop()
        split = cfg.split
        gport = gossip_port_for(split, cfg.port)
        assert self.trust is not None
        pub = self.identity.public_key.raw
        runner = self.runner
        device = await runner.open(stack, pub, self.wg_private, self.rng, gport)
        endpoints = await asyncio.to_thread(self._advertised, gport)
        membership = build_membership(
            identity=self.identity, wg_private=self.wg_private,
            certificate=self.cert.to_bytes() if self.cert is not None else None,
            endpoints=endpoints, kernel=split, admitter=self.trust,
            rng=self.rng, now=self.clock.monotonic(), wall=self.clock.wall(),
            routes=cfg.routes.advertise)
        self._membership = membership
        marks, bad = await asyncio.to_thread(load_high_water, self.config_dir)
        if bad:
            log.warning("%s: skipped %d unreadable lines", self.config_dir / "gossip.state", bad)
        membership.core.remember(marks)
        backend = DeviceBackend(device) if device is not None else None
        self.node = MeshNode(
            identity_key=pub,
            wg_key=self.wg_private.public_key.raw,
            membership=membership, trust=self.trust, device=device, backend=backend,
            org=org_gossip.OrgGossip(self.rng, self.wg_private, identity_key=pub),
            certificate=self.cert.to_bytes() if self.cert is not None else None)
        self.routes = await start_routes(cfg, self.node, runner, self.clock, self._execute,
                                         [h for h, _ in endpoints], stack)
        if device is not None and not split:
            # WireGuard and gossip share one port, so a punched gossip path is the tunnel's
            self.node.holepunch = HolePuncher(self.identity, self.rng)
            self.node.relay = Relay(pub, self.wg_private, cookie_secret=self.rng.bytes(32))
            if isinstance(runner, UserspaceRunner) and runner.engine is not None:
                install_prober(self.node, device, runner.engine, self.rng, self.wg_private)
        elif cfg.kernel:
            # the kernel's own handshakes punch and a loopback proxy relays (kernel_paths.py)
            self.node.holepunch = HolePuncher(self.identity, self.rng, probe=False,
                                              timeout=KERNEL_PUNCH_TIMEOUT)
            self.node.relay = Relay(pub, self.wg_private, cookie_secret=self.rng.bytes(32))
        self._load_org_items()
        assert self.policies is not None
        self.policies.attach(self.node, self.rng, self.wg_private, self.clock.wall,
                             runner if cfg.kernel else getattr(runner, "engine", None),
                             lambda: getattr(self, "routes", None),
                             kernel=bool(cfg.kernel))
        if cfg.dns:
            await self._start_dns(stack)
        runner.attach(self.node, loop, stack)
        self._wg_devices = for_runner(self.config_dir, cfg.interface, runner, self._device_keys)
        self._wg_devices.reload()
        self.control = ControlServer(ctl_path, cfg.interface, self._control)
        await self.control.start()
        stack.push_async_callback(self.control.close)
        mark("control")
        self._install_signals(stack)
        self._poller = loop.create_task(self._trust_poller())
        stack.callback(self._poller.cancel)
        log.info("meshguard %s on %s: identity %s, mesh %s %s, port %d%s", __version__,
                 cfg.interface, self.identity.public_key.b64()[:12], self.node.self_ipv4,
                 self.node.self_ipv6, cfg.port,
                 f" (gossip {gport})" if gport != cfg.port else "")
        if self.seeds or not self.seed_runner.schedule.has_lookups():
            self._join_seeds(self.seeds)
        else:
            log.warning("no seed address yet; looking the seeds up again with backoff")
        mark("join sent")
        self.seed_runner.start(self._join_seeds)
        stack.push_async_callback(self.seed_runner.close)
        if cfg.mdns:
            await open_mdns(self.seed_runner, stack, pub, self.name, endpoints)
        self._start_roaming(loop, stack, endpoints, gport)
        if self.seed_runner.mdns is not None and self._watch is not None:
            self._watch.on_moved.append(self.seed_runner.mdns.moved)
        if self.stun_servers:
            client = StunClient(self.rng, self.stun_servers, local=endpoints)
            self._execute(self.node.start_stun(client, self.clock.monotonic()))
        if cfg.portmap and not split:
            methods = tuple(Method(m) for m in cfg.portmap)
            self._portmap = PortmapHolder(lambda: start_portmap(
                cfg.port, methods, self.rng, self.clock, self._on_portmap), gone=self._advertise)
            await self._portmap.open()
            stack.push_async_callback(self._portmap.close)
            if self._watch is not None:
                self._watch.on_moved.append(self._portmap.moved)
        if cfg.metrics is not None:  # imported here: prometheus_client costs ~45 ms
            from meshguard.daemon.metrics_exporter import start_metrics

            await start_metrics(cfg.metrics, self.status_now, self.clock, stack)
        if not self.seeds and not self.seed_runner.schedule.has_lookups():
            self._ready("first node: no seeds to join")

    def _join_seeds(self, seeds: list[Endpoint]) -> None:
        c = self.clock
        self._execute([*self.membership.join_actions(seeds, c.monotonic(), c.wall())])

    def _has_live_member(self) -> bool:
        return self._membership is not None and self._membership.core.alive_count() > 1

    def _start_roaming(self, loop: asyncio.AbstractEventLoop, stack: contextlib.AsyncExitStack,
                       endpoints: list[Endpoint], gport: int) -> None:
        """Watch the underlay (daemon/underlay_watch.py); --announce pins the address."""
        assert self.node is not None
        cfg = self.cfg
        roaming = Roaming(hosts=tuple(h for h, _ in endpoints), port=gport,
                          now=self.clock.monotonic(), stun=bool(self.stun_servers),
                          pinned=(cfg.announce,) if cfg.announce else (),
                          counters=self.node.counters)
        events = None
        if not cfg.announce:
            try:
                events = NetlinkEvents.open(cfg.interface)
            except OSError as exc:
                log.warning("no netlink address events (%s): looking at the underlay every "
                            "%.0f s", exc, roaming.recheck)
        probe = None if cfg.announce else seed_probe(
            lambda: self.seed_runner.addresses or self.seeds, cfg.interface)
        self._watch = UnderlayWatch(roaming, self.node, self.membership, probe, self.clock,
                                    self.rng, self.stun_servers, self._execute, events,
                                    compose=self._roaming_record)
        self._watch.start(loop, stack)

    # ---- org revocations and aliases, DNS ------------------------------------------------

    def _load_org_items(self) -> list[Action]:
        """Signed revocations from the `revocations` file and this org's alias (org/alias):
        the new ones take effect and start spreading."""
        node, trust = self.node, self.trust
        if node is None or trust is None:
            return []
        actions = node.announce_revocations(trust.signed_revocations(), self.clock.wall())
        org_wiring.announce_vouches(node, trust.vouches())  # vouched/ (identity/vouch.py)
        path = self.config_dir / store.ORG_DIR / ALIAS_FILE
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            text = ""
        alias = org_gossip.parse_alias_line(text) if text else None
        if alias is not None and node.announce_alias(alias, self.clock.wall()):
            log.info("announcing the org alias %s.mesh", alias.alias)
        kept = org_aliases.load_aliases(self.config_dir)  # received before a restart
        if kept.problem is not None or kept.refused:
            log.warning("org aliases: %s", kept.problem or f"{kept.refused} line(s) of "
                        f"{org_aliases.ORG_ALIASES} refused (malformed or forged)")
        org_wiring.restore_aliases(node, kept, self.clock.wall())
        return actions

    def _keep_aliases(self, leaving: bool = False) -> None:
        """Aliases learned from the mesh go into org_aliases (atomic), for the next start: at
        most once per org_aliases.SAVE_INTERVAL (the trust poll and leave() write the rest)."""
        org = self.node.org if self.node is not None else None
        if org is None or not self._aliases_unsaved:
            return
        if not (leaving or self._alias_writes.take(self.clock.monotonic())):
            return
        self._aliases_unsaved = False
        try:
            org_aliases.save_aliases(self.config_dir, org.aliases.values())
        except (MeshguardError, OSError) as exc:
            log.error("cannot keep the org aliases in %s: %s", self.config_dir, exc)

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
        self._retrust()

    def _retrust(self) -> None:
        """The trust store changed in memory: the node and SWIM ask admission again."""
        if self.trust is None or self.node is None:
            return
        c = self.clock
        acts = self.node.set_trust(self.trust, c.wall())
        acts += self.membership.trust_changed(c.monotonic(), c.wall())
        asyncio.get_running_loop().call_soon(self._execute, acts)

    def current_resolver(self) -> Resolver:
        if self._resolver is None:
            self._resolver = Resolver()
        node = self.node
        if node is not None and node.names_version != self._names_version:
            self._names_version = node.names_version
            wall = self.clock.wall()
            self._resolver.set_table(build_table(node.dns_table(wall)), wall)  # SOA serial
            self._resolver.server = HostAddresses(  # ns.mesh (dns/resolver.py)
                () if node.self_ipv4 is None else (node.self_ipv4,), (node.self_ipv6,))
        return self._resolver

    async def _start_dns(self, stack: contextlib.AsyncExitStack) -> None:
        node = self.node
        assert node is not None
        cfg, trust = self.cfg, self.trust
        server = DnsServer(  # registered with systemd-resolved (daemon/resolved_link.py)
            self.current_resolver, cfg.dns_port,
            link=ResolvedLink(cfg.interface, env=cfg.env) if cfg.resolved else None,
            domains=lambda: routing_domains(trust.store.orgs.values() if trust else ()))
        addrs = [str(a) for a in (node.self_ipv4, node.self_ipv6) if a is not None]
        await server.start(addrs)
        stack.push_async_callback(server.stop)
        self.dns_server = server

    # ---- event plumbing --------------------------------------------------------------

    def _execute(self, actions: list[Action]) -> None:
        if actions:
            self.runner.execute(actions)

    def _on_actions(self, actions: list[Action]) -> None:
        """The node's events (everything that is not a datagram or a TUN write)."""
        changes: list[PeerUp | PeerDown] = []
        if any(isinstance(a, AliasLearned) for a in actions):
            self._aliases_unsaved = True
            self._keep_aliases()
        for a in actions:
            if isinstance(a, PeerUp):
                mark("peer")
                p = a.peer
                log.info("tunnel up to %s at %s", p.identity_key.hex()[:12],
                         format_endpoint(p.endpoint))
                changes.append(a)
            elif isinstance(a, PeerDown):
                log.info("tunnel down to %s (%s)", a.identity_key.hex()[:12], a.reason)
                changes.append(a)
            elif isinstance(a, PolicyLearned) and self.policies is not None:
                self.policies.learned(a.policy)
            elif isinstance(a, SelfAddressChanged):
                log.warning("mesh IPv4 collision: our address moves from %s to %s",
                            a.old, a.new)
                self._readdress(a)
            elif isinstance(a, StunResult):
                self._on_stun(a)
            elif isinstance(a, ReflexiveEndpoint):
                self._on_reflexive(a)
            elif isinstance(a, Joined):
                mark("joined")
                self._ready("joined the mesh")
            elif isinstance(a, RevocationLearned):
                self._persist_revocation(a.revocation)
            elif isinstance(a, VouchLearned) and self.trust is not None:
                if self.trust.keep_vouch(a.vouch):  # into vouched/, then admitted
                    self._retrust()
            else:
                log.debug("event: %s", a)
        if changes:
            if self.routes is not None:
                self.routes.sync()  # the node re-planned the routes with the peers
            self.runner.peers_changed(changes)
            if self.policies is not None:
                self.policies.members_changed()

    def _on_stun(self, res: StunResult) -> None:
        if self._watch is not None:  # the record follows the answer (mesh/roaming.py)
            self._watch.stun_result(res.mapped, res.nat_type)

    def _roaming_record(self, a: Reannounce) -> tuple[Reannounce, int | None]:
        """Roaming's record (mesh/roaming.py) with the router's port mapping in front, as
        `_advertise` puts it; a mapping made for an address we no longer have is left out.
        Returns the record and its NAT type (the mapping may make it PUBLIC)."""
        assert self._watch is not None
        r = self._watch.roaming
        if a.nat_type is not None or r.mapped is None:
            nat = a.nat_type if a.nat_type is not None else self._public[1]
            self._public = (r.mapped, nat)
        pm = self.portmap.mapper if self.portmap is not None else None
        stale = pm is not None and r.moved and pm.client_ip not in r.hosts
        mapping = pm.mapping if pm is not None and not stale else None
        first, nat = advertisement(mapping, *self._public)
        self._mapped = mapping.external if mapping is not None else None
        eps = tuple(dict.fromkeys([*first, *a.endpoints]))[:4]
        known = a.nat_type is not None or mapping is not None
        return dataclasses.replace(a, endpoints=eps), (nat if known else None)

    def _on_reflexive(self, a: ReflexiveEndpoint) -> None:
        node = self.node
        if node is None or node.holepunch is None:
            return
        self._public = (a.endpoint, NatType.SYMMETRIC)
        if self._advertise(behind_nat=True):
            log.info("NAT maps per destination (symmetric): advertising %s, the address "
                     "public member %s sees", format_endpoint(a.endpoint), a.relay.hex()[:12])

    def _advertise(self, behind_nat: bool | None = None) -> bool:
        """Our record's first endpoints and NAT type: the router's port mapping (PUBLIC when
        STUN agrees), then what STUN or a relay saw (nat/portmap.py `advertisement`)."""
        mapping = self.portmap.mapper.mapping if self.portmap is not None else None
        first, nat = advertisement(mapping, *self._public)
        drop = [self._mapped] if self._mapped is not None and self._mapped not in first else []
        self._mapped = mapping.external if mapping is not None else None
        changed = self.membership.set_public_endpoints(self.clock.monotonic(), first, nat,
                                                       drop)
        hp = self.node.holepunch if self.node is not None else None
        if hp is not None:
            hp.set_self(self.membership.core.record.endpoints,
                        behind_nat=hp.behind_nat if behind_nat is None else behind_nat)
        return changed

    def _on_portmap(self, events: list[PortmapAction]) -> None:
        for e in events:
            line, warn = describe(e)
            (log.warning if warn else log.info)("port mapping: %s", line)
        self._advertise()

    def _readdress(self, change: SelfAddressChanged) -> None:
        for addr, op in ((change.old, "del"), (change.new, "add")):
            if addr is not None:
                subprocess.run(["ip", "addr", op, f"{addr}/16", "dev", self.cfg.interface],
                               capture_output=True, check=False, timeout=10)
        if self.dns_server is not None and self.node is not None:
            addrs = [str(x) for x in (self.node.self_ipv4, self.node.self_ipv6) if x is not None]
            self._dns_task = asyncio.get_running_loop().create_task(
                self.dns_server.rebind(addrs))

    def _ready(self, status: str) -> None:
        if self._ready_sent:
            return
        self._ready_sent = True
        self.joined.set()
        log.info("ready: %s", status)
        sd_notify.notify(f"READY=1\nSTATUS={status}", self.cfg.env)

    # ---- trust reload ----------------------------------------------------------------

    def _device_keys(self, keys: frozenset[bytes]) -> None:
        """Device keys are never members' (a record claiming one gets no tunnel)."""
        if self.node is not None and keys != self.node.reserved_wg_keys:
            self.node.reserved_wg_keys = keys
            self._execute(self.node.reconcile(self.clock.wall()))

    def reload_trust(self, why: str) -> None:
        if self.node is None or self.trust is None:
            return
        if self._wg_devices is not None:
            self._wg_devices.reload()
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
        actions += self.membership.trust_changed(self.clock.monotonic(), self.clock.wall())
        actions += self._load_org_items()
        self._execute(actions)
        if self.policies is not None:
            self.policies.reload(new)
        if self.dns_server is not None:
            self.dns_server.relink()  # trusted orgs' routing domains

    async def _trust_poller(self) -> None:
        saved = self.clock.monotonic()
        while not self.stop_event.is_set():
            await asyncio.sleep(TRUST_POLL)
            fp = await asyncio.to_thread(trust_stamp, self.config_dir)
            if fp != self._trust_fp:
                self.reload_trust("files changed")
            self._keep_aliases()
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

    async def _control(self, req: Request) -> dict[str, object]:
        if req.op == "hello":
            return {"interface": self.cfg.interface, "pid": os.getpid(), "version": __version__}
        if req.op == "status":
            return (await self.status_now()).to_json()
        if req.op == "ping" and self.node is not None:
            return await ping_request(self.node, self.node.probes, self.clock,
                                      lambda g: self._execute(list(g)), req.args)
        if req.op == "policy" and self.policies is not None:
            enforcer = self.runner if self.cfg.kernel else getattr(self.runner, "engine", None)
            counters = getattr(enforcer, "policy_counters", None)
            return self.policies.report(None if counters is None else counters())
        if req.op == "reload":
            return (await self.config_reload.reload("meshguard reload")).to_json()
        if req.op == "down":
            log.info("down requested over the control socket")
            asyncio.get_running_loop().call_soon(self.stop_event.set)
            return {"leaving": True}
        raise MeshguardError(f"unsupported op {req.op}")

    async def status_now(self) -> StatusReport:
        """The status report with the runner's current peer stats (`status`, metrics)."""
        return self.status(await self.runner.peer_stats())

    def status(self, kernel_stats: PeerStats | None = None) -> StatusReport:
        node = self.node
        assert node is not None and self.trust is not None
        dns = self.dns_server
        return build_status(cfg=self.cfg, node=node, membership=self.membership, name=self.name,
                            started_at=self.started_at, wall=self.clock.wall(),
                            kernel_stats=kernel_stats, runner_counters=self.runner.counters()
                            | (dict(self.portmap.mapper.counters) if self.portmap else {})
                            | self.seed_runner.counters(),
                            dns_counters=dns.counters if dns is not None else None,
                            seeds=self.seed_runner.status(), now=self.clock.monotonic(),
                            endpoints=wg_endpoints_of(self.membership.core.record),
                            ).with_portmap(self.portmap.status() if self.portmap else None)

    # ---- signals and shutdown --------------------------------------------------------

    def _install_signals(self, stack: contextlib.AsyncExitStack) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop_event.set)
            stack.callback(loop.remove_signal_handler, sig)
        loop.add_signal_handler(signal.SIGHUP, self.config_reload.on_signal)
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
        self._keep_aliases(leaving=True)

    async def run(self) -> int:
        async with contextlib.AsyncExitStack() as stack:
            await self.start(stack)
            await self.stop_event.wait()
            sd_notify.notify("STOPPING=1", self.cfg.env)
            await self.leave()
        log.info("stopped; interface %s removed", self.cfg.interface)
        return self.exit_code


def run_foreground(config: DaemonConfig, on_error: Callable[[str], None] | None = None) -> int:
    setup_logging(config.log_level, config.log_format)
    try:
        return asyncio.run(MeshDaemon(config).run())
    except MeshguardError as exc:
        # tell a backgrounding `meshguard up` (or systemd) why we failed
        sd_notify.notify(f"STATUS={exc}\nERRNO=1", config.env)
        raise
