"""Which round-trip time `status` shows for a member, and where it comes from.

A member has up to three measurements:

* the path prober's smoothed RTT (mesh/path_probe.py): direct paths only, sampled every
  probe round; the best there is for a direct member (`rtt_source` "probe");
* the handshake RTT of its WireGuard peer (wireguard/handshake_rtt.py): end to end over
  whatever path the handshake took, so the honest value for a relayed member, and a fallback
  for a direct one the prober has no sample of (`rtt_source` "handshake"). Only the userspace
  device measures it; the kernel's WireGuard has no such hook, so in kernel mode it is None;
* the relay's registration echo (nat/relay.py `Relay.rtt`): this node to the relay only, shown
  as `relay_rtt_ms` next to the end-to-end value, never in its place.

A prober state that was direct before the member became relayed still holds the old direct
srtt: it is not the relayed path's RTT and is not shown for a relayed member.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from meshguard.mesh.node import MeshNode

SOURCES = ("probe", "handshake")


@runtime_checkable
class HandshakeRtts(Protocol):
    """A peer backend that measures handshake RTTs (mesh/wg_backend.py DeviceBackend)."""

    def handshake_rtt(self, wg_key: bytes) -> float | None: ...


@dataclass(frozen=True, slots=True)
class MemberRtt:
    rtt: float | None  # seconds, end to end
    source: str | None  # one of SOURCES, None without a value
    relay_rtt: float | None  # seconds, to the relay (relayed members only)
    mtu: int | None  # the direct path's MTU (None: unknown or relayed)


def member_rtt(node: MeshNode, wg_key: bytes, identity_key: bytes, relayed: bool) -> MemberRtt:
    """The RTTs `status` shows for the member with these keys (see the module docstring)."""
    p = node.probes.paths.get(wg_key) if node.probes is not None else None
    direct = p is not None and not relayed and p.state != "relayed"
    mtu = p.mtu if p is not None and direct else None
    relay_rtt = None
    rl = node.relay
    if relayed and rl is not None:
        via = rl.via.get(identity_key)
        relay_rtt = rl.rtt.get(via) if via is not None else None
    if p is not None and direct and p.srtt is not None:
        return MemberRtt(p.srtt, "probe", relay_rtt, mtu)
    be = node.backend
    hs = be.handshake_rtt(wg_key) if isinstance(be, HandshakeRtts) else None
    return MemberRtt(hs, None if hs is None else "handshake", relay_rtt, mtu)


__all__ = ["SOURCES", "HandshakeRtts", "MemberRtt", "member_rtt"]
