"""The userspace mesh wiring without namespaces: two Engines on loopback UDP, each with a real
MeshNode (SWIM membership, trust) and a real Device behind the typed ports of
mesh/engine_ports.py, connected as the daemon does it (daemon/engine_wiring.py), SOCK_SEQPACKET
pairs standing in for the TUNs.

A join, a handshake and transport data go through the engines' seams and sockets; gossip
reaches the membership; split-port sends leave from the right socket; a relayed peer's packets
take the slow path. Conditions are awaited with deadlines (no sleeps).
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from meshguard.crypto.keys import Ed25519PrivateKey, X25519PrivateKey
from meshguard.daemon.engine_wiring import connect_mesh
from meshguard.dataplane.engine import Engine
from meshguard.identity.addressing import mesh_ipv4
from meshguard.identity.trust import Admission
from meshguard.mesh.demux import Kind, classify
from meshguard.mesh.engine_ports import MeshFastPath, MeshSlowPath, SplitPortRouter
from meshguard.mesh.node import MeshNode, PeerUp
from meshguard.mesh.swim_port import build_membership
from meshguard.mesh.wg_backend import DeviceBackend
from meshguard.nat.relay import RELAY_HOST
from meshguard.sansio import SendDatagram
from meshguard.testing.rng import SeededRng
from meshguard.wireguard.device import Device

from .helpers import FakeTun
from .helpers import until as wait_until

DEADLINE = 20.0
LOOPBACK = "127.0.0.1"


@dataclass
class Trust:
    keys: set[bytes] = field(default_factory=set)

    def admit(self, node_key: bytes, certificate: bytes | None, now_wall: float
              ) -> Admission:
        return Admission(bytes(node_key) in self.keys, "")


class End:
    """One userspace mesh node: Device + MeshNode behind an Engine, as the daemon wires it."""

    def __init__(self, seed: int, loop: asyncio.AbstractEventLoop) -> None:
        rng = SeededRng(seed)
        self.ident = Ed25519PrivateKey(rng.bytes(32))
        self.wg = X25519PrivateKey.generate(rng.bytes(32))
        self.device = Device(rng, self.wg)
        self.tun = FakeTun()
        self.events: list[object] = []
        self.engine = Engine(self.device, self.tun.engine_fd, on_actions=self.events.extend)
        self.port = self.engine.bind(0)
        self.trust = Trust()
        c = self.engine.clock
        self.membership = build_membership(
            identity=self.ident, wg_private=self.wg, certificate=None,
            endpoints=[(LOOPBACK, self.port)], kernel=False, admitter=self.trust, rng=rng,
            now=c.monotonic(), wall=c.wall())
        self.node = MeshNode(self.ident.public_key.raw, self.wg.public_key.raw,
                             self.membership, self.trust, device=self.device,
                             backend=DeviceBackend(self.device))
        connect_mesh(self.engine, self.node, self.device, split_port=False,
                     send_gossip=self.unexpected)
        assert isinstance(self.engine.fast, MeshFastPath)
        assert isinstance(self.engine.slow, MeshSlowPath)
        self.fast, self.slow = self.engine.fast, self.engine.slow
        self.loop = loop
        loop.add_reader(self.tun.peer.fileno(), self.tun.drain)
        self.engine.start(loop)

    def unexpected(self, grams: list[SendDatagram]) -> None:
        raise AssertionError(f"a send router with one port: {grams}")

    @property
    def key(self) -> bytes:
        return self.ident.public_key.raw

    def close(self) -> None:
        self.loop.remove_reader(self.tun.peer.fileno())
        self.engine.close()
        self.tun.close()


def ip_packet(src_key: bytes, dst_key: bytes, payload: bytes) -> bytes:
    total = 20 + len(payload)
    return (struct.pack("!BBHHHBBH", 0x45, 0, total, 0, 0, 64, 17, 0)
            + mesh_ipv4(src_key).packed + mesh_ipv4(dst_key).packed + payload)


def until(pred: Callable[[], bool], what: str) -> Awaitable[None]:
    return wait_until(pred, what, DEADLINE)  # joins and handshakes: a longer deadline


def run(body: Callable[[End, End], Awaitable[None]]) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        a, b = End(1, loop), End(2, loop)
        a.trust.keys.add(b.key)
        b.trust.keys.add(a.key)
        try:
            await body(a, b)
        finally:
            a.close()
            b.close()

    asyncio.run(main())


async def joined(a: End, b: End) -> None:
    """b joins through a; both see the other come up as a WireGuard peer."""
    c = b.engine.clock
    b.engine.execute(b.membership.join_actions([(LOOPBACK, a.port)], c.monotonic(), c.wall()))
    b.engine.kick()
    await until(lambda: any(isinstance(e, PeerUp) for e in a.events)
                and any(isinstance(e, PeerUp) for e in b.events), "both peers up")


def test_join_handshake_and_transport_reach_the_tun() -> None:
    async def body(a: End, b: End) -> None:
        await joined(a, b)
        assert a.node.counters["gossip_rx"] > 0 and b.node.counters["gossip_rx"] > 0
        pkt = ip_packet(a.key, b.key, b"over the mesh")
        a.engine.tun_packets_in([pkt])  # no session yet: staged, a handshake starts
        await until(lambda: pkt in b.tun.received, "the packet at b's TUN")
        assert a.device.counters.handshakes_completed == 1
        assert b.node.counters["wireguard_rx"] >= 1  # the initiation, through the node
        back = ip_packet(b.key, a.key, b"and back")
        b.engine.tun_packets_in([back])  # the session exists: the fast path seals it
        await until(lambda: back in a.tun.received, "the answer at a's TUN")
        for end in (a, b):
            assert end.device.counters.dropped() == 0, end.device.counters
            assert end.engine.stats.internal_errors == 0

    run(body)


def test_gossip_through_the_engine_goes_to_the_membership() -> None:
    async def body(a: End, b: End) -> None:
        await joined(a, b)
        before = a.node.counters["gossip_rx"], a.device.counters.bad_type
        gossip = b.membership.join_actions([(LOOPBACK, a.port)], 0.0, 0.0)
        grams = [(x.data, (LOOPBACK, b.port)) for x in gossip if isinstance(x, SendDatagram)]
        assert grams and all(classify(d) is Kind.GOSSIP for d, _ in grams)
        a.engine.datagrams_in(grams)
        assert a.node.counters["gossip_rx"] == before[0] + len(grams)
        assert a.device.counters.bad_type == before[1]  # never offered to WireGuard

    run(body)


def test_relayed_peer_takes_the_slow_path() -> None:
    async def body(a: End, b: End) -> None:
        await joined(a, b)
        pkt = ip_packet(a.key, b.key, b"first")
        a.engine.tun_packets_in([pkt])
        await until(lambda: pkt in b.tun.received, "the session")
        peer = a.device.peer(b.wg.public_key)
        assert peer is not None
        now = a.engine.clock.monotonic()
        assert a.fast.prepare_send_peer(now, peer) is not None
        peer.endpoint = (RELAY_HOST, 1)  # as nat.relay addresses a relayed peer
        assert a.fast.prepare_send_peer(now, peer) is None
        seen: list[bytes] = []
        send_packet = a.slow.send_packet

        def spy(now: float, wall: float, ip: bytes) -> list[object]:
            seen.append(ip)
            return list(send_packet(now, wall, ip))

        a.slow.send_packet = spy
        relayed = ip_packet(a.key, b.key, b"via the relay")
        a.engine.tun_packets_in([relayed])
        assert seen == [relayed]

    run(body)


def test_split_port_sends_wireguard_from_the_engine_and_the_rest_elsewhere() -> None:
    async def body(a: End, b: End) -> None:
        gossip_socket: list[SendDatagram] = []
        a.engine.close()
        split = Engine(a.device, -1)
        split.bind(0)
        connect_mesh(split, a.node, a.device, split_port=True, send_gossip=gossip_socket.extend)
        assert isinstance(split.router, SplitPortRouter)
        initiation = b"\x01\x00\x00\x00" + bytes(144)
        gossip = b.membership.join_actions([(LOOPBACK, a.port)], 0.0, 0.0)
        ping = next(x.data for x in gossip if isinstance(x, SendDatagram))
        dst = (LOOPBACK, b.port)
        tx = split.stats.udp_tx
        split.send_datagrams([(initiation, dst), (ping, dst)])
        assert split.stats.udp_tx == tx + 1  # the WireGuard message, from the engine's port
        assert gossip_socket == [SendDatagram(ping, dst)]
        # gossip arriving on the WireGuard-only port is garbage, as for a kernel device
        garbage, gossip_rx = a.node.counters["garbage_dropped"], a.node.counters["gossip_rx"]
        split.datagrams_in([(ping, dst)])
        assert a.node.counters["garbage_dropped"] == garbage + 1
        assert a.node.counters["gossip_rx"] == gossip_rx
        wg_rx = a.node.counters["wireguard_rx"]
        split.datagrams_in([(initiation, dst)])
        assert a.node.counters["wireguard_rx"] == wg_rx + 1
        split.close()

    run(body)
