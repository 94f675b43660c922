"""`meshguard reload` / SIGHUP (daemon/config_reload.py) on a stand-in daemon: the live keys
are applied, the others reported as needing a restart and left as they were, the flags `up`
was given stay on top, and a bad file changes nothing."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshguard.cli.main import build_parser
from meshguard.daemon.config_reload import ConfigReloader, ReloadReport, set_log_level
from meshguard.daemon.daemon_config import DaemonConfig
from meshguard.daemon.seed_runner import SeedRunner, seed_sources
from meshguard.mesh.routes import RoutePlanner
from meshguard.settings.config_file import ConfigFileError
from meshguard.settings.daemon_options import daemon_config
from meshguard.settings.schema import BY_KEY
from meshguard.settings.sources import settings_from_args
from meshguard.testing.clock import ManualClock


class _Routes:
    def __init__(self, cfg: DaemonConfig) -> None:
        self.options = cfg.routes
        self.planner = RoutePlanner(cfg.routes)
        self.synced = 0

    def sync(self) -> None:
        self.synced += 1


class _Node:
    def __init__(self) -> None:
        self.reconciled = 0

    def reconcile(self, wall: float) -> list[Any]:
        self.reconciled += 1
        return []


class _Watch:
    stun_servers: list[tuple[str, int]] = []


class _Daemon:
    """What the reloader uses of MeshDaemon."""

    def __init__(self, cfg: DaemonConfig, routes: bool) -> None:
        self.cfg = cfg
        self.clock = ManualClock()
        self.seed_runner = SeedRunner(seed_sources(cfg.seeds, cfg.seed_domains, cfg.mdns),
                                      self.clock, {}, lambda: True)
        self.joined: list[list[tuple[str, int]]] = []
        self.seed_runner._join = self.joined.append
        self.stun_servers = list(cfg.stun)
        self._watch = _Watch()
        self.node = _Node()
        self.routes = _Routes(cfg) if routes else None
        self.trust = None
        self.trust_reloads: list[str] = []
        self.executed: list[list[Any]] = []

    def reload_trust(self, why: str) -> None:
        self.trust_reloads.append(why)

    def _execute(self, actions: list[Any]) -> None:
        self.executed.append(actions)


@pytest.fixture(autouse=True)
def _restore_log_level() -> Iterator[None]:
    loggers = [logging.getLogger(), logging.getLogger("meshguard")]
    levels = [lg.level for lg in loggers]
    yield
    for lg, level in zip(loggers, levels, strict=True):
        lg.setLevel(level)


def _start(tmp_path: Path, text: str, *flags: str, routes: bool = True) -> tuple[_Daemon, Path]:
    path = tmp_path / "meshguard.toml"
    path.write_text(text)
    args = build_parser().parse_args(["up", "--config", str(path), *flags])
    cfg = daemon_config(settings_from_args(args, {"MESHGUARD_CONFIG_DIR": str(tmp_path)}),
                        tmp_path / "run")
    return _Daemon(cfg, routes), path


def _reload(d: _Daemon) -> ReloadReport:
    return asyncio.run(ConfigReloader(d).reload("test"))


START = ('seed = ["192.0.2.1:51821"]\nstun = ["192.0.2.5:3478"]\nport = 51821\n'
         'advertise_routes = ["10.20.0.0/24"]\n')


def test_live_keys_apply_and_the_others_need_a_restart(tmp_path: Path) -> None:
    d, path = _start(tmp_path, START)
    path.write_text(START.replace("port = 51821", "port = 5000")
                    .replace('"192.0.2.1:51821"]', '"192.0.2.1:51821", "192.0.2.2:51821"]')
                    .replace("192.0.2.5:3478", "192.0.2.6:3479")
                    + 'log_level = "debug"\naccept_routes = true\nexit_node = "gw-1"\n'
                      'mdns = true\nmetrics = "9586"\n')
    rep = _reload(d)
    assert set(rep.applied) == {"log_level", "seed", "stun", "accept_routes", "exit_node"}
    assert set(rep.restart) == {"port", "mdns", "metrics"}
    assert set(rep.unchanged) == set(BY_KEY) - set(rep.applied) - set(rep.restart)
    assert d.trust_reloads == ["test"]
    # log level, the new seed joined at once, the next STUN run's servers, the routes re-planned
    assert logging.getLogger("meshguard").getEffectiveLevel() == logging.DEBUG
    assert d.joined == [[("192.0.2.1", 51821), ("192.0.2.2", 51821)]]
    assert d.stun_servers == d._watch.stun_servers == [("192.0.2.6", 3479)]
    assert d.routes is not None and d.routes.planner.options.accept_routes
    assert d.routes.options.exit_node == "gw-1" and d.node.reconciled == 1
    assert d.routes.synced == 1
    # the restart keys stay as they run: the port is still the old one, and says so again
    assert d.cfg.port == 51821 and d.cfg.settings is not None
    assert d.cfg.settings.value("port") == 51821 and d.cfg.settings.value("seed") == [
        "192.0.2.1:51821", "192.0.2.2:51821"]
    again = _reload(d)
    assert set(again.restart) == {"port", "mdns", "metrics"} and again.applied == ()


def test_a_bad_file_changes_nothing(tmp_path: Path) -> None:
    d, path = _start(tmp_path, START)
    before = d.cfg.settings
    path.write_text('log_level = "debug"\nseed = ["192.0.2.9:99999"]\n')
    with pytest.raises(ConfigFileError, match=rf"^{path}:2: key 'seed': bad seed"):
        _reload(d)
    path.write_text("log_level = \n")
    with pytest.raises(ConfigFileError, match=rf"^{path}:1: not valid TOML"):
        _reload(d)
    assert d.cfg.settings is before and d.trust_reloads == [] and d.joined == []
    assert logging.getLogger("meshguard").getEffectiveLevel() != logging.DEBUG


def test_flags_given_to_up_still_win(tmp_path: Path) -> None:
    d, path = _start(tmp_path, 'log_level = "info"\n', "--log-level", "warning")
    path.write_text('log_level = "debug"\n')
    rep = _reload(d)
    assert rep.applied == () and rep.restart == () and d.cfg.log_level == "warning"


def test_route_keys_need_a_restart_when_no_routes_run(tmp_path: Path) -> None:
    d, path = _start(tmp_path, "", routes=False)
    path.write_text("accept_routes = true\n")
    assert _reload(d).restart == ("accept_routes",)


def test_stun_turned_on_needs_a_restart(tmp_path: Path) -> None:
    d, path = _start(tmp_path, "")
    path.write_text('stun = ["192.0.2.5"]\n')
    assert _reload(d).restart == ("stun",) and d.stun_servers == []


def test_set_log_level() -> None:
    set_log_level("error")
    assert not logging.getLogger("meshguard.daemon").isEnabledFor(logging.WARNING)
    set_log_level("debug")
    assert logging.getLogger("meshguard.seeds").isEnabledFor(logging.DEBUG)
