"""TCP MSS clamping where the Python engine meets the TUN (the data-path thread does the same
in C, dataplane/_fastpath.c): SYNs read from the TUN for a peer, and SYNs a peer sent before
they are written to the TUN, get the MSS of that peer's path (`Peer.clamp_mtu`, set from the
path prober's result, mesh/path_probe.py; the clamp itself is wire/tcp_mss.py)."""

from __future__ import annotations

from collections.abc import Callable

from meshguard.dataplane.vnet import VNET_HDR_LEN
from meshguard.wire.tcp_mss import clamp
from meshguard.wireguard.peer import Peer

F_NEEDS_CSUM = 1  # virtio-net header flag: the checksum is partial


def clamp_read(read: bytes, peer: Peer, vnet: bool) -> bytes:
    """A TUN read for `peer` (virtio-net header first when `vnet`), clamped."""
    mtu = peer.clamp_mtu
    if not mtu:
        return read
    if not vnet:
        return clamp(read, mtu)
    if len(read) <= VNET_HDR_LEN:
        return read
    return clamp(read, mtu, VNET_HDR_LEN, bool(read[0] & F_NEEDS_CSUM))


def _is_tcp(p: bytes) -> bool:
    n = len(p)
    if n < 40:
        return False
    v = p[0] >> 4
    return (v == 4 and p[9] == 6) or (v == 6 and n >= 60 and p[6] == 6)


def clamp_writes(packets: list[bytes], route: Callable[[bytes], Peer | None]) -> list[bytes]:
    """Plain IP packets about to be written to the TUN: each TCP SYN clamped to the path of
    the peer it came from (the peer whose allowed IPs hold its source)."""
    out = packets
    for i, p in enumerate(packets):
        if not _is_tcp(p):
            continue
        src = p[12:16] if p[0] >> 4 == 4 else p[8:24]
        peer = route(src)
        if peer is None or not peer.clamp_mtu:
            continue
        q = clamp(p, peer.clamp_mtu)
        if q is not p:
            if out is packets:
                out = list(packets)
            out[i] = q
    return out


__all__ = ["clamp_read", "clamp_writes"]
