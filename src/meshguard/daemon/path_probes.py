"""The shell around the path prober (mesh/path_probe.py): its install on a userspace node (the
underlay MTU towards an endpoint, the MSS clamp a path MTU turns into) and the `ping` request
of the control socket (`meshguard ping`).

The clamp: a peer whose path carries `mtu` bytes gets `Peer.clamp_mtu` = the largest inner
packet that fits (wire/tcp_mss.py `inner_mtu`), which both data paths apply to TCP SYNs to and
from it. `MESHGUARD_MSS_CLAMP=0` leaves it off (the tests show what happens then).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

from meshguard.crypto.keys import X25519PrivateKey, X25519PublicKey
from meshguard.dataplane.udp_io import set_dont_fragment
from meshguard.errors import MeshguardError
from meshguard.identity.addressing import mesh_ipv6
from meshguard.mesh.member_rtt import member_rtt
from meshguard.mesh.node import MeshNode
from meshguard.mesh.path_probe import PathProber
from meshguard.rng import Rng
from meshguard.sansio import Endpoint
from meshguard.wire.control import format_endpoint
from meshguard.wire.tcp_mss import inner_mtu
from meshguard.wireguard.actions import SendDatagram

if TYPE_CHECKING:
    from meshguard.clock import Clock
    from meshguard.dataplane.engine import Engine
    from meshguard.wireguard.device import Device

log = logging.getLogger(__name__)

IP_MTU = 14  # linux/in.h, IPV6_MTU is 24
IPV6_MTU = 24
FALLBACK_MTU = 1500
PING_TIMEOUT = 2.0


def route_mtu(ep: Endpoint) -> int:
    """The MTU of the route towards `ep` (its interface's, or what the kernel learned)."""
    v6 = ":" in ep[0]
    try:
        with socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(ep)
            return int(s.getsockopt(socket.IPPROTO_IPV6 if v6 else socket.IPPROTO_IP,
                                    IPV6_MTU if v6 else IP_MTU))
    except OSError:
        return FALLBACK_MTU


def install_prober(node: MeshNode, device: Device, engine: Engine, rng: Rng,
                   wg_private: X25519PrivateKey) -> PathProber:
    """A prober on `node`, whose path MTUs become the peers' MSS clamps."""
    cache: dict[str, int] = {}
    clamp = os.environ.get("MESHGUARD_MSS_CLAMP", "1") != "0"
    if engine.sock is not None:
        set_dont_fragment(engine.sock)

    def max_mtu(ep: Endpoint) -> int:
        m = cache.get(ep[0])
        if m is None:
            if len(cache) > 1024:
                cache.clear()
            m = cache[ep[0]] = route_mtu(ep)
        return m

    def on_mtu(wg_key: bytes, mtu: int | None) -> None:
        peer = device.peer(X25519PublicKey(wg_key))
        if peer is None:
            return
        ep = peer.endpoint
        value = inner_mtu(mtu, ep is not None and ":" in ep[0]) if mtu and clamp else 0
        log.info("path MTU to %s: %s%s", wg_key.hex()[:12], mtu or "unknown",
                 f" (TCP MSS clamped for {value}-byte packets)" if value else "")
        if peer.clamp_mtu != value:
            peer.clamp_mtu = value
            engine.clamp_mss = engine.clamp_mss or bool(value)
            device.changed()

    prober = PathProber(rng, wg_private, node.identity_key, max_mtu=max_mtu, on_mtu=on_mtu)
    node.probes = prober
    return prober


# meshguard ping ------------------------------------------------------------------------


def resolve_member(node: MeshNode, target: str, wall: float) -> bytes | None:
    """The WireGuard key of the member a DNS name, trust name or mesh address names."""
    t = target.strip().lower().rstrip(".")
    try:
        addr: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(t)
    except ValueError:
        addr = None
    if addr is not None:
        for wg, p in node.peers.items():
            if any(addr in n for n in p.allowed_ips) or addr == mesh_ipv6(p.identity_key):
                return wg
        return None
    for dns_name, addrs in node.dns_table(wall):
        if dns_name == t or dns_name == f"{t}.mesh":
            for wg, p in node.peers.items():
                if mesh_ipv6(p.identity_key) in addrs.ipv6:
                    return wg
    by_identity = {p.identity_key: wg for wg, p in node.peers.items()}
    for m in node.membership.members():
        key = by_identity.get(m.identity_key)
        name = node.admission(m, wall).name
        if key is not None and name is not None and name.lower() == t:
            return key
    return None


def path_reason(node: MeshNode, wg_key: bytes, clock: Clock) -> str:
    """Why the member's traffic takes its path: the node's own account (`MeshNode.path_report`:
    the path, both NAT types, the last punch and the next one)."""
    return node.path_report(wg_key, clock.monotonic(), clock.wall()).reason


async def ping_request(node: MeshNode, prober: PathProber | None, clock: Clock,
                       execute: Callable[[list[SendDatagram]], None],
                       args: dict[str, object]) -> dict[str, object]:
    """One probe to the member `args["target"]` (to its relay when relayed: `rtt_to`); its
    path, RTT (None: timeout), MTU and the member's end-to-end RTT as `status` has it."""
    target = args.get("target")
    if not isinstance(target, str) or not target:
        raise MeshguardError("ping needs a target (a name or a mesh address)")
    timeout = args.get("timeout", PING_TIMEOUT)
    if not isinstance(timeout, int | float) or not 0 < timeout <= 30:
        raise MeshguardError("ping timeout must be between 0 and 30 seconds")
    if prober is None:
        raise MeshguardError("path probes need a userspace node on one port")
    wg = resolve_member(node, target, clock.wall())
    if wg is None:
        raise MeshguardError(f"no member {target!r} with a tunnel")
    ident = node.peers[wg].identity_key
    path, via = node.path_of(wg)
    via_name = None
    if path == "relayed" and node.relay is not None:
        relay_id = node.relay.via.get(ident)
        via_name = next((node.admission(m, clock.wall()).name or m.identity_key.hex()[:12]
                         for m in node.membership.members() if m.identity_key == relay_id),
                        None)
    state = prober.paths.get(wg)
    sent = prober.ping(clock.monotonic(), wg)
    rtt = None
    if sent is not None:
        nonce, ep, grams = sent
        via = ep  # the relay's endpoint when relayed
        execute(grams)
        deadline = clock.monotonic() + float(timeout)
        while clock.monotonic() < deadline:
            rtt = prober.ping_result(nonce)
            if rtt is not None:
                break
            await asyncio.sleep(0.005)
        prober.ping_result(nonce, forget=True)
    # a relayed member's probe times the relay hop only; the end-to-end value is the
    # handshakes' (mesh/member_rtt.py), as in `status`
    e2e = member_rtt(node, wg, ident, path == "relayed")
    return {"path": path, "endpoint": format_endpoint(via), "via": via_name,
            "rtt_ms": None if rtt is None else round(rtt * 1000, 3),
            "rtt_to": "relay" if path == "relayed" else "member",
            "end_to_end_rtt_ms": None if e2e.rtt is None else round(e2e.rtt * 1000, 3),
            "end_to_end_source": e2e.source,
            "mtu": None if path == "relayed" or state is None else state.mtu,
            "mtu_state": "relayed" if path == "relayed" or state is None else state.state,
            "reason": path_reason(node, wg, clock)}


__all__ = ["install_prober", "path_reason", "ping_request", "resolve_member", "route_mtu"]
