"""Effective settings -> DaemonConfig, through the same checks as the `up` flags
(cli/up_command.py): a bad value from the file is "FILE:LINE: key 'x': ...", a bad flag the
usual usage line."""

from __future__ import annotations

import argparse
import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

from meshguard.cli.daemon_commands import STUN_PORT, UsageError, parse_seed
from meshguard.cli.seed_options import parse_seed_domain
from meshguard.cli.up_command import (
    _parse_announce,
    _parse_portmap,
    _parse_routes,
    _with_saved_seeds,
    parse_metrics,
)
from meshguard.daemon.daemon_config import DaemonConfig
from meshguard.daemon.runtime import validate_interface
from meshguard.errors import MeshguardError
from meshguard.settings.config_file import ConfigFileError
from meshguard.settings.schema import BY_KEY, SETTINGS
from meshguard.settings.sources import FILE, Settings

ROUTE_KEYS = ("advertise_routes", "advertise_exit_node", "accept_routes", "exit_node",
              "exit_node_allow_lan_access")
_FLAG = re.compile(r"--[a-z][a-z-]*(?![\w-])")


def _in_file_terms(message: str) -> str:
    """A flag's name in a message becomes its key's (`--dns-port` -> `dns_port`)."""
    def key(m: re.Match[str]) -> str:
        k = m.group(0)[2:].replace("-", "_")
        return k if k in BY_KEY else m.group(0)
    return _FLAG.sub(key, message)


@contextlib.contextmanager
def _blame(settings: Settings, *keys: str) -> Iterator[None]:
    """A problem found while checking `keys` names the one it is about (the first whose flag
    the message mentions): in the file, as FILE:LINE: key '...'; else it is raised as is."""
    try:
        yield
    except ConfigFileError:
        raise
    except MeshguardError as exc:
        msg = str(exc)
        mentioned = [k for f in _FLAG.findall(msg) for k in keys if BY_KEY[k].flag == f]
        key = mentioned[0] if mentioned else keys[0]
        src = settings.source(key)
        if src.kind == FILE:
            raise ConfigFileError(f"{src.where}: key '{key}': {_in_file_terms(msg)}") from None
        raise


def _port(value: int, flag: str, top: int) -> int:
    if not 0 < value < top:
        raise UsageError(f"{flag} must be between 1 and {top - 1}")
    return value


def daemon_config(settings: Settings, run_dir: Path) -> DaemonConfig:
    """What `up` runs with these settings (ConfigFileError or UsageError for a bad value)."""
    v = settings.value

    def s(key: str) -> str:
        x = v(key)
        assert isinstance(x, str)
        return x

    def n(key: str) -> int:
        x = v(key)
        assert isinstance(x, int)
        return x

    def b(key: str) -> bool:
        return bool(v(key))

    def lst(key: str) -> list[str]:
        x = v(key)
        assert isinstance(x, list)
        return x

    def opt(key: str) -> str | None:
        x = v(key)
        return x if isinstance(x, str) else None

    for setting in SETTINGS:  # choices of a file value (argparse checked the flags')
        x = v(setting.key)
        if setting.choices and x not in setting.choices:
            with _blame(settings, setting.key):
                raise UsageError(f"{setting.flag} must be one of "
                                 f"{', '.join(setting.choices)}, got {x!r}")
    with _blame(settings, "interface"):
        interface = validate_interface(s("interface"))
    with _blame(settings, "port"):
        port = _port(n("port"), "--port", 65535)
    with _blame(settings, "dns_port"):
        dns_port = _port(n("dns_port"), "--dns-port", 65536)
    with _blame(settings, "seed"):
        seeds = _with_saved_seeds([parse_seed(x) for x in lst("seed")])
    with _blame(settings, "dns"):
        domains = [parse_seed_domain(x) for x in lst("dns")]
    with _blame(settings, "stun"):
        stun = [parse_seed(x, STUN_PORT) for x in lst("stun")]
    with _blame(settings, "announce"):
        announce = _parse_announce(opt("announce"))
    with _blame(settings, "portmap_methods"):
        portmap = _parse_portmap(s("portmap_methods"))
    with _blame(settings, *ROUTE_KEYS):
        routes = _parse_routes(argparse.Namespace(**{k: v(k) for k in ROUTE_KEYS}))
    metrics_text = opt("metrics")
    with _blame(settings, "metrics"):
        metrics = parse_metrics(metrics_text) if metrics_text else None
    return DaemonConfig(
        interface=interface, port=port, seeds=seeds, announce=announce, stun=stun,
        kernel=b("kernel"), split_port=b("split_port"), open_mesh=b("open"), run_dir=run_dir,
        log_level=s("log_level"), dns=not b("no_dns"), dns_port=dns_port,
        resolved=not b("no_resolved"),
        portmap=() if b("no_portmap") else portmap, seed_domains=domains, mdns=b("mdns"),
        routes=routes, metrics=metrics, log_format=s("log_format"),
        config_file=settings.file.path if settings.file is not None else None,
        settings=settings)
