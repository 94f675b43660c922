"""The roaming shell without root: route-netlink notifications are parsed and filtered
(daemon/netlink_events.py), and the watch (daemon/underlay_watch.py) with an injected address
source notices a change, logs it once and re-signs the node's record."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Sequence

import pytest

from meshguard.clock import SystemClock
from meshguard.crypto.keys import Ed25519PrivateKey, X25519PrivateKey
from meshguard.daemon.netlink_events import (
    NLMSG_HDR,
    RTM_DELADDR,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWROUTE,
    NetlinkEvents,
    relevant,
)
from meshguard.daemon.underlay_watch import UnderlayWatch, seed_probe
from meshguard.discovery.seed_schedule import HOST, SeedSchedule, SeedSource
from meshguard.identity.trust import Admission
from meshguard.mesh.node import MeshNode
from meshguard.mesh.roaming import Roaming, UnderlayChanged
from meshguard.mesh.swim_port import SwimPort, build_membership
from meshguard.sansio import Endpoint
from meshguard.testing.rng import SeededRng

MESH_INDEX = 9


def nlmsg(kind: int, body: bytes) -> bytes:
    return NLMSG_HDR.pack(NLMSG_HDR.size + len(body), kind, 0, 0, 0) + body


def addr_msg(kind: int, index: int) -> bytes:
    return nlmsg(kind, struct.pack("=BBBBI", 2, 24, 0, 0, index) + bytes(8))


def route_msg(oif: int | None) -> bytes:
    attrs = b"" if oif is None else struct.pack("=HHi", 8, 4, oif)
    return nlmsg(RTM_NEWROUTE, bytes([2, 0, 0, 0, 254, 3, 0, 1]) + bytes(4) + attrs)


def test_changes_of_other_interfaces_count_and_the_mesh_interface_is_ignored() -> None:
    assert relevant(addr_msg(RTM_NEWADDR, 3), MESH_INDEX) == 1
    assert relevant(addr_msg(RTM_DELADDR, MESH_INDEX), MESH_INDEX) == 0
    link = nlmsg(RTM_NEWLINK, struct.pack("=BxHiII", 0, 1, MESH_INDEX, 0, 0))
    assert relevant(link, MESH_INDEX) == 0
    assert relevant(route_msg(3) + route_msg(MESH_INDEX) + route_msg(None), MESH_INDEX) == 2
    batch = addr_msg(RTM_DELADDR, 3) + addr_msg(RTM_NEWADDR, 3) + route_msg(3)
    assert relevant(batch, None) == 3
    assert relevant(nlmsg(3, b""), None) == 0  # NLMSG_DONE and the like


@pytest.mark.parametrize("junk", [b"", b"\x00" * 7, NLMSG_HDR.pack(4, 20, 0, 0, 0),
                                  NLMSG_HDR.pack(9999, 20, 0, 0, 0) + b"x",
                                  nlmsg(RTM_NEWADDR, b"\x02"),
                                  nlmsg(RTM_NEWROUTE, bytes(12) + struct.pack("=HH", 2, 4)),
                                  # an RTA_OIF whose length runs past the message
                                  nlmsg(RTM_NEWROUTE, bytes(12) + struct.pack("=HH", 8, 4)
                                        + b"\x01\x00")])
def test_malformed_notifications_never_raise(junk: bytes) -> None:
    assert relevant(junk, MESH_INDEX) in (0, 1)


def test_the_netlink_socket_opens_and_drains() -> None:
    ev = NetlinkEvents.open("lo")
    try:
        assert ev.ignore_index == 1
        assert ev.drain() >= 0
    finally:
        ev.close()


class _Trust:
    def admit(self, node_key: bytes, certificate: bytes | None, now_wall: float) -> Admission:
        return Admission(False, "nobody")


def lone_node(rng: SeededRng, clock: SystemClock) -> tuple[MeshNode, SwimPort]:
    """A node alone, at 192.168.1.20:51821."""
    ident = Ed25519PrivateKey(rng.bytes(32))
    wg = X25519PrivateKey.generate(rng.bytes(32))
    port = build_membership(identity=ident, wg_private=wg, certificate=None,
                            endpoints=[("192.168.1.20", 51821)], kernel=False,
                            admitter=_Trust(), rng=rng, now=clock.monotonic(),
                            wall=clock.wall())
    return MeshNode(ident.public_key.raw, wg.public_key.raw, port, _Trust()), port


def test_the_watch_notices_a_change_and_re_signs_the_record(
        caplog: pytest.LogCaptureFixture) -> None:
    rng = SeededRng(3)
    clock = SystemClock()
    node, port = lone_node(rng, clock)
    answers = [["192.168.1.20"], ["192.168.1.20"], [], ["10.44.0.7"]]
    looks: list[int] = []

    def probe() -> list[str]:
        looks.append(1)
        return answers[min(len(looks) - 1, len(answers) - 1)]

    roaming = Roaming(hosts=("192.168.1.20",), port=51821, now=clock.monotonic(),
                      recheck=0.02, counters=node.counters)
    executed: list[object] = []
    inc = port.core.incarnation

    async def run() -> None:
        watch = UnderlayWatch(roaming, node, port, probe, clock, rng, [], executed.extend)
        async with contextlib.AsyncExitStack() as stack:
            watch.start(asyncio.get_running_loop(), stack)
            for _ in range(200):
                if node.counters["underlay_changes"]:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)  # further looks find nothing new

    with caplog.at_level(logging.INFO, logger="meshguard.daemon"):
        asyncio.run(run())
    assert node.counters["underlay_changes"] == 1
    assert node.counters["underlay_lost"] == 1
    assert port.core.record.endpoints == (("10.44.0.7", 51821),)
    assert port.core.incarnation > inc
    lines = [r.getMessage() for r in caplog.records if "underlay" in r.getMessage()]
    assert lines == ["underlay address changed: 192.168.1.20 -> 10.44.0.7; re-announcing"]
    assert len(looks) >= 4


def test_the_look_goes_towards_the_seeds_the_runner_holds_now() -> None:
    # a seed name resolved elsewhere after start-up: the look asks the route towards the new
    # address, so the node's source towards it is the one advertised
    schedule = SeedSchedule([SeedSource(HOST, "seed.example:51821", "seed.example", 51821)],
                            0.0, 1_700_000_000.0)
    src = schedule.sources[0]
    schedule.resolved(0.0, 1_700_000_000.0, src, [("198.51.100.1", 51821)])
    routes = {"198.51.100.1": "192.168.1.20", "203.0.113.9": "10.44.0.7"}
    asked: list[list[str]] = []

    def hosts(seeds: Sequence[Endpoint], _ifname: str) -> list[str]:
        asked.append([h for h, _ in seeds])
        return [routes[h] for h, _ in seeds if h in routes]

    probe = seed_probe(schedule.addresses, "mg0", hosts)
    roaming = Roaming(hosts=("192.168.1.20",), port=51821, now=0.0)
    assert roaming.observed(1.0, probe()) == []
    schedule.resolved(2.0, 1_700_000_002.0, src, [("203.0.113.9", 51821)])
    acts = roaming.observed(3.0, probe())
    assert asked == [["198.51.100.1"], ["203.0.113.9"]]
    assert UnderlayChanged(("192.168.1.20",), ("10.44.0.7",)) in acts


def test_the_hooks_hear_of_a_change_and_a_failing_one_stops_nothing() -> None:
    rng = SeededRng(4)
    clock = SystemClock()
    node, port = lone_node(rng, clock)
    roaming = Roaming(hosts=("192.168.1.20",), port=51821, now=clock.monotonic())
    watch = UnderlayWatch(roaming, node, port, None, clock, rng, [], lambda _a: None)
    heard: list[tuple[tuple[str, ...], tuple[str, ...]]] = []

    def broken(_old: tuple[str, ...], _new: tuple[str, ...]) -> None:
        raise RuntimeError("no")

    watch.on_moved += [broken, lambda old, new: heard.append((old, new))]
    asyncio.run(watch.handle(roaming.observed(clock.monotonic(), ["10.44.0.7"])))
    assert heard == [(("192.168.1.20",), ("10.44.0.7",))]
    assert port.core.record.endpoints == (("10.44.0.7", 51821),)
    asyncio.run(watch.handle(roaming.observed(clock.monotonic(), ["10.44.0.7"])))
    assert len(heard) == 1  # no change, no call
