"""What `meshguard web` answers (docs/web.md): the page's three files and `/status.json`.

The HTTP server (cli/web_command.py) hands every request's method, target and Host header to
`WebRoutes.handle` with the monotonic `now` and the wall clock `wall`, and writes back the
`Reply`. Only GET of a known path is served; everything else gets a short error and no
file is ever looked up by a name from the request. `/status.json` is the daemon's status
document (wire/control.py), fetched through the injected `fetch` at most once per
`interval` however many browsers poll: every request in between gets the cached answer.

    200 {"ok": true, "now": <wall seconds>, "status": <status document>}
    503 {"ok": false, "now": <wall seconds>, "error": "daemon not reachable: ..."}

Host names other than `localhost` and IP literals are refused (403), so a web site that
rebinds its own name to 127.0.0.1 cannot read the status from a browser on this machine.
"""

from __future__ import annotations

import ipaddress
import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources

from meshguard.errors import MeshguardError

STATUS_PATH = "/status.json"
# path -> (file in this package, content type)
PAGE_FILES: dict[str, tuple[str, str]] = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/web.css": ("web.css", "text/css; charset=utf-8"),
    "/web.js": ("web.js", "text/javascript; charset=utf-8"),
}
MAX_TARGET = 1024  # the known targets are short; anything longer is not one of them
CACHE_INTERVAL = 1.0  # seconds between two status requests to the daemon
SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    # the page's own files only: no inline script or style, no other origin, no framing
    ("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; "
                                "connect-src 'self'; img-src 'self'; base-uri 'none'; "
                                "form-action 'none'; frame-ancestors 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
)


@dataclass(frozen=True)
class Reply:
    status: int
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


def load_page() -> dict[str, bytes]:
    """The page's files, by path (read once, at start)."""
    pkg = resources.files("meshguard.web")
    return {path: pkg.joinpath(name).read_bytes() for path, (name, _) in PAGE_FILES.items()}


def host_allowed(host: str | None) -> bool:
    """True for no Host header, `localhost` and IP literals (with or without a port)."""
    if host is None:
        return True
    h = host.strip().lower()
    if h.startswith("["):
        h, sep, _ = h[1:].partition("]")
        if not sep:
            return False
    elif h.count(":") == 1:
        h = h.partition(":")[0]
    if h == "localhost":
        return True
    try:
        ipaddress.ip_address(h)
    except ValueError:
        return False
    return True


def _text(status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
    return Reply(status, "text/plain; charset=utf-8", (message + "\n").encode(), headers)


def _json(status: int, obj: Mapping[str, object]) -> Reply:
    body = json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()
    return Reply(status, "application/json", body)


class StatusCache:
    """The last `/status.json` answer, renewed through `fetch` once it is `interval` old.
    Thread-safe: concurrent requests wait for one fetch instead of each making their own."""

    def __init__(self, fetch: Callable[[], Mapping[str, object]],
                 interval: float = CACHE_INTERVAL) -> None:
        self._fetch = fetch
        self.interval = interval
        self._lock = threading.Lock()
        self._at: float | None = None
        self._reply = _json(503, {"ok": False, "error": "daemon not reachable"})
        self.fetches = 0

    def get(self, now: float, wall: float) -> Reply:
        with self._lock:
            if self._at is None or not 0 <= now - self._at < self.interval:
                self._at = now
                self.fetches += 1
                try:
                    doc = self._fetch()
                except (MeshguardError, OSError) as exc:
                    self._reply = _json(503, {"ok": False, "now": wall,
                                              "error": f"daemon not reachable: {exc}"})
                else:
                    self._reply = _json(200, {"ok": True, "now": wall, "status": doc})
            return self._reply


class WebRoutes:
    def __init__(self, page: Mapping[str, bytes], cache: StatusCache) -> None:
        self.page = dict(page)
        self.cache = cache

    def handle(self, method: str, target: str, host: str | None, now: float,
               wall: float) -> Reply:
        if method != "GET":
            return _text(405, "only GET is served", (("Allow", "GET"),))
        if len(target) > MAX_TARGET:
            return _text(414, "request target too long")
        if not host_allowed(host):
            return _text(403, "use the address meshguard web listens on (an IP or localhost)")
        path = target.partition("?")[0]
        if path == STATUS_PATH:
            return self.cache.get(now, wall)
        body = self.page.get(path)
        if body is None:
            return _text(404, "not found")
        return Reply(200, PAGE_FILES[path][1], body)
