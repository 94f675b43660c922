"""Roaming: this node's underlay address changes (DHCP renew, Wi-Fi to LTE) and its NAT mapping
changes, noticed and re-announced (sans-IO; docs/architecture.md#roaming).

    roam = Roaming(hosts=("192.0.2.7",), port=51821, stun=True, now=now)
    acts = roam.tick(now)                 # ProbeUnderlay when a look is due, RestartStun
    acts = roam.observed(now, hosts)      # what the shell found: UnderlayChanged, ...
    acts = roam.stun_finished(now, mapped, nat_type)
    roam.note_event(now)                  # a netlink address/route event: look soon
    out = apply_reannounce(node, membership, a, now, wall)   # for a Reannounce

The shell looks at the host (`ProbeUnderlay`: the local source addresses towards the seeds, or
the global addresses) every `RECHECK` seconds and `SETTLE` seconds after a netlink event, and
hands the answer to `observed`. A different set of hosts is an underlay change: without STUN
the record is re-announced at once (`Reannounce`); with STUN a keepalive goes to every peer
(`ReachOut`, so WireGuard peers roam to the new source on its first authenticated packet), STUN
runs again and the record follows its answer, with the new mapping first. STUN also runs every
`STUN_REFRESH` seconds, since a NAT may change a mapping without any local event; a changed
mapping or NAT type is re-announced the same way.

A re-announcement signs a new record (new incarnation, through the membership API), sends it
to every member at once (a Ping carrying it) and a keepalive to every direct peer. Reactions
are bounded by a token bucket, so a flapping interface cannot make the node flood the mesh.
Nothing here reads the network: every input is local (netlink, the host's own addresses) or an
answer the STUN client has matched to its own request.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from meshguard.mesh.actions import Action
from meshguard.mesh.node import MeshNode
from meshguard.mesh.swim_port import SwimPort
from meshguard.nat.budget import TokenBucket
from meshguard.nat.stun_client import NatType
from meshguard.sansio import Endpoint

RECHECK = 3.0  # seconds between looks at the underlay when netlink says nothing
SETTLE = 0.3  # seconds after a netlink event before looking (an address change is a burst)
STUN_REFRESH = 90.0  # seconds between STUN runs (a NAT mapping can change on its own)
MAX_ENDPOINTS = 4  # endpoints a record carries (wire/gossip.py)


@dataclass(frozen=True, slots=True)
class ProbeUnderlay:
    """The shell: find the local underlay addresses now and call `Roaming.observed`."""


@dataclass(frozen=True, slots=True)
class UnderlayChanged:
    """The local underlay addresses changed (log it: "underlay address changed: ...")."""

    old: tuple[str, ...]
    new: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RestartStun:
    """The shell: run STUN again, with these local endpoints (to recognise a public node)."""

    local: tuple[Endpoint, ...]


@dataclass(frozen=True, slots=True)
class ReachOut:
    """The shell: a keepalive to every direct peer now (they roam to our new source)."""


@dataclass(frozen=True, slots=True)
class Reannounce:
    """The record should carry `endpoints` (and `nat_type`, when STUN has told it); with
    `announce`, tell every member and peer at once (apply_reannounce)."""

    endpoints: tuple[Endpoint, ...]
    nat_type: int | None
    announce: bool
    mapping_changed: bool = False


RoamAction = ProbeUnderlay | UnderlayChanged | RestartStun | ReachOut | Reannounce


@dataclass
class Roaming:
    hosts: tuple[str, ...]  # the underlay addresses found at start-up
    port: int  # the gossip port the endpoints carry
    now: float
    stun: bool = False  # STUN servers configured (the daemon started the first run)
    pinned: tuple[str, ...] = ()  # --announce: the hosts advertised whatever the underlay
    recheck: float = RECHECK
    settle: float = SETTLE
    stun_refresh: float = STUN_REFRESH
    counters: Counter[str] = field(default_factory=Counter)
    # at most 3 reactions at once, then one per 5 s
    budget: TokenBucket = field(default_factory=lambda: TokenBucket(0.2, 3.0))
    mapped: Endpoint | None = None  # the last STUN answer
    nat_type: int | None = None
    _probe_due: float = 0.0
    _stun_due: float = float("inf")
    _pending: bool = False  # changed: the record waits for the STUN answer
    _lost: bool = False  # no underlay address at the last look
    moved: bool = False  # the underlay changed since start-up

    def __post_init__(self) -> None:
        self.hosts = tuple(self.hosts)
        self._probe_due = self.now + self.recheck
        if self.stun:  # the daemon started the first run
            self._stun_due = self.now + self.stun_refresh

    # timers ------------------------------------------------------------------------------

    def note_event(self, now: float) -> None:
        """Netlink reported an address, route or link change: look after `settle`."""
        self.counters["underlay_events"] += 1
        self._probe_due = min(self._probe_due, now + self.settle)

    def next_deadline(self) -> float:
        return min(self._probe_due, self._stun_due)

    def tick(self, now: float) -> list[RoamAction]:
        out: list[RoamAction] = []
        if now >= self._probe_due:
            self._probe_due = now + self.recheck
            out.append(ProbeUnderlay())
        if now >= self._stun_due:
            out.append(self._restart_stun(now))
        return out

    def _restart_stun(self, now: float) -> RestartStun:
        self._stun_due = now + self.stun_refresh
        self.counters["stun_reruns"] += 1
        return RestartStun(self.local_endpoints())

    # what the shell found ----------------------------------------------------------------

    def local_endpoints(self) -> tuple[Endpoint, ...]:
        hosts = self.pinned or self.hosts
        return tuple((h, self.port) for h in hosts[:MAX_ENDPOINTS])

    def endpoints(self) -> tuple[Endpoint, ...]:
        """What the record should carry: the STUN mapping first, then the local endpoints."""
        local = self.local_endpoints()
        if self.mapped is None:
            return local
        return (self.mapped, *(e for e in local if e != self.mapped))[:MAX_ENDPOINTS]

    def observed(self, now: float, hosts: Sequence[str]) -> list[RoamAction]:
        """The underlay addresses the shell found (route sources towards the seeds, else the
        global addresses). None at all (the address is gone, the new one not there yet) is
        no change: the record stays as it is until an address appears."""
        new = tuple(dict.fromkeys(hosts))[:MAX_ENDPOINTS]  # what start-up advertised too
        if not new:
            if not self._lost:
                self.counters["underlay_lost"] += 1
            self._lost = True
            return []
        self._lost = False
        if set(new) == set(self.hosts):
            return []
        if not self.budget.take(now):
            # flapping: look again later; the change is taken then
            self.counters["underlay_changes_deferred"] += 1
            self._probe_due = min(self._probe_due, now + 1.0 / self.budget.rate)
            return []
        old, self.hosts = self.hosts, new
        self.moved = True
        self.counters["underlay_changes"] += 1
        out: list[RoamAction] = [UnderlayChanged(old, new)]
        if self.stun:
            # the old mapping belongs to the old address: the record waits for the new one
            self._pending = True
            self.mapped = None
            out += [ReachOut(), self._restart_stun(now)]
        else:
            out.append(Reannounce(self.endpoints(), None, announce=True))
        return out

    def stun_finished(self, now: float, mapped: Endpoint | None, nat_type: int
                      ) -> list[RoamAction]:
        """A STUN run is over: `mapped` None when no server answered."""
        pending, self._pending = self._pending, False
        first = self.nat_type is None
        if mapped is None:
            if not pending:
                return []  # keep what the record says; the next run may find the servers
            return [Reannounce(self.endpoints(), None, announce=True)]
        if not pending and not first and (mapped, nat_type) == (self.mapped, self.nat_type):
            return []
        changed = not pending and not first
        if changed:
            self.counters["mapping_changes"] += 1
        self.mapped, self.nat_type = mapped, nat_type
        return [Reannounce(self.endpoints(), nat_type, announce=pending or changed,
                           mapping_changed=changed)]


def apply_reannounce(node: MeshNode, membership: SwimPort, a: Reannounce, now: float,
                     wall: float, record_nat: int | None = None) -> list[Action]:
    """Put `a`'s endpoints in this node's record (a new incarnation) and, with `a.announce`,
    send the record to every member and a keepalive to every direct peer. The record's NAT type
    is `record_nat` when given (a router's port mapping can make the node public), else STUN's;
    the hole puncher and the relay take STUN's."""
    nat = a.nat_type if record_nat is None else record_nat
    changed = membership.set_endpoints(now, a.endpoints, nat)
    if a.nat_type is not None:
        behind = a.nat_type != NatType.PUBLIC
        if node.holepunch is not None:
            node.holepunch.set_self(membership.core.record.endpoints, behind_nat=behind)
        if node.relay is not None:
            node.relay.behind_nat = behind
    out: list[Action] = []
    if a.announce:
        if changed:
            node.counters["reannounced"] += 1
            out += membership.announce(now, wall)
        out += reach_out(node, now, wall)
    return out


def reach_out(node: MeshNode, now: float, wall: float) -> list[Action]:
    """A keepalive (a handshake without a session) to every direct peer now: each moves our
    endpoint to the new source on its first authenticated packet. A relayed peer is reached
    through the relay, whose registration of us is the relay core's to renew."""
    dev = node.device
    if dev is None:
        return []
    out: list[Action] = []
    for key in node.peers:
        if node.path_of(key)[0] == "direct":
            out += dev.keepalive_to(key, now, wall)
    return out
