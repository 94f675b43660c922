"""Shared helpers of the CLI tests: run `meshguard` in-process against a config dir of its
own, and check that a failing command printed one line and changed nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshguard.cli.main import main

Snapshot = dict[str, tuple[int, bytes | None]]


def snapshot(root: Path) -> Snapshot:
    if not root.exists():
        return {}
    out: Snapshot = {}
    for p in sorted(root.rglob("*")):
        st = p.stat()
        out[str(p.relative_to(root))] = (st.st_mode, p.read_bytes() if p.is_file() else None)
    return out


class Env:
    def __init__(self, cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.cfg = cfg
        self.capsys = capsys

    def run(self, *argv: str) -> tuple[int, str, str]:
        rc = main(list(argv))
        out, err = self.capsys.readouterr()
        return rc, out, err

    def ok(self, *argv: str) -> str:
        rc, out, err = self.run(*argv)
        assert rc == 0, err
        return out

    def fails(self, *argv: str, match: str) -> str:
        """Run a command that must fail: one error line, exit 1, nothing changed on disk."""
        before = snapshot(self.cfg)
        rc, out, err = self.run(*argv)
        assert rc == 1, (out, err)
        assert err.startswith("meshguard: error: ")
        assert err.count("\n") == 1, err
        assert "; " in err, f"no fix in: {err}"
        assert match in err, err
        assert snapshot(self.cfg) == before
        return err
