"""SWIM at scale in the simulator: one cluster through join, steady state, a crash and a 50/50
partition that heals, each scenario measured in virtual time next to its SwimConfig bound.

`bench/swim_sim.py` prints these figures (at 1,000 nodes and more); tests/swim/test_scale.py
runs the same scenarios at a small N and asserts every figure is within its bound. The bounds,
and why each grows as O(log N), are in docs/swim.md ("Scale").

Bandwidth is what the simulated network carried: bytes of every datagram sent (SWIM payload
including its MAC, no IP/UDP headers) divided by the nodes up and by the virtual seconds of the
window, so it is per node and per second of protocol time.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshguard.swim.config import SwimConfig
from meshguard.testing.simnet import SwimCluster


@dataclass(frozen=True, slots=True)
class Traffic:
    """What the network carried in a window of virtual time."""

    seconds: float
    bytes: int
    packets: int
    nodes: int

    @property
    def bytes_per_node_s(self) -> float:
        return self.bytes / self.nodes / self.seconds if self.seconds > 0 else 0.0

    @property
    def packets_per_node_s(self) -> float:
        return self.packets / self.nodes / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Outcome:
    """One scenario: `measured` virtual seconds against `bound`, and the traffic meanwhile."""

    scenario: str
    measured: float
    bound: float
    traffic: Traffic
    note: str = ""

    @property
    def within(self) -> bool:
        return self.measured <= self.bound


class ScaleRun:
    """N members of one SwimCluster taken through the scenarios in order (see module doc)."""

    def __init__(
        self, n: int, seed: int, config: SwimConfig | None = None, join_window: float = 2.0
    ) -> None:
        self.cluster = SwimCluster(n, seed, config=config)
        self.n = n
        self.join_window = join_window
        self._mark_t = 0.0
        self._mark_bytes = 0
        self._mark_packets = 0
        self._live: list[int] = []

    @property
    def config(self) -> SwimConfig:
        return self.cluster.config

    def _mark(self) -> None:
        st = self.cluster.net.stats
        self._mark_t = self.cluster.net.now
        self._mark_bytes = st.bytes_sent
        self._mark_packets = st.sent

    def _traffic(self, nodes: int) -> Traffic:
        st = self.cluster.net.stats
        return Traffic(
            self.cluster.net.now - self._mark_t,
            st.bytes_sent - self._mark_bytes,
            st.sent - self._mark_packets,
            nodes,
        )

    def join(self, limit: float = 600.0) -> Outcome:
        """Everyone starts joining through node 0 within join_window; until all know all.

        `measured` runs from the last join (the moment the last member's Join was answered)
        to convergence, which is what `join_bound` bounds. The seed answers strangers within
        its verification budget (`join_rate` per second after a burst of `join_burst`), so a
        mass join through one seed takes about (N - join_burst) / join_rate seconds plus the
        joiners' retry backoff before the last one is in; the note gives that time and the
        total from the first start.
        """
        c = self.cluster
        n = self.n
        self._mark()
        t_start = c.net.now
        c.start(join_window=self.join_window)
        everyone = range(n)
        end = t_start + limit
        t_joined: float | None = None
        while True:
            if t_joined is None and all(
                c.net.is_up(c.eps[i]) and c.nodes[i].joined for i in everyone
            ):
                t_joined = c.net.now
            if t_joined is not None and c.converged(everyone):
                break
            if c.net.now >= end:
                raise AssertionError(f"join not converged within {limit} s (seed {c.seed})")
            c.net.run_until(min(end, c.net.now + 0.5))
        t = c.net.now
        false = sum(1 for e in c.down_events if e[3] == "dead")
        return Outcome(
            "join",
            t - t_joined,
            self.config.join_bound(n),
            self._traffic(n),
            f"last joined at {t_joined - t_start:.1f} s, all know all at {t - t_start:.1f} s; "
            f"false deaths {false}",
        )

    def steady(self, seconds: float, settle: float | None = None) -> Outcome:
        """Nothing happens for `seconds`: the background cost of probing and anti-entropy.

        Measured after `settle` seconds (default 3 sync intervals), by which the joiners'
        quick anti-entropy pulls and the join's piggyback have died down.
        """
        c = self.cluster
        c.net.run_for(3 * self.config.sync_interval if settle is None else settle)
        self._mark()
        c.net.run_for(seconds)
        live = c.live()
        ok = c.converged(live)
        return Outcome(
            "steady", seconds, seconds, self._traffic(len(live)), f"still converged {ok}"
        )

    def crash(self, victim: int) -> Outcome:
        """`victim` stops; until every other live member holds it dead (or forgot it)."""
        c = self.cluster
        cfg = self.config
        others = [i for i in c.live() if i != victim]
        n = len(others) + 1
        c.crash(victim)
        self._mark()
        t0 = c.net.now
        first: list[float] = []
        key = c.ids[victim]

        def all_gone() -> bool:
            if not first and any(c.nodes[i].state_of(key) == "dead" for i in others):
                first.append(c.net.now)
            return c.all_see_gone(victim, others)

        bound = cfg.detection_bound(n) + cfg.spread_bound(n)
        t = c.run_until_true(all_gone, limit=bound + 120, step=0.25)
        wrong = sum(1 for e in c.down_events if e[3] == "dead" and e[2] != victim)
        return Outcome(
            "crash",
            t - t0,
            bound,
            self._traffic(len(others)),
            f"first dead after {first[0] - t0:.1f} s; other deaths {wrong}",
        )

    def partition(self, hold: float) -> Outcome:
        """The live members split 50/50 (alternately) for `hold` seconds.

        `measured` is the time until each side sees exactly its own half alive, or `hold` if
        that did not happen (no bound: half the mesh failing at once is detected by each
        member's own probes and by accusations sharing the piggyback room, so it takes longer
        than one crash; the note says how many members saw only their half by the end).
        """
        c = self.cluster
        live = c.live()
        a, b = live[0::2], live[1::2]
        self._live = live
        c.net.partition([[c.eps[i] for i in a], [c.eps[i] for i in b]])
        self._mark()
        t_part = c.net.now
        end = t_part + hold
        while not (c.converged(a) and c.converged(b)) and c.net.now < end:
            c.net.run_until(min(end, c.net.now + 1.0))
        t = c.net.now
        c.net.run_until(end)
        alone = sum(1 for side in (a, b) for i in side if c.nodes[i].alive_count() == len(side))
        return Outcome(
            "split",
            t - t_part,
            hold,
            self._traffic(len(live)),
            f"{len(a)}/{len(b)} members; {alone} of {len(live)} see only their half at the end",
        )

    def heal(self) -> Outcome:
        """The partition ends; until every live member sees every other alive (heal_bound)."""
        c = self.cluster
        live = self._live
        c.net.heal()
        self._mark()
        t_heal = c.net.now
        bound = self.config.heal_bound(len(live))
        t = c.run_until_true(lambda: c.converged(live), limit=bound + 300, step=1.0)
        return Outcome("heal", t - t_heal, bound, self._traffic(len(live)))
