"""`meshguard` entry point: builds the argument parser from the command modules and runs one.

Each command module exposes `register(subparsers)`, adding its sub-commands with
`set_defaults(func=handler)`; a handler takes the parsed arguments and returns an exit code.
A MeshguardError raised anywhere below becomes one `meshguard: error: ...` line on stderr.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from meshguard import __version__
from meshguard.errors import MeshguardError

COMMAND_MODULES = (
    "meshguard.cli.identity_commands",
    "meshguard.cli.wireguard_command",
    "meshguard.cli.daemon_commands",
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        """One line, the usage hint, exit 2 (argparse's own convention for usage errors)."""
        self.exit(2, f"meshguard: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="meshguard",
        description="Decentralized, serverless, WireGuard-compatible mesh VPN daemon.",
    )
    parser.add_argument("--version", action="version", version=f"meshguard {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMAND_MODULES:
        module = importlib.import_module(name)
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
