"""`meshguard web [--listen [ADDR:]PORT] [-i IFACE]`: a read-only page of this node's view of
the mesh (docs/web.md), served from the CLI process until Ctrl-C.

It listens on 127.0.0.1:8385 by default; another address is served too, with a warning, since
the page shows every member's keys, addresses and endpoints. The page (web/) polls
`/status.json`, which is the daemon's `status` (wire/control.py) read from the control socket
at most once a second however many browsers watch (web/routes.py). With no daemon the page
says "daemon not reachable" and keeps asking. A busy port: one error line, exit 1.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from meshguard.cli.daemon_commands import add_common, run_dir_of
from meshguard.cli.up_command import parse_metrics
from meshguard.errors import MeshguardError

if TYPE_CHECKING:
    from meshguard.web.routes import WebRoutes

DEFAULT_PORT = 8385
MAX_CONNECTIONS = 32  # served at once; more are closed unanswered
REQUEST_TIMEOUT = 10.0  # seconds a client may stay silent while sending its request
REQUEST_DEADLINE = 10.0  # seconds it may take for the whole request line and headers
CONTROL_TIMEOUT = 3.0  # seconds the daemon may take to answer `status`


class WebServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], routes: WebRoutes) -> None:
        self.address_family = (socket.AF_INET6 if ipaddress.ip_address(address[0]).version == 6
                               else socket.AF_INET)
        self.routes = routes
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, WebHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class WebHandler(BaseHTTPRequestHandler):
    server: WebServer
    timeout = REQUEST_TIMEOUT
    deadline = REQUEST_DEADLINE
    protocol_version = "HTTP/1.1"
    # the base class's own errors (bad request line, too many headers, unknown method)
    error_content_type = "text/plain; charset=utf-8"
    error_message_format = "%(code)d %(message)s\n"

    def handle_one_request(self) -> None:
        """One request, its line and headers in within `deadline` however slowly they come
        (a byte now and then never trips the per-read `timeout`): then the socket is shut."""
        self._cutoff = threading.Timer(self.deadline, self._cut)
        self._cutoff.daemon = True
        self._cutoff.start()
        try:
            super().handle_one_request()
        finally:
            self._cutoff.cancel()

    def parse_request(self) -> bool:
        ok = super().parse_request()  # reads the headers
        self._cutoff.cancel()
        return ok

    def _cut(self) -> None:
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _serve(self) -> None:
        from meshguard.web.routes import SECURITY_HEADERS

        reply = self.server.routes.handle(self.command, self.path, self.headers.get("Host"),
                                          time.monotonic(), time.time())
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        for name, value in SECURITY_HEADERS + reply.headers:
            self.send_header(name, value)
        if reply.status >= 400:
            self.close_connection = True
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(reply.body)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _serve

    def version_string(self) -> str:
        return "meshguard-web"

    def log_message(self, format: str, *args: Any) -> None:
        """No access log on the terminal."""


def status_fetcher(args: argparse.Namespace) -> Callable[[], Mapping[str, object]]:
    """A function returning the daemon's status document (re-finding the daemon each time, so
    a restarted or late daemon is picked up)."""
    from meshguard.daemon.control_client import select_daemon

    directory = run_dir_of(args)

    def fetch() -> Mapping[str, object]:
        client = select_daemon(directory, args.interface)
        client.timeout = CONTROL_TIMEOUT
        return client.status().to_json()

    return fetch


def serve(address: tuple[str, int], routes: WebRoutes) -> WebServer:
    """The bound server (not yet serving); a busy or unusable address: a MeshguardError."""
    try:
        return WebServer(address, routes)
    except OSError as exc:
        raise MeshguardError(f"cannot listen on {_url(address)}: {exc.strerror or exc}; "
                             "choose another with --listen [ADDR:]PORT") from None


def _url(address: tuple[str, int]) -> str:
    host, port = address
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def exposure_warning(host: str) -> str | None:
    """What to tell the user who serves the page on `host` (None for loopback)."""
    if ipaddress.ip_address(host).is_loopback:
        return None
    return (f"{host} is not a loopback address: anyone who reaches it sees this node's view "
            "of the mesh (keys, addresses, endpoints)")


def cmd_web(args: argparse.Namespace) -> int:
    from meshguard.web.routes import StatusCache, WebRoutes, load_page

    address = parse_metrics(args.listen, option="--listen")
    routes = WebRoutes(load_page(), StatusCache(status_fetcher(args)))
    server = serve(address, routes)
    host, port = server.server_address[:2]
    bound = (str(host), int(port))
    warning = exposure_warning(bound[0])
    if warning is not None:
        print(f"meshguard: warning: {warning}", file=sys.stderr)
    print(f"meshguard web: serving {_url(bound)} (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("web", help="serve a read-only page of the mesh (loopback by default)")
    p.add_argument("--listen", default=str(DEFAULT_PORT),
                   metavar="[ADDR:]PORT",
                   help=f"where to serve it (default 127.0.0.1:{DEFAULT_PORT}; an address "
                        "other than loopback shows the mesh to whoever reaches it)")
    add_common(p, None)
    p.set_defaults(func=cmd_web)


__all__ = ["cmd_web", "exposure_warning", "register", "serve", "status_fetcher"]
