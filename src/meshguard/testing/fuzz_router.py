"""Fuzz targets for what a router, the kernel or a LAN neighbour sends: the PCP and NAT-PMP
codecs (wire/pcp.py, wire/natpmp.py), the port-mapping client fed from the gateway's port
(nat/portmap.py), route-netlink notifications (daemon/netlink_events.py) and the answer to
the original meshguard's mDNS query (discovery/mdns_legacy.py).

    pcp          decode_map_response raises only WireFormatError
    natpmp       decode_response raises only WireFormatError
    portmap      a PortMapper waiting for a PCP answer, and one waiting for NAT-PMP answers,
                 take the datagram from the gateway and raise nothing; a grant they make is
                 usable and its lifetime within what was asked
    netlink      `relevant` raises nothing and counts at most one change per 16 bytes
    mdns_legacy  the responder raises nothing and answers with at most one TXT record more
                 than the question
"""

from __future__ import annotations

import struct

from meshguard.daemon import netlink_events as nl
from meshguard.discovery.mdns_legacy import LegacyResponder
from meshguard.errors import WireFormatError
from meshguard.nat.portmap import Method, PortMapper, usable_external
from meshguard.testing.fuzz_engine import RoundTripError, Target
from meshguard.testing.rng import SeededRng
from meshguard.wire import natpmp, pcp
from meshguard.wire.dns import build_query

GATEWAY = "192.168.1.1"
CLIENT = "192.168.1.20"
PORT = 51821
_WF = (WireFormatError,)


def _mapper(method: Method) -> tuple[PortMapper, bytes]:
    """A mapper with its request out, and the nonce it asked with (PCP)."""
    pm = PortMapper(SeededRng(3), GATEWAY, CLIENT, PORT, methods=(method,))
    pm.start(0.0)
    return pm, pm._nonce


def _pcp_seeds() -> list[bytes]:
    _, nonce = _mapper(Method.PCP)
    head = struct.pack("!BBBBII12x", 2, 0x81, 0, 0, 7200, 1000)
    body = struct.pack("!12sB3xHH16s", nonce, 17, PORT, 40000,
                       bytes(10) + b"\xff\xff" + bytes([203, 0, 113, 7]))
    refusal = struct.pack("!BBBBII12x", 2, 0x81, 0, 8, 0, 1000) + body
    return [head + body, refusal, head + body + bytes(8), bytes([0, 0x81, 0, 1]) + bytes(4)]


def _natpmp_seeds() -> list[bytes]:
    return [struct.pack("!BBHI4s", 0, 128, 0, 1000, bytes([203, 0, 113, 7])),
            struct.pack("!BBHIHHI", 0, 129, 0, 1000, PORT, 40000, 7200),
            struct.pack("!BBHI", 0, 129, 2, 1000)]


def _portmap(data: bytes) -> None:
    for method in (Method.PCP, Method.NATPMP):
        pm, _ = _mapper(method)
        pm.receive(0.1, 0.1, data, (GATEWAY, 5351))
        m = pm.mapping
        if m is not None and (not usable_external(m.external[0])
                              or not 0 < m.lifetime <= pm.lifetime):
            raise RoundTripError(f"unusable grant {m}")


def _netlink(data: bytes) -> None:
    n = nl.relevant(data, 9)
    if n > len(data) // nl.NLMSG_HDR.size:
        raise RoundTripError("more changes than messages")


def _netlink_seeds() -> list[bytes]:
    def msg(kind: int, body: bytes) -> bytes:
        return nl.NLMSG_HDR.pack(nl.NLMSG_HDR.size + len(body), kind, 0, 0, 0) + body
    route = bytes([2, 0, 0, 0, 254, 3, 0, 1]) + bytes(4) + struct.pack("=HHi", 8, nl.RTA_OIF, 3)
    return [msg(nl.RTM_NEWADDR, struct.pack("=BBBBI", 2, 24, 0, 0, 3) + bytes(8)),
            msg(nl.RTM_NEWLINK, nl.IFINFO.pack(0, 1, 9, 0, 0)),
            msg(nl.RTM_NEWROUTE, route) + msg(nl.RTM_DELROUTE, route)]


_LEGACY_SEED = build_query(0, "_meshguard._udp.local", 16)


def _mdns_legacy(data: bytes) -> None:
    r = LegacyResponder(["meshguard=10.210.0.1:51821"])
    out = r.answer(0.0, data, ("10.210.0.7", 40000), True)
    if out is not None and len(out) > len(_LEGACY_SEED) + 64:
        raise RoundTripError(f"a {len(data)}-byte query drew {len(out)} bytes")


def router_targets() -> list[Target]:
    return [Target("pcp", _pcp_seeds(), pcp.decode_map_response, _WF, max_len=1200),
            Target("natpmp", _natpmp_seeds(), natpmp.decode_response, _WF, max_len=64),
            Target("portmap", _pcp_seeds() + _natpmp_seeds(), _portmap, max_len=1200),
            Target("netlink", _netlink_seeds(), _netlink, max_len=512),
            Target("mdns_legacy", [_LEGACY_SEED], _mdns_legacy, max_len=600)]


__all__ = ["router_targets"]
