"""Applying membership updates: records and accusations, suspicion timers and reaping.

The state machine of a member, as this node sees it (SWIM section 4.2, Lifeguard):

    (unknown) --record--> alive --Suspect/Dead notice, failed probe--> suspect
    suspect --timeout, or dead_quorum Dead notices--> dead --dead_reap_after--> (reaped)
    suspect/dead --newer record (the subject refutes)--> alive
    alive/suspect --record with the left flag--> left --dead_reap_after--> (reaped)

Records are signed by their subject and ordered by incarnation (a newer one wins, an equal but
different one is equivocation and ignored); accusations are signed by a live member and count
only at the subject's current incarnation. Each accepted change is put on the piggyback queue:
refutations, accusations and leaves as critical, other new records as urgent, records learnt by
anti-entropy as normal (in spare room only).
"""

from __future__ import annotations

import heapq
from collections import deque

from meshguard.swim.awareness import Awareness
from meshguard.swim.broadcast import CRITICAL, NORMAL, URGENT, BroadcastQueue
from meshguard.swim.events import Action, MemberDown, MemberUp, MemberUpdated
from meshguard.swim.records import is_admitted, sign_accusation
from meshguard.swim.state import ALIVE, DEAD, LEFT, LIVE, SUSPECT, Member, SwimState, endpoint_of
from meshguard.swim.suspicion import Suspicion
from meshguard.wire.gossip import TAG_DEAD, TAG_RECORD, TAG_SUSPECT, Entry, encode_accusation


