"""daemon/route_manager.py without namespaces: the plan becomes the OS state it asks for, the
kernel device gets the exit table's fwmark and the carriers' prefixes."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from meshguard.daemon.kernel_runner import KernelRunner
from meshguard.daemon.mesh_daemon import DaemonConfig, MeshDaemon
from meshguard.daemon.route_manager import os_routes, tunnel_marker
from meshguard.mesh.node import PeerConfig, PeerUp
from meshguard.mesh.routes import RouteOptions, RoutePlan

from .helpers import RecordingKernel

NET = ipaddress.ip_network
KEY = b"\x42" * 32


def test_the_plan_becomes_the_os_state() -> None:
    plan = RoutePlan(subnets=((NET("10.20.0.0/24"), KEY),), exit_via=KEY,
                     bypass=(NET("192.0.2.1/32"),), carried=(NET("10.30.0.0/24"),))
    want = os_routes(plan, RouteOptions(exit_node="gw", exit_node_allow_lan_access=True))
    assert want.subnets == {NET("10.20.0.0/24")} and want.exit and want.allow_lan
    assert want.bypass == {NET("192.0.2.1/32")}
    assert want.forward and not want.masquerade_all
    assert want.masquerade_to == {NET("10.30.0.0/24")}
    served = os_routes(RoutePlan(exit_served=True), RouteOptions())
    assert served.forward and served.masquerade_all and not served.exit
    assert not os_routes(RoutePlan(), RouteOptions()).forward


def test_kernel_mode_gets_the_fwmark_and_the_exit_prefixes(tmp_path: Path) -> None:
    d = MeshDaemon(DaemonConfig("mgk-test", 51821, [], kernel=True, run_dir=tmp_path,
                                config_dir=tmp_path, env={}))
    k = RecordingKernel()
    runner = d.runner
    assert isinstance(runner, KernelRunner)
    runner.kernel = k
    tunnel_marker(runner, "mgk-test")(51821)
    assert k.sent[-1].get_attr("WGDEVICE_A_FWMARK") == 51821
    nets = (NET("10.99.1.2/32"), NET("10.20.0.0/24"), NET("0.0.0.0/0"), NET("::/0"))
    d._on_actions([PeerUp(PeerConfig(b"\x07" * 32, KEY, ("192.0.2.1", 51821), nets, 25))])
    (peer,) = k.sent[-1].get_attr("WGDEVICE_A_PEERS")
    assert [a["addr"] for a in peer.get_attr("WGPEER_A_ALLOWEDIPS")] == [str(n) for n in nets]
