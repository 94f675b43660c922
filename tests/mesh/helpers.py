"""Shared helpers for the mesh tests.

Stand-ins for MeshNode's ports (FakeTrust, FakeMembership, FakeBackend: test_node.py,
test_node_holepunch.py, test_node_relay_views.py); a MeshNode with a HolePuncher and a
hole-punch-aware device, one stalled peer B and one public member R (`setup`:
test_node_holepunch.py, test_node_relay_origin.py); the virtual-time mesh of real Devices and
SWIM cores on one in-memory UDP network (Net, SimNode: test_mesh_sim.py, test_org_gossip.py;
Net.move, a node whose address changes: test_roaming_sim.py; `joined_pair`: test_portmap_advert.py,
test_log_secrets.py); and its org-certificate variant,
a joined cluster of certified members (`cluster`: test_org_gossip.py, test_org_flood.py).
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from meshguard.crypto.keys import Ed25519PrivateKey, X25519PrivateKey
from meshguard.identity.addressing import mesh_ipv4, mesh_ipv6, org_domain
from meshguard.identity.certificate import NodeCertificate, sign_certificate
from meshguard.identity.trust import Admission
from meshguard.mesh.node import MemberView, MeshNode, PeerConfig
from meshguard.mesh.org_gossip import OrgGossip
from meshguard.mesh.swim_port import SwimPort, build_membership
from meshguard.mesh.wg_backend import DeviceBackend
from meshguard.nat.holepunch import HolePuncher
from meshguard.testing.clock import ManualClock
from meshguard.testing.rng import SeededRng
from meshguard.wireguard.actions import SendDatagram, WriteTun
from meshguard.wireguard.device import Device

# MeshNode's ports, faked -----------------------------------------------------------------


@dataclass
class FakeTrust:
    keys: set[bytes] = field(default_factory=set)
    orgs_cert: set[bytes] = field(default_factory=set)
    calls: int = 0

    def admit(self, node_key: bytes, certificate: bytes | None, now_wall: float) -> Admission:
        self.calls += 1
        if certificate == b"boom":
            raise ValueError("malformed certificate")
        if node_key in self.keys or (certificate is not None and certificate in self.orgs_cert):
            return Admission(True, "", name="n-" + node_key.hex()[:4])
        return Admission(False, "unknown key")


@dataclass(frozen=True)
class Sent:
    data: bytes
    to: tuple[str, int]


@dataclass(frozen=True)
class Changed:
    pass


@dataclass
class FakeMembership:
    view: dict[bytes, MemberView] = field(default_factory=dict)
    received: list[tuple[bytes, tuple[str, int]]] = field(default_factory=list)
    left: bool = False

    def receive(self, now: float, wall: float, data: bytes, src: tuple[str, int]) -> list[Any]:
        self.received.append((data, src))
        return [Sent(b"\x03ack", src), Changed()]

    def tick(self, now: float, wall: float) -> list[Any]:
        return []

    def next_deadline(self) -> float | None:
        return 5.0

    def leave(self, now: float, wall: float) -> list[Any]:
        self.left = True
        return [Sent(b"\x01leave", ("192.0.2.9", 51821))]

    def members(self) -> Iterable[MemberView]:
        return list(self.view.values())

    def absorb(self, actions: Sequence[Any]) -> tuple[list[Any], bool]:
        out = [SendDatagram(a.data, a.to) for a in actions if isinstance(a, Sent)]
        return out, len(out) != len(actions)


@dataclass
class FakeBackend:
    peers: dict[bytes, PeerConfig] = field(default_factory=dict)

    def upsert(self, peer: PeerConfig) -> None:
        self.peers[peer.wg_key] = peer

    def remove(self, wg_key: bytes) -> None:
        del self.peers[wg_key]

    def stats(self, wg_key: bytes) -> tuple[float, int, int, tuple[str, int] | None]:
        return (0.0, 0, 0, None)


# a MeshNode with a hole puncher ----------------------------------------------------------


WALL = 1_700_000_000.0
NODE_EP = ("203.0.113.21", 51821)
B_EP = ("203.0.113.22", 51821)
R_EP = ("203.0.113.10", 51821)


@dataclass
class HsPeer:
    endpoint: tuple[str, int] | None = None


@dataclass
class HsDevice:
    peers: dict[Any, HsPeer] = field(default_factory=dict)
    initiated: list[tuple[str, int] | None] = field(default_factory=list)

    def receive(self, now: float, wall: float, data: bytes, src: tuple[str, int]
                         ) -> list[Any]:
        return []

    def send_packet(self, now: float, wall: float, ip_packet: bytes) -> list[Any]:
        return []

    def tick(self, now: float, wall: float) -> list[Any]:
        return []

    def next_deadline(self) -> float | None:
        return None

    def peer(self, pub: Any) -> HsPeer:
        return self.peers.setdefault(pub.raw, HsPeer())

    def new_path(self, peer_key: bytes, now: float, wall: float,
                 endpoint: tuple[str, int] | None = None, initiate: bool = True) -> list[Any]:
        p = self.peers.setdefault(peer_key, HsPeer())
        if endpoint is not None:
            p.endpoint = endpoint
        if not initiate:
            return []
        self.initiated.append(p.endpoint)
        return [SendDatagram(b"\x01\x00\x00\x00init", p.endpoint or ("0.0.0.0", 0))]


def setup() -> tuple[MeshNode, FakeMembership, FakeBackend, HsDevice, Ed25519PrivateKey,
                     MemberView]:
    me = Ed25519PrivateKey(b"\x21" * 32)
    bkey = Ed25519PrivateKey(b"\x22" * 32)
    rkey = Ed25519PrivateKey(b"\x23" * 32)
    ms, tr, be, dev = FakeMembership(), FakeTrust(), FakeBackend(), HsDevice()
    node = MeshNode(me.public_key.raw, b"\x31" * 32, ms, tr, device=dev, backend=be,
                    holepunch=HolePuncher(me, SeededRng(1)))
    assert node.holepunch is not None
    node.holepunch.set_self((NODE_EP,), behind_nat=True)
    b = MemberView(bkey.public_key.raw, b"\x32" * 32, B_EP, B_EP, None, "alive", 1, 2, (B_EP,))
    r = MemberView(rkey.public_key.raw, b"\x33" * 32, R_EP, R_EP, None, "alive", 1, 1, (R_EP,))
    for m in (b, r):
        tr.keys.add(m.identity_key)
        ms.view[m.identity_key] = m
    node.reconcile(WALL)
    return node, ms, be, dev, bkey, b


# the virtual-time mesh -------------------------------------------------------------------


@dataclass
class Trust:
    keys: set[bytes] = field(default_factory=set)

    def admit(self, node_key: bytes, certificate: bytes | None, now_wall: float
              ) -> Admission:
        return Admission(bytes(node_key) in self.keys, "")


@dataclass
class SimNode:
    name: str
    ep: tuple[str, int]
    ident: Ed25519PrivateKey
    node: MeshNode
    trust: Trust
    tun: list[bytes] = field(default_factory=list)
    events: list[object] = field(default_factory=list)

    @property
    def key(self) -> bytes:
        return self.ident.public_key.raw


class Net:
    def __init__(self, seed: int = 1) -> None:
        self.rng = SeededRng(seed)
        self.clock = ManualClock()
        self.nodes: dict[tuple[str, int], SimNode] = {}
        self.queue: deque[tuple[tuple[str, int], bytes, tuple[str, int]]] = deque()
        self.down: set[tuple[str, int]] = set()

    def add(self, name: str, ip: str, **device: Any) -> SimNode:
        """A member at `ip`; `device` goes to its Device (under_load_threshold, ...)."""
        ident = Ed25519PrivateKey(self.rng.bytes(32))
        wg = X25519PrivateKey.generate(self.rng.bytes(32))
        ep = (ip, 51821)
        trust = Trust()
        c = self.clock
        port = build_membership(identity=ident, wg_private=wg, certificate=None, endpoints=[ep],
                                kernel=False, admitter=trust, rng=self.rng, now=c.monotonic(),
                                wall=c.wall())
        dev = Device(self.rng, wg, **device)
        node = MeshNode(ident.public_key.raw, wg.public_key.raw, port, trust, device=dev,
                        backend=DeviceBackend(dev))
        sn = SimNode(name, ep, ident, node, trust)
        self.nodes[ep] = sn
        return sn

    def join(self, sn: SimNode, seeds: list[SimNode]) -> None:
        port = sn.node.membership
        assert isinstance(port, SwimPort)
        c = self.clock
        self.run_actions(sn, port.join_actions([s.ep for s in seeds], c.monotonic(), c.wall()))

    def run_actions(self, sn: SimNode, actions: list[object]) -> None:
        for a in actions:
            if isinstance(a, SendDatagram):
                self.queue.append((a.endpoint, a.data, sn.ep))
            elif isinstance(a, WriteTun):
                sn.tun.append(a.packet)
            else:
                sn.events.append(a)

    def step(self, dt: float = 0.05) -> None:
        c = self.clock
        while self.queue:
            dst, data, src = self.queue.popleft()
            target = self.nodes.get(dst)
            if target is None or dst in self.down or src in self.down:
                continue
            self.run_actions(target, target.node.receive(c.monotonic(), c.wall(), data,
                                                                  src))
        c.advance(dt)
        for ep, sn in self.nodes.items():
            if ep in self.down:
                continue
            d = sn.node.next_deadline()
            if d is not None and d <= c.monotonic():
                self.run_actions(sn, sn.node.tick(c.monotonic(), c.wall()))

    def move(self, sn: SimNode, ip: str) -> None:
        """The node's underlay address changes: it sends from, and is reached at, `ip` only
        (its old address is gone; datagrams still queued for it are lost)."""
        del self.nodes[sn.ep]
        sn.ep = (ip, sn.ep[1])
        self.nodes[sn.ep] = sn

    def run(self, seconds: float) -> None:
        end = self.clock.monotonic() + seconds
        while self.clock.monotonic() < end:
            self.step()

    def send_ip(self, a: SimNode, b: SimNode, v6: bool = False) -> bytes:
        pkt = ip_packet(a.key, b.key, v6, self.rng.bytes(8))
        c = self.clock
        self.run_actions(a, a.node.send_packet(c.monotonic(), c.wall(), pkt))
        return pkt


def joined_pair(seed: int) -> tuple[Net, SimNode, SimNode]:
    """Two members that trust each other, b joined through a, after 4 s of virtual time."""
    net = Net(seed)
    a, b = net.add("a", "192.0.2.1"), net.add("b", "192.0.2.2")
    a.trust.keys.add(b.key)
    b.trust.keys.add(a.key)
    net.join(a, [])
    net.join(b, [a])
    net.run(4.0)
    return net, a, b


def ip_packet(src_key: bytes, dst_key: bytes, v6: bool, payload: bytes) -> bytes:
    if v6:
        return (struct.pack("!IHBB", 6 << 28, len(payload), 17, 64)
                + mesh_ipv6(src_key).packed + mesh_ipv6(dst_key).packed + payload)
    total = 20 + len(payload)
    return (struct.pack("!BBHHHBBH", 0x45, 0, total, 0, 0, 64, 17, 0)
            + mesh_ipv4(src_key).packed + mesh_ipv4(dst_key).packed + payload)


# org certificates ------------------------------------------------------------------------


@dataclass
class CertTrust:
    """Admits members with a valid certificate from a trusted org (and listed keys)."""

    orgs: set[bytes] = field(default_factory=set)
    keys: dict[bytes, str] = field(default_factory=dict)

    def trusted_org_keys(self) -> set[bytes]:
        return self.orgs

    def admit(self, node_key: bytes, certificate: bytes | None, now_wall: float) -> Admission:
        dom = None
        cert_ok = False
        if certificate is not None:
            cert = NodeCertificate.from_bytes(certificate)
            cert_ok = cert.org_key in self.orgs and cert.problem(now_wall, node_key) is None
            dom = org_domain(cert.org_key) if cert_ok else None
        if node_key in self.keys:
            return Admission(True, "authorized key", self.keys[node_key], dom)
        if cert_ok:
            return Admission(True, "org certificate", cert.name, dom)
        return Admission(False, "unknown key")


class OrgNet(Net):
    def __init__(self, seed: int, org: Ed25519PrivateKey) -> None:
        super().__init__(seed)
        self.org = org

    def add_cert_node(self, name: str, ip: str, trusted: bool = True,
                      keys: tuple[Ed25519PrivateKey, X25519PrivateKey] | None = None
                      ) -> SimNode:
        """A member with an org certificate; with `keys`, a new node object for an existing
        identity (a restart: nothing of the old object's state is kept)."""
        if keys is None:
            keys = (Ed25519PrivateKey(self.rng.bytes(32)),
                    X25519PrivateKey.generate(self.rng.bytes(32)))
        ident, wg = keys
        ep = (ip, 51821)
        c = self.clock
        cert = sign_certificate(self.org, ident.public_key.raw, name, int(c.wall()) - 60)
        trust = CertTrust({self.org.public_key.raw} if trusted else set())
        port = build_membership(identity=ident, wg_private=wg, certificate=cert.to_bytes(),
                                endpoints=[ep], kernel=False, admitter=trust, rng=self.rng,
                                now=c.monotonic(), wall=c.wall())
        node = MeshNode(ident.public_key.raw, wg.public_key.raw, port, trust,
                        org=OrgGossip(self.rng, wg, identity_key=ident.public_key.raw),
                        certificate=cert.to_bytes())
        sn = SimNode(name, ep, ident, node, trust)  # type: ignore[arg-type]
        self.nodes[ep] = sn
        return sn


def cluster(n: int, seed: int = 3) -> tuple[OrgNet, list[SimNode]]:
    net = OrgNet(seed, Ed25519PrivateKey(SeededRng(seed + 1000).bytes(32)))
    nodes = [net.add_cert_node(f"node-{i}", f"192.0.2.{i + 1}") for i in range(n)]
    net.join(nodes[0], [])
    for x in nodes[1:]:
        net.join(x, [nodes[0]])
    net.run(10.0)
    for a in nodes:
        assert len(a.node.peers) == n - 1, f"{a.name} has {len(a.node.peers)} peers"
    return net, nodes
