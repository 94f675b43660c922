"""What `meshguard up` is asked to run: the daemon's configuration and its start-up error."""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from meshguard.errors import MeshguardError
from meshguard.mesh.routes import RouteOptions
from meshguard.sansio import Endpoint

if TYPE_CHECKING:
    from meshguard.settings.sources import Settings

ALIAS_FILE = "alias"  # org/alias: this org's signed alias (`meshguard org-alias`)


class StartupError(MeshguardError):
    """The daemon cannot start (the message names the fix)."""


@dataclass
class DaemonConfig:
    interface: str
    port: int
    seeds: list[Endpoint]
    announce: str | None = None
    stun: list[Endpoint] = field(default_factory=list)
    kernel: bool = False
    # userspace WireGuard with the kernel mode's port layout (gossip on port + 1): lets tests
    # check that split-port and single-port nodes interoperate on a machine without the module
    split_port: bool = False
    open_mesh: bool = False
    run_dir: Path = Path("/run/meshguard")
    log_level: str = "info"
    config_dir: Path | None = None
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    dns: bool = True  # serve *.mesh on the mesh addresses (daemon/dns_server.py)
    dns_port: int = 53
    # register the DNS server and ~mesh with systemd-resolved (daemon/resolved_link.py)
    resolved: bool = True
    # port mapping methods tried at the default gateway, in order (nat/portmap.py); () = off
    portmap: tuple[str, ...] = ("pcp", "nat-pmp", "upnp")
    seed_domains: list[str] = field(default_factory=list)  # --dns: TXT seeds (docs/seeds.md)
    mdns: bool = False  # --mdns: advertise and discover seeds on the LAN
    # --advertise-routes, --advertise-exit-node, --accept-routes, --exit-node (docs/policy.md)
    routes: RouteOptions = field(default_factory=RouteOptions)
    # --metrics / `metrics =`: where Prometheus text is served (None: off; docs/config.md)
    metrics: Endpoint | None = None
    log_format: str = "text"  # --log-format: "text" or "json" (one JSON object per line)
    config_file: Path | None = None  # the meshguard.toml read, if any (re-read on reload)
    settings: Settings | None = None  # each value with its source (daemon/config_reload.py)

    @property
    def split(self) -> bool:
        """WireGuard and gossip on separate ports (kernel mode, or userspace `split_port`)."""
        return self.kernel or self.split_port


def bind_error(exc: OSError, port: int) -> StartupError:
    """One clear line for a UDP port the daemon could not bind."""
    if exc.errno == errno.EADDRINUSE:
        return StartupError(f"UDP port {port} is already in use; pick another with --port")
    if exc.errno == errno.EACCES:
        return StartupError(f"cannot bind UDP port {port}: permission denied")
    return StartupError(f"cannot bind UDP port {port}: {exc.strerror}")