class Updates:
    def __init__(self, state: SwimState, queue: BroadcastQueue, awareness: Awareness) -> None:
        self._s = state
        self._queue = queue
        self._awareness = awareness
        self._susp_heap: list[tuple[float, int, bytes, int]] = []
        self._reap_queue: deque[tuple[float, bytes]] = deque()
        self._heap_ctr = 0

    def bump_self(self, inc: int) -> None:
        """Sign our record again (see SwimState.resign) and gossip it."""
        s = self._s
        s.resign(inc)
        self._queue.put(s.id, (TAG_RECORD, s.raw))

    def confirm_by_probe(self, m: Member) -> None:
        """Our own failed probe confirms someone else's suspicion of `m` (Lifeguard): the
        timeout shrinks here, and our signed confirmation shrinks it elsewhere."""
        s = self._s
        assert m.suspicion is not None
        if m.suspicion.confirm(s.id):
            s.stats["confirmed"] += 1
            acc = sign_accusation(s.key, False, m.key, m.suspicion.incarnation)
            self.push_suspicion(m)
            self._queue.put(m.key, encode_accusation(acc))

    def next_deadline(self) -> float:
        t = float("inf")
        if self._susp_heap:
            t = self._susp_heap[0][0]
        if self._reap_queue:
            t = min(t, self._reap_queue[0][0] + self._s.config.dead_reap_after)
        return t

    def tick(self, now: float, out: list[Action]) -> None:
        """Expired suspicions become deaths; dead and left members are reaped."""
        s = self._s
        while self._susp_heap and self._susp_heap[0][0] <= now:
            _, _, key, inc = heapq.heappop(self._susp_heap)
            m = s.members.get(key)
            if (
                m is not None
                and m.state == SUSPECT
                and m.suspicion is not None
                and m.suspicion.incarnation == inc
                and m.suspicion.deadline() <= now
            ):
                s.stats["declared_dead"] += 1
                self.accuse(now, m, dead=True, out=out)
        while self._reap_queue and self._reap_queue[0][0] + s.config.dead_reap_after <= now:
            since, key = self._reap_queue.popleft()
            m = s.members.get(key)
            if m is not None and m.state in (DEAD, LEFT) and m.since == since:
                ep = endpoint_of(m)
                s.remove(m)
                s.tombs[key] = max(m.record.incarnation, m.state_inc)
                if ep is not None:
                    s.graveyard.append(ep)
                s.stats["reaped"] += 1

    def apply_entries(
        self, now: float, entries: tuple[Entry, ...], out: list[Action], rebroadcast: bool
    ) -> None:
        for tag, raw in entries:
            if tag == TAG_RECORD:
                self.apply_record(now, raw, out, rebroadcast)
            else:
                self.apply_accusation(now, tag == TAG_DEAD, raw, out)

    def apply_record(self, now: float, raw: bytes, out: list[Action], rebroadcast: bool) -> None:
        s = self._s
        ident = raw[4:36]
        inc = int.from_bytes(raw[36:44], "little")
        if ident == s.id:
            if (inc > s.inc or (inc == s.inc and raw != s.raw)) and (
                s.cache.record_valid(raw)
            ):
                # A newer (or conflicting) record of ours circulates: we restarted. Outbid it.
                s.stats["self_outbid"] += 1
                self.bump_self(max(inc, s.inc) + 1)
            return
        m = s.members.get(ident)
        if m is not None:
            known = m.record.incarnation
            if inc < known:
                s.stats["stale_record"] += 1
                return
            if inc == known:
                if raw != m.raw:
                    s.stats["equivocation"] += 1
                return
            if m.state in (SUSPECT, DEAD) and inc <= m.state_inc:
                s.stats["stale_record"] += 1
                return
        elif ident in s.rejected:
            s.stats["not_admitted"] += 1
            return
        elif inc < s.tombs.get(ident, -1):
            # Older than what a reaped member last said (its latest record may come back: a
            # member on the far side of a partition never heard it was declared dead).
            s.stats["stale_record"] += 1
            return
        if not s.record_fresh(raw):
            return
        wg = raw[44:76]
        owner = s.wg_owner.get(wg)
        if (owner is not None and owner != ident) or wg == s.wg.public_key.raw:
            # A WireGuard key belongs to one identity: a record claiming another's is refused.
            s.stats["wg_key_taken"] += 1
            return
        refutes = m is not None and m.state in (SUSPECT, DEAD)
        parsed = s.cache.record(raw)
        if parsed is None:
            s.stats["malformed"] += 1
            return
        if not s.cache.record_valid(raw):
            s.stats["bad_signature"] += 1
            return
        # The table keeps the memo's copies of the bytes (shared by every packet that carried
        # this record version), not slices of the packet at hand.
        rec, raw, prefix = parsed
        ident = rec.identity
        if m is None:
            if rec.left:
                return
            if not s.admit(ident, rec.certificate):
                return
            m = Member(ident, rec, raw, now)
            s.members[ident] = m
            s.wg_owner[rec.wg_public] = ident
            s.tombs.pop(ident, None)
            s.by_prefix[prefix] = m
            s.live_add(m)
            s.order_insert(ident)
            out.append(MemberUp(rec))
        else:
            old_state = m.state
            was_live = old_state in LIVE
            if not s.admit(ident, rec.certificate):
                # Every new record is checked against trust again (a revoked certificate).
                s.remove(m)
                self._queue.drop(ident)
                if was_live:
                    out.append(MemberDown(m.record, "untrusted"))
                return
            if was_live:
                s.live_remove(m)
            s.dead.discard(ident)
            m.sync_in = 0
            m.heard = False  # a new incarnation may have forgotten us
            if rec.wg_public != m.record.wg_public:
                m.pair_key = None
                if s.wg_owner.get(m.record.wg_public) == ident:
                    del s.wg_owner[m.record.wg_public]
                s.wg_owner[rec.wg_public] = ident
            m.record = rec
            m.raw = raw
            m.state_inc = inc
            m.suspicion = None
            m.accusation = None
            if rec.left:
                m.state = LEFT
                m.since = now
                self._reap_queue.append((now, ident))
                if was_live:
                    out.append(MemberDown(rec, "left"))
            else:
                m.state = ALIVE
                s.live_add(m)
                if was_live:
                    out.append(MemberUpdated(rec))
                else:
                    m.since = now
                    s.order_insert(ident)
                    out.append(MemberUp(rec))
        if rebroadcast or rec.left or refutes:
            # A refutation races the suspicion timeouts elsewhere: it rides as critical.
            self._queue.put(ident, (TAG_RECORD, raw), CRITICAL if rec.left or refutes else URGENT)
        elif (
            out
            and isinstance(out[-1], MemberUp)
            and (self._queue.normal_count() < s.config.quiet_queue_cap)
        ):
            # A member new to us, learnt by anti-entropy: spread it in spare piggyback room
            # (never ahead of accusations, refutations, joins or leaves).
            self._queue.put(ident, (TAG_RECORD, raw), NORMAL)

    def apply_accusation(self, now: float, dead: bool, raw: bytes, out: list[Action]) -> None:
        """Suspect and Dead notices count only at the subject's current incarnation, and only
        from a live, admitted member. A single notice never kills: a Dead notice about a member
        we think alive starts a suspicion (which the subject refutes if it is alive); it dies
        when our own suspicion times out, or at once when `dead_quorum` distinct members have
        declared it dead."""
        s = self._s
        subject = raw[0:32]
        accuser = raw[40:72]
        inc = int.from_bytes(raw[32:40], "little")
        if accuser == subject or accuser == s.id:
            return
        am = s.members.get(accuser)
        if am is None or am.state not in LIVE:
            s.stats["accuser_not_member"] += 1
            return
        if subject == s.id:
            if inc != s.inc:
                s.stats["accusation_not_current"] += 1
                return
            if not s.cache.accusation_valid(dead, raw):
                s.stats["bad_signature"] += 1
                return
            s.stats["refuted"] += 1
            self._awareness.worse()
            self.bump_self(s.inc + 1)
            return
        m = s.members.get(subject)
        if m is None or m.state in (LEFT, DEAD):
            return
        if inc != m.record.incarnation:
            s.stats["accusation_not_current"] += 1
            return
        entry: Entry = (TAG_DEAD if dead else TAG_SUSPECT, raw)
        sus = m.suspicion
        if m.state == SUSPECT and sus is not None:
            if accuser in (sus.dead if dead else sus.accusers):
                return
            if not s.cache.accusation_valid(dead, raw):
                s.stats["bad_signature"] += 1
                return
            new = sus.confirm(accuser)
            if dead:
                sus.dead.add(accuser)
                if len(sus.dead) >= s.config.dead_quorum:
                    s.stats["dead_by_quorum"] += 1
                    self._set_accused(now, m, True, inc, accuser, entry, out)
                    return
            elif not new:
                return  # beyond k confirmations: the timeout cannot shrink, nothing to spread
            self.push_suspicion(m)
            self._queue.put(subject, entry)
            return
        if not s.cache.accusation_valid(dead, raw):
            s.stats["bad_signature"] += 1
            return
        self._set_accused(now, m, False, inc, accuser, entry, out)
        if dead:
            s.stats["dead_notice_suspected"] += 1
            assert m.suspicion is not None
            m.suspicion.dead.add(accuser)

    def _set_accused(
        self,
        now: float,
        m: Member,
        dead: bool,
        inc: int,
        accuser: bytes,
        entry: Entry,
        out: list[Action],
    ) -> None:
        s = self._s
        was_live = m.state in LIVE
        m.state_inc = inc
        m.accusation = entry
        if dead:
            if was_live:
                s.live_remove(m)
            m.state = DEAD
            if endpoint_of(m) is not None:
                s.dead.add(m.key)
            m.suspicion = None
            m.since = now
            self._reap_queue.append((now, m.key))
            if was_live:
                out.append(MemberDown(m.record, "dead"))
        else:
            n = 1 + s.n_live
            cfg = s.config
            m.state = SUSPECT
            m.suspicion = Suspicion(
                now,
                inc,
                accuser,
                cfg.suspicion_min(n),
                cfg.suspicion_max(n),
                cfg.expected_confirmations(n),
            )
            self.push_suspicion(m)
        self._queue.put(m.key, entry)

    def push_suspicion(self, m: Member) -> None:
        assert m.suspicion is not None
        self._heap_ctr += 1
        heapq.heappush(
            self._susp_heap,
            (m.suspicion.deadline(), self._heap_ctr, m.key, m.suspicion.incarnation),
        )

    def accuse(self, now: float, m: Member, dead: bool, out: list[Action]) -> None:
        s = self._s
        inc = m.state_inc if m.state == SUSPECT else m.record.incarnation
        acc = sign_accusation(s.key, dead, m.key, inc)
        self._set_accused(now, m, dead, inc, s.id, encode_accusation(acc), out)

    def reevaluate_admission(self, wall: float) -> list[Action]:
        """Ask the admission policy again about every member; drop those no longer admitted."""
        s = self._s
        s.wall = wall
        s.rejected.clear()
        out: list[Action] = []
        for m in list(s.members.values()):
            ok = is_admitted(s.admission.admit(m.key, m.record.certificate, s.wall))
            if ok:
                continue
            was_live = m.state in LIVE
            s.remove(m)
            s.rejected[m.key] = None
            self._queue.drop(m.key)
            if was_live:
                out.append(MemberDown(m.record, "untrusted"))
        return out

