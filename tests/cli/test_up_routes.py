"""`up --advertise-routes`, `--advertise-exit-node`, `--accept-routes`, `--exit-node`: what the
daemon is asked to offer and use (docs/policy.md#routes); bad input is one line and exit 1."""

from __future__ import annotations

import ipaddress

import pytest

from meshguard.cli.main import build_parser, main
from meshguard.cli.up_command import _parse_routes
from meshguard.settings.sources import flag_argv, given_flags

NET = ipaddress.ip_network


def test_the_offer_is_canonical_and_the_exit_node_is_two_default_routes() -> None:
    args = build_parser().parse_args([
        "up", "--advertise-routes", "10.20.0.0/24,fd00:20::/64", "--advertise-routes",
        "10.20.0.0/24", "--advertise-exit-node", "--accept-routes", "--exit-node", "gw-1",
        "--exit-node-allow-lan-access"])
    opts = _parse_routes(args)
    assert [str(n) for n in opts.advertise] == ["0.0.0.0/0", "10.20.0.0/24", "::/0",
                                                "fd00:20::/64"]
    assert opts.accept_routes and opts.exit_node == "gw-1" and opts.exit_node_allow_lan_access
    # the background `up` passes the same flags to its `up -f`
    again = build_parser().parse_args(["up", *flag_argv(given_flags(args))])
    assert _parse_routes(again) == opts
    plain = _parse_routes(build_parser().parse_args(["up"]))
    assert plain.advertise == () and not plain.accept_routes and plain.exit_node is None


@pytest.mark.parametrize(("argv", "says"), [
    (["--advertise-routes", "10.20.0.1/24"], "no host bits"),
    (["--advertise-routes", "not-a-net"], "no host bits"),
    (["--advertise-routes", "0.0.0.0/0"], "--advertise-exit-node"),
    (["--advertise-routes", "10.99.4.0/24"], "mesh prefixes"),
    (["--advertise-routes", "fd99:6d67::/48"], "mesh prefixes"),
    (["--advertise-routes", ",".join(f"10.{i}.0.0/16" for i in range(15)),
      "--advertise-exit-node"], "at most 16"),
    (["--exit-node-allow-lan-access"], "needs --exit-node"),
])
def test_bad_route_flags_are_one_line_and_exit_1(argv: list[str], says: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["up", "-f", "--interface", "mgx0", *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("meshguard: error: ") and says in err and err.count("\n") == 1
