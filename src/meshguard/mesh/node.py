"""MeshNode: the sans-IO composition of one mesh member.

One UDP port carries everything (docs/wire-format.md). `MeshNode.receive` classifies each
datagram (mesh/demux.py) and hands it to the WireGuard device, the SWIM membership or the STUN
client; garbage is counted (`counters["garbage_dropped"]`) and dropped.

Membership becomes WireGuard peers by *reconciliation*: after every membership change, trust
reload or periodic re-check, the node computes the set of peers it should have and diffs it
against the peers it has:

* a member gets a peer iff it is alive or suspect, is not this node, carries a WireGuard key,
  and the local trust store admits it (`admit(identity_key, certificate, wall)`), so a member
  that dies, leaves, or loses trust (key removed from authorized_keys/, org untrusted,
  certificate expired or revoked) loses its tunnel at the next reconcile;
* allowed IPs = the member's mesh IPv4/32 and IPv6/128; the IPv4 comes from
  `identity.addressing.assign_ipv4` over this node plus all routed members, so two members
  whose natural addresses collide never share a /32 (the loser gets its probe address, or
  IPv6 only);
* plus the subnets or exit routes it carries for this node (mesh/routes.py, when `routes`
  is set: offered, granted by an org-signed policy, and asked for);
* endpoint = the member's advertised WireGuard endpoint; persistent keepalive
  `KEEPALIVE` seconds (keeps NAT mappings open).

The peer changes are applied to the userspace `Device` when there is one, and are also returned
as `PeerUp`/`PeerDown` actions, so kernel mode (no Device in this process) configures the kernel
device from them. Admission decisions are cached per (key, certificate) and recomputed on trust
reload and every `TRUST_RECHECK` seconds (certificate expiry).

The membership core is reached through the small `MembershipPort` protocol (adapter in
mesh/swim_port.py) and the device through `DevicePort` (the subset of wireguard.Device used);
every port is in mesh/ports.py, the member view, peer config and actions in mesh/actions.py.
The NAT cores (nat/relay.py, nat/holepunch.py) and the org core see the members through
callables the node binds on first use (the shell attaches those cores after construction);
their views are built lazily (mesh/member_views.py).

Org messages (OrgCertRevoke 0x42, OrgAliasAnnounce 0x41) go to the optional `org` core
(mesh/org_gossip.py), wired to the node in mesh/org_wiring.py. A newly learned revocation
takes effect at once (a member admitted only by the revoked certificate loses its tunnel in
the same call) and is returned as `RevocationLearned`, so the shell persists it into the
`revocations` file. The trust object may offer `trusted_org_keys()`; without it no org
message is accepted.

DNS names (`dns_table`, served by dns/resolver.py): `<cert name>.<org hex6>.mesh` and
`<cert name>.<alias>.mesh` for members admitted by a trusted certificate, `<file name>.mesh`
for members admitted by authorized_keys/<file name>.pub; only members with a tunnel (and this
node itself) have names. `names_version` changes whenever the table may have changed.
"""

from __future__ import annotations

