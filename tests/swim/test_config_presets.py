"""The LAN, WAN and local presets each converge and detect a crash within their own bounds
(deterministic simulator, virtual time; seeds in messages)."""

from __future__ import annotations

import pytest

from meshguard.swim.config import DEFAULT_CONFIG, PRESETS, SwimConfig, lan, local, wan
from meshguard.testing.simnet import SwimCluster


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_converges_and_detects_a_crash_within_its_bounds(name: str) -> None:
    cfg = PRESETS[name]()
    n, seed, window, victim = 12, 21, 1.0, 5
    c = SwimCluster(n, seed, config=cfg)
    c.start(join_window=window)
    bound = window + cfg.join_bound(n)
    t = c.run_until_true(lambda: c.converged(range(n)), limit=bound + 60, step=0.5)
    assert t <= bound, f"{name}: converged at {t:.1f} s > {bound:.1f} s (seed {seed})"
    c.crash(victim)
    t0 = c.net.now
    others = [i for i in range(n) if i != victim]
    bound = cfg.detection_bound(n) + cfg.spread_bound(n)
    t = c.run_until_true(lambda: c.all_see_gone(victim, others), limit=bound + 60)
    assert t - t0 <= bound, f"{name}: detected after {t - t0:.1f} s > {bound:.1f} s (seed {seed})"
    downs = {(obs, r) for _, obs, subj, r in c.down_events if subj == victim}
    assert downs == {(i, "dead") for i in others}, f"{name} (seed {seed})"
    assert all(subj == victim for _, _, subj, _ in c.down_events), f"{name}: false death"


def test_presets_differ_where_their_networks_do() -> None:
    assert DEFAULT_CONFIG == lan() == SwimConfig()  # the daemon runs the LAN preset
    w, lo = wan(), local()
    assert w.probe_interval > lan().probe_interval and w.probe_timeout > lan().probe_timeout
    assert w.suspicion_min(100) > lan().suspicion_min(100)
    assert lo.indirect_checks < lan().indirect_checks
    assert lo.detection_bound(100) < lan().detection_bound(100) < w.detection_bound(100)
    for cfg in (lan(), w, lo):
        assert cfg.probe_timeout < cfg.probe_interval  # the indirect round fits the period
        assert cfg.record_refresh < cfg.record_max_age  # freshness is not a network property
