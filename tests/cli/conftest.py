"""Fixtures of the CLI tests."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from .helpers import Env


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Env:
    cfg = tmp_path / "cfg"
    monkeypatch.setenv("MESHGUARD_CONFIG_DIR", str(cfg))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    return Env(cfg, capsys)
