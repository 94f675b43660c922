"""`--metrics [ADDR:]PORT`: Prometheus text over HTTP, built from the `status` report.

The daemon's state lives on the asyncio loop, so the exporter serves HTTP on the loop too (no
thread of prometheus_client's): a scrape awaits the same report `meshguard status` gets, puts
it in the collector of a private registry and renders it with the library's
`generate_latest`, all on the loop. The families are daemon/metrics_families.py's; every name
is in docs/metrics.md.

The port may be exposed (`--metrics 0.0.0.0:9586`), so the responder is small and bounded:
`GET` (or `HEAD`) `/metrics` only, a request head of at most MAX_REQUEST_HEAD bytes, one
request per connection, REQUEST_TIMEOUT seconds for the whole exchange, at most
MAX_CONNECTIONS at once, and scrapes closer together than MIN_BUILD_INTERVAL share one
rendering, so a flood of requests costs the loop at most one report per interval. What it
refuses is counted in `meshguard_scrapes_total{result}`. A port it cannot bind is one warning
line, and the daemon runs on without metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from meshguard.clock import Clock
from meshguard.daemon.metrics_families import metric_families
from meshguard.sansio import Endpoint
from meshguard.wire.control import StatusReport, format_endpoint

log = logging.getLogger("meshguard.metrics")

MAX_REQUEST_HEAD = 4096  # bytes of request line and headers
REQUEST_TIMEOUT = 5.0  # seconds for a whole request and its answer
MAX_CONNECTIONS = 8
MIN_BUILD_INTERVAL = 0.5  # seconds: scrapes closer together get the same rendering

ReportSource = Callable[[], Awaitable[StatusReport]]


class StatusCollector(Collector):
    """The families of the report being rendered (set and cleared around `generate_latest`,
    on the loop), and the exporter's own request counts."""

    def __init__(self, scrapes: Counter[str]) -> None:
        self.snapshot: tuple[StatusReport, float] | None = None
        self._scrapes = scrapes

    def collect(self) -> Iterable[Metric]:
        if self.snapshot is None:
            return []
        return metric_families(*self.snapshot, scrapes=self._scrapes)


def listen_error(exc: OSError, where: Endpoint) -> str:
    """One line for a metrics port that cannot be bound."""
    what = {errno.EADDRINUSE: "address in use", errno.EACCES: "permission denied",
            errno.EADDRNOTAVAIL: "address not available on this host"}.get(
        exc.errno or 0, (exc.strerror or str(exc)).lower())
    return f"metrics: cannot listen on {format_endpoint(where)}: {what}; metrics are off"


def _status_line(code: int) -> bytes:
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
              431: "Request Header Fields Too Large", 500: "Internal Server Error",
              503: "Service Unavailable"}[code]
    return f"HTTP/1.1 {code} {reason}\r\n".encode()


def response(code: int, body: bytes, content_type: str = "text/plain; charset=utf-8",
             head_only: bool = False) -> bytes:
    headers = (f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
               "Connection: close\r\n")
    if code == 405:
        headers += "Allow: GET, HEAD\r\n"
    return _status_line(code) + headers.encode() + b"\r\n" + (b"" if head_only else body)


def parse_request_line(head: bytes) -> tuple[int, bool]:
    """The answer's status code for a request head (200: serve the metrics), and whether it
    was a HEAD request."""
    line = head.split(b"\r\n", 1)[0]
    parts = line.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return 400, False
    method, target = parts[0], parts[1]
    if method not in (b"GET", b"HEAD"):
        return 405, False
    if target.split(b"?", 1)[0] != b"/metrics":
        return 404, method == b"HEAD"
    return 200, method == b"HEAD"


class MetricsExporter:
    """The HTTP responder; `report` is awaited on the loop for every rendering."""

    def __init__(self, report: ReportSource, clock: Clock, *,
                 timeout: float = REQUEST_TIMEOUT, max_connections: int = MAX_CONNECTIONS
                 ) -> None:
        self._report = report
        self._clock = clock
        self.timeout = timeout
        self.max_connections = max_connections
        self.scrapes: Counter[str] = Counter()
        self._collector = StatusCollector(self.scrapes)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self._collector)
        self._server: asyncio.Server | None = None
        self._connections = 0
        self._cached: tuple[float, bytes] | None = None
        self._lock = asyncio.Lock()

    async def start(self, where: Endpoint) -> bool:
        """Listen on `where`; False (and one warning line) when the port cannot be bound."""
        host, port = where
        try:
            self._server = await asyncio.start_server(self._serve, host, port,
                                                      limit=MAX_REQUEST_HEAD)
        except OSError as exc:
            log.warning("%s", listen_error(exc, where))
            return False
        log.info("metrics: serving Prometheus text on http://%s/metrics",
                 format_endpoint(where))
        return True

    @property
    def port(self) -> int | None:
        """The TCP port listened on (the one chosen for port 0)."""
        if self._server is None or not self._server.sockets:
            return None
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    async def render(self) -> bytes:
        """The Prometheus text of the current report (one rendering per MIN_BUILD_INTERVAL)."""
        async with self._lock:
            now = self._clock.monotonic()
            if self._cached is not None and now - self._cached[0] < MIN_BUILD_INTERVAL:
                return self._cached[1]
            report = await self._report()
            self._collector.snapshot = (report, self._clock.wall())
            try:
                body = generate_latest(self.registry)
            finally:
                self._collector.snapshot = None
            self._cached = (now, body)
            return body

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._connections >= self.max_connections:
            self.scrapes["busy"] += 1
            writer.close()
            return
        self._connections += 1
        try:
            async with asyncio.timeout(self.timeout):
                writer.write(await self._answer(reader))
                await writer.drain()
        except TimeoutError:
            self.scrapes["timeout"] += 1
        except (ConnectionError, OSError):
            pass
        finally:
            self._connections -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _answer(self, reader: asyncio.StreamReader) -> bytes:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            self.scrapes["too_large"] += 1
            return response(431, b"request too large\n")
        except asyncio.IncompleteReadError:
            self.scrapes["bad_request"] += 1
            return b""
        code, head_only = parse_request_line(head)
        if code != 200:
            self.scrapes[{400: "bad_request", 404: "not_found", 405: "bad_method"}[code]] += 1
            return response(code, b"only GET /metrics is served here\n", head_only=head_only)
        try:
            body = await self.render()
        except Exception:  # a bug must not take the daemon down with it
            log.exception("metrics: cannot build the report")
            self.scrapes["failed"] += 1
            return response(500, b"cannot build the report\n")
        self.scrapes["ok"] += 1
        return response(200, body, CONTENT_TYPE_PLAIN_0_0_4, head_only=head_only)


async def start_metrics(where: Endpoint, report: ReportSource, clock: Clock,
                        stack: contextlib.AsyncExitStack) -> MetricsExporter | None:
    """The exporter on `where`, closed with the stack; None when the port cannot be bound
    (one warning line, and the daemon runs on without metrics)."""
    exporter = MetricsExporter(report, clock)
    if not await exporter.start(where):
        return None
    stack.push_async_callback(exporter.close)
    return exporter
