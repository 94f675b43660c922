"""Adapter from the SWIM `Membership` core (swim/membership.py) to MeshNode's MembershipPort.

SWIM and the WireGuard device send the same `sansio.SendDatagram` (so the data-plane engine
executes both alike); the adapter passes SWIM's datagrams on, turns its membership events into
member views, keeps a view of every member including dead and left ones (for
`status`; the core itself forgets them), and emits `Joined` once the core has joined.

WireGuard endpoint vs gossip endpoint. A signed record lists *gossip* endpoints (SWIM sends to
the first). A userspace node serves WireGuard on the same port. A kernel-mode node cannot (the
kernel owns its WireGuard port), so it gossips on WireGuard port + 1 and sets bit 7 of the
record's `nat_type` byte (`NAT_SPLIT_PORT`): "my WireGuard endpoint is my gossip endpoint's
port - 1". The record is signed, so the bit is as trustworthy as the endpoint. The low 7 bits
keep the NAT type. Every node, kernel or userspace, reads both endpoints from the record, so
the two kinds interoperate.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from meshguard.crypto.keys import Ed25519PrivateKey, X25519PrivateKey
from meshguard.mesh.node import Joined, MemberView
from meshguard.rng import Rng
from meshguard.sansio import Endpoint, SendDatagram
from meshguard.swim.config import DEFAULT_CONFIG, SwimConfig
from meshguard.swim.events import Action, MemberDown, MemberUp, MemberUpdated
from meshguard.swim.membership import Membership
from meshguard.swim.records import AdmissionPolicy
from meshguard.wire.gossip import TYPE_NAMES, IPNetwork, NodeRecord

PortAction = SendDatagram | Joined
"""What the port hands the node: SWIM's datagrams, and Joined once."""

NAT_SPLIT_PORT = 0x80
NAT_TYPE_MASK = 0x7F
# Seconds a dead or left member stays in the member views (and so in `status`) after it died
# or left (docs/swim.md#a-members-states). Only the view goes: the core keeps the member, and
# then its high-water mark, so its older records stay refused (swim/updates.py).
DEAD_GRACE = 30.0


def wg_endpoint_of(rec: NodeRecord) -> Endpoint | None:
    if not rec.endpoints:
        return None
    host, port = rec.endpoints[0]
    if rec.nat_type & NAT_SPLIT_PORT:
        return (host, port - 1) if port > 1 else None
    return (host, port)


def wg_endpoints_of(rec: NodeRecord) -> list[Endpoint]:
    """Every WireGuard endpoint a record advertises, in its order."""
    if rec.nat_type & NAT_SPLIT_PORT:
        return [(h, p - 1) for h, p in rec.endpoints if p > 1]
    return [(h, p) for h, p in rec.endpoints]


def view_of(rec: NodeRecord, state: str) -> MemberView:
    return MemberView(
        identity_key=rec.identity,
        wg_key=rec.wg_public,
        wg_endpoint=wg_endpoint_of(rec),
        gossip_endpoint=rec.endpoints[0] if rec.endpoints else None,
        certificate=rec.certificate,
        state=state,
        incarnation=rec.incarnation,
        nat_type=rec.nat_type & NAT_TYPE_MASK,
        endpoints=tuple(rec.endpoints),
        routes=rec.routes,
    )


