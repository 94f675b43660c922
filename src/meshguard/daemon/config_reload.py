"""`meshguard reload` and SIGHUP (docs/config.md#reload): the trust store and the config file
are read again, and every changed key that can change in a running daemon takes effect.

The file is read and checked first, with the flags `up` was given still on top of it (they keep
winning); a bad file changes nothing and the reload answers with its one error line. Then the
trust store is reloaded and the changed keys are applied (log_level, seed, dns, stun, and with
routes in use accept_routes, exit_node, exit_node_allow_lan_access). Every other changed key is
reported as needing a restart and stays as it was, so the next reload reports it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING

from meshguard.daemon.daemon_config import DaemonConfig
from meshguard.daemon.host_probe import resolve_seeds
from meshguard.daemon.log_format import set_level
from meshguard.daemon.seed_runner import seed_sources
from meshguard.errors import MeshguardError
from meshguard.sansio import Endpoint
from meshguard.settings.schema import LIVE_WITH_ROUTES, SETTINGS
from meshguard.settings.sources import Settings, reread

if TYPE_CHECKING:
    from meshguard.daemon.mesh_daemon import MeshDaemon

log = logging.getLogger("meshguard.daemon")

SEED_KEYS = frozenset({"seed", "dns"})


@dataclass(frozen=True)
class ReloadReport:
    applied: tuple[str, ...] = ()
    restart: tuple[str, ...] = ()  # changed in the file, in force after a restart
    unchanged: tuple[str, ...] = ()
    trust: str = ""

    def to_json(self) -> dict[str, object]:
        return {"applied": list(self.applied), "restart": list(self.restart),
                "unchanged": list(self.unchanged), "trust": self.trust}


def changed_keys(old: Settings, new: Settings) -> list[str]:
    return [s.key for s in SETTINGS if old.value(s.key) != new.value(s.key)]


def in_force(old: Settings, new: Settings, applied: Collection[str]) -> Settings:
    """The settings a daemon runs with after a reload: the changed keys it applied come from
    `new`, the changed keys that need a restart stay as they were."""
    changed = set(changed_keys(old, new))
    values = {k: (old.values[k] if k in changed and k not in applied else e)
              for k, e in new.values.items()}
    return Settings(values, new.flags, new.file, new.file_source)


def set_log_level(level: str) -> None:
    """The daemon's log level from now on (daemon/log_format.py)."""
    set_level(level)


class ConfigReloader:
    def __init__(self, daemon: MeshDaemon) -> None:
        self.daemon = daemon
        self._task: asyncio.Task[None] | None = None

    def on_signal(self) -> None:
        """SIGHUP: reload in a task (the outcome goes to the log)."""
        self._task = asyncio.get_running_loop().create_task(self._logged("SIGHUP"))

    async def _logged(self, why: str) -> None:
        with contextlib.suppress(MeshguardError):  # reload() logged it
            await self.reload(why)

    async def reload(self, why: str) -> ReloadReport:
        d = self.daemon
        cfg = d.cfg
        old = cfg.settings
        new: Settings | None = None
        new_cfg: DaemonConfig | None = None
        stun: list[Endpoint] | None = None
        if old is not None:
            try:
                new = await asyncio.to_thread(reread, old, cfg.env)
                new_cfg = await asyncio.to_thread(_daemon_config, new, cfg)
                if old.value("stun") != new.value("stun") and d.stun_servers and new_cfg.stun:
                    stun = await asyncio.to_thread(resolve_seeds, new_cfg.stun)
            except MeshguardError as exc:
                log.error("reload (%s): %s; nothing changed", why, exc)
                raise
        d.reload_trust(why)
        trust = d.trust.store if d.trust is not None else None
        summary = (f"reloaded, {len(trust.peers)} keys, {len(trust.orgs)} orgs"
                   if trust is not None else "")
        if old is None or new is None or new_cfg is None:
            return ReloadReport(trust=summary)
        changed = changed_keys(old, new)
        applied = self._apply(changed, new_cfg, stun)
        cfg.settings = in_force(old, new, applied)
        report = ReloadReport(
            applied=tuple(k for k in changed if k in applied),
            restart=tuple(k for k in changed if k not in applied),
            unchanged=tuple(s.key for s in SETTINGS if s.key not in changed), trust=summary)
        log.info("reload (%s): applied %s; needs a restart: %s", why,
                 ", ".join(report.applied) or "nothing", ", ".join(report.restart) or "nothing")
        return report

    def _apply(self, changed: list[str], new: DaemonConfig,
               stun: list[Endpoint] | None) -> set[str]:
        """Apply what can change live; the keys applied."""
        d = self.daemon
        cfg = d.cfg
        done: set[str] = set()
        if "log_level" in changed:
            set_log_level(new.log_level)
            cfg.log_level = new.log_level
            done.add("log_level")
        if SEED_KEYS & set(changed):
            cfg.seeds, cfg.seed_domains = new.seeds, new.seed_domains
            d.seed_runner.set_sources(seed_sources(cfg.seeds, cfg.seed_domains, cfg.mdns))
            done |= SEED_KEYS & set(changed)
        if stun is not None:  # STUN was on and stays on: the next run asks these servers
            cfg.stun = new.stun
            d.stun_servers = stun
            if d._watch is not None:
                d._watch.stun_servers = list(stun)
            done.add("stun")
        routes = LIVE_WITH_ROUTES & set(changed)
        if routes and d.routes is not None and d.node is not None:
            opts = dataclasses.replace(
                d.routes.options, accept_routes=new.routes.accept_routes,
                exit_node=new.routes.exit_node,
                exit_node_allow_lan_access=new.routes.exit_node_allow_lan_access)
            d.routes.options = d.routes.planner.options = opts
            cfg.routes = opts
            d._execute(d.node.reconcile(d.clock.wall()))
            d.routes.sync()
            done |= routes
        return done


def _daemon_config(settings: Settings, cfg: DaemonConfig) -> DaemonConfig:
    from meshguard.settings.daemon_options import daemon_config

    return daemon_config(settings, cfg.run_dir)
