"""The scale scenarios of bench/swim_sim.py (meshguard.testing.swim_scale) at a small N: one
cluster joins, idles, loses a member and heals a 50/50 partition, each within its SwimConfig
bound (virtual time; seeds in messages)."""

from __future__ import annotations

from meshguard.swim.config import SwimConfig
from meshguard.testing.swim_scale import ScaleRun


def test_join_crash_and_partition_heal_stay_within_their_bounds() -> None:
    n, seed = 48, 31
    run = ScaleRun(n, seed)
    c = run.cluster
    joined = run.join()
    assert joined.within, f"join {joined.measured:.1f} s > {joined.bound:.1f} s (seed {seed})"
    assert joined.note.endswith("false deaths 0"), f"seed {seed}: {joined.note}"
    assert joined.traffic.bytes_per_node_s > 0 and c.net.stats.max_packet <= 1280
    steady = run.steady(20.0)
    assert steady.note == "still converged True", f"seed {seed}"
    # background cost: a probe round trip per period plus a pull per sync interval
    assert steady.traffic.packets_per_node_s < joined.traffic.packets_per_node_s, f"seed {seed}"
    crashed = run.crash(victim=7)
    assert crashed.within, f"crash {crashed.measured:.1f} s > {crashed.bound:.1f} s (seed {seed})"
    assert crashed.note.endswith("other deaths 0"), f"seed {seed}: {crashed.note}"
    assert {obs for _, obs, subj, r in c.down_events if subj == 7 and r == "dead"} == {
        i for i in range(n) if i != 7
    }, f"seed {seed}"
    split = run.partition(hold=150.0)  # longer than dead_reap_after: the halves forget
    assert split.measured < 150.0, f"seed {seed}"
    assert SwimConfig().dead_reap_after < 150.0
    healed = run.heal()
    assert healed.within, f"heal {healed.measured:.1f} s > {healed.bound:.1f} s (seed {seed})"
    assert c.converged(c.live()), f"seed {seed}"
