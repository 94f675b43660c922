"""Fuzz target for the policy filter (dataplane/policy_filter.py and its C twin in
dataplane/_fastpath_policy.c).

    policy_filter   the input is op(u8) then an IP packet: op bit 0 tracks the packet first
                    (as read from the TUN), bit 1 judges it reversed (addresses and ports
                    swapped: a reply), bits 2-3 pick one of four tables; the Python filter and
                    the C filter (when built) must give the same verdict and counter, and the
                    same counts, and never raise

Seeds are TCP, UDP, ICMP and other packets over IPv4 and IPv6, with IPv6 extension headers
and fragments.
"""

from __future__ import annotations

import struct

from meshguard.dataplane import fastpath
from meshguard.dataplane.policy_filter import PolicyFilterLike, PyPolicyFilter, table_args
from meshguard.policy.table import (
    PROTO_ANY,
    PROTO_TCP,
    PROTO_UDP,
    Chain,
    FlatRule,
    PolicyTable,
    RuleInfo,
)
from meshguard.testing.fuzz_engine import RoundTripError, Target

_A4, _B4 = bytes([10, 5, 0, 1]), bytes([10, 5, 0, 2])
_A6, _B6 = bytes(15) + b"\x01", bytes(15) + b"\x02"
_KEY = b"\x07" * 32


def _tables() -> list[PolicyTable]:
    infos = tuple(RuleInfo("fuzz", i, "r") for i in range(8))
    deny_all = Chain((), False, 0)
    some = Chain((FlatRule(False, PROTO_TCP, 23, 23, 1), FlatRule(True, PROTO_TCP, 1, 1024, 2),
                  FlatRule(True, PROTO_UDP, 53, 53, 3)), False, 4)
    anything = Chain((FlatRule(True, PROTO_ANY, 0, 65535, 5),), False, 6)
    return [PolicyTable(True, (deny_all,), {}, 0, infos),
            PolicyTable(True, (deny_all, some), {_KEY: 1}, 0, infos),
            PolicyTable(True, (some, anything), {_KEY: 1}, 0, infos),
            PolicyTable(True, (anything, deny_all), {_KEY: 0}, 1, infos)]


def reverse(pkt: bytes) -> bytes:
    """The packet with addresses and ports swapped (a reply to it, when it was tracked)."""
    b = bytearray(pkt)
    if len(pkt) >= 24 and pkt[0] >> 4 == 4:
        b[12:16], b[16:20] = pkt[16:20], pkt[12:16]
        l4 = (pkt[0] & 15) * 4
    elif len(pkt) >= 40 and pkt[0] >> 4 == 6:
        b[8:24], b[24:40] = pkt[24:40], pkt[8:24]
        l4 = 40
    else:
        return pkt
    if len(pkt) >= l4 + 4:
        b[l4 : l4 + 2], b[l4 + 2 : l4 + 4] = pkt[l4 + 2 : l4 + 4], pkt[l4 : l4 + 2]
    return bytes(b)


def _seeds() -> list[bytes]:
    tcp = struct.pack("!HHIIBBHHH", 40000, 22, 1, 0, 0x50, 0x02, 1000, 0, 0)
    udp = struct.pack("!HHHH", 5353, 53, 8, 0)
    out = []
    for proto, l4 in ((6, tcp), (17, udp), (1, bytes(8)), (47, bytes(8))):
        out.append(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0, 64, proto, 0,
                               _A4, _B4) + l4)
    for proto, l4 in ((6, tcp), (17, udp), (58, bytes(8))):
        out.append(struct.pack("!IHBB16s16s", 6 << 28, len(l4), proto, 64, _A6, _B6) + l4)
        ext = bytes([44, 0]) + bytes(6) + bytes([proto, 0, 0, 0]) + bytes(4)
        out.append(struct.pack("!IHBB16s16s", 6 << 28, len(ext) + len(l4), 0, 64, _A6, _B6)
                   + ext + l4)
    return [bytes([op]) + p for p in out for op in (0, 3, 6, 13)]


def _run(data: bytes) -> None:
    if not data:
        return
    op, pkt = data[0], data[1:]
    table = _tables()[(op >> 2) & 3]
    filters: list[PolicyFilterLike] = [PyPolicyFilter()]
    if fastpath.C_POLICY_FILTER is not None:
        filters.append(fastpath.C_POLICY_FILTER(seed=1))
    got = []
    for pf in filters:
        pf.set_table(*table_args(table))
        if op & 1:
            pf.track([pkt], 0, 1.0)
        judged = reverse(pkt) if op & 2 else pkt
        got.append((pf.check(_KEY, judged, 2.0), pf.check(None, judged, 2.0), pf.take_counts()))
    if len(got) == 2 and got[0] != got[1]:
        raise RoundTripError(f"the C and Python filters differ: {got[1]} != {got[0]}")


def policy_targets() -> list[Target]:
    return [Target("policy_filter", _seeds(), _run, max_len=256)]


__all__ = ["policy_targets"]
