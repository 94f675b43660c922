"""Where meshguard keeps its files (docs/compatibility.md#the-config-dir).

The config dir is the first match of: `$MESHGUARD_CONFIG_DIR`; `/etc/meshguard` when running
as root; `$XDG_CONFIG_HOME/meshguard`; `~/.config/meshguard`. Empty variables count as unset.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

ENV_CONFIG_DIR = "MESHGUARD_CONFIG_DIR"
ROOT_CONFIG_DIR = Path("/etc/meshguard")
APP_NAME = "meshguard"


def resolve_config_dir(
    env: Mapping[str, str] | None = None, *, is_root: bool | None = None
) -> Path:
    """The config dir for this process; `env` and `is_root` default to the real ones."""
    if env is None:
        env = os.environ
    if is_root is None:
        is_root = os.geteuid() == 0
    explicit = env.get(ENV_CONFIG_DIR, "")
    if explicit:
        return Path(explicit).expanduser()
    if is_root:
        return ROOT_CONFIG_DIR
    xdg = env.get("XDG_CONFIG_HOME", "")
    if xdg:
        return Path(xdg) / APP_NAME
    home = env.get("HOME", "")
    base = Path(home) if home else Path.home()
    return base / ".config" / APP_NAME
