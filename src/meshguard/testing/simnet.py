"""A discrete-event network simulator for sans-IO protocol cores.

Virtual time, one event heap, everything drawn from one seeded `random.Random`, so a run is
reproducible from its seed (put `net.seed` in assertion messages). Links have a seeded base
latency plus per-packet jitter (which reorders packets), independent loss and duplication;
partitions split the endpoints into groups that cannot talk; nodes can crash (their packets and
timers vanish) and restart as a fresh object.

A simulated node is any sans-IO core (sansio.Core): `receive(now, wall, data, src)`,
`tick(now, wall)` and `next_deadline()`. The simulated wall clock is the virtual time. A
`SendDatagram` action is sent; any other action is handed to `on_event(now, endpoint, action)`.
"""

from __future__ import annotations

import dataclasses
import functools
import heapq
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from meshguard.crypto.hashes import mac
from meshguard.crypto.keys import Ed25519PrivateKey, X25519PrivateKey
from meshguard.sansio import Core, Endpoint, SendDatagram
from meshguard.swim.config import SwimConfig
from meshguard.swim.events import MemberDown
from meshguard.swim.membership import Membership
from meshguard.swim.records import CryptoCache
from meshguard.testing.rng import SeededRng
from meshguard.wire.gossip import PING, Entry, Packet, encode_body

_DELIVER = 0
_TIMER = 1
_CALL = 2


SimNode = Core[object]

# A heap event's payload: a datagram and its source (_DELIVER), a scripted call (_CALL), or
# nothing (_TIMER).
_Payload = tuple[bytes, Endpoint] | Callable[[], None] | None


@dataclass
class SimStats:
    sent: int = 0
    delivered: int = 0
    lost: int = 0
    partitioned: int = 0
    to_crashed: int = 0
    duplicated: int = 0
    bytes_sent: int = 0
    max_packet: int = 0
    by_type: dict[int, int] = field(default_factory=dict)


