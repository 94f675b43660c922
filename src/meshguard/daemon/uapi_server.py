"""The UAPI unix-socket server: `/var/run/wireguard/<ifname>.sock`, as wireguard-go serves it.

    server = UapiServer("mg0", backend)        # backend: UapiBackend
    await server.start()                        # raises UapiSocketError if the name is in use
    ...
    await server.close()                        # removes the socket file

The socket is created mode 0600 in a 0755 directory. Each connection may carry any number of
requests; a malformed set request is answered with `errno=-22` and applies nothing; a stream
that is not UAPI at all (unknown operation line) is closed, as wireguard-go does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
from typing import Protocol

from meshguard.daemon.uapi_protocol import (
    EIO,
    BadRequest,
    DeviceState,
    GetRequest,
    ProtocolViolation,
    SetRequest,
    UapiError,
    UapiParser,
    format_errno,
    serialize_get,
)
from meshguard.errors import MeshguardError

log = logging.getLogger(__name__)

DEFAULT_RUN_DIR = "/var/run/wireguard"


class UapiSocketError(MeshguardError):
    """The UAPI socket could not be created (name in use, permissions)."""


class UapiBackend(Protocol):
    def uapi_get(self) -> DeviceState:
        """A snapshot of the device for a get request."""
        ...

    def uapi_set(self, request: SetRequest) -> None:
        """Apply a validated set transaction; raise UapiError to refuse it (nothing applied)."""
        ...


def socket_path(ifname: str, run_dir: str = DEFAULT_RUN_DIR) -> str:
    return os.path.join(run_dir, f"{ifname}.sock")


def socket_in_use(path: str) -> bool:
    """True when something accepts connections on the unix socket at `path`."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(1.0)
        s.connect(path)
    except OSError:
        return False
    finally:
        s.close()
    return True


def handle_request(backend: UapiBackend, req: GetRequest | SetRequest | BadRequest) -> bytes:
    """The reply bytes for one request (no I/O; shared by the server and tests)."""
    if isinstance(req, BadRequest):
        log.info("uapi: rejected request: %s", req.reason)
        return format_errno(req.errno)
    if isinstance(req, GetRequest):
        try:
            return serialize_get(backend.uapi_get())
        except UapiError as exc:
            return format_errno(exc.errno)
    try:
        backend.uapi_set(req)
    except UapiError as exc:
        log.info("uapi: set refused: %s", exc)
        return format_errno(exc.errno)
    except MeshguardError as exc:
        log.warning("uapi: set failed: %s", exc)
        return format_errno(EIO)
    return format_errno(0)


class UapiServer:
    def __init__(self, ifname: str, backend: UapiBackend, run_dir: str = DEFAULT_RUN_DIR) -> None:
        self.ifname = ifname
        self.backend = backend
        self.run_dir = run_dir
        self.path = socket_path(ifname, run_dir)
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        try:
            os.makedirs(self.run_dir, mode=0o755, exist_ok=True)
        except OSError as exc:
            raise UapiSocketError(f"cannot create {self.run_dir}: {exc.strerror}") from None
        if os.path.exists(self.path):
            if socket_in_use(self.path):
                raise UapiSocketError(f"{self.path} is in use by another process")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)  # stale socket of a dead process
        old_umask = os.umask(0o077)
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=self.path)
        except OSError as exc:
            raise UapiSocketError(f"cannot listen on {self.path}: {exc.strerror}") from None
        finally:
            os.umask(old_umask)
        os.chmod(self.path, stat.S_IRUSR | stat.S_IWUSR)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for t in list(self._conns):
            t.cancel()
        if self._conns:
            await asyncio.gather(*self._conns, return_exceptions=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        parser = UapiParser()
        try:
            while not parser.dead:
                data = await reader.read(65536)
                if not data:
                    break
                for req in parser.feed(data):
                    if isinstance(req, ProtocolViolation):
                        log.info("uapi: closing connection: %s", req.reason)
                        break
                    writer.write(handle_request(self.backend, req))
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception:  # a backend bug must not kill the server
            log.exception("uapi: connection handler failed")
        finally:
            self._conns.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
