"""Config dir resolution, first match wins (docs/compatibility.md#the-config-dir)."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshguard.config import resolve_config_dir


def test_explicit_variable_wins_even_for_root() -> None:
    env = {"MESHGUARD_CONFIG_DIR": "/srv/mg", "XDG_CONFIG_HOME": "/x", "HOME": "/h"}
    assert resolve_config_dir(env, is_root=True) == Path("/srv/mg")
    assert resolve_config_dir(env, is_root=False) == Path("/srv/mg")


def test_root_uses_etc() -> None:
    assert resolve_config_dir({"XDG_CONFIG_HOME": "/x", "HOME": "/h"}, is_root=True) == Path(
        "/etc/meshguard"
    )


def test_xdg_then_home() -> None:
    assert resolve_config_dir({"XDG_CONFIG_HOME": "/x", "HOME": "/h"}, is_root=False) == Path(
        "/x/meshguard"
    )
    assert resolve_config_dir({"HOME": "/h"}, is_root=False) == Path("/h/.config/meshguard")


def test_empty_variables_count_as_unset() -> None:
    env = {"MESHGUARD_CONFIG_DIR": "", "XDG_CONFIG_HOME": "", "HOME": "/h"}
    assert resolve_config_dir(env, is_root=False) == Path("/h/.config/meshguard")


def test_defaults_read_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHGUARD_CONFIG_DIR", "/tmp/somewhere")
    assert resolve_config_dir() == Path("/tmp/somewhere")
