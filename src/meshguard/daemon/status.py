"""The `status` answer of the control socket: this node, every member as the node sees it
(admission, tunnel, path, traffic, DNS names) and every counter of every layer."""

from __future__ import annotations

import base64
import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

from meshguard.daemon.daemon_config import DaemonConfig
from meshguard.daemon.kernel_module import gossip_port_for
from meshguard.identity.addressing import mesh_ipv4, mesh_ipv6
from meshguard.mesh.member_rtt import member_rtt
from meshguard.mesh.node import MeshNode
from meshguard.mesh.swim_port import SwimPort
from meshguard.nat.path_select import PathReport
from meshguard.sansio import Endpoint
from meshguard.wire.control import MemberStatus, SelfStatus, StatusReport, format_endpoint
from meshguard.wire.seed_status import SeedsStatus

PeerStats = dict[bytes, tuple[float, int, int, Endpoint | None]]
"""Per WireGuard key: last handshake (wall clock), rx bytes, tx bytes, endpoint."""


def _b64(k: bytes) -> str:
    return base64.b64encode(k).decode()


def _with_path(ms: MemberStatus, r: PathReport | None) -> MemberStatus:
    """The member's status with the path report's fields (nat/path_select.py)."""
    if r is None:
        return ms
    return dataclasses.replace(
        ms, path="direct" if r.path == "none" else r.path,
        endpoint=format_endpoint(r.endpoint) or ms.endpoint, why=r.reason,
        via=_b64(r.via) if r.via else None, via_endpoint=format_endpoint(r.via_endpoint),
        own_nat=r.own_nat, peer_nat=r.peer_nat, last_punch=r.last_punch,
        last_punch_age=None if r.last_punch_age is None else round(r.last_punch_age, 1),
        next_punch_in=None if r.next_punch_in is None else round(r.next_punch_in, 1))


def _path_columns(node: MeshNode, wg_key: bytes | None, identity_key: bytes, path: str
                  ) -> dict[str, Any]:
    """rtt_ms (and where it comes from), relay_rtt_ms and mtu of the member's path
    (mesh/member_rtt.py: the path prober, the handshakes, the relay's echo)."""
    if not wg_key:
        return {}
    r = member_rtt(node, wg_key, identity_key, path == "relayed")
    return {"rtt_ms": _ms(r.rtt), "rtt_source": r.source, "relay_rtt_ms": _ms(r.relay_rtt),
            "mtu": r.mtu}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def build_status(*, cfg: DaemonConfig, node: MeshNode, membership: SwimPort, name: str | None,
                 started_at: float, wall: float, kernel_stats: PeerStats | None,
                 runner_counters: Mapping[str, int], dns_counters: Mapping[str, int] | None,
                 seeds: SeedsStatus | None = None, now: float | None = None,
                 endpoints: Sequence[Endpoint] = ()) -> StatusReport:
    """`kernel_stats` are the kernel device's per-peer (handshake, rx, tx, endpoint) in kernel
    mode (None in userspace, where the node's backend has them); `runner_counters` are the
    mode's own counters (the engine's); `dns_counters` the DNS server's, if it runs; with the
    monotonic `now`, each member carries its path report (why direct or relayed);
    `endpoints` are the WireGuard endpoints this node advertises (`meshguard export-wg`)."""
    peers = node.peers
    v4_of = {p.identity_key: next((str(n.network_address) for n in p.allowed_ips
                                   if n.version == 4), None) for p in peers.values()}
    names: dict[str, list[str]] = {}
    for dns_name, addrs in node.dns_table(wall):
        for v6 in addrs.ipv6:
            names.setdefault(str(v6), []).append(dns_name)
    members = []
    for m in node.membership.members():
        if m.identity_key == node.identity_key:
            continue
        adm = node.admission(m, wall)
        ipv6 = str(mesh_ipv6(m.identity_key))
        tunnel = m.wg_key is not None and m.wg_key in peers
        hs, rx, tx, ep = (0.0, 0, 0, None)
        path = "direct"
        report: PathReport | None = None
        if tunnel and m.wg_key is not None:
            if kernel_stats is not None:
                hs, rx, tx, ep = kernel_stats.get(m.wg_key, (0.0, 0, 0, None))
            elif node.backend is not None:
                hs, rx, tx, ep = node.backend.stats(m.wg_key)
            if kernel_stats is not None or node.backend is not None:
                path, via = node.path_of(m.wg_key)
                if path == "relayed":
                    ep = via  # (a kernel peer's endpoint is then its loopback relay proxy)
                if node.holepunch is not None and node.backend is not None and now is not None:
                    report = node.path_report(m.wg_key, now, wall)
        members.append(_with_path(MemberStatus(
            name=adm.name,
            identity_key=_b64(m.identity_key),
            wireguard_key=_b64(m.wg_key) if m.wg_key else None,
            mesh_ipv4=v4_of.get(m.identity_key) or str(mesh_ipv4(m.identity_key)),
            mesh_ipv6=ipv6,
            endpoint=format_endpoint(ep or m.wg_endpoint),
            state=m.state,
            trusted=adm.admitted,
            admission=adm.reason,
            routes_offered=tuple(str(r) for r in m.routes),
            routes_in_use=tuple(str(r) for r in node.route_plan.allowed.get(m.identity_key, ())),
            tunnel=tunnel,
            last_handshake=hs or None,
            rx_bytes=rx,
            tx_bytes=tx,
            path=path,
            dns_names=tuple(sorted(names.get(ipv6, ()))),
            **(_path_columns(node, m.wg_key, m.identity_key, path) if tunnel else {}),
        ), report))
    members.sort(key=lambda s: (s.name or "~", s.identity_key))
    counters = {k: int(v) for k, v in node.counters.items()}
    counters.update(runner_counters)
    dev = node.device
    if dev is not None:
        dc = getattr(dev, "counters", None)
        as_dict = getattr(dc, "as_dict", None)
        if callable(as_dict):
            counters.update({f"wireguard_{k}": int(v) for k, v in as_dict().items()})
    counters.update(membership.counters())
    if node.holepunch is not None:
        counters.update({k: int(v) for k, v in node.holepunch.counters.items()})
    if node.relay is not None:
        counters.update({k: int(v) for k, v in node.relay.counters.items()})
    if node.probes is not None:  # probe_* (mesh/path_probe.py)
        counters.update({k: int(v) for k, v in node.probes.counters.items()})
    if node.org is not None:  # org_* drop reasons (mesh/org_gossip.py)
        counters.update({k: int(v) for k, v in node.org.counters.items()})
    if dns_counters is not None:  # dns_foreign_source, ... (daemon/dns_server.py)
        counters.update({k: int(v) for k, v in dns_counters.items()})
    return StatusReport(
        interface=cfg.interface,
        mode="kernel" if cfg.kernel else "userspace",
        pid=os.getpid(),
        started_at=started_at,
        self_=SelfStatus(
            name=name,
            identity_key=_b64(node.identity_key),
            wireguard_key=_b64(node.wg_key),
            mesh_ipv4=str(node.self_ipv4) if node.self_ipv4 else "",
            mesh_ipv6=str(node.self_ipv6),
            wg_port=cfg.port,
            gossip_port=gossip_port_for(cfg.split, cfg.port),
            endpoints=tuple(e for e in map(format_endpoint, endpoints) if e is not None),
        ),
        members=tuple(members),
        counters=counters,
        seeds=seeds if seeds is not None and seeds.sources else None,
    )

