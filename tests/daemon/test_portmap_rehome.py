"""The port mapping after an underlay change (daemon/portmap_rehome.py), without root: two
NAT-PMP gateways on loopback addresses (replies laid out by hand as RFC 6886 says), the
default gateway and the route source injected. A new gateway gets a new request; the old
mapping is deleted when its gateway is still reachable from its address, forgotten (nothing
sent) when not, and kept when nothing it depends on changed."""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import cast

from meshguard.clock import SystemClock
from meshguard.daemon.portmap_rehome import OldMapping, PortmapHolder, old_mapping
from meshguard.daemon.portmap_task import start_portmap
from meshguard.nat.portmap import Method, PortmapAction
from meshguard.testing.rng import SeededRng

from .helpers import until

PORT = 51821
GW_A, GW_B = "127.0.0.2", "127.0.0.3"


class Gateway(asyncio.DatagramProtocol):
    """A NAT-PMP server: the external address, and every map request granted (or deleted)."""

    def __init__(self, external: str, port: int) -> None:
        self.external, self.port = external, port
        self.maps: list[int] = []  # the lifetime of every map request, 0 a deletion
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        assert self.transport is not None
        if data == b"\x00\x00":
            reply = struct.pack("!BBHI4s", 0, 128, 0, 5, socket.inet_aton(self.external))
        else:
            _, _, _, internal, _, life = struct.unpack("!BBHHHI", data)
            self.maps.append(life)
            reply = struct.pack("!BBHIHHI", 0, 129, 0, 5, internal,
                                self.port if life else 0, life)
        self.transport.sendto(reply, addr)


async def gateway(host: str, external: str, port: int) -> Gateway:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_datagram_endpoint(lambda: Gateway(external, port),
                                                   local_addr=(host, 5351))
    return proto



def test_the_fate_of_the_old_mapping() -> None:
    old = (GW_A, "192.168.1.20")
    assert old_mapping(old, old, "192.168.1.20") is OldMapping.KEEP
    # the default route moved to LTE, Wi-Fi still up: the old router can hear a deletion
    assert old_mapping(old, ("10.64.0.1", "10.64.0.9"), "192.168.1.20") is OldMapping.DELETE
    # a new LAN address behind the same router: the old address is gone, so is its mapping
    assert old_mapping(old, (GW_A, "192.168.1.31"), "192.168.1.31") is OldMapping.FORGET
    assert old_mapping(old, (None, None), None) is OldMapping.FORGET


def run_move(old_reachable: bool, new_gateway: str = GW_B
             ) -> tuple[OldMapping | None, Gateway, Gateway, tuple[str, tuple[str, int]], int]:
    where = {"gw": GW_A, "moved": False}
    gone: list[int] = []
    now: list[tuple[str, tuple[str, int]]] = []

    def gateway_of() -> str | None:
        return where["gw"] if isinstance(where["gw"], str) else None

    def source_of(dest: str) -> str | None:
        if where["moved"] and dest == GW_A and not old_reachable and new_gateway != GW_A:
            return None  # the old link is down
        return "127.0.0.1"

    async def run() -> tuple[OldMapping | None, Gateway, Gateway, PortmapHolder]:
        a = await gateway(GW_A, "198.18.0.1", 40001)
        b = await gateway(GW_B, "198.18.0.2", 40002)
        events: list[PortmapAction] = []
        holder = PortmapHolder(
            lambda: start_portmap(PORT, (Method.NATPMP,), SeededRng(1), SystemClock(),
                                  events.extend, gateway_of=gateway_of, source_of=source_of),
            gateway_of=gateway_of, source_of=source_of, gone=lambda: gone.append(1))
        try:
            await holder.open()
            await until(lambda: holder.task is not None and holder.task.mapper.mapping is not None)
            where["gw"], where["moved"] = new_gateway, True
            fate = await holder.follow()
            if fate is not OldMapping.KEEP:
                await until(lambda: holder.task is not None
                            and holder.task.mapper.mapping is not None)
            await asyncio.sleep(0.05)
            assert holder.task is not None and holder.task.mapper.mapping is not None
            now.append((holder.task.mapper.gateway, holder.task.mapper.mapping.external))
            return fate, a, b, holder
        finally:
            await holder.close()
            for g in (a, b):
                assert g.transport is not None
                g.transport.close()

    fate, a, b, _ = asyncio.run(run())
    return fate, a, b, now[0], len(gone)


def test_a_new_gateway_gets_a_new_mapping_and_the_old_one_is_deleted() -> None:
    fate, a, b, now, gone = run_move(old_reachable=True)
    assert fate is OldMapping.DELETE
    assert a.maps == [7200, 0]  # granted, then deleted
    assert b.maps == [7200, 0]  # granted, then deleted at close
    assert now == (GW_B, ("198.18.0.2", 40002))
    assert gone == 1


def test_an_unreachable_old_gateway_is_forgotten() -> None:
    fate, a, b, now, gone = run_move(old_reachable=False)
    assert fate is OldMapping.FORGET
    assert a.maps == [7200]  # nothing more went to the old router
    assert b.maps == [7200, 0]
    assert now == (GW_B, ("198.18.0.2", 40002))
    assert gone == 1


def test_the_same_gateway_and_address_keep_the_mapping() -> None:
    fate, a, b, now, gone = run_move(old_reachable=True, new_gateway=GW_A)
    assert fate is OldMapping.KEEP
    assert now == (GW_A, ("198.18.0.1", 40001))
    assert b.maps == []
    assert a.maps == [7200, 0]  # the one request, and the deletion at close
    assert gone == 0


def test_a_gateway_that_appears_is_asked() -> None:
    later = GW_A
    where: dict[str, str | None] = {"gw": None}

    async def run() -> tuple[Gateway, PortmapHolder]:
        a = await gateway(GW_A, "198.18.0.1", 40001)
        holder = PortmapHolder(
            lambda: start_portmap(PORT, (Method.NATPMP,), SeededRng(1), SystemClock(),
                                  lambda _e: None, gateway_of=lambda: where["gw"],
                                  source_of=lambda _d: "127.0.0.1"),
            gateway_of=lambda: where["gw"], source_of=lambda _d: "127.0.0.1")
        try:
            await holder.open()
            assert holder.task is None  # no gateway: a public host
            where["gw"] = later
            holder.moved()
            await until(lambda: holder.task is not None and holder.task.mapper.mapping is not None)
            return a, holder
        finally:
            await holder.close()
            assert a.transport is not None
            a.transport.close()

    a, _ = asyncio.run(run())
    assert a.maps == [7200, 0]
