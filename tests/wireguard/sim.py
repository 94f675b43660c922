"""An in-memory network for WireGuard Device tests: virtual time, seeded loss and reordering."""

from __future__ import annotations

import heapq
import random
import struct
from dataclasses import dataclass, field

from meshguard.crypto.keys import X25519PrivateKey
from meshguard.testing.clock import ManualClock
from meshguard.testing.rng import SeededRng
from meshguard.wireguard.actions import Action, Endpoint, SendDatagram, WriteTun
from meshguard.wireguard.device import Device, Peer


def make_key(seed: int) -> X25519PrivateKey:
    return X25519PrivateKey.generate(random.Random(seed).randbytes(32))


def ipv4_packet(src: str, dst: str, payload: bytes = b"", ident: int = 0) -> bytes:
    """A minimal IPv4/UDP-ish packet (protocol 17, checksum not computed)."""
    total = 20 + len(payload)
    s = bytes(int(x) for x in src.split("."))
    d = bytes(int(x) for x in dst.split("."))
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, ident, 0, 64, 17, 0, s, d) + payload


def ipv6_packet(src: bytes, dst: bytes, payload: bytes = b"") -> bytes:
    return struct.pack("!IHBB16s16s", 0x60000000, len(payload), 17, 64, src, dst) + payload


@dataclass
class Node:
    device: Device
    endpoint: Endpoint
    tun: list[bytes] = field(default_factory=list)
    events: list[Action] = field(default_factory=list)
    sent: list[bytes] = field(default_factory=list)
    sent_at: list[float] = field(default_factory=list)


class SimNet:
    """Nodes exchange datagrams through a link with latency, seeded loss and reordering."""

    def __init__(
        self,
        clock: ManualClock,
        seed: int = 1,
        loss: float = 0.0,
        latency: float = 0.01,
        jitter: float = 0.0,
    ) -> None:
        self.clock = clock
        self.r = random.Random(seed)
        self.loss = loss
        self.latency = latency
        self.jitter = jitter
        self.nodes: dict[Endpoint, Node] = {}
        self._q: list[tuple[float, int, bytes, Endpoint, Endpoint]] = []
        self._seq = 0
        self.blocked: set[Endpoint] = set()
        self.delivered = 0
        # NAT-style source rewriting: datagrams from `real` appear to come from `seen`.
        self.rewrite: dict[Endpoint, Endpoint] = {}

    def add(self, device: Device, endpoint: Endpoint) -> Node:
        node = Node(device, endpoint)
        self.nodes[endpoint] = node
        return node

    def handle(self, node: Node, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, SendDatagram):
                node.sent.append(a.data)
                node.sent_at.append(self.clock.now)
                if node.endpoint in self.blocked or self.r.random() < self.loss:
                    continue
                delay = self.latency + (self.r.uniform(0, self.jitter) if self.jitter else 0)
                self._seq += 1
                src = self.rewrite.get(node.endpoint, node.endpoint)
                heapq.heappush(
                    self._q, (self.clock.now + delay, self._seq, a.data, src, a.endpoint)
                )
            elif isinstance(a, WriteTun):
                node.tun.append(a.packet)
            else:
                node.events.append(a)

    def inject(self, data: bytes, src: Endpoint, dst: Endpoint, delay: float = 0.0) -> None:
        self._seq += 1
        heapq.heappush(self._q, (self.clock.now + delay, self._seq, data, src, dst))

    def send(self, node: Node, packet: bytes) -> None:
        self.handle(node, node.device.send_packet(self.clock.now, self.clock.wall(), packet))

    def run_until(self, t: float) -> None:
        while True:
            nxt = self._q[0][0] if self._q else None
            for n in self.nodes.values():
                d = n.device.next_deadline()
                if d is not None and (nxt is None or d < nxt):
                    nxt = d
            if nxt is None or nxt > t:
                break
            if nxt > self.clock.now:
                self.clock.advance(nxt - self.clock.now)
            while self._q and self._q[0][0] <= self.clock.now:
                _, _, data, src, dst = heapq.heappop(self._q)
                node = self.nodes.get(dst)
                if node is None or dst in self.blocked:
                    continue
                self.delivered += 1
                self.handle(
                    node, node.device.receive(self.clock.now, self.clock.wall(), data, src)
                )
            for n in self.nodes.values():
                d = n.device.next_deadline()
                if d is not None and d <= self.clock.now:
                    self.handle(n, n.device.tick(self.clock.now, self.clock.wall()))
        if t > self.clock.now:
            self.clock.advance(t - self.clock.now)

    def run_for(self, seconds: float) -> None:
        self.run_until(self.clock.now + seconds)


A_EP: Endpoint = ("192.0.2.1", 51820)
B_EP: Endpoint = ("192.0.2.2", 51820)
A_IP = "10.0.0.1"
B_IP = "10.0.0.2"


def make_pair(
    seed: int = 1,
    loss: float = 0.0,
    jitter: float = 0.0,
    psk_a: bytes | None = None,
    psk_b: bytes | None = None,
    endpoint_b_known: bool = True,
) -> tuple[SimNet, Node, Node, Peer, Peer]:
    """Two devices A and B configured as each other's peer; A knows B's endpoint."""
    clock = ManualClock()
    net = SimNet(clock, seed=seed, loss=loss, jitter=jitter)
    ka, kb = make_key(seed * 2 + 1), make_key(seed * 2 + 2)
    da, db = Device(SeededRng(seed * 10 + 1), ka), Device(SeededRng(seed * 10 + 2), kb)
    pb = da.add_peer(kb.public_key)  # A's view of B
    pa = db.add_peer(ka.public_key)  # B's view of A
    da.set_allowed_ips(pb, [B_IP + "/32", "fd00::2/128"])
    db.set_allowed_ips(pa, [A_IP + "/32", "fd00::1/128"])
    if endpoint_b_known:
        pb.endpoint = B_EP
    if psk_a is not None:
        pb.preshared_key = psk_a
    if psk_b is not None:
        pa.preshared_key = psk_b
    a, b = net.add(da, A_EP), net.add(db, B_EP)
    return net, a, b, pb, pa
