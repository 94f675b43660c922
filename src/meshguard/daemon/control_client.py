"""The CLI side of the control socket: find running daemons, send a request, read the answer.

Blocking and small on purpose: the CLI asks one question and exits.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from pathlib import Path

from meshguard.daemon.runtime import candidate_sockets, socket_path
from meshguard.errors import MeshguardError, WireFormatError
from meshguard.wire.control import (
    MAX_LINE,
    Request,
    StatusReport,
    decode_response,
    encode_request,
)

DEFAULT_TIMEOUT = 5.0


class DaemonNotRunningError(MeshguardError):
    """No daemon answers on the control socket."""


class AmbiguousDaemonError(MeshguardError):
    """Several daemons run and the command needs to know which one."""


class ControlRequestError(MeshguardError):
    """The daemon refused or failed a request."""


@dataclass(frozen=True)
class RunningDaemon:
    interface: str
    path: Path


class ControlClient:
    def __init__(self, path: Path, interface: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.path = path
        self.interface = interface
        self.timeout = timeout

    def request(self, op: str, **args: object) -> dict[str, object]:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            try:
                sock.connect(str(self.path))
            except (FileNotFoundError, ConnectionRefusedError):
                raise DaemonNotRunningError(
                    f"meshguard is not running on {self.interface} (no daemon at {self.path})"
                ) from None
            except PermissionError:
                raise ControlRequestError(
                    f"permission denied on {self.path}: run as root"
                ) from None
            sock.sendall(encode_request(Request(op, args)))
            buf = bytearray()
            while not buf.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
                if len(buf) > MAX_LINE:
                    raise ControlRequestError("daemon answer too long")
        except TimeoutError:
            raise ControlRequestError(
                f"the daemon on {self.interface} did not answer within {self.timeout:g} s"
            ) from None
        except OSError as exc:
            raise ControlRequestError(f"control socket {self.path}: {exc.strerror}") from None
        finally:
            sock.close()
        if not buf:
            raise ControlRequestError(f"the daemon on {self.interface} closed the connection")
        try:
            resp = decode_response(bytes(buf))
        except WireFormatError as exc:
            raise ControlRequestError(f"bad answer from the daemon: {exc}") from None
        if not resp.ok:
            raise ControlRequestError(resp.error or "request failed")
        return resp.result or {}

    def status(self) -> StatusReport:
        try:
            return StatusReport.from_json(self.request("status"))
        except WireFormatError as exc:
            raise ControlRequestError(f"bad status from the daemon: {exc}") from None


def socket_is_live(path: Path) -> bool:
    """True when something accepts connections on the Unix socket at `path`."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


def running_daemons(directory: Path) -> list[RunningDaemon]:
    """Daemons whose control socket accepts a connection (stale socket files are skipped)."""
    return [RunningDaemon(i, p) for i, p in candidate_sockets(directory) if socket_is_live(p)]


def select_daemon(directory: Path, interface: str | None) -> ControlClient:
    """The client for `interface`, or for the only running daemon when none is named."""
    if interface is not None:
        return ControlClient(socket_path(interface, directory), interface)
    running = running_daemons(directory)
    if not running:
        raise DaemonNotRunningError("meshguard is not running (no daemon found in "
                                    f"{directory})")
    if len(running) > 1:
        names = ", ".join(d.interface for d in running)
        raise AmbiguousDaemonError(
            f"several meshguard daemons are running ({names}); choose one with --interface"
        )
    return ControlClient(running[0].path, running[0].interface)


def wait_until_gone(path: Path, timeout: float) -> bool:
    """Wait (polling) until nobody serves `path`; True if it went away in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not socket_is_live(path):
            return True
        time.sleep(0.05)
    return not socket_is_live(path)