import ipaddress
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from meshguard.dns.resolver import HostAddresses
from meshguard.identity.addressing import assign_ipv4, mesh_ipv4, mesh_ipv6, org_domain
from meshguard.identity.certificate import NodeCertificate
from meshguard.identity.errors import CertificateError
from meshguard.identity.names import MESH_TLD, node_dns_name
from meshguard.mesh import org_wiring, policy_wiring
from meshguard.mesh import paths as path_wiring
from meshguard.mesh.actions import (
    ROUTED_STATES,
    Action,
    AliasLearned,
    IPNetwork,
    Joined,
    MemberView,
    PeerConfig,
    PeerDown,
    PeerUp,
    ReflexiveEndpoint,
    RevocationLearned,
    SelfAddressChanged,
    StunResult,
    VouchLearned,
)
from meshguard.mesh.demux import Kind, classify
from meshguard.mesh.member_views import LazyView, punch_peers, relay_peers
from meshguard.mesh.org_gossip import OrgGossip
from meshguard.mesh.path_probe import PathProber, node_targets
from meshguard.mesh.policy_gossip import PolicyGossip
from meshguard.mesh.ports import Admitter, DevicePort, MembershipPort, PeerBackend, StunPort
from meshguard.mesh.routes import RoutePlan, RoutePlanner, plan_routes
from meshguard.nat.budget import TokenBucket
from meshguard.nat.holepunch import Action as PunchAction
from meshguard.nat.holepunch import HolePuncher, PeerInfo, PunchFailed, PunchSucceeded
from meshguard.nat.path_select import PathReport, PathSelector
from meshguard.nat.relay import Relay, RelayObserved, RelayPeer
from meshguard.nat.stun_client import StunAction, StunFinished
from meshguard.sansio import Endpoint
from meshguard.swim.events import Action as SwimAction
from meshguard.wire.holepunch import HOLEPUNCH_TYPES
from meshguard.wire.org import ORG_TYPES, AliasAnnouncement, CertRevocation
from meshguard.wire.path_probe import PATH_PROBE_TYPES
from meshguard.wire.policy_gossip import POLICY_TYPES
from meshguard.wire.relay import RELAY_DATA
from meshguard.wireguard.actions import Action as DeviceAction
from meshguard.wireguard.actions import SendDatagram

# the node's vocabulary and ports live in mesh/actions.py and mesh/ports.py; importers of this
# module may take them from here
__all__ = ["KEEPALIVE", "TRUST_RECHECK", "Action", "Admitter", "AliasLearned", "DevicePort",
           "Endpoint", "Joined", "MemberView", "MembershipPort", "MeshNode", "PeerBackend",
           "PeerConfig", "PeerDown", "PeerUp", "ReflexiveEndpoint", "RevocationLearned",
           "SelfAddressChanged", "StunPort", "StunResult", "VouchLearned"]

log = logging.getLogger(__name__)

KEEPALIVE = 25  # seconds; the usual WireGuard value for keeping NAT mappings alive
TRUST_RECHECK = 60.0  # seconds between re-checks of cached admissions (certificate expiry)
HANDSHAKE_FRESH = 180.0  # a handshake this recent means the direct path works


# the node ------------------------------------------------------------------------------


@dataclass
class _Cached:
    admitted: bool
    name: str | None
    reason: str
    checked: float
    org_domain: str | None = None
    orgs: tuple[bytes, ...] = ()  # the orgs whose certificate or vouch admits it


