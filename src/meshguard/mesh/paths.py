"""The mesh node's side of path selection: nat/path_select.py's decisions applied to the
node's WireGuard peers, hole puncher and relay (docs/nat-testbed.md#path-selection).

MeshNode (mesh/node.py) calls in here from a few places only:

* `check_paths` from its tick (every `CHECK_EVERY` seconds): reads each peer's counters from
  the peer backend, lets the selector decide, and probes the direct path, falls back to the
  relay or re-schedules the hole puncher;
* `punch_event` for each hole-punch event (succeeded, failed, no rendezvous);
* `relayed_arrival` for each relayed datagram before the device takes it: in the `GRACE`
  after a pair went direct, a datagram that was in flight through the relay is delivered as
  if it came from the direct endpoint (authenticated end to end by WireGuard and the relay
  tags, so this moves nothing an attacker chose), and the relay is not taken up again;
  later, a relayed datagram means the peer moved to the relay, and this node follows;
* `report` for `status` (`MeshNode.path_report`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from meshguard.mesh.actions import Action, MemberView
from meshguard.nat.holepunch import Action as PunchAction
from meshguard.nat.holepunch import PunchFailed, PunchRendezvous, PunchSucceeded
from meshguard.nat.path_select import (
    Decision,
    PathReport,
    PathSelector,
    first_endpoint,
    nat_name,
)
from meshguard.nat.relay import Relay
from meshguard.sansio import Endpoint, SendDatagram
from meshguard.wire.control import format_endpoint

if TYPE_CHECKING:
    from meshguard.mesh.node import MeshNode

log = logging.getLogger(__name__)

__all__ = ["PathReport", "check_paths", "direct_now", "first_endpoint_of", "moved", "punch_event",
           "relayed_arrival", "report", "selector"]


def selector(node: MeshNode) -> PathSelector | None:
    """The node's path selector, made on first use (it needs the hole puncher's Rng). Kernel
    mode has none: the kernel punches there (mesh/kernel_traversal.py)."""
    if node.paths is None and node.holepunch is not None and node.device is not None:
        node.paths = PathSelector(node.holepunch.rng, node.counters)
    return node.paths


def moved(node: MeshNode, now: float, ident: bytes, mode: str, why: str) -> None:
    """The node moved a peer to `mode` itself (e.g. after a failed punch)."""
    sel = selector(node)
    if sel is not None:
        _move(sel, now, ident, mode, why)


def direct_now(node: MeshNode, ident: bytes) -> bool:
    """Whether the peer has a fresh handshake on a direct endpoint (WireGuard roamed it
    there, say, while a punch ran): a failed punch then changes nothing."""
    p = node._punch_lookup().get(ident)
    return p is not None and node._punch_connected(p)


def _member(node: MeshNode, identity: bytes) -> MemberView | None:
    return next((m for m in node.membership.members() if m.identity_key == identity), None)


def _ep(ep: Endpoint | None) -> str:
    return format_endpoint(ep) or "-"


def _move(sel: PathSelector, now: float, ident: bytes, mode: str, why: str) -> None:
    """Tell the selector the node moved the peer to `mode`; log a change of path."""
    old = sel.state(ident)
    sel.moved(now, ident, mode, why)
    if old is None or old[0] != mode:
        log.info("path to %s: %s (%s)", ident.hex()[:12], mode, why)


def check_paths(node: MeshNode, now: float, wall: float) -> list[Action]:
    sel, hp, be = selector(node), node.holepunch, node.backend
    if sel is None or hp is None or be is None or not sel.due(now):
        return []
    hp = node._punch_core(wall)
    rl = node._relay_core(wall)
    assert hp is not None
    out: list[Action] = []
    if sel.own_seen != hp.self_endpoints:
        # our own endpoints changed (STUN, a relay's view): the first endpoints may too
        sel.own_seen = hp.self_endpoints
        out += node.reconcile(wall)
    view = node._punch_lookup()
    sel.forget(p.identity_key for p in node.peers.values())
    for wg, cfg in list(node.peers.items()):
        ident = cfg.identity_key
        hs, rx, tx, ep = be.stats(wg)
        mode = "none" if ep is None else "relayed" if Relay.is_placeholder(ep) else "direct"
        if mode == "direct" and rl is not None and ident in rl.via:
            # WireGuard roamed the peer off the relay (its authenticated traffic came
            # directly): take that path, as a punch would
            m = _member(node, ident)
            rl.stop(ident)
            if m is not None and ep is not None:
                node.punched[wg] = (m.wg_endpoint, ep)
            _move(sel, now, ident, "direct", f"the peer's traffic reached us directly from "
                      f"{_ep(ep)}")
            out += node.reconcile(wall)
        p = view.get(ident)
        fp = None if p is None else (p.endpoints, p.nat_type, hp.self_endpoints, hp.behind_nat)
        before = sel.state(ident)
        o = sel.observe(now, ident, mode, hs, rx, tx, fp)
        after = sel.state(ident)
        if before is not None and after is not None and before[0] != after[0]:
            log.info("path to %s: %s (%s)", ident.hex()[:12], after[0], after[1])
        if o.punch_at is not None:
            hp.schedule(ident, o.punch_at)
        for d in o.decisions:
            dev = node.device
            if d is Decision.PROBE and dev is not None:
                out += node._from_device(dev.new_path(wg, now, wall))
            elif d is Decision.FALL_BACK:
                out += _fall_back(node, sel, ident, wg, now, wall)
    return out


def _fall_back(node: MeshNode, sel: PathSelector, ident: bytes, wg: bytes, now: float,
               wall: float) -> list[Action]:
    rl, hp = node._relay_core(wall), node.holepunch
    if rl is None or hp is None:
        return []
    if ident not in rl.via and not rl.start(ident):
        node.counters["path_no_relay"] += 1
        _move(sel, now, ident, "direct", "the direct path stopped answering and no relay "
                  "has answered yet")
        return []
    log.info("direct path to %s stopped answering: relaying through %s",
             ident.hex()[:12], rl.via[ident].hex()[:12])
    node.punched.pop(wg, None)
    out = node.reconcile(wall)
    dev = node.device
    if dev is not None:
        out += node._from_device(dev.new_path(wg, now, wall, rl.placeholder(ident)))
    _move(sel, now, ident, "relayed", "the direct path stopped answering")
    hp.schedule(ident, sel.after_fallback(now, ident))
    return out


def first_endpoint_of(node: MeshNode, m: MemberView) -> Endpoint | None:
    """The endpoint for a member's first handshake: its LAN address when it is behind our
    own NAT (nat/path_select.py's `first_endpoint`), else its record's endpoint. Only for a
    member with one port for WireGuard and gossip (its endpoints are gossip endpoints)."""
    hp = node.holepunch
    if hp is None or not m.endpoints or m.endpoints[0] != m.wg_endpoint:
        return m.wg_endpoint
    return first_endpoint(m.endpoints, hp.self_endpoints, m.wg_endpoint)


def punch_event(node: MeshNode, ev: PunchAction, now: float) -> list[Action]:
    """Remember a punch's result (a failure sets when the next one is due, and a failure
    that left the peer relayed says so); a `PunchRendezvous` (kernel mode) comes back for
    the shell."""
    if isinstance(ev, PunchRendezvous):
        return [ev]
    sel, hp, rl = selector(node), node.holepunch, node.relay
    if sel is None or hp is None or isinstance(ev, SendDatagram):
        return []
    if isinstance(ev, PunchSucceeded):
        sel.punched(now, ev.identity_key, "succeeded")
        _move(sel, now, ev.identity_key, "direct",
              f"hole punch succeeded at {_ep(ev.endpoint)}")
        return []
    due = sel.punched(now, ev.identity_key,
                      "failed" if isinstance(ev, PunchFailed) else "no rendezvous")
    if due is not None:
        hp.schedule(ev.identity_key, due)
    st = sel.state(ev.identity_key)
    if (isinstance(ev, PunchFailed) and rl is not None and ev.identity_key in rl.via
            and (st is None or st[0] != "relayed")):  # (a relayed peer keeps its reason)
        _move(sel, now, ev.identity_key, "relayed", "the hole punch failed")
    return []


def relayed_arrival(node: MeshNode, rl: Relay, now: float, source: Endpoint, new_path: bool
                    ) -> tuple[Endpoint, bool]:
    """(the source to hand the device, whether the peer is newly relayed) for a relayed
    datagram from placeholder `source`."""
    sel, be = node.paths, node.backend
    ident = rl.peer_of(source)
    if sel is None or be is None or ident is None:
        return source, new_path
    if sel.in_grace(now, ident):
        p = node._punch_lookup().get(ident)
        ep = be.stats(p.wg_key)[3] if p is not None and p.wg_key is not None else None
        if ep is not None and not Relay.is_placeholder(ep):
            rl.stop(ident)  # (the relay core took the peer up again: undo)
            node.counters["path_relayed_in_grace"] += 1
            return ep, False
    if new_path:
        state = sel.state(ident)
        if state is not None and state[0] == "direct":
            node.counters["path_followed_to_relay"] += 1
            hp = node.holepunch
            if hp is not None:
                hp.schedule(ident, sel.after_fallback(now, ident))
        _move(sel, now, ident, "relayed", "the peer's traffic came through the relay")
    return source, new_path


def _own_nat_type(node: MeshNode) -> int | None:
    """Our own record's NAT type, when the membership port shows its record (SwimPort)."""
    record = getattr(getattr(node.membership, "core", None), "record", None)
    nat = getattr(record, "nat_type", None)
    return nat if isinstance(nat, int) else None


