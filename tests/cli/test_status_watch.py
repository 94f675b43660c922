"""`meshguard status --watch` against a real control socket whose answers change
(testing/control_thread.py): each refresh shows the new status, a terminal is redrawn in
place, a pipe gets the refreshes one after the other, Ctrl-C exits 0, a daemon that goes away
ends the watch with one error line and exit 1."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshguard.cli.status_watch import CLEAR_BELOW, CLEAR_LINE, HOME, frame
from meshguard.testing.control_thread import ControlThread
from meshguard.wire.control import MemberStatus, Request, SelfStatus, StatusReport

from .helpers import Env

IFACE = "mgw0"


def report(n: int) -> StatusReport:
    me = SelfStatus("watcher", "U0VMRg==", "V0cw", "10.99.1.2", "fd99:6d67::1", 51821, 51821)
    m = MemberStatus("db-1", "REIx", "V0cx", "10.99.3.4", "fd99:6d67::2", "192.0.2.1:51821",
                     "alive", True, True, 1_700_000_000.0, 100 * n, 7, "direct")
    return StatusReport(IFACE, "userspace", 42, 1.0, me, (m,), {})


class ChangingDaemon:
    """Answers `status` with a report whose IN bytes grow by 100 per answer; goes away after
    `answers` answers (None: never)."""

    def __init__(self, run: Path, answers: int | None) -> None:
        self.count = 0
        self.answers = answers

        async def handler(req: Request) -> dict[str, Any]:
            assert req.op == "status"
            self.count += 1
            if self.answers is not None and self.count >= self.answers:
                self.thread.close_soon()
            return report(self.count).to_json()

        self.thread = ControlThread(run / f"{IFACE}.sock", IFACE, handler)


@pytest.fixture
def run(tmp_path: Path) -> Path:
    return tmp_path / "run"


@pytest.fixture
def daemon_for_three(run: Path) -> Iterator[ChangingDaemon]:
    d = ChangingDaemon(run, answers=3)
    with d.thread:
        yield d


def test_each_refresh_shows_the_new_status_until_the_daemon_goes(
        env: Env, run: Path, daemon_for_three: ChangingDaemon) -> None:
    rc, out, err = env.run("status", "--watch", "--interval", "0.1", "--interface", IFACE,
                           "--run-dir", str(run))
    assert rc == 1
    assert err == (f"meshguard: error: meshguard is not running on {IFACE} "
                   f"(no daemon at {run / (IFACE + '.sock')})\n"), err
    assert daemon_for_three.count == 3
    frames = out.split("\n\nevery ")
    assert len(frames) == 3, out
    for i, text in enumerate(frames, 1):
        assert "0.1 s, " in text.splitlines()[0] and "Ctrl-C to stop" in text
        assert f"{100 * i} B" in text and "db-1" in text
        assert sum(f"{100 * j} B" in text for j in (1, 2, 3)) == 1  # only this refresh's
    assert "\x1b" not in out  # not a terminal: no escape sequences


def test_without_interface_the_watch_ends_when_no_daemon_is_left(
        env: Env, run: Path, daemon_for_three: ChangingDaemon) -> None:
    rc, out, err = env.run("status", "-w", "--interval", "0.1", "--run-dir", str(run))
    assert rc == 1 and out.count("Ctrl-C to stop") == 3
    assert err == f"meshguard: error: meshguard is not running (no daemon in {run})\n"


def test_json_watch_is_one_document_per_line(env: Env, run: Path) -> None:
    d = ChangingDaemon(run, answers=2)
    with d.thread:
        rc, out, err = env.run("status", "--watch", "--json", "--interval", "0.1",
                               "--run-dir", str(run))
    assert rc == 1 and err.count("\n") == 1
    docs = [json.loads(line) for line in out.splitlines()]
    assert [doc["members"][0]["rx_bytes"] for doc in docs] == [100, 200]
    assert all(StatusReport.from_json(doc) == report(i) for i, doc in enumerate(docs, 1))


def test_bad_intervals(env: Env, run: Path) -> None:
    env.fails("status", "--watch", "--interval", "0", "--run-dir", str(run),
              match="--interval must be at least 0.1 seconds, got 0")
    env.fails("status", "--watch", "--interval", "nan", "--run-dir", str(run),
              match="--interval must be at least 0.1 seconds, got nan")
    env.fails("status", "--interval", "1", "--run-dir", str(run),
              match="--interval goes with --watch")
    with pytest.raises(SystemExit) as exc:
        env.run("status", "--watch", "--interval", "soon")
    assert exc.value.code == 2
    assert "invalid float value: 'soon'" in env.capsys.readouterr().err


def test_a_terminal_frame_overwrites_the_last_one() -> None:
    assert frame("a\nbb", tty=False) == "a\nbb\n"
    assert frame("a\nbb", tty=True) == f"{HOME}a{CLEAR_LINE}\nbb{CLEAR_LINE}\n{CLEAR_BELOW}"


def read_until(fd: int, pred: str, count: int, timeout: float = 20.0) -> str:
    buf = b""
    deadline = time.monotonic() + timeout
    while buf.decode(errors="replace").count(pred) < count:
        left = deadline - time.monotonic()
        assert left > 0, f"no {count} x {pred!r} in {buf!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the other end closed
                break
            buf += chunk
    return buf.decode(errors="replace")


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_on_a_terminal_it_redraws_in_place_and_ctrl_c_exits_0(run: Path) -> None:
    d = ChangingDaemon(run, answers=None)
    with d.thread:
        leader, follower = pty.openpty()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        proc = subprocess.Popen([sys.executable, "-m", "meshguard", "status", "--watch",
                                 "--interval", "0.1", "--run-dir", str(run)],
                                stdout=follower, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, env=env,
                                # SIGINT as at a terminal (an ignored SIGINT, as a test
                                # runner's worker may leave it, is inherited)
                                preexec_fn=_default_sigint)
        os.close(follower)
        try:
            out = read_until(leader, HOME, 4)  # (the 4th frame ends the 3rd: all 3 whole)
            proc.send_signal(signal.SIGINT)
            # keep reading: a full pty would block the writes the watch makes as it exits
            deadline = time.monotonic() + 10
            while proc.poll() is None and time.monotonic() < deadline:
                if select.select([leader], [], [], 0.1)[0]:
                    try:
                        os.read(leader, 65536)
                    except OSError:
                        break
            rc = proc.wait(5)
            assert proc.stderr is not None
            err = proc.stderr.read().decode()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
            os.close(leader)
    assert rc == 0 and err == ""
    frames = out.split(HOME)[1:]
    assert len(frames) >= 3
    for i, text in enumerate(frames[:3], 1):
        assert f"{100 * i} B" in text and text.rstrip().endswith(CLEAR_BELOW)
        assert all(line.endswith(CLEAR_LINE + "\r") or line == CLEAR_BELOW
                   for line in text.split("\n")[:-1]), text  # the pty turns \n into \r\n
