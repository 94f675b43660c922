"""Where a running daemon keeps its control socket, and how the CLI finds running daemons.

One daemon per interface: its control socket is ``<run dir>/<interface>.sock``. The run dir is
``/run/meshguard`` unless ``$MESHGUARD_RUN_DIR`` (or an explicit argument) says otherwise; tests
point it at a temporary directory so several daemons can run side by side.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from meshguard.errors import MeshguardError

DEFAULT_RUN_DIR = Path("/run/meshguard")
RUN_DIR_ENV = "MESHGUARD_RUN_DIR"
DEFAULT_INTERFACE = "mg0"
# Linux IFNAMSIZ is 16 including the NUL; keep to characters `ip link` accepts everywhere.
_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


class InterfaceNameError(MeshguardError):
    """An interface name the kernel would refuse."""


def validate_interface(name: str) -> str:
    if not _IFNAME.match(name) or name in {".", ".."}:
        raise InterfaceNameError(
            f"invalid interface name {name!r}: use 1-15 letters, digits, '_', '-' or '.'"
        )
    return name


def run_dir(explicit: str | os.PathLike[str] | None = None,
            env: Mapping[str, str] | None = None) -> Path:
    if explicit is not None:
        return Path(explicit)
    e = os.environ if env is None else env
    value = e.get(RUN_DIR_ENV)
    return Path(value) if value else DEFAULT_RUN_DIR


def socket_path(interface: str, directory: Path) -> Path:
    return directory / f"{validate_interface(interface)}.sock"


def candidate_sockets(directory: Path) -> list[tuple[str, Path]]:
    """(interface, path) for each control socket file in the run dir, sorted by interface."""
    try:
        entries = sorted(directory.glob("*.sock"))
    except OSError:
        return []
    return [(p.name[: -len(".sock")], p) for p in entries]
