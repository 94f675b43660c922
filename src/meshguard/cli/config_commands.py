"""`meshguard config show` and `meshguard reload` (docs/config.md).

`config show [--json] [--config FILE] [up options]` prints what the original's command of that
name printed (identity key, WireGuard key, mesh IP), then every `up` setting as it would take
effect (defaults, the config file, the flags given), each with its source, as TOML that is
itself a valid config file. A bad file or value is the same one line `up` prints.

`reload` asks the running daemon to re-read its trust store and config file; it prints the
keys applied, those that need a restart and those unchanged, one line each.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import TYPE_CHECKING

from meshguard.cli.daemon_commands import add_common, run_dir_of
from meshguard.cli.up_command import add_up_options

if TYPE_CHECKING:
    from meshguard.identity.overview import Overview
    from meshguard.settings.schema import Value
    from meshguard.settings.sources import Settings

COLUMN = 40  # where a setting's source comment starts


def identity_json(info: Overview | None) -> dict[str, str | None] | None:
    """The original's `config show` fields, from what `meshguard show` reports."""
    if info is None:
        return None
    wg = info["wireguard"]
    return {"public_key": info["identity"]["public_key"],
            "wireguard_key": wg["public_key"] if wg is not None else None,
            "mesh_ipv4": info["identity"]["mesh_ipv4"]}


def identity_lines(info: Overview | None) -> list[str]:
    """The original's three lines (`meshguard show` has everything else)."""
    ident = identity_json(info)
    if ident is None:
        return ["public key (Ed25519):   (none; run `meshguard keygen`)"]
    wg_key = ident["wireguard_key"] or "(none; run `meshguard rotate-wg-key`)"
    return [f"public key (Ed25519):   {ident['public_key']}",
            f"public key (WG X25519): {wg_key}",
            f"mesh IP:                {ident['mesh_ipv4']}"]


def toml_value(value: Value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(json.dumps(v) for v in value) + "]"
    return json.dumps(value)


def render_settings(settings: Settings) -> list[str]:
    from meshguard.settings.schema import SETTINGS

    if settings.file is None:
        lines = ["# config file: none (defaults and flags only)"]
    else:
        lines = [f"# config file: {settings.file.path} ({settings.file_source})"]
    for s in SETTINGS:
        eff = settings.values[s.key]
        text = (f"{s.key} = {toml_value(eff.value)}" if eff.value is not None
                else f"# {s.key} (not set)")
        lines.append(f"{text:<{COLUMN - 2}}  # {eff.source}")
    return lines


def settings_json(settings: Settings) -> dict[str, object]:
    return {k: {"value": e.value, "source": e.source.kind, "where": e.source.where or None}
            for k, e in settings.values.items()}


def cmd_config_show(args: argparse.Namespace) -> int:
    from meshguard.config import resolve_config_dir
    from meshguard.identity.errors import IdentityMissingError
    from meshguard.identity.overview import describe
    from meshguard.settings.daemon_options import daemon_config
    from meshguard.settings.sources import settings_from_args

    settings = settings_from_args(args, os.environ)
    daemon_config(settings, run_dir_of(args))  # the checks `up` makes: one line if bad
    info: Overview | None
    try:
        info = describe(resolve_config_dir(), time.time())
    except IdentityMissingError:
        info = None
    if args.json:
        doc = {
            "identity": identity_json(info),
            "config_file": None if settings.file is None else {
                "path": str(settings.file.path), "found": str(settings.file_source)},
            "settings": settings_json(settings),
        }
        print(json.dumps(doc, indent=2, sort_keys=True))
        return 0
    print("\n".join([*identity_lines(info), "", *render_settings(settings)]))
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    from meshguard.daemon.control_client import select_daemon

    client = select_daemon(run_dir_of(args), args.interface)
    res = client.request("reload")
    for label, key in (("applied", "applied"), ("needs restart", "restart"),
                       ("unchanged", "unchanged")):
        keys = res.get(key)
        names = [str(k) for k in keys] if isinstance(keys, list) else []
        print(f"{label}: {', '.join(names) or '-'}")
    trust = res.get("trust")
    if trust:
        print(f"trust store: {trust}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `config` and `reload` to the parser."""
    cfg = sub.add_parser("config", help="the effective configuration (config file and flags)")
    cfg_sub = cfg.add_subparsers(dest="config_command", metavar="SUBCOMMAND")
    show = cfg_sub.add_parser("show", help="identity, then every setting with its source "
                                           "(takes the options of `up`)")
    add_up_options(show)
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(func=cmd_config_show)

    rl = sub.add_parser("reload", help="re-read the trust store and the config file in the "
                                       "running daemon (SIGHUP does the same)")
    add_common(rl, None)
    rl.set_defaults(func=cmd_reload)
