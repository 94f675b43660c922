"""systemd readiness notification (sd_notify protocol) without a libsystemd dependency.

`notify("READY=1")` sends one datagram to the AF_UNIX socket named by $NOTIFY_SOCKET (a path,
or an abstract socket when it starts with '@'). Without $NOTIFY_SOCKET it does nothing and
returns False, so the daemon behaves the same outside systemd.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping


def notify(state: str, env: Mapping[str, str] | None = None) -> bool:
    e = os.environ if env is None else env
    addr = e.get("NOTIFY_SOCKET", "")
    if not addr:
        return False
    target = "\0" + addr[1:] if addr.startswith("@") else addr
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        try:
            s.connect(target)
            s.sendall(state.encode("utf-8"))
        except OSError:
            return False
    return True