def report(node: MeshNode, wg: bytes, now: float, wall: float) -> PathReport:
    peer = node.peers.get(wg)
    be, hp = node.backend, node.holepunch
    rl = node._relay_core(wall)
    own_nat = nat_name(_own_nat_type(node))
    if peer is None:
        return PathReport("none", None, None, None, own_nat, "unknown", None, None, None,
                          "no tunnel: not a trusted live member")
    m = _member(node, peer.identity_key)
    peer_nat = nat_name(m.nat_type if m is not None else None)
    ident = peer.identity_key
    hs, _, _, ep = be.stats(wg) if be is not None else (0.0, 0, 0, peer.endpoint)
    sel = node.paths
    last, age = sel.last_punch(now, ident) if sel is not None else (None, None)
    due = hp.due(ident) if hp is not None else None
    punching = hp is not None and hp.running(ident)
    state = sel.state(ident) if sel is not None else None
    why = state[1] if state is not None else ""
    if ep is not None and Relay.is_placeholder(ep) and rl is not None:
        via = rl.via.get(ident)
        via_ep = rl.relay_endpoint(ident)
        nxt = None if due is None else max(0.0, due - now)
        parts = [f"relayed via {via.hex()[:8] if via else '?'} at {_ep(via_ep)}: "
                 f"{why or 'no direct path'}"]
        if last is not None and age is not None:
            parts.append(f"last punch {last} {age:.0f} s ago")
        parts.append(f"NATs {own_nat}/{peer_nat}")
        if punching:
            parts.append("punching now")
        elif nxt is not None:
            parts.append(f"next punch in {nxt:.0f} s")
        return PathReport("relayed", via_ep, via, via_ep, own_nat, peer_nat, last, age,
                          None if punching else nxt, "; ".join(parts))
    if ep is None:
        return PathReport("none", None, None, None, own_nat, peer_nat, last, age, None,
                          "no endpoint: the member advertises none")
    if not why:
        why = "the advertised endpoint"
    reason = f"direct to {_ep(ep)}: {why}"
    if not hs:
        reason += "; no handshake yet"
    if punching:
        reason += "; punching now"
    elif hp is not None and not hp.behind_nat:
        reason += "; no punch needed (this node is not behind a NAT)"
    elif peer_nat == "public":
        reason += "; no punch needed (the peer is public)"
    return PathReport("direct", ep, None, None, own_nat, peer_nat, last, age, None, reason)