class SimNet:
    def __init__(
        self,
        seed: int,
        *,
        latency: tuple[float, float] = (0.002, 0.040),
        jitter: float = 0.005,
        loss: float = 0.0,
        duplicate: float = 0.0,
        start: float = 0.0,
        on_event: Callable[[float, Endpoint, object], None] | None = None,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.latency = latency
        self.jitter = jitter
        self.loss = loss
        self.duplicate = duplicate
        self.now = start
        self.on_event = on_event
        self.stats = SimStats()
        self.nodes: dict[Endpoint, SimNode] = {}
        self._down: set[Endpoint] = set()
        self._group: dict[Endpoint, int] = {}
        self._link: dict[tuple[Endpoint, Endpoint], float] = {}
        self._heap: list[tuple[float, int, int, Endpoint, _Payload]] = []
        self._timer_at: dict[Endpoint, float] = {}
        self._seq = 0
        self.drop_filter: Callable[[Endpoint, Endpoint, bytes], bool] | None = None

    # -- topology ------------------------------------------------------------------------------

    def add(self, ep: Endpoint, node: SimNode, actions: Iterable[object] = ()) -> None:
        """Attach a node at `ep` (replacing a crashed one) and perform its initial actions."""
        self.nodes[ep] = node
        self._down.discard(ep)
        self._timer_at.pop(ep, None)
        self._perform(ep, list(actions))
        self._schedule(ep)

    def crash(self, ep: Endpoint) -> None:
        """The node stops: no timers, packets to it vanish."""
        self._down.add(ep)
        self._timer_at.pop(ep, None)

    def is_up(self, ep: Endpoint) -> bool:
        return ep in self.nodes and ep not in self._down

    def partition(self, groups: Iterable[Iterable[Endpoint]]) -> None:
        """Only endpoints in the same group can talk (endpoints in no group form group -1)."""
        self._group = {}
        for i, g in enumerate(groups):
            for ep in g:
                self._group[ep] = i

    def heal(self) -> None:
        self._group = {}

    def inject(self, data: bytes, src: Endpoint, dst: Endpoint, delay: float = 0.0) -> None:
        """Put an arbitrary datagram on the wire (attacker, spoofed source...)."""
        self._push(self.now + delay, _DELIVER, dst, (data, src))

    def call_at(self, when: float, fn: Callable[[], None]) -> None:
        """Run `fn()` at virtual time `when` (scripted joins, crashes, partitions)."""
        self._push(when, _CALL, ("", 0), fn)

    # -- running -------------------------------------------------------------------------------

    def run_until(self, t: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= t:
            when, _, kind, ep, payload = heapq.heappop(heap)
            self.now = when
            if kind == _CALL:
                assert callable(payload)
                payload()
                continue
            if ep in self._down:
                if kind == _DELIVER:
                    self.stats.to_crashed += 1
                continue
            node = self.nodes.get(ep)
            if node is None:
                continue
            actions: Sequence[object]
            if kind == _DELIVER:
                assert isinstance(payload, tuple)
                data, src = payload
                self.stats.delivered += 1
                actions = node.receive(when, when, data, src)
            else:
                if self._timer_at.get(ep) != when:
                    continue
                del self._timer_at[ep]
                actions = node.tick(when, when)
            if actions:
                self._perform(ep, actions)
            self._schedule(ep)
        self.now = max(self.now, t)

    def run_for(self, dt: float) -> None:
        self.run_until(self.now + dt)

    # -- internals -----------------------------------------------------------------------------

    def _push(self, when: float, kind: int, ep: Endpoint, payload: _Payload) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, kind, ep, payload))

    def _schedule(self, ep: Endpoint) -> None:
        node = self.nodes[ep]
        d = node.next_deadline()
        if d is None:
            return
        d = max(d, self.now)
        cur = self._timer_at.get(ep)
        if cur is not None and cur <= d:
            return
        self._timer_at[ep] = d
        self._push(d, _TIMER, ep, None)

    def _perform(self, ep: Endpoint, actions: Sequence[object]) -> None:
        for a in actions:
            if isinstance(a, SendDatagram):
                self._transmit(ep, a.endpoint, a.data)
            elif self.on_event is not None:
                self.on_event(self.now, ep, a)

    def _transmit(self, src: Endpoint, dst: Endpoint, data: bytes) -> None:
        st = self.stats
        st.sent += 1
        st.bytes_sent += len(data)
        if len(data) > st.max_packet:
            st.max_packet = len(data)
        t0 = data[0] if data else -1
        st.by_type[t0] = st.by_type.get(t0, 0) + 1
        if self._group and self._group.get(src, -1) != self._group.get(dst, -1):
            st.partitioned += 1
            return
        if self.drop_filter is not None and self.drop_filter(src, dst, data):
            st.lost += 1
            return
        r = self.rng
        if self.loss and r.random() < self.loss:
            st.lost += 1
            return
        base = self._link.get((src, dst))
        if base is None:
            base = r.uniform(*self.latency)
            self._link[(src, dst)] = base
        self._push(self.now + base + r.random() * self.jitter, _DELIVER, dst, (data, src))
        if self.duplicate and r.random() < self.duplicate:
            st.duplicated += 1
            self._push(self.now + base + r.random() * self.jitter * 4, _DELIVER, dst, (data, src))


# -- SWIM clusters on a SimNet ---------------------------------------------------------------


class KeySetAdmission:
    """Admission by a set of identity keys (the simulation's stand-in for a TrustStore)."""

    def __init__(self, keys: Iterable[bytes] = ()) -> None:
        self.keys = set(keys)
        self.calls = 0

    def admit(self, node_key: bytes, certificate: bytes | None, now_wall: float) -> bool:
        self.calls += 1
        return node_key in self.keys


