"""Sans-IO hole punching with the kernel's own WireGuard handshakes (kernel mode).

In kernel mode the kernel's WireGuard device owns the WireGuard port, so this process cannot
send the stage-1 probes of nat/holepunch.py from it. The rendezvous (stage 0, signed, through a
public member) runs on the gossip port as in userspace mode, with the hole puncher in its
kernel mode (`HolePuncher(probe=False)`), and ends on both sides, at about the same time, in a
`PunchRendezvous` carrying the peer's signed endpoints. This core takes it from there:

1. `start` points the kernel peer at the peer's first WireGuard candidate with a persistent
   keepalive of `keepalive` seconds (`PunchEndpoint`). Setting a keepalive makes the kernel
   send at once and then every `keepalive` seconds (a handshake initiation at most every 5 s
   while there is no session, REKEY_TIMEOUT), so each side's NAT opens a mapping toward the
   other's WireGuard port and the other side's next packet passes it.
2. `tick` moves on to the next candidate every `switch_after` seconds (`PunchEndpoint`).
3. `observe` takes the kernel's peer statistics, which the shell polls. The punch is proven
   when the kernel reports, at an endpoint that is not the relay proxy's (`is_proxy`), a
   handshake since the punch began, or more bytes received than at the first poll of the
   punch (a session relayed before the punch goes on directly, without a new handshake; the
   proxy hands the kernel nothing of a peer while it is punched). The kernel moves a peer's
   endpoint only for packets that authenticate under the peer's key, so the endpoint it
   reports is proven by WireGuard itself; nothing unauthenticated reaches this decision.
   `PunchProven` carries that endpoint; the mesh layer ends the hole puncher's session with
   it and gives the peer its normal keepalive back.
4. A punch without proof ends when the hole puncher's session times out (`end`; the mesh
   layer then relays, and the hole puncher retries with its backoff), or, for a peer that was
   relayed when the punch began, after `relayed_window` seconds (`PunchEnded`): while a
   relayed pair punches, the kernel sends its packets to the untried path, so a retry that
   fails must cost little.

The WireGuard candidates: STUN on the gossip port learns the gossip port's mapping only. A
kernel-mode member gossips on its WireGuard port + 1 (daemon/kernel_wg.py), and every
endpoint it advertises is a gossip endpoint; `wireguard_candidates` takes each one's host with
the member's WireGuard port offset. This assumes a port-preserving NAT (Linux `masquerade`
and most cone NATs keep the source port when it is free, docs/nat-testbed.md); behind a NAT
that does not preserve it, the punch fails and the relay carries the pair.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from meshguard.sansio import Endpoint

PUNCH_KEEPALIVE = 1  # seconds: the kernel's persistent keepalive while punching
MAX_CANDIDATES = 4


@dataclass(frozen=True)
class KernelPeerState:
    """One kernel peer as the kernel reports it (WG_CMD_GET_DEVICE, polled by the shell)."""

    last_handshake_wall: float
    rx_bytes: int
    endpoint: Endpoint | None


@dataclass(frozen=True)
class PunchEndpoint:
    """Point the kernel peer `wg_key` at `endpoint`, with a persistent keepalive of
    `keepalive` seconds."""

    wg_key: bytes
    endpoint: Endpoint
    keepalive: int


@dataclass(frozen=True)
class PunchProven:
    """The kernel reached `identity_key`'s peer directly at `endpoint`."""

    identity_key: bytes
    wg_key: bytes
    endpoint: Endpoint


@dataclass(frozen=True)
class PunchEnded:
    """The punch of a relayed peer ended without proof: give it its own configuration back."""

    identity_key: bytes
    wg_key: bytes


KernelPunchAction = PunchEndpoint | PunchProven | PunchEnded


def is_loopback(ep: Endpoint) -> bool:
    """Whether `ep` is on a loopback address (where the relay proxy listens)."""
    try:
        return ipaddress.ip_address(ep[0]).is_loopback
    except ValueError:
        return False


def wireguard_candidates(endpoints: Iterable[Endpoint], port_offset: int
                         ) -> tuple[Endpoint, ...]:
    """The WireGuard endpoints that go with a member's advertised gossip endpoints: each
    host with the port `port_offset` lower (1 for a kernel-mode member, 0 for a userspace
    member, whose one port carries both), in the advertised order, without duplicates."""
    out: list[Endpoint] = []
    for host, port in endpoints:
        ep = (host, port - port_offset)
        if 0 < ep[1] < 65536 and ep not in out and not is_loopback(ep):
            out.append(ep)
    return tuple(out[:MAX_CANDIDATES])


