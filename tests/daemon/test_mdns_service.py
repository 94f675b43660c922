"""The original meshguard's mDNS seed query is answered only on the interfaces the daemon
advertises on (daemon/mdns_service.py LegacyAnswerer), on the host's loopback, without a
namespace: a query to the group on an interface where some other program (a system mDNS
responder) joined the group draws nothing."""

from __future__ import annotations

import asyncio
import socket

from meshguard.clock import SystemClock
from meshguard.daemon.mdns_service import LegacyAnswerer
from meshguard.discovery.mdns_legacy import MDNS_GROUP, MDNS_PORT
from meshguard.wire.dns import build_query

LOOPBACK = "127.0.0.1"


def _join(sock: socket.socket, iface: str) -> None:
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                    socket.inet_aton(MDNS_GROUP) + socket.inet_aton(iface))


async def _ask(hosts: list[str]) -> tuple[bytes | None, dict[str, int]]:
    """Another socket joins the group on loopback; the answerer joins on `hosts`; a querier
    sends the original's query to the group over loopback."""
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    q = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    la = None
    try:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        other.bind((MDNS_GROUP, MDNS_PORT))
        _join(other, LOOPBACK)
        la = LegacyAnswerer(SystemClock(), hosts, ["meshguard=10.210.0.1:51821"])
        q.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(LOOPBACK))
        q.bind((LOOPBACK, 0))
        q.setblocking(False)
        q.sendto(build_query(0, "_meshguard._udp.local", 16), (MDNS_GROUP, MDNS_PORT))
        answer = None
        for _ in range(40):
            await asyncio.sleep(0.01)
            try:
                answer = q.recv(2048)
                break
            except BlockingIOError:
                continue
        return answer, dict(la.responder.counters)
    finally:
        if la is not None:
            la.close()
        other.close()
        q.close()


def test_a_query_on_an_interface_not_advertised_on_draws_nothing() -> None:
    answer, counters = asyncio.run(_ask([]))
    assert answer is None
    assert counters["mdns_legacy_answered"] == 0


def test_a_query_on_an_advertised_interface_is_answered() -> None:
    answer, counters = asyncio.run(_ask([LOOPBACK]))
    assert answer is not None and b"meshguard=10.210.0.1:51821" in answer
    assert counters["mdns_legacy_answered"] == 1
