"""The command table of `meshguard` (cli/main.py): each command is parsed with the one module
that registers it, so a command imports only what it needs."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from meshguard.cli.main import COMMAND_MODULES, COMMANDS, build_parser


def _registered(module: str) -> set[str]:
    parser = build_parser((module,))
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {name for s in subs for name in s.choices}


def test_the_table_names_the_module_that_registers_each_command() -> None:
    registered = {name: m for m in COMMAND_MODULES for name in _registered(m)}
    assert registered == COMMANDS


def test_status_does_not_load_the_daemon_or_the_data_plane(tmp_path: Path) -> None:
    code = ("import sys; from meshguard.cli.main import main; "
            "rc = main(['status', '--run-dir', sys.argv[1]]); "
            "print(rc, sorted(m for m in sys.modules if m.startswith("
            "('meshguard.daemon.mesh_daemon', 'meshguard.dataplane'))))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                         text=True, check=True, timeout=60).stdout
    assert out.split(maxsplit=1) == ["1", "[]\n"]


def test_a_userspace_daemon_does_not_load_the_netlink_stack() -> None:
    # pyroute2 costs ~12 MiB of RSS: only kernel mode (and the local-address probe) needs it
    code = ("import sys; from meshguard.cli.main import build_parser; "
            "import meshguard.daemon.mesh_daemon, meshguard.cli.up_command; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'pyroute2' "
            "or m == 'meshguard.daemon.kernel_wg'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert out == "[]\n"


def _loaded_after(code: str) -> list[str]:
    """The meshguard packages and heavy libraries a fresh interpreter has loaded after `code`."""
    probe = (f"import json, sys; {code}; print(json.dumps(sorted({{'.'.join(m.split('.')[:2]) "
             "for m in sys.modules if m.split('.')[0] in ('meshguard', 'pyroute2', "
             "'cryptography', 'asyncio')})))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    loaded: list[str] = json.loads(out)
    return loaded


def test_help_loads_no_command_dependencies() -> None:
    loaded = _loaded_after("from meshguard.cli.main import build_parser; "
                           "build_parser().format_help()")
    assert set(loaded) <= {"meshguard", "meshguard.cli", "meshguard.daemon", "meshguard.errors"}


def test_the_wireguard_command_does_not_load_the_mesh() -> None:
    # `meshguard wireguard` is a plain WireGuard interface: no mesh, no DNS, no netlink
    loaded = _loaded_after("import meshguard.cli.wireguard_command, "
                           "meshguard.daemon.wg_interface")
    assert "meshguard.daemon" in loaded and "meshguard.wireguard" in loaded
    for absent in ("meshguard.mesh", "meshguard.swim", "meshguard.nat", "meshguard.dns",
                   "meshguard.identity", "pyroute2"):
        assert absent not in loaded
    dns = subprocess.run([sys.executable, "-c", "import sys, meshguard.daemon.wg_interface; "
                          "print('meshguard.daemon.dns_server' in sys.modules)"],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    assert dns == "False\n"
