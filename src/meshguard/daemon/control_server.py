"""The daemon side of the control socket (protocol in meshguard.wire.control).

`ControlServer` listens on a Unix socket created with mode 0600 inside a 0700 run dir, reads one
JSON request per line and answers each with one JSON line produced by an async handler. A
malformed line gets an error response; a client that misbehaves only loses its own connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

from meshguard.daemon.control_client import socket_is_live
from meshguard.errors import MeshguardError, WireFormatError
from meshguard.wire.control import (
    MAX_LINE,
    Request,
    Response,
    decode_request,
    encode_response,
)

log = logging.getLogger(__name__)

Handler = Callable[[Request], Awaitable[dict[str, object]]]


class AlreadyRunningError(MeshguardError):
    """Another daemon already answers on this interface's control socket."""


class ControlSocketError(MeshguardError):
    """The control socket could not be created."""


def claim_socket_path(path: Path, interface: str) -> None:
    """Make sure nobody serves `path`; remove a stale socket left by a crashed daemon."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ControlSocketError(f"cannot create {path.parent}: {exc.strerror}") from None
    if path.exists() or path.is_symlink():
        if socket_is_live(path):
            raise AlreadyRunningError(
                f"meshguard is already running on {interface} (control socket {path}); "
                f"stop it with `meshguard down --interface {interface}`"
            )
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


class ControlServer:
    def __init__(self, path: Path, interface: str, handler: Handler) -> None:
        self.path = path
        self.interface = interface
        self._handler = handler
        self._server: asyncio.AbstractServer | None = None
        self._sock: socket.socket | None = None

    async def start(self) -> None:
        claim_socket_path(self.path, self.interface)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(str(self.path))
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                raise AlreadyRunningError(
                    f"meshguard is already running on {self.interface}"
                ) from None
            raise ControlSocketError(f"cannot bind {self.path}: {exc.strerror}") from None
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        sock.listen(16)
        sock.setblocking(False)
        self._sock = sock
        self._server = await asyncio.start_unix_server(self._serve, sock=sock, limit=MAX_LINE)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    writer.write(encode_response(Response(False, error="request too long")))
                    break
                if not line:
                    break
                writer.write(await self._answer(line))
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, line: bytes) -> bytes:
        try:
            req = decode_request(line)
        except WireFormatError as exc:
            return encode_response(Response(False, error=str(exc)))
        try:
            result = await self._handler(req)
        except MeshguardError as exc:
            return encode_response(Response(False, error=str(exc)))
        except Exception as exc:  # the daemon must survive a buggy handler
            log.exception("control request %s failed", req.op)
            return encode_response(Response(False, error=f"internal error: {exc}"))
        return encode_response(Response(True, result=dict(result)))
