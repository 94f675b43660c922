"""The port mapping's shell pieces that need no router: the default gateway from the routing
table, the `up` flags, and the `status` line."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshguard.cli.daemon_commands import UsageError, format_status
from meshguard.cli.main import build_parser
from meshguard.cli.up_command import _parse_portmap
from meshguard.daemon.host_probe import default_gateway
from meshguard.settings.sources import settings_from_args
from meshguard.wire.control import SelfStatus, StatusReport

ROUTES = """Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t000AA8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
eth0\t00000000\t010AA8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0
"""


def test_default_gateway_from_the_routing_table(tmp_path: Path) -> None:
    p = tmp_path / "route"
    p.write_text(ROUTES)
    assert default_gateway(str(p)) == "192.168.10.1"
    # a default route without a gateway (a point-to-point link) or no default route: none
    p.write_text(ROUTES.splitlines()[0] + "\n" + ROUTES.splitlines()[1] + "\n"
                 + "tun0\t00000000\t00000000\t0001\t0\t0\t0\t00000000\t0\t0\t0\n")
    assert default_gateway(str(p)) is None
    p.write_text("garbage\nx 00000000 zz 0003\n")
    assert default_gateway(str(p)) is None
    assert default_gateway(str(tmp_path / "missing")) is None


def test_up_portmap_flags() -> None:
    args = settings_from_args(build_parser().parse_args(["up"]),
                              {"MESHGUARD_CONFIG_DIR": "/nonexistent"})
    assert not args.value("no_portmap") and _parse_portmap(args.value("portmap_methods")) == (
        "pcp", "nat-pmp", "upnp")
    assert build_parser().parse_args(["up", "--no-portmap"]).no_portmap
    assert _parse_portmap("upnp, pcp") == ("upnp", "pcp")
    for bad in ("", "igd", "pcp,,x"):
        with pytest.raises(UsageError, match="--portmap-methods"):
            _parse_portmap(bad)


def test_status_shows_the_mapping() -> None:
    me = SelfStatus("a", "SUQ=", "V0c=", "10.99.1.2", "fd99:6d67::1", 51821, 51821)
    rep = StatusReport("mg0", "userspace", 42, 1.0, me, (), {})
    assert "port mapping" not in format_status(rep, 10.0)
    rep = rep.with_portmap({"protocol": "nat-pmp", "external": "198.51.100.7:40000",
                            "internal_port": 51821, "expires_in": 7000})
    assert ("port mapping: nat-pmp 198.51.100.7:40000 -> 51821, expires in 7000 s"
            in format_status(rep, 10.0))
