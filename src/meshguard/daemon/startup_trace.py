"""Start-up timeline marks, for bench/startup.py (docs/performance.md#start-up).

    mark("tun")     # appends "<CLOCK_MONOTONIC seconds> <pid> tun" to $MESHGUARD_STARTUP_TRACE

Only when the environment variable MESHGUARD_STARTUP_TRACE names a file, and only the first
mark of each name (so "handshake" is the first handshake). Without the variable a mark costs a
dictionary lookup. The clock is CLOCK_MONOTONIC, which every process on the machine shares, so
the bench can put the marks of several processes (in several network namespaces) on the
timeline of the moment it started them. Standard library only: cli/main.py imports this
before anything else.
"""

from __future__ import annotations

import os
import time

ENV = "MESHGUARD_STARTUP_TRACE"

_path = os.environ.get(ENV) or None
_seen: set[str] = set()


def mark(name: str) -> None:
    """Record that start-up reached `name` now (the first time only)."""
    if _path is None or name in _seen:
        return
    _seen.add(name)
    line = f"{time.monotonic():.6f} {os.getpid()} {name}\n".encode()
    try:
        fd = os.open(_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    except OSError:
        return
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
