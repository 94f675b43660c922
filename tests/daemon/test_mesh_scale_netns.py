"""Six real `meshguard up` daemons on one bridge, two of them seeds (marked netns).

The testbed is meshguard.testing.daemon_mesh, the one bench/mesh_scale.py runs at 50 nodes:
every node must list every other as an alive member with a tunnel, every ordered pair must
answer a ping over the mesh, and closing the testbed must leave nothing behind.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from meshguard.testing.daemon_mesh import DaemonMesh, Pair
from meshguard.testing.netns import netns_skip_reason, uapi_socket_path

from .meshnet import run_cli

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(netns_skip_reason() is not None, reason=str(netns_skip_reason())),
]

N = 6


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                         check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def test_six_daemons_form_a_full_mesh(tmp_path: Path) -> None:
    with DaemonMesh(N, tmp_path, seeds=2) as mesh:
        tag = mesh.tag
        mesh.start()

        def full_membership() -> bool:
            views = mesh.views()
            return not mesh.missing(views, "alive") and not mesh.missing(views, "tunnels")

        mesh.wait(full_membership, 90, "every node to list every other alive, with a tunnel")

        pending: list[Pair] = mesh.all_pairs()

        def all_reachable() -> bool:
            nonlocal pending
            pending = mesh.ping_pairs(pending)
            return not pending

        mesh.wait(all_reachable, 30, "every ordered pair to answer a ping over the mesh")

        # `meshguard status --json`, the command itself, on one node agrees with every
        # node's own view of its mesh address
        views = mesh.views()
        m = mesh.members[N - 1]
        res = run_cli(["status", "--interface", m.iface, "--json"], mesh.daemon_env(m), m.ns)
        assert res.returncode == 0, res.stderr
        listed = {e["identity_key"]: e for e in json.loads(res.stdout)["members"]}
        for other in mesh.members[:-1]:
            entry = listed.get(other.identity_b64)
            assert entry is not None, f"{m.name} does not list {other.name}"
            assert entry["state"] == "alive" and entry["tunnel"] and entry["trusted"]
            assert entry["mesh_ipv4"] == views[other.index].mesh_ipv4
            assert entry["endpoint"] == f"{other.lan_ip}:51821"
        assert len(listed) == N - 1
        ifaces = [x.iface for x in mesh.members]
    assert not [n for n in _namespaces() if tag in n]
    assert not [i for i in ifaces if Path(uapi_socket_path(i)).exists()]
