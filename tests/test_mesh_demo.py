"""The README's main command: the mesh demo builds a real mesh, pings every pair, cleans up."""

from __future__ import annotations

import subprocess
import sys

import pytest

from meshguard.testing.netns import netns_skip_reason

pytestmark = pytest.mark.netns


@pytest.mark.skipif(netns_skip_reason() is not None, reason=str(netns_skip_reason()))
def test_mesh_demo_runs_and_cleans_up() -> None:
    before = set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                                check=True).stdout.split())
    res = subprocess.run([sys.executable, "-m", "meshguard.demo", "--nodes", "3"],
                         capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "all 6 tunnels up" in res.stdout
    assert res.stdout.count("v4+v6") == 6, res.stdout
    after = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                           check=True).stdout
    assert not [n for n in after.split() if n.startswith("mgdemo") and n not in before]
