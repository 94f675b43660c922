"""`meshguard` entry point: builds the argument parser from the command modules and runs one.

Each command module exposes `register(subparsers)`, adding its sub-commands with
`set_defaults(func=handler)`; a handler takes the parsed arguments and returns an exit code.
A known command is parsed with the one module that registers it (`COMMANDS`), so a command
imports only its own dependencies: `meshguard status` does not load the daemon and the data
plane, and `meshguard wireguard IF` starts as fast as it can (start-up time is part of that
command's contract, as for `wireguard-go IF`). `--help` and unknown commands load them all,
which is cheap: a command module imports what its handlers use only when one runs.
A MeshguardError raised anywhere below becomes one `meshguard: error: ...` line on stderr.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from meshguard import __version__
from meshguard.daemon.startup_trace import mark
from meshguard.errors import MeshguardError

_IDENTITY = "meshguard.cli.identity_commands"
_WIREGUARD = "meshguard.cli.wireguard_command"
_UP = "meshguard.cli.up_command"
_DAEMON = "meshguard.cli.daemon_commands"
_CONNECT = "meshguard.cli.connect_command"
_PING = "meshguard.cli.ping_command"
_POLICY = "meshguard.cli.policy_commands"
_VOUCH = "meshguard.cli.vouch_command"
_POLICY_VIEW = "meshguard.cli.policy_view"
_EXPORT_WG = "meshguard.cli.export_wg_command"
_COMPLETION = "meshguard.cli.completion_command"
_WEB = "meshguard.cli.web_command"
_CONFIG = "meshguard.cli.config_commands"
# in the order `--help` lists them
COMMAND_MODULES = (_IDENTITY, _WIREGUARD, _UP, _DAEMON, _VOUCH, _CONNECT, _PING, _POLICY,
                   _POLICY_VIEW, _EXPORT_WG, _WEB, _CONFIG, _COMPLETION)
# command name -> the module that registers it (a test holds this to what the modules register)
COMMANDS = {
    **dict.fromkeys(("version", "keygen", "export", "trust", "revoke", "org-keygen", "org-sign",
                     "rotate-wg-key", "show"), _IDENTITY),
    "wireguard": _WIREGUARD,
    "up": _UP,
    "connect": _CONNECT,
    **dict.fromkeys(("down", "status", "org-revoke", "org-alias"), _DAEMON),
    "ping": _PING,
    **dict.fromkeys(("service", "org-policy"), _POLICY),
    "org-vouch": _VOUCH,
    "policy": _POLICY_VIEW,
    "export-wg": _EXPORT_WG,
    "web": _WEB,
    "completion": _COMPLETION,
    **dict.fromkeys(("config", "reload"), _CONFIG),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        """One line, the usage hint, exit 2 (argparse's own convention for usage errors)."""
        self.exit(2, f"meshguard: error: {message} (see `{self.prog} --help`)\n")


def build_parser(modules: Sequence[str] = COMMAND_MODULES) -> argparse.ArgumentParser:
    parser = _Parser(
        prog="meshguard",
        description="Decentralized, serverless, WireGuard-compatible mesh VPN daemon.",
    )
    parser.add_argument("--version", action="version", version=f"meshguard {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in modules:
        module = importlib.import_module(name)
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    mark("interpreter")
    args_list = list(sys.argv[1:] if argv is None else argv)
    only = COMMANDS.get(args_list[0]) if args_list else None
    parser = build_parser((only,) if only else COMMAND_MODULES)
    args = parser.parse_args(args_list)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        rc = func(args)
    except MeshguardError as exc:
        print(f"meshguard: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    raise SystemExit(main())
