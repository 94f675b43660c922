from __future__ import annotations

import os
import socket
from pathlib import Path

from meshguard.daemon.sd_notify import notify


def test_notify_path_socket(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(str(path))
        s.settimeout(2)
        assert notify("READY=1\nSTATUS=joined", env={"NOTIFY_SOCKET": str(path)})
        assert s.recv(100) == b"READY=1\nSTATUS=joined"


def test_notify_abstract_socket() -> None:
    name = f"mg-notify-{os.getpid()}-{os.urandom(4).hex()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("\0" + name)
        s.settimeout(2)
        assert notify("READY=1", env={"NOTIFY_SOCKET": "@" + name})
        assert s.recv(100) == b"READY=1"


def test_notify_without_systemd(tmp_path: Path) -> None:
    assert notify("READY=1", env={}) is False
    assert notify("READY=1", env={"NOTIFY_SOCKET": str(tmp_path / "nobody")}) is False
