"""`meshguard status --watch [--interval S]`: the status table, refreshed until Ctrl-C.

Every S seconds (default 2, at least 0.1) the daemon is asked for its status again, as plain
`status` asks it (cli/daemon_commands.py), and the table is printed under one heading line
(`every 2 s, 12:00:01; Ctrl-C to stop`):

- on a terminal it is redrawn in place: cursor home, each line cleared to its end, the rest of
  the screen cleared, so nothing scrolls and nothing flickers;
- otherwise (a pipe, a file) each refresh is printed after the last, separated by a blank line;
- with `--json`, each refresh is one status document on one line (JSON Lines), never redrawn.

Ctrl-C ends it with exit 0. A daemon that stops (or stops answering) ends it with the one error
line plain `status` prints for it, and exit 1.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable
from typing import TextIO

from meshguard.cli.daemon_commands import UsageError, render_status, status_reports

DEFAULT_INTERVAL = 2.0
MIN_INTERVAL = 0.1
HOME = "\x1b[H"  # cursor to the top left
CLEAR_LINE = "\x1b[K"  # erase to the end of the line
CLEAR_BELOW = "\x1b[J"  # erase from the cursor to the end of the screen


def check_interval(value: float | None) -> float:
    if value is None:
        return DEFAULT_INTERVAL
    if not value >= MIN_INTERVAL or value == float("inf"):
        raise UsageError(f"--interval must be at least {MIN_INTERVAL:g} seconds, got {value:g}"
                         "; e.g. --interval 1")
    return value


def frame(text: str, tty: bool) -> str:
    """One refresh as written: redrawn in place on a terminal, else appended."""
    if not tty:
        return text + "\n"
    return HOME + "".join(line + CLEAR_LINE + "\n" for line in text.split("\n")) + CLEAR_BELOW


def watch(render: Callable[[float], str], out: TextIO, interval: float, *, tty: bool,
          lines: bool = False, sleep: Callable[[float], None] = time.sleep,
          clock: Callable[[], float] = time.time) -> int:
    """Print render(now) every `interval` seconds until Ctrl-C (0); render's errors go up.

    `lines`: each render is one line of a stream (JSON Lines): no heading, no blank line."""
    first = True
    try:
        while True:
            now = clock()
            text = render(now)
            if not lines:
                stamp = time.strftime("%H:%M:%S", time.localtime(now))
                text = f"every {interval:g} s, {stamp}; Ctrl-C to stop\n\n{text}"
            gap = "" if first or tty or lines else "\n"
            out.write(gap + frame(text, tty))
            out.flush()
            first = False
            sleep(interval)
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # `| head`: the reader has seen enough
        with contextlib.suppress(OSError, ValueError):  # and no complaint at exit's flush
            os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
        return 0


def cmd_watch(args: argparse.Namespace) -> int:
    if not args.watch:
        raise UsageError("--interval goes with --watch; add --watch")
    interval = check_interval(args.interval)
    out = sys.stdout
    tty = out.isatty() and not args.json

    def render(now: float) -> str:
        reports = status_reports(args)
        return render_status(reports, args.json, now, indent=None)

    return watch(render, out, interval, tty=tty, lines=args.json)
