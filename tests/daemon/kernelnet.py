"""The kernel-mode world at the message level (test_kernel_punch.py): two kernel-mode daemons
A and B behind NATs and a public member R (rendezvous and relay), without a WireGuard module.

Each kernel side is a real `MeshDaemon` in kernel mode with its real `KernelRunner` and
`KernelPaths`, and a real `MeshNode` with the kernel-mode hole puncher and a relay core; only
the kernel device is recorded (every WG_CMD_SET_DEVICE message, decoded back) and the gossip
socket is a recorder. The kernel's own WireGuard port is a real loopback UDP socket
(`kernel_port`), so the relay proxy's sockets are exercised for real. R is a `MeshNode` whose
hole puncher forwards stage 0 and whose relay core forwards RelayData. Datagrams are carried
between the three by `World.run` (no NAT is simulated: what crosses NATs is the kernel's
business here, and the kernel's answers are given as statistics with `World.kernel_says`).
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshguard.crypto.keys import Ed25519PrivateKey, X25519PrivateKey
from meshguard.daemon.gossip_socket import GossipSocket
from meshguard.daemon.kernel_paths import KernelPaths
from meshguard.daemon.kernel_runner import KernelRunner
from meshguard.daemon.kernel_wg import KernelPeerStats
from meshguard.daemon.mesh_daemon import KERNEL_PUNCH_TIMEOUT, DaemonConfig, MeshDaemon
from meshguard.identity.trust import Admission
from meshguard.mesh.actions import MemberView
from meshguard.mesh.node import MeshNode
from meshguard.nat.holepunch import HolePuncher
from meshguard.nat.relay import Relay
from meshguard.sansio import Endpoint, SendDatagram
from meshguard.testing.clock import ManualClock
from meshguard.testing.rng import SeededRng

from .helpers import RecordingKernel

CONE = 2
PUBLIC = 1
R_EP = ("198.51.100.10", 51821)


@dataclass
class StaticMembership:
    """The members as SWIM would report them (a fixed view: membership is not under test)."""

    view: dict[bytes, MemberView] = field(default_factory=dict)

    def receive(self, now: float, wall: float, data: bytes, src: Endpoint) -> list[Any]:
        return []

    def tick(self, now: float, wall: float) -> list[Any]:
        return []

    def next_deadline(self) -> float | None:
        return None

    def leave(self, now: float, wall: float) -> list[Any]:
        return []

    def members(self) -> Iterable[MemberView]:
        return list(self.view.values())

    def absorb(self, actions: Sequence[Any]) -> tuple[list[Any], bool]:
        return list(actions), False


@dataclass
class TrustAll:
    keys: set[bytes] = field(default_factory=set)

    def admit(self, node_key: bytes, certificate: bytes | None, now_wall: float) -> Admission:
        return Admission(node_key in self.keys, "", name="n")


class RecordingGossip(GossipSocket):
    """The gossip socket: what it would send is kept, in order."""

    def __init__(self) -> None:
        self.sent: list[SendDatagram] = []
        self.node = None
        # a socket nobody sends to: only for the event loop's reader
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))

    def send(self, actions: list[Any]) -> list[Any]:
        other = []
        for a in actions:
            if isinstance(a, SendDatagram):
                self.sent.append(a)
            else:
                other.append(a)
        return other


@dataclass
class KernelSide:
    name: str
    key: Ed25519PrivateKey
    wg: X25519PrivateKey
    host: str
    daemon: MeshDaemon
    runner: KernelRunner
    node: MeshNode
    kernel: RecordingKernel
    gossip: RecordingGossip
    kernel_sock: socket.socket  # stands in for the kernel's WireGuard port on 127.0.0.1

    @property
    def ident(self) -> bytes:
        return self.key.public_key.raw

    @property
    def wg_key(self) -> bytes:
        return self.wg.public_key.raw

    @property
    def gossip_ep(self) -> Endpoint:
        return (self.host, 51822)

    @property
    def wg_ep(self) -> Endpoint:
        return (self.host, 51821)

    @property
    def paths(self) -> KernelPaths:
        assert self.runner.paths is not None
        return self.runner.paths

    def view(self) -> MemberView:
        return MemberView(self.ident, self.wg_key, self.wg_ep, self.gossip_ep, None, "alive",
                          1, CONE, (self.gossip_ep,))

    def updates_for(self, wg_key: bytes) -> list[tuple[Endpoint | None, int | None]]:
        return [(u.endpoint, u.keepalive) for u in self.kernel.updates if u.wg_key == wg_key]


@dataclass
class Rendezvous:
    key: Ed25519PrivateKey
    wg: X25519PrivateKey
    node: MeshNode

    @property
    def ident(self) -> bytes:
        return self.key.public_key.raw

    def view(self) -> MemberView:
        return MemberView(self.ident, self.wg.public_key.raw, R_EP, R_EP, None, "alive", 1,
                          PUBLIC, (R_EP,))


class World:
    def __init__(self, tmp: Path) -> None:
        self.clock = ManualClock()
        self.tmp = tmp
        rkey, rwg = Ed25519PrivateKey(b"\x50" * 32), X25519PrivateKey(b"\x51" * 32)
        self.r = Rendezvous(rkey, rwg, MeshNode(
            rkey.public_key.raw, rwg.public_key.raw, StaticMembership(), TrustAll(),
            holepunch=HolePuncher(rkey, SeededRng(50)),
            relay=Relay(rkey.public_key.raw, rwg, cookie_secret=b"\x52" * 32)))
        self.a = self._side("a", 0x61, "203.0.113.1")
        self.b = self._side("b", 0x62, "203.0.113.2")
        views = [self.a.view(), self.b.view(), self.r.view()]
        for n in (self.a.node, self.b.node, self.r.node):
            ms = n.membership
            assert isinstance(ms, StaticMembership)
            ms.view = {v.identity_key: v for v in views if v.identity_key != n.identity_key}
            tr = n.trust
            assert isinstance(tr, TrustAll)
            tr.keys = {v.identity_key for v in views}
        self.r.node.reconcile(self.clock.wall())
        for s in (self.a, self.b):
            s.runner._dispatch(s.node.reconcile(self.clock.wall()))
        self.tap: list[tuple[str, SendDatagram]] = []  # every datagram carried, by sender
        self._r_out: list[SendDatagram] = []

    def _side(self, name: str, seed: int, host: str) -> KernelSide:
        ks = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        ks.bind(("127.0.0.1", 0))
        ks.settimeout(2.0)
        port = ks.getsockname()[1]
        d = MeshDaemon(DaemonConfig(f"mgk-{name}", port, [], kernel=True,
                                    run_dir=self.tmp / name, config_dir=self.tmp / name,
                                    env={}), clock=self.clock)
        runner = d.runner
        assert isinstance(runner, KernelRunner)
        key, wg = Ed25519PrivateKey(bytes([seed]) * 32), X25519PrivateKey(bytes([seed + 1]) * 32)
        node = MeshNode(key.public_key.raw, wg.public_key.raw, StaticMembership(), TrustAll(),
                        holepunch=HolePuncher(key, SeededRng(seed), probe=False,
                                              timeout=KERNEL_PUNCH_TIMEOUT),
                        relay=Relay(key.public_key.raw, wg, cookie_secret=bytes([seed]) * 32))
        assert node.holepunch is not None and node.relay is not None
        node.holepunch.set_self(((host, 51822),), behind_nat=True)
        node.relay.behind_nat = True
        d.node = node
        kernel, gossip = RecordingKernel("mgk-punch"), RecordingGossip()
        runner.kernel, runner.gossip, runner.node = kernel, gossip, node
        runner.paths = KernelPaths(node, port, self.clock, runner._apply_peers, runner._send)
        return KernelSide(name, key, wg, host, d, runner, node, kernel, gossip, ks)

    def close(self) -> None:
        for s in (self.a, self.b):
            s.paths.close()
            s.kernel_sock.close()
            s.gossip.close()

    # driving ---------------------------------------------------------------------------------

    @property
    def now(self) -> float:
        return self.clock.monotonic()

    @property
    def wall(self) -> float:
        return self.clock.wall()

    def tick(self, *sides: KernelSide) -> None:
        for s in sides:
            s.runner._dispatch(s.node.tick(self.now, self.wall))

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def run(self, drop: set[str] | None = None) -> int:
        """Carry every datagram sent so far (and those sent in reply) to its receiver;
        datagrams whose sender is in `drop` are lost. Returns how many were carried."""
        n = 0
        by_ep = {self.a.gossip_ep: self.a, self.b.gossip_ep: self.b}
        for _ in range(100):
            pending: list[tuple[str, SendDatagram]] = []
            for s in (self.a, self.b):
                pending += [(s.name, d) for d in s.gossip.sent]
                s.gossip.sent.clear()
            pending += [("r", d) for d in self._r_out]
            self._r_out = []
            if not pending:
                return n
            for sender, d in pending:
                self.tap.append((sender, d))
                if drop is not None and sender in drop:
                    continue
                src = R_EP if sender == "r" else self.side(sender).gossip_ep
                n += 1
                if d.endpoint == R_EP:
                    acts = self.r.node.receive(self.now, self.wall, d.data, src)
                    self._r_out += [a for a in acts if isinstance(a, SendDatagram)]
                elif d.endpoint in by_ep:
                    side = by_ep[d.endpoint]
                    side.runner._dispatch(side.node.receive(self.now, self.wall, d.data, src))
        raise AssertionError("datagrams never stopped")

    def kernel_says(self, side: KernelSide, peer: KernelSide, handshake: float, rx: int,
                    endpoint: Endpoint | None) -> None:
        """One poll of `side`'s kernel: its statistics of the peer `peer`."""
        st = KernelPeerStats(peer.wg_key, endpoint, handshake, rx, 0)
        side.runner._dispatch(side.paths.observe([st]))

    def relay_ready(self) -> None:
        """Both kernel sides register with R (its echo gives them an RTT to choose it by)."""
        self.tick(self.a, self.b)
        self.run()

    def side(self, name: str) -> KernelSide:
        return self.a if name == "a" else self.b