@dataclass
class SwimPort:
    core: Membership
    _views: dict[bytes, MemberView] = field(default_factory=dict)
    _gone_at: dict[bytes, float] = field(default_factory=dict)
    _joined_reported: bool = False
    # the core reads as joined until join() gives it seeds: Joined (READY=1 for systemd) may
    # only be reported once the daemon has started the join
    _join_started: bool = False
    _now: float = 0.0
    # datagrams the core sent, by gossip type name (swim_tx_ping, ...; docs/metrics.md)
    sent: Counter[str] = field(default_factory=Counter)

    # MembershipPort ----------------------------------------------------------------------

    def receive(self, now: float, wall: float, data: bytes, src: Endpoint) -> list[Action]:
        self._now = now
        return self.core.receive(now, wall, data, src)

    def tick(self, now: float, wall: float) -> list[Action]:
        self._now = now
        out = self.core.tick(now, wall)
        for k, t in list(self._gone_at.items()):
            if now - t >= DEAD_GRACE:
                del self._gone_at[k]
                self._views.pop(k, None)
        return out

    def next_deadline(self) -> float | None:
        d = self.core.next_deadline()
        if self._gone_at:
            hide = min(self._gone_at.values()) + DEAD_GRACE
            d = hide if d is None else min(d, hide)
        return d

    def leave(self, now: float, wall: float) -> list[Action]:
        return self.core.leave(now)

    def members(self) -> Iterable[MemberView]:
        # refresh live states (alive <-> suspect changes raise no event)
        out: list[MemberView] = []
        for k, v in self._views.items():
            st = self.core.state_of(k)
            if st is not None and st != v.state and v.state not in ("dead", "left"):
                v = dataclasses.replace(v, state=st)
                self._views[k] = v
            out.append(v)
        return out

    def absorb(self, actions: Sequence[Action]) -> tuple[list[PortAction], bool]:
        out: list[PortAction] = []
        changed = False
        for a in actions:
            if isinstance(a, SendDatagram):
                out.append(a)
                self.sent[TYPE_NAMES.get(a.data[0] if a.data else -1, "other")] += 1
            elif isinstance(a, MemberUp | MemberUpdated):
                rec = a.record
                state = self.core.state_of(rec.identity) or "alive"
                self._views[rec.identity] = view_of(rec, state)
                self._gone_at.pop(rec.identity, None)
                changed = True
            elif isinstance(a, MemberDown):
                rec = a.record
                state = "left" if a.reason == "left" else "dead"
                if a.reason == "untrusted":
                    self._views.pop(rec.identity, None)
                    self._gone_at.pop(rec.identity, None)
                else:
                    self._views[rec.identity] = view_of(rec, state)
                    self._gone_at[rec.identity] = self._now
                changed = True
        if not self._joined_reported and self._join_started and self.core.joined:
            self._joined_reported = True
            out.append(Joined())
        return out, changed

    # for the daemon ----------------------------------------------------------------------

    def join_actions(self, seeds: Sequence[Endpoint], now: float, wall: float
                     ) -> list[PortAction]:
        self._now = now
        if not seeds:
            self._joined_reported = True  # nothing to join: the daemon is ready at once
        actions = self.core.join(seeds, now)
        self._join_started = True
        return self.absorb(actions)[0]

    def trust_changed(self, now: float, wall: float) -> list[PortAction]:
        self._now = now
        return self.absorb(self.core.reevaluate_admission(now, wall))[0]

    def set_public_endpoint(self, now: float, endpoint: Endpoint, nat_type: int) -> bool:
        """Advertise a STUN-discovered endpoint first (a new incarnation is gossiped). In
        split-port (kernel) mode the endpoint is the gossip port's mapping; the WireGuard
        endpoint derived from it (port - 1) is right only behind a port-preserving NAT."""
        return self.set_public_endpoints(now, [endpoint], nat_type)

    def set_public_endpoints(self, now: float, first: Sequence[Endpoint], nat_type: int,
                             drop: Sequence[Endpoint] = ()) -> bool:
        """Advertise `first` (a router's port mapping, then the STUN mapping) ahead of the
        other endpoints, without those in `drop` (a mapping that is gone)."""
        current = list(self.core.record.endpoints)
        split = self.core.record.nat_type & NAT_SPLIT_PORT
        nat = split | (nat_type & NAT_TYPE_MASK)
        rest = [e for e in current if e not in first and e not in drop]
        eps = [*first, *rest][:4]
        if eps == current and self.core.record.nat_type == nat:
            return False
        self.core.update_self(now, endpoints=eps, nat_type=nat)
        return True

    def set_endpoints(self, now: float, endpoints: Sequence[Endpoint], nat_type: int | None
                      ) -> bool:
        """Advertise exactly `endpoints` (and `nat_type`, unless None), as after a change of
        the underlay (mesh/roaming.py); a new incarnation is gossiped when anything changed."""
        rec = self.core.record
        nat = rec.nat_type
        if nat_type is not None:
            nat = (rec.nat_type & NAT_SPLIT_PORT) | (nat_type & NAT_TYPE_MASK)
        eps = tuple(endpoints)[:4]
        if not eps or (tuple(rec.endpoints) == eps and rec.nat_type == nat):
            return False
        self.core.update_self(now, endpoints=eps, nat_type=nat)
        return True

    def announce(self, now: float, wall: float) -> list[PortAction]:
        """Our record to every live member now (swim/membership.py `announce`)."""
        self._now = now
        return self.absorb(self.core.announce(now))[0]

    def counters(self) -> dict[str, int]:
        out = {f"swim_{k}": int(v) for k, v in self.core.stats.items()}
        out.update({f"swim_tx_{k}": int(v) for k, v in self.sent.items()})
        return out


def build_membership(
    *,
    identity: Ed25519PrivateKey,
    wg_private: X25519PrivateKey,
    certificate: bytes | None,
    endpoints: Sequence[Endpoint],
    kernel: bool,
    admitter: AdmissionPolicy,
    rng: Rng,
    now: float,
    wall: float,
    config: SwimConfig = DEFAULT_CONFIG,
    routes: Sequence[IPNetwork] = (),
) -> SwimPort:
    """A SWIM core for this node. The incarnation starts at the wall-clock millisecond, so a
    restarted node's record always supersedes the one the mesh still remembers (even after a
    restart within the same second)."""
    core = Membership(
        identity, wg_private, endpoints, admitter, rng, config,
        nat_type=NAT_SPLIT_PORT if kernel else 0,
        certificate=certificate,
        incarnation=int(wall * 1000),
        now=now,
        routes=routes,
    )
    return SwimPort(core)
