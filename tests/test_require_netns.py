"""MESHGUARD_REQUIRE_NETNS=1 turns skips of root and namespace tests into failures.

The suite's own conftest.py is copied next to a tiny test file, and pytest runs on it in a
subprocess with and without the switch.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

CONFTEST = Path(__file__).with_name("conftest.py")

TINY = '''
import pytest


@pytest.mark.netns
def test_marked_netns_skips() -> None:
    pytest.skip("coturn is not installed")


@pytest.mark.skipif(True, reason="needs root (network namespaces, TUN)")
def test_unmarked_root_skip() -> None:
    pass


def test_unrelated_skip() -> None:
    pytest.skip("fixed keys happen to collide")


@pytest.mark.xfail(reason="needs root", strict=True)
def test_expected_failure() -> None:
    raise AssertionError


@pytest.mark.netns
def test_marked_netns_passes() -> None:
    pass
'''


def _outcomes(tmp_path: Path, required: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MESHGUARD_REQUIRE_NETNS"}
    if required is not None:
        env["MESHGUARD_REQUIRE_NETNS"] = required
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", "-q", "test_tiny.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    out: dict[str, str] = {}
    for line in res.stdout.splitlines():
        word, _, rest = line.partition(" ")
        if word in ("PASSED", "FAILED", "SKIPPED", "XFAIL", "ERROR"):
            name = rest.split("::")[-1].split(" ")[0]
            if word == "SKIPPED":  # "SKIPPED [1] test_tiny.py:7: reason" names no test
                name = rest
            out[name] = word
    assert res.returncode in (0, 1), res.stdout + res.stderr
    return out


def test_switch_turns_root_and_netns_skips_into_failures(tmp_path: Path) -> None:
    shutil.copy(CONFTEST, tmp_path / "conftest.py")
    (tmp_path / "test_tiny.py").write_text(TINY)
    got = _outcomes(tmp_path, None)
    assert got.pop("test_marked_netns_passes") == "PASSED"
    assert got.pop("test_expected_failure") == "XFAIL"
    assert sorted(got.values()) == ["SKIPPED"] * 3, got
    got = _outcomes(tmp_path, "1")
    assert got.pop("test_marked_netns_passes") == "PASSED"
    assert got.pop("test_expected_failure") == "XFAIL"
    assert got.pop("test_marked_netns_skips") == "FAILED"
    assert got.pop("test_unmarked_root_skip") == "ERROR"  # a skipif mark fails in setup
    assert list(got.values()) == ["SKIPPED"], got  # the unrelated skip stays a skip