class SwimCluster:
    """N SWIM members on one SimNet; node 0 is the seed everyone joins through.

    All members share one `CryptoCache` (a pure-function memo of Ed25519 verification, record
    parsing and pair-key derivation), so each record is verified once per simulation rather
    than once per node; each node still performs every check.
    """

    def __init__(
        self,
        n: int,
        seed: int,
        *,
        config: SwimConfig | None = None,
        loss: float = 0.0,
        duplicate: float = 0.0,
        latency: tuple[float, float] = (0.002, 0.040),
    ) -> None:
        self.n = n
        self.seed = seed
        self.config = config if config is not None else SwimConfig()
        self.net = SimNet(
            seed, loss=loss, duplicate=duplicate, latency=latency, on_event=self._on_event
        )
        self.cache = CryptoCache(max_entries=None)
        keyrng = random.Random(seed ^ 0x5EED)
        self.id_keys = [Ed25519PrivateKey(keyrng.randbytes(32)) for _ in range(n)]
        self.wg_keys = [X25519PrivateKey.generate(keyrng.randbytes(32)) for _ in range(n)]
        self.ids = [k.public_key.raw for k in self.id_keys]
        self.index = {k: i for i, k in enumerate(self.ids)}
        self.eps: list[Endpoint] = [
            (f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}", 51821) for i in range(n)
        ]
        self.ep_index = {ep: i for i, ep in enumerate(self.eps)}
        self.admission = KeySetAdmission(self.ids)
        self.nodes: list[Membership] = [self._make(i, 0) for i in range(n)]
        self.events: list[tuple[float, int, object]] = []
        self.down_events: list[tuple[float, int, int, str]] = []  # (t, observer, subject, reason)
        self.record_events = False

    def _make(self, i: int, incarnation: int) -> Membership:
        return Membership(
            self.id_keys[i],
            self.wg_keys[i],
            [self.eps[i]],
            self.admission,
            SeededRng(self.seed * 100_003 + i * 7 + incarnation),
            self.config,
            incarnation=incarnation,
            cache=self.cache,
            now=self.net.now,
        )

    def _on_event(self, now: float, ep: Endpoint, action: object) -> None:
        if isinstance(action, MemberDown):
            subj = self.index.get(action.record.identity, -1)
            self.down_events.append((now, self.ep_index[ep], subj, action.reason))
        if self.record_events:
            self.events.append((now, self.ep_index[ep], action))

    def start(self, join_window: float = 1.0, members: Iterable[int] | None = None) -> None:
        """Start the seed now and every other node at a random time within join_window."""
        idx = list(range(self.n)) if members is None else list(members)
        r = random.Random(self.seed ^ 0x10AD)
        for i in idx:
            if i == 0:
                self.net.add(self.eps[0], self.nodes[0])
                continue
            t = self.net.now + r.uniform(0, join_window)
            self.net.call_at(t, functools.partial(self._start_one, i))

    def _start_one(self, i: int) -> None:
        node = self.nodes[i]
        self.net.add(self.eps[i], node, node.join([self.eps[0]], self.net.now))

    def crash(self, i: int) -> None:
        self.net.crash(self.eps[i])

    def restart(self, i: int, incarnation: int = 0) -> None:
        self.nodes[i] = self._make(i, incarnation)
        self._start_one(i)

    def live(self) -> list[int]:
        return [i for i in range(self.n) if self.net.is_up(self.eps[i])]

    def converged(self, members: Iterable[int] | None = None, strict: bool = True) -> bool:
        """Every given live node sees exactly the given live nodes alive.

        strict=False also accepts "suspect" (under packet loss someone is always suspected).
        """
        ok = ("alive",) if strict else ("alive", "suspect")
        idx = list(self.live() if members is None else members)
        want = len(idx)
        if any(self.nodes[i].alive_count() != want for i in idx):
            return False
        for i in idx:
            node = self.nodes[i]
            for j in idx:
                if j != i and node.state_of(self.ids[j]) not in ok:
                    return False
        return True

    def all_see_gone(self, subject: int, observers: Iterable[int]) -> bool:
        key = self.ids[subject]
        return all(self.nodes[i].state_of(key) in ("dead", "left", None) for i in observers)

    # -- an attacker holding member keys (security tests) --------------------------------------

    def authentic(self, sender: int, receiver: int, packet: Packet) -> bytes:
        """`packet` as member `sender` would MAC it for `receiver`."""
        key = self.cache.pair_key(self.wg_keys[sender], self.ids[sender],
                                  self.wg_keys[receiver].public_key.raw, self.ids[receiver])
        assert key is not None
        body = encode_body(dataclasses.replace(packet, sender=self.ids[sender]))
        return bytes(body + mac(key, body))

    def gossip_from(self, sender: int, entries: tuple[Entry, ...]) -> None:
        """Member `sender` tells every other member `entries` (in an authentic Ping)."""
        for r in range(self.n):
            if r != sender:
                pkt = Packet(PING, self.ids[sender], 99, entries=entries)
                self.net.inject(self.authentic(sender, r, pkt), self.eps[sender], self.eps[r])

    def total(self, stat: str) -> int:
        """A stats counter summed over every node."""
        return sum(int(n.stats[stat]) for n in self.nodes)

    def watch(self, dst: Endpoint) -> list[bytes]:
        """Record (without dropping) every datagram sent to `dst` from now on."""
        seen: list[bytes] = []

        def tap(src: Endpoint, to: Endpoint, data: bytes) -> bool:
            if to == dst:
                seen.append(data)
            return False

        self.net.drop_filter = tap
        return seen

    def run_until_true(self, pred: Callable[[], bool], limit: float, step: float = 0.25) -> float:
        """Advance in steps until pred() holds; returns the virtual time or raises."""
        end = self.net.now + limit
        while True:
            if pred():
                return self.net.now
            if self.net.now >= end:
                raise AssertionError(f"condition not reached within {limit} s (seed {self.seed})")
            self.net.run_until(min(end, self.net.now + step))