@dataclass
class _Punch:
    identity_key: bytes
    wg_key: bytes
    candidates: tuple[Endpoint, ...]
    started: float
    started_wall: float
    next_switch: float
    until: float | None  # relayed peers: the punch window ends here
    index: int = 0
    rx_base: int | None = None


@dataclass
class KernelPunch:
    keepalive: int = PUNCH_KEEPALIVE
    switch_after: float = 6.0  # seconds per candidate (> REKEY_TIMEOUT: one initiation each)
    relayed_window: float = 4.0  # seconds a relayed peer's punch may take
    relayed_switch: float = 2.0  # seconds per candidate in that window
    max_punches: int = 8
    is_proxy: Callable[[Endpoint], bool] = is_loopback
    counters: Counter[str] = field(default_factory=Counter)
    _punches: dict[bytes, _Punch] = field(default_factory=dict)  # by WireGuard key

    def punching(self, wg_key: bytes) -> bool:
        return wg_key in self._punches

    def endpoint_of(self, wg_key: bytes) -> Endpoint | None:
        """The candidate the kernel peer is pointed at while it is punched."""
        p = self._punches.get(wg_key)
        return None if p is None else p.candidates[p.index]

    def active(self) -> list[tuple[bytes, bytes]]:
        """(identity key, WireGuard key) of every running punch."""
        return [(p.identity_key, k) for k, p in self._punches.items()]

    def start(self, now: float, wall: float, identity_key: bytes, wg_key: bytes,
              candidates: tuple[Endpoint, ...], relayed: bool) -> list[KernelPunchAction]:
        if not candidates:
            self.counters["kernel_punch_no_candidate"] += 1
            return []
        if wg_key not in self._punches and len(self._punches) >= self.max_punches:
            self.counters["kernel_punch_busy"] += 1
            return []
        step = self.relayed_switch if relayed else self.switch_after
        p = _Punch(identity_key, wg_key, candidates[:MAX_CANDIDATES], now, wall, now + step,
                   now + self.relayed_window if relayed else None)
        self._punches[wg_key] = p
        self.counters["kernel_punch_started"] += 1
        return [PunchEndpoint(wg_key, p.candidates[0], self.keepalive)]

    def end(self, wg_key: bytes) -> bool:
        """Forget a punch (its session ended, or the peer is gone); True if one ran."""
        return self._punches.pop(wg_key, None) is not None

    def next_deadline(self) -> float | None:
        ds: list[float] = []
        for p in self._punches.values():
            if p.index + 1 < len(p.candidates):
                ds.append(p.next_switch)
            if p.until is not None:
                ds.append(p.until)
        return min(ds) if ds else None

    def tick(self, now: float, wall: float) -> list[KernelPunchAction]:
        out: list[KernelPunchAction] = []
        for k, p in list(self._punches.items()):
            if p.until is not None and now >= p.until:
                del self._punches[k]
                self.counters["kernel_punch_window_over"] += 1
                out.append(PunchEnded(p.identity_key, k))
            elif now >= p.next_switch and p.index + 1 < len(p.candidates):
                p.index += 1
                step = self.switch_after if p.until is None else self.relayed_switch
                p.next_switch = now + step
                p.rx_base = None  # the next poll is the new candidate's baseline
                self.counters["kernel_punch_switched"] += 1
                out.append(PunchEndpoint(k, p.candidates[p.index], self.keepalive))
        return out

    def observe(self, now: float, wall: float, stats: Mapping[bytes, KernelPeerState]
                ) -> list[KernelPunchAction]:
        """The kernel's peer statistics (by WireGuard key): the punches they prove."""
        out: list[KernelPunchAction] = []
        for k, p in list(self._punches.items()):
            st = stats.get(k)
            if st is None:
                continue
            base, p.rx_base = p.rx_base, st.rx_bytes if p.rx_base is None else p.rx_base
            ep = st.endpoint
            if ep is None or self.is_proxy(ep):
                continue
            # the kernel's handshake times have a resolution of one second; a relayed peer's
            # handshake of the same second may have come through the relay
            shook = st.last_handshake_wall >= int(p.started_wall) + (p.until is not None)
            received = base is not None and st.rx_bytes > base
            if shook or received:
                del self._punches[k]
                self.counters["kernel_punch_proven"] += 1
                out.append(PunchProven(p.identity_key, k, ep))
        return out