@dataclass
class MeshNode:
    identity_key: bytes
    wg_key: bytes
    membership: MembershipPort
    trust: Admitter
    device: DevicePort | None = None
    backend: PeerBackend | None = None
    stun: StunPort | None = None
    org: OrgGossip | None = None
    policy: PolicyGossip | None = None  # signed org policies (mesh/policy_wiring.py)
    certificate: bytes | None = None  # this node's own certificate (for its DNS name)
    keepalive: int = KEEPALIVE
    counters: Counter[str] = field(default_factory=Counter)
    peers: dict[bytes, PeerConfig] = field(default_factory=dict)  # by WireGuard key
    self_ipv4: ipaddress.IPv4Address | None = None
    _admission: dict[tuple[bytes, bytes | None], _Cached] = field(default_factory=dict)
    _last_recheck: float = float("-inf")
    names_version: int = 0
    _org_seen: int = -1
    _policy_seen: int = -1
    _punch_scan: float = float("-inf")
    holepunch: HolePuncher | None = None  # userspace mode behind a NAT (nat/holepunch.py)
    relay: Relay | None = None  # relaying through a public member (nat/relay.py)
    paths: PathSelector | None = None  # direct or relayed, and why (mesh/paths.py)
    probes: PathProber | None = None  # RTT and path MTU of direct paths (mesh/path_probe.py)
    # WireGuard key -> (the record's endpoint when punched, the endpoint that worked)
    punched: dict[bytes, tuple[Endpoint | None, Endpoint]] = field(default_factory=dict)
    # the relay and hole-punch views of the members, built on first use after a change
    _relay_members: LazyView[RelayPeer] | None = None
    _punch_members: LazyView[PeerInfo] | None = None
    _views_wall: float | None = None
    routes: RoutePlanner | None = None  # subnet and exit routes (mesh/routes.py)
    route_plan: RoutePlan = field(default_factory=RoutePlan)  # as of the last desired_peers
    # learned revocations are logged at most 10 at once, then one per 5 s (the rest counted)
    _revocation_logs: TokenBucket = field(default_factory=lambda: TokenBucket(0.2, 10.0))
    # WireGuard keys of plain devices this node is the gateway of (daemon/wg_device_peers.py):
    # a member whose record claims one gets no tunnel
    reserved_wg_keys: frozenset[bytes] = frozenset()

    def __post_init__(self) -> None:
        self.self_ipv4 = mesh_ipv4(self.identity_key)
        self.self_ipv6 = mesh_ipv6(self.identity_key)

    # datagrams ---------------------------------------------------------------------------

    def receive(self, now: float, wall: float, data: bytes, src: Endpoint
                         ) -> list[Action]:
        kind = classify(data)
        if kind is Kind.WIREGUARD:
            return self.receive_wireguard(now, wall, data, src)
        if kind is Kind.GOSSIP and data[0] in HOLEPUNCH_TYPES:
            self.counters["holepunch_rx"] += 1
            hp = self._punch_core(wall)
            if hp is None:
                self.counters["garbage_dropped"] += 1
                return []
            return self._punch_actions(hp.receive(now, wall, bytes(data), src), now, wall)
        if kind is Kind.GOSSIP and data[0] == RELAY_DATA:
            self.counters["relaydata_rx"] += 1
            return self._receive_relay(now, wall, bytes(data), src)
        if kind is Kind.GOSSIP and data[0] in PATH_PROBE_TYPES:
            pp = self._probes_core()
            return [] if pp is None else list(pp.receive(now, wall, bytes(data), src))
        if kind is Kind.GOSSIP and data[0] in ORG_TYPES:
            self.counters["org_rx"] += 1
            return org_wiring.receive(self, now, wall, bytes(data), src)
        if kind is Kind.GOSSIP and data[0] in POLICY_TYPES:
            self.counters["policy_rx"] += 1
            return policy_wiring.receive(self, now, wall, bytes(data), src)
        if kind is Kind.GOSSIP:
            self.counters["gossip_rx"] += 1
            out = self.membership.receive(now, wall, data, src)
            return self._after_membership(out, wall)
        if kind is Kind.STUN:
            self.counters["stun_rx"] += 1
            if self.stun is None or self.stun.done:
                self.counters["stun_unexpected"] += 1
                return []
            return self._stun_actions(self.stun.receive(now, wall, data, src))
        self.counters["garbage_dropped"] += 1
        return []

    def receive_wireguard(self, now: float, wall: float, data: bytes, src: Endpoint
                          ) -> list[Action]:
        """A datagram already classified as WireGuard (e.g. on a WireGuard-only port)."""
        self.counters["wireguard_rx"] += 1
        if self.device is None:
            self.counters["garbage_dropped"] += 1
            return []
        return self._from_device(self.device.receive(now, wall, data, src))

    def send_packet(self, now: float, wall: float, packet: bytes) -> list[Action]:
        if self.device is None:
            return []
        return self._from_device(self.device.send_packet(now, wall, packet))

    def tick(self, now: float, wall: float) -> list[Action]:
        out: list[Action] = []
        if self.device is not None:
            out += self._from_device(self.device.tick(now, wall))
        if self.stun is not None and not self.stun.done:
            out += self._stun_actions(self.stun.tick(now, wall))
        m = self.membership.tick(now, wall)
        out += self._after_membership(m, wall)
        hp = self._punch_core(wall)
        if hp is not None:
            due = hp.next_deadline()
            if due is None or now >= due or now >= self._punch_scan:
                self._punch_scan = now + 1.0
                out += self._punch_actions(hp.tick(now, wall), now, wall)
        rl = self._relay_core(wall)
        if rl is not None:
            due = rl.next_deadline()
            if due is not None and now >= due:
                out += [x for x in rl.tick(now, wall) if isinstance(x, SendDatagram)]
            if rl.via and rl.prune():
                out += self.reconcile(wall)  # a relay died: back to the advertised endpoint
        out += path_wiring.check_paths(self, now, wall)
        out += org_wiring.tick(self, now, wall)
        out += policy_wiring.tick(self, now, wall)
        pp = self._probes_core()
        if pp is not None:
            out += pp.tick(now, wall)
        if now - self._last_recheck >= TRUST_RECHECK:
            # certificates expire: ask the trust store again about everyone
            self._last_recheck = now
            self._admission.clear()
            out += self.reconcile(wall)
        return out

    def next_deadline(self) -> float | None:
        ds = [d for d in (self.membership.next_deadline(),
                          self.stun.next_deadline() if self.stun else None,
                          self.device.next_deadline() if self.device else None,
                          self.org.next_deadline() if self.org else None,
                          self.policy.next_deadline() if self.policy else None,
                          self._punch_deadline(),
                          self.relay.next_deadline() if self.relay else None,
                          self.probes.next_deadline() if self.probes else None,
                          self._last_recheck + TRUST_RECHECK) if d is not None]
        return min(ds) if ds else None

    # hole punching -----------------------------------------------------------------------

    def _punch_deadline(self) -> float | None:
        hp = self.holepunch
        if hp is None:
            return None
        due = hp.next_deadline()
        return self._punch_scan if due is None else min(due, self._punch_scan)

    def _punch_core(self, wall: float) -> HolePuncher | None:
        """The hole puncher, seeing the members through this node's view (bound here, on
        use: the shell sets `holepunch` after constructing the node)."""
        hp = self.holepunch
        if hp is not None:
            self._views_wall = wall
            hp.members = self._punch_lookup
            hp.connected = self._punch_connected
        return hp

    def _punch_lookup(self) -> Mapping[bytes, PeerInfo]:
        """Every member as the hole puncher sees it (alive = routed and admitted): built on
        first use after a membership change (reconcile drops it), so a datagram costs
        lookups, never a scan."""
        v = self._punch_members
        if v is None:
            v = self._punch_members = LazyView(self._build_punch_view, self.counters)
        return v

    def _build_punch_view(self) -> dict[bytes, PeerInfo]:
        return punch_peers(self.membership.members(), self.identity_key, self._view_admitted)

    def _view_admitted(self, m: MemberView) -> bool:
        """Admitted at the latest wall time known (the member views' notion of alive)."""
        wall = self._views_wall
        return wall is None or self.admission(m, wall).admitted

    def _punch_connected(self, p: PeerInfo) -> bool:
        """Whether a recent handshake (at the latest wall time known) proves a direct path:
        one through a relay (the endpoint a placeholder) does not."""
        be, wall = self.backend, self._views_wall
        if p.wg_key is None or p.wg_key not in self.peers or be is None or wall is None:
            return False
        hs, _, _, ep = be.stats(p.wg_key)
        return hs > 0 and wall - hs < HANDSHAKE_FRESH and not Relay.is_placeholder(ep)

    def _punch_actions(self, actions: Sequence[PunchAction], now: float, wall: float
                       ) -> list[Action]:
        out: list[Action] = []
        for a in actions:
            if isinstance(a, SendDatagram):
                out.append(SendDatagram(a.data, a.endpoint))
            elif isinstance(a, PunchSucceeded):
                out += self._punch_succeeded(a, now, wall)
                path_wiring.punch_event(self, a, now)
            elif isinstance(a, PunchFailed):
                if not path_wiring.direct_now(self, a.identity_key):
                    out += self._punch_failed(a, now, wall)  # (else: direct meanwhile)
                path_wiring.punch_event(self, a, now)
            else:  # PunchRendezvous (kernel mode: mesh/kernel_traversal.py), PunchNoRendezvous
                out += path_wiring.punch_event(self, a, now)
        return out

    def punch_events(self, actions: Sequence[PunchAction], now: float, wall: float
                     ) -> list[Action]:
        """Hole-punch outcomes found outside the node (kernel mode), handled as its own."""
        return self._punch_actions(actions, now, wall)

    def _punch_failed(self, a: PunchFailed, now: float, wall: float) -> list[Action]:
        rl = self._relay_core(wall)
        if rl is None or a.identity_key in rl.via:
            log.info("hole punch to %s failed", a.identity_key.hex()[:12])
            return []
        if not rl.start(a.identity_key):
            log.info("hole punch to %s failed; no relay has answered yet",
                     a.identity_key.hex()[:12])
            return []
        log.info("hole punch to %s failed: relaying through %s at %s",
                 a.identity_key.hex()[:12], rl.via[a.identity_key].hex()[:12],
                 rl.relay_endpoint(a.identity_key))
        out: list[Action] = list(self.reconcile(wall))
        member = next((m for m in self.membership.members()
                       if m.identity_key == a.identity_key), None)
        dev = self.device
        if (member is not None and member.wg_key is not None and dev is not None
                and self.identity_key < a.identity_key):
            # the lower identity key starts the handshake through the relay, as after a punch
            out += self._from_device(dev.new_path(member.wg_key, now, wall))
        return out

    def _punch_succeeded(self, a: PunchSucceeded, now: float, wall: float) -> list[Action]:
        member = next((m for m in self.membership.members()
                       if m.identity_key == a.identity_key), None)
        if member is None or member.wg_key is None:
            return []
        log.info("hole punch to %s succeeded at %s%s", a.identity_key.hex()[:12],
                 f"{a.endpoint[0]}:{a.endpoint[1]}",
                 "" if a.rtt is None else f" ({a.rtt * 1000:.0f} ms after the request)")
        self.punched[member.wg_key] = (member.wg_endpoint, a.endpoint)
        if self.relay is not None:
            self.relay.stop(a.identity_key)
        out: list[Action] = list(self.reconcile(wall))
        dev = self.device
        if dev is not None:
            # one side starts the handshake (two crossing initiations would cancel each
            # other's state and leave the tunnel to the 5 s retry): the lower identity key;
            # a handshake sent into the closed NAT before the punch does not count against
            # the rate limit, the path is new
            out += dev.new_path(member.wg_key, now, wall, a.endpoint,
                                initiate=self.identity_key < a.identity_key)
        return out

    def start_stun(self, stun: StunPort, now: float) -> list[Action]:
        """Begin public-endpoint discovery with a nat.stun_client.StunClient."""
        self.stun = stun
        return list(stun.start(now))

    @staticmethod
    def _stun_actions(actions: Sequence[StunAction]) -> list[Action]:
        out: list[Action] = []
        for a in actions:
            if isinstance(a, SendDatagram):
                out.append(a)
            elif isinstance(a, StunFinished):
                out.append(StunResult(a.mapped, int(a.nat_type)))
        return out

    def leave(self, now: float, wall: float) -> list[Action]:
        """Announce a graceful leave; the caller sends the datagrams and then shuts down."""
        return list(self.membership.absorb(self.membership.leave(now, wall))[0])

    def set_trust(self, trust: Admitter, wall: float) -> list[Action]:
        """A new trust store (reload): forget every admission decision and reconcile."""
        self.trust = trust
        self._admission.clear()
        self.names_version += 1
        return list(self.reconcile(wall))

    # org messages ------------------------------------------------------------------------

    def trusted_orgs(self) -> frozenset[bytes]:
        fn = getattr(self.trust, "trusted_org_keys", None)
        return frozenset(bytes(k) for k in fn()) if fn is not None else frozenset()

    def _org_member(self, wg_key: bytes) -> bytes | None:
        """The identity of the member with a tunnel under this WireGuard key (O(1))."""
        peer = self.peers.get(wg_key)
        return None if peer is None else peer.identity_key

    def announce_revocations(self, revs: list[CertRevocation], wall: float) -> list[Action]:
        """Local revocations take effect now and start spreading (mesh/org_wiring.py)."""
        return org_wiring.announce_revocations(self, revs, wall)

    def announce_alias(self, alias: AliasAnnouncement, wall: float | None = None) -> bool:
        """This org's own alias (mesh/org_wiring.py)."""
        return org_wiring.announce_alias(self, alias, wall)

    # membership -> peers -----------------------------------------------------------------

    def _after_membership(self, actions: Sequence[SwimAction], wall: float) -> list[Action]:
        absorbed, changed = self.membership.absorb(actions)
        out = list(absorbed)
        if changed:
            out += self.reconcile(wall)
        return out

    def _from_device(self, actions: Sequence[DeviceAction]) -> list[Action]:
        rl = self._relay_core(None)
        if rl is None or not rl.via:
            return list(actions)
        out: list[Action] = []
        for a in actions:
            if isinstance(a, SendDatagram) and rl.is_placeholder(a.endpoint):
                w = rl.wrap(a.endpoint, a.data)
                if w is not None:
                    out.append(w)
            else:
                out.append(a)
        return out

    # relay -------------------------------------------------------------------------------

    def _relay_view(self, wall: float | None) -> Mapping[bytes, RelayPeer]:
        """Every member as the relay sees it (alive = routed and admitted at the latest wall
        time known), built on first use after a membership change (reconcile drops it)."""
        if wall is not None:
            self._views_wall = wall
        v = self._relay_members
        if v is None:
            v = self._relay_members = LazyView(self._build_relay_view, self.counters)
        return v

    def _relay_core(self, wall: float | None) -> Relay | None:
        """The relay core, seeing the members through this node's view (bound here, on use:
        the shell sets `relay` after constructing the node)."""
        rl = self.relay
        if rl is not None:
            self._relay_view(wall)
            rl.members = self._relay_members_now
        return rl

    def _relay_members_now(self) -> Mapping[bytes, RelayPeer]:
        return self._relay_view(None)

    def _build_relay_view(self) -> dict[bytes, RelayPeer]:
        return relay_peers(self.membership.members(), self.identity_key, self._view_admitted)

    def _receive_relay(self, now: float, wall: float, data: bytes, src: Endpoint
                       ) -> list[Action]:
        rl = self._relay_core(wall)
        if rl is None:
            self.counters["garbage_dropped"] += 1
            return []
        out: list[Action] = []
        for a in rl.receive(now, wall, data, src):
            if isinstance(a, SendDatagram):
                out.append(a)
            elif isinstance(a, RelayObserved):
                st = self.stun
                if st is not None and st.mapped is not None and a.endpoint != st.mapped:
                    out.append(ReflexiveEndpoint(a.endpoint, a.relay))
            elif self.device is not None:  # RelayDelivered
                src, new_path = path_wiring.relayed_arrival(self, rl, now, a.source, a.new_path)
                if new_path:
                    out += self.reconcile(wall)  # a peer now reached through the relay
                out += self._from_device(self.device.receive(now, wall, a.payload, src))
            else:  # kernel mode: the shell's relay proxy hands it to the kernel
                if a.new_path:
                    out += self.reconcile(wall)
                out.append(a)
        return out

    def _probes_core(self) -> PathProber | None:
        pp = self.probes
        if pp is not None and pp.member_of is None:  # members with a tunnel, their paths
            pp.member_of, pp.targets = self._org_member, lambda: node_targets(self)
        return pp

    def path_of(self, wg_key: bytes) -> tuple[str, Endpoint | None]:
        """("relayed", the relay's endpoint) or ("direct", None) for `status`."""
        rl = self._relay_core(None)
        peer = self.peers.get(wg_key)
        if rl is not None and peer is not None and rl.is_placeholder(peer.endpoint):
            return "relayed", rl.relay_endpoint(peer.identity_key)
        return "direct", None

    def path_report(self, wg_key: bytes, now: float, wall: float) -> PathReport:
        """The peer's path and why (mesh/paths.py)."""
        return path_wiring.report(self, wg_key, now, wall)

    def admission(self, m: MemberView, wall: float) -> _Cached:
        ck = (m.identity_key, m.certificate)
        c = self._admission.get(ck)
        if c is None:
            try:
                res = self.trust.admit(m.identity_key, m.certificate, wall)
                c = _Cached(res.admitted, res.name, res.reason, wall, res.org_domain, res.orgs)
            except Exception as exc:  # a malformed certificate from the network: not admitted
                self.counters["admission_errors"] += 1
                c = _Cached(False, None, f"error: {exc}", wall)
            if c.admitted and self._cert_revoked(m.certificate):
                # a revocation learned from gossip, before (or without) the trust store
                # knowing it: a certificate-only admission ends here, an authorized key stays
                if c.reason == "authorized key":
                    c = _Cached(True, c.name, c.reason, wall, None)
                else:
                    c = _Cached(False, None, "certificate revoked", wall)
            if c.reason == "org vouch" and self.org is not None:
                c = org_wiring.vouch_standing(self.org, m.identity_key, c)
            self._admission[ck] = c
        return c

    def _cert_revoked(self, certificate: bytes | None) -> bool:
        if self.org is None or not self.org.revocations or certificate is None:
            return False
        cert = _parse_cert(certificate)
        return cert is not None and (cert.org_key, cert.node_key) in self.org.revocations

    # DNS names ---------------------------------------------------------------------------

    def _cert_names(self, certificate: bytes | None, aliases: dict[bytes, list[str]]
                    ) -> list[str]:
        cert = _parse_cert(certificate)
        if cert is None or not cert.name:
            return []
        names = [node_dns_name(cert.name, org_domain(cert.org_key))]
        names += [node_dns_name(cert.name, a) for a in aliases.get(cert.org_key, [])]
        return names

    def dns_table(self, wall: float) -> list[tuple[str, HostAddresses]]:
        """(name, addresses) for this node and every member with a tunnel."""
        aliases: dict[bytes, list[str]] = {}
        if self.org is not None:
            for alias, org_key in self.org.alias_map(self.trusted_orgs()).items():
                aliases.setdefault(org_key, []).append(alias)
        out: list[tuple[str, HostAddresses]] = []
        if self.certificate is not None and not self._cert_revoked(self.certificate):
            mine = HostAddresses(() if self.self_ipv4 is None else (self.self_ipv4,),
                                 (self.self_ipv6,))
            out += [(n, mine) for n in self._cert_names(self.certificate, aliases)]
        by_key = {p.identity_key: p for p in self.peers.values()}
        for m in self.membership.members():
            peer = by_key.get(m.identity_key)
            if peer is None:
                continue
            c = self.admission(m, wall)
            if not c.admitted:
                continue
            v4 = tuple(n.network_address for n in peer.allowed_ips
                       if isinstance(n, ipaddress.IPv4Network))
            addrs = HostAddresses(v4, (mesh_ipv6(m.identity_key),))
            names: list[str] = []
            if c.org_domain is not None:
                names += self._cert_names(m.certificate, aliases)
            if c.reason == "authorized key" and c.name:
                names.append(f"{c.name}.{MESH_TLD}".lower())
            out += [(n, addrs) for n in names]
        return out

    def routed_members(self, wall: float) -> list[MemberView]:
        out = []
        for m in self.membership.members():
            if m.identity_key == self.identity_key or m.wg_key is None:
                continue
            if m.wg_key == self.wg_key or m.wg_key in self.reserved_wg_keys:
                continue
            if m.state in ROUTED_STATES and self.admission(m, wall).admitted:
                out.append(m)
        return out

    def desired_peers(self, wall: float
                      ) -> tuple[dict[bytes, PeerConfig], ipaddress.IPv4Address | None]:
        """The peers this node should have, and this node's own mesh IPv4."""
        members = self.routed_members(wall)
        v4 = assign_ipv4([self.identity_key, *(m.identity_key for m in members)])
        if self.routes is not None:
            self.route_plan = plan_routes(self.routes, self.identity_key, members,
                                          lambda m: self.admission(m, wall).name)
        extra = self.route_plan.allowed
        desired: dict[bytes, PeerConfig] = {}
        for m in members:
            assert m.wg_key is not None
            nets: list[IPNetwork] = []
            a4 = v4.get(m.identity_key)
            if a4 is not None:
                nets.append(ipaddress.IPv4Network(f"{a4}/32"))
            nets.append(ipaddress.IPv6Network(f"{mesh_ipv6(m.identity_key)}/128"))
            nets += extra.get(m.identity_key, ())
            # two identities claiming one WireGuard key: the lower identity key keeps it
            prev = desired.get(m.wg_key)
            if prev is not None and prev.identity_key < m.identity_key:
                continue
            endpoint = path_wiring.first_endpoint_of(self, m)  # the record's, or LAN first
            if self.relay is not None and m.identity_key in self.relay.via:
                endpoint = self.relay.placeholder(m.identity_key)
            punched = self.punched.get(m.wg_key)
            if punched is not None:
                if punched[0] == m.wg_endpoint:
                    if self.relay is None or m.identity_key not in self.relay.via:
                        endpoint = punched[1]
                else:  # the member moved: its new record wins
                    del self.punched[m.wg_key]
            desired[m.wg_key] = PeerConfig(m.wg_key, m.identity_key, endpoint,
                                           tuple(nets), self.keepalive)
        return desired, v4.get(self.identity_key)

    def reconcile(self, wall: float) -> list[Action]:
        self._relay_members = self._punch_members = None  # members or trust may have changed
        desired, mine = self.desired_peers(wall)
        out: list[Action] = []
        if mine != self.self_ipv4:
            out.append(SelfAddressChanged(self.self_ipv4, mine))
            self.self_ipv4 = mine
            self.names_version += 1
        if desired != self.peers:
            self.names_version += 1
        for key, old in list(self.peers.items()):
            if key not in desired:
                del self.peers[key]
                if self.backend is not None:
                    self.backend.remove(key)
                self.counters["peers_removed"] += 1
                log.info("tunnel to %s removed", old.identity_key.hex()[:12])
                out.append(PeerDown(key, old.identity_key, "not a trusted live member"))
        for key, new in desired.items():
            cur = self.peers.get(key)
            if cur == new:
                continue
            self.peers[key] = new
            if self.backend is not None:
                self.backend.upsert(new)
            if cur is None:
                self.counters["peers_added"] += 1
                log.info("tunnel to %s configured (%s)", new.identity_key.hex()[:12],
                         ", ".join(str(n) for n in new.allowed_ips))
            out.append(PeerUp(new))
        return out


def _parse_cert(certificate: bytes | None) -> NodeCertificate | None:
    if certificate is None:
        return None
    try:
        return NodeCertificate.from_bytes(certificate)
    except CertificateError:
        return None
