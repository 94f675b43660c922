"""Failure detection: one probe per period, direct and then indirect (SWIM section 3.1).

Targets come in randomized round-robin order (each round a fresh shuffle of the live members;
members joining mid-round go to a random place among those not yet probed, see
SwimState.order_insert). A probe is a direct Ping; with no Ack after `probe_timeout`, a PingReq
goes to `indirect_checks` other members, which ping the target and forward its Ack. No ack by
the end of the period: the target is suspected (or, if already suspected by others, our
failure confirms it). Both deadlines stretch with the local health score (awareness.py).
"""

from __future__ import annotations

from meshguard.sansio import Endpoint
from meshguard.swim.awareness import Awareness
from meshguard.swim.broadcast import Piggyback
from meshguard.swim.events import Action
from meshguard.swim.state import ALIVE, LIVE, SUSPECT, Member, SwimState, endpoint_of
from meshguard.swim.updates import Updates
from meshguard.wire.gossip import ACK, PING, PING_REQ, Packet


class Prober:
    def __init__(
        self,
        state: SwimState,
        out: Piggyback,
        updates: Updates,
        awareness: Awareness,
        now: float,
    ) -> None:
        self._s = state
        self._out = out
        self._updates = updates
        self._awareness = awareness
        self._next_probe = now + state.rng.uniform(0, state.config.probe_interval)
        self._target: bytes | None = None
        self._seq = 0
        self._start = 0.0
        self._acked = True
        self._indirect = True
        self._asked: set[bytes] = set()
        # our Ping seq -> (requester, where to answer, its seq, target, expiry)
        self._forwards: dict[int, tuple[bytes, Endpoint, int, bytes, float]] = {}

    def next_deadline(self) -> float:
        t = self._next_probe
        if not self._acked and not self._indirect:
            t = min(t, self._start + self._awareness.scale(self._s.config.probe_timeout))
        return t

    def tick(self, now: float, out: list[Action]) -> None:
        s = self._s
        cfg = s.config
        if (
            not self._acked
            and not self._indirect
            and now >= self._start + self._awareness.scale(cfg.probe_timeout)
        ):
            self._indirect = True
            self._send_indirect(out)
        if now >= self._next_probe:
            if not self._acked and self._target is not None:
                self._awareness.worse()
                m = s.members.get(self._target)
                if m is not None and m.state == ALIVE:
                    s.stats["probe_failed"] += 1
                    self._updates.accuse(now, m, dead=False, out=out)
                elif (
                    m is not None
                    and m.state == SUSPECT
                    and m.suspicion is not None
                    and s.id not in m.suspicion.accusers
                ):
                    s.stats["probe_failed"] += 1
                    self._updates.confirm_by_probe(m)
            self._acked = True
            self._start_probe(now, out)
            self._next_probe = now + self._awareness.scale(cfg.probe_interval)
            if self._forwards:
                for seq in [q for q, f in self._forwards.items() if f[4] <= now]:
                    del self._forwards[seq]

    def on_ping(self, m: Member, p: Packet, src: Endpoint, out: list[Action]) -> None:
        self._out.send(m, Packet(ACK, self._s.id, p.seq, self._s.id), src, out, buddy=True)

    def on_ping_req(
        self, now: float, m: Member, p: Packet, src: Endpoint, out: list[Action]
    ) -> None:
        s = self._s
        target = s.members.get(p.key)
        if target is None or target.state not in LIVE:
            return
        ep = endpoint_of(target)
        if ep is None:
            return
        seq = s.new_seq()
        back = s.reply_to(m, src)
        if back is None:
            return
        self._forwards[seq] = (m.key, back, p.seq, p.key, now + s.config.probe_interval)
        self._out.send(target, Packet(PING, s.id, seq), ep, out, buddy=True)

    def on_ack(self, m: Member, p: Packet, out: list[Action]) -> None:
        s = self._s
        if (
            not self._acked
            and p.seq == self._seq
            and p.key == self._target
            and (m.key == self._target or m.key in self._asked)
        ):
            self._acked = True
            s.stats["probe_acked"] += 1
            self._awareness.better()
            return
        f = self._forwards.get(p.seq)
        if f is not None and f[3] == m.key and p.key == m.key:
            del self._forwards[p.seq]
            req_key, req_ep, req_seq, target, _ = f
            requester = s.members.get(req_key)
            if requester is not None:
                self._out.send(requester, Packet(ACK, s.id, req_seq, target), req_ep, out)

    def _start_probe(self, now: float, out: list[Action]) -> None:
        s = self._s
        target = None
        for _ in range(2):
            while s.order_idx < len(s.order):
                k = s.order[s.order_idx]
                s.order_idx += 1
                m = s.members.get(k)
                if m is not None and m.state in LIVE and m.record.endpoints:
                    target = m
                    break
            if target is not None:
                break
            s.order = [k for k, m in s.members.items() if m.state in LIVE]
            s.rng.shuffle(s.order)  # type: ignore[arg-type]
            s.order_idx = 0
        if target is None:
            self._target = None
            return
        self._target = target.key
        self._seq = s.new_seq()
        self._start = now
        self._acked = False
        self._indirect = False
        self._asked = set()
        self._out.send(target, Packet(PING, s.id, self._seq), endpoint_of(target), out)

    def _send_indirect(self, out: list[Action]) -> None:
        s = self._s
        target = self._target
        if target is None:
            return
        k = s.config.indirect_checks
        # k distinct alive members other than the target, uniformly: drawn from the probe
        # order (every live member once) without scanning the table; if that finds too few
        # (few alive among many), from a scan, which asks all when there are at most k.
        cands: list[Member] = []
        order = s.order
        if len(order) > 2 * k:
            for _ in range(4 * k):
                m = s.members.get(order[s.rng.randrange(len(order))])
                if m is not None and m.state == ALIVE and m.key != target and m not in cands:
                    cands.append(m)
                    if len(cands) == k:
                        break
        if len(cands) < k:
            cands = [m for m in s.members.values() if m.state == ALIVE and m.key != target]
            if len(cands) > k:
                picked = []
                for _ in range(k):
                    picked.append(cands.pop(s.rng.randrange(len(cands))))
                cands = picked
        for m in cands:
            self._asked.add(m.key)
            pkt = Packet(PING_REQ, s.id, self._seq, target)
            self._out.send(m, pkt, endpoint_of(m), out)
