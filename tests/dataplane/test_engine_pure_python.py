"""The engine tests again, in a process started with MESHGUARD_PURE_PYTHON=1.

The fast path is chosen once, when `meshguard.dataplane.fastpath` is first imported, and the
engine binds the C-only batch receive (`recv_batch`, `HandshakeGuard`) at import time; only a
fresh interpreter runs the engine exactly as a daemon started with the variable does. Loopback
only, no root.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ENGINE_TESTS = ("test_engine.py", "test_engine_fastpath.py", "test_handshake_flood.py",
                "test_engine_mesh.py", "test_engine_policy.py")
# Need both readers in one process, or the C data-path thread; the default run has them.
BOTH_PATHS = ("test_handshake_flood.py::test_c_reader_and_python_reader_count_the_same",
              "test_handshake_flood.py::test_initiation_flood_against_the_data_path_thread_is_cheap")
PROBE = """
from meshguard.dataplane import fastpath
from meshguard.dataplane.engine import Engine
from meshguard.testing.rng import SeededRng
from meshguard.wireguard.device import Device
engine = Engine(Device(SeededRng(1)), -1)
engine.bind(0)
print(fastpath.IMPLEMENTATION, engine.describe_offloads())
engine.close()
"""


def _pure_env() -> dict[str, str]:
    return {**os.environ, "MESHGUARD_PURE_PYTHON": "1"}


def test_the_variable_selects_the_pure_python_fast_path() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=_pure_env(), capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    impl, described = out.stdout.split(" ", 1)
    assert impl == "python"
    assert "fastpath=python" in described
    assert "udp=recvmsg" in described  # datagram by datagram: no C batch receive, no C guard


@pytest.mark.parametrize("module", ENGINE_TESTS)
def test_engine_tests_pass_on_the_pure_python_path(module: str) -> None:
    here = HERE.relative_to(HERE.parents[1])  # node ids are relative to the repository root
    deselect = [f"--deselect={here / t}" for t in BOTH_PATHS if t.startswith(module + "::")]
    out = subprocess.run(
        [
            sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
            "-m", "not netns", *deselect, str(HERE / module),
        ],
        env=_pure_env(), cwd=HERE.parents[1], capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    summary = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert " passed" in summary, summary
    assert "skipped" not in summary, summary
    assert summary.count("deselected") == (1 if deselect else 0), summary
