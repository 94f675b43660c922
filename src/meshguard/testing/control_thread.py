"""A real ControlServer on an event loop thread of its own, for tests of the blocking clients
(the CLI, daemon/control_client.py) without a daemon: the handler decides every answer.

    with ControlThread(run_dir / "mgt0.sock", "mgt0", handler) as server:
        ...  # `meshguard status --run-dir RUN_DIR` talks to it
        server.close()  # the daemon goes away: the socket file is removed
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from types import TracebackType

from meshguard.daemon.control_server import ControlServer, Handler

TIMEOUT = 5.0


class ControlThread:
    def __init__(self, path: Path, interface: str, handler: Handler) -> None:
        self.loop = asyncio.new_event_loop()
        self.server = ControlServer(path, interface, handler)
        self._closed = False
        self._closing: asyncio.Task[None] | None = None
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(TIMEOUT)
        except BaseException:
            self._stop_loop()
            raise

    def __enter__(self) -> ControlThread:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def close(self) -> None:
        """Stop answering and remove the socket (the loop keeps running until stop())."""
        if not self._closed:
            self._closed = True
            asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(TIMEOUT)

    def close_soon(self) -> None:
        """close() from inside the handler (on the loop thread), after its answer goes out."""
        self._closed = True
        self._closing = self.loop.create_task(self.server.close())

    def stop(self) -> None:
        try:
            self.close()
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(TIMEOUT)
        self.loop.close()
