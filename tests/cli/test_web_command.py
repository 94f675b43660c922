"""`meshguard web` without a browser: the routes (known paths only, 404, 405, 503, the Host
check), the status cache (one control request a second however many ask), the HTTP server's
bounds on a real loopback socket, and the command's error lines (docs/web.md)."""

from __future__ import annotations

import argparse
import json
import re
import select
import socket
import threading
import time
import tomllib
from collections.abc import Iterator, Mapping
from fnmatch import fnmatch
from pathlib import Path

import pytest

from meshguard.cli.web_command import WebHandler, WebServer, exposure_warning, status_fetcher
from meshguard.daemon.control_client import DaemonNotRunningError
from meshguard.web.routes import (
    PAGE_FILES,
    STATUS_PATH,
    Reply,
    StatusCache,
    WebRoutes,
    host_allowed,
    load_page,
)

from .helpers import Env

ROOT = Path(__file__).resolve().parents[2]
WEB = ROOT / "src" / "meshguard" / "web"
DOC = {"schema_version": 1, "members": [{"name": "<img src=x onerror=alert(1)>"}]}


class Daemon:
    """A stand-in for the control socket: counts the status requests, fails when told to."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls = 0
        self.down = False
        self.delay = delay
        self._lock = threading.Lock()

    def fetch(self) -> Mapping[str, object]:
        with self._lock:
            self.calls += 1
        time.sleep(self.delay)
        if self.down:
            raise DaemonNotRunningError("meshguard is not running on mg0")
        return DOC


def routes(daemon: Daemon, interval: float = 1.0) -> WebRoutes:
    return WebRoutes(load_page(), StatusCache(daemon.fetch, interval))


def get(r: WebRoutes, target: str, now: float = 0.0, host: str | None = "127.0.0.1:8385",
        method: str = "GET") -> Reply:
    return r.handle(method, target, host, now, 1_700_000_000.0 + now)


# routes --------------------------------------------------------------------------------------


def test_the_page_and_its_files_are_served() -> None:
    r = routes(Daemon())
    for path, (name, ctype) in PAGE_FILES.items():
        rep = get(r, path)
        assert (rep.status, rep.content_type) == (200, ctype)
        assert rep.body == (WEB / name).read_bytes()
    assert get(r, "/?refresh=1").status == 200  # a query string does not change the path


@pytest.mark.parametrize("target", [
    "/index.html", "/routes.py", "/__init__.py", "/web", "/web/", "/web/web.js", "//web.js",
    "/../pyproject.toml", "/%2e%2e/pyproject.toml", "/web.js/", "/status.json/x", "/STATUS.JSON",
    "/etc/passwd", "web.js", "*", "http://127.0.0.1:8385/",
])
def test_any_other_path_is_not_found(target: str) -> None:
    rep = get(routes(Daemon()), target)
    assert rep.status == 404 and rep.body == b"not found\n", target


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"])
def test_only_get_is_served(method: str) -> None:
    daemon = Daemon()
    rep = get(routes(daemon), STATUS_PATH, method=method)
    assert rep.status == 405 and ("Allow", "GET") in rep.headers
    assert daemon.calls == 0


def test_a_long_target_is_refused_unread() -> None:
    assert get(routes(Daemon()), "/" + "a" * 5000).status == 414


@pytest.mark.parametrize(("host", "ok"), [
    (None, True), ("127.0.0.1", True), ("127.0.0.1:8385", True), ("localhost:8385", True),
    ("LOCALHOST", True), ("[::1]:8385", True), ("[::1]", True), ("10.1.2.3:80", True),
    ("attacker.example", False), ("attacker.example:8385", False), ("localhost.attacker.example",
                                                                     False),
    ("127.0.0.1.nip.io:8385", False), ("[::1", False), ("", False), ("::1:8385:x", False),
])
def test_only_ip_literals_and_localhost_pass_the_host_check(host: str | None, ok: bool) -> None:
    assert host_allowed(host) is ok


def test_a_rebound_host_name_gets_no_status() -> None:
    """DNS rebinding: a page of attacker.example whose name now points at 127.0.0.1 asks for
    the status with its own Host header; the daemon is not even asked."""
    daemon = Daemon()
    rep = get(routes(daemon), STATUS_PATH, host="attacker.example:8385")
    assert rep.status == 403 and daemon.calls == 0


# status and its cache ------------------------------------------------------------------------


def test_the_status_is_the_daemons_document_with_the_time() -> None:
    rep = get(routes(Daemon()), STATUS_PATH, now=5.0)
    assert (rep.status, rep.content_type) == (200, "application/json")
    assert json.loads(rep.body) == {"ok": True, "now": 1_700_000_005.0, "status": DOC}


def test_the_daemon_is_asked_at_most_once_a_second() -> None:
    daemon = Daemon()
    r = routes(daemon)
    bodies = {get(r, STATUS_PATH, now=t).body for t in (10.0, 10.2, 10.5, 10.99)}
    assert daemon.calls == 1 and len(bodies) == 1  # the same answer, "now" included
    get(r, STATUS_PATH, now=11.0)
    get(r, STATUS_PATH, now=11.5)
    assert daemon.calls == 2
    get(r, STATUS_PATH, now=3.0)  # the monotonic clock never goes back; if it did: ask again
    assert daemon.calls == 3


def test_without_a_daemon_the_status_is_503_and_asked_again_a_second_later() -> None:
    daemon = Daemon()
    daemon.down = True
    r = routes(daemon)
    rep = get(r, STATUS_PATH, now=0.0)
    assert rep.status == 503
    body = json.loads(rep.body)
    assert body["ok"] is False
    assert body["error"] == "daemon not reachable: meshguard is not running on mg0"
    assert get(r, STATUS_PATH, now=0.5).status == 503 and daemon.calls == 1
    daemon.down = False
    assert get(r, STATUS_PATH, now=1.0).status == 200 and daemon.calls == 2


def test_an_os_error_on_the_way_is_a_503_too() -> None:
    def fetch() -> Mapping[str, object]:
        raise PermissionError(13, "Permission denied")

    rep = StatusCache(fetch).get(0.0, 0.0)
    assert rep.status == 503 and b"Permission denied" in rep.body


def test_many_browsers_at_once_make_one_request() -> None:
    daemon = Daemon(delay=0.2)
    cache = StatusCache(daemon.fetch)
    replies: list[Reply] = []
    threads = [threading.Thread(target=lambda: replies.append(cache.get(7.0, 7.0)))
               for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert daemon.calls == 1 and len(replies) == 20
    assert {r.status for r in replies} == {200}


def test_the_fetcher_reports_a_missing_daemon(tmp_path: Path) -> None:
    args = argparse.Namespace(run_dir=str(tmp_path), interface=None)
    rep = StatusCache(status_fetcher(args)).get(0.0, 0.0)
    assert rep.status == 503
    assert "daemon not reachable: meshguard is not running" in json.loads(rep.body)["error"]
    args = argparse.Namespace(run_dir=str(tmp_path), interface="mg7")
    rep = StatusCache(status_fetcher(args)).get(0.0, 0.0)
    assert "not running on mg7" in json.loads(rep.body)["error"]


# the page's own files ------------------------------------------------------------------------


def test_the_page_builds_no_html_from_strings() -> None:
    """Member names are chosen by whoever named the member: the script builds every element
    itself and sets text with textContent only."""
    js = (WEB / "web.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                 "new Function", "DOMParser", "createContextualFragment", "srcdoc"):
        assert sink not in js, sink
    html = (WEB / "index.html").read_text()
    assert "<script>" not in html and " on" not in re.sub(r"<!--.*?-->", "", html, flags=re.S)


def test_the_page_loads_nothing_from_elsewhere() -> None:
    for name in ("index.html", "web.css", "web.js"):
        text = (WEB / name).read_text().replace("http://www.w3.org/2000/svg", "")
        assert not re.search(r"https?:|//[a-z]|@import|url\(", text), name


def test_the_wheel_carries_the_page() -> None:
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["meshguard"]
    for name, _ in PAGE_FILES.values():
        assert any(fnmatch(f"web/{name}", g) for g in globs), name


# the server on a real socket -----------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[tuple[WebServer, Daemon]]:
    daemon = Daemon()
    srv = WebServer(("127.0.0.1", 0), routes(daemon, interval=3600))
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield srv, daemon
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(5)


def _raw(srv: WebServer, request: bytes) -> bytes:
    with socket.create_connection(srv.server_address[:2], timeout=5) as s:
        s.sendall(request)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def _status_line(answer: bytes) -> str:
    return answer.split(b"\r\n", 1)[0].decode()


def test_the_server_sends_the_reply_with_its_headers(server: tuple[WebServer, Daemon]) -> None:
    srv, daemon = server
    ans = _raw(srv, b"GET /status.json HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    head, _, body = ans.partition(b"\r\n\r\n")
    assert _status_line(ans) == "HTTP/1.1 200 OK"
    assert json.loads(body)["status"] == DOC
    for h in (b"Content-Type: application/json", b"X-Content-Type-Options: nosniff",
              b"Content-Security-Policy: default-src 'none'; script-src 'self'",
              b"Cache-Control: no-store", f"Content-Length: {len(body)}".encode()):
        assert h in head, h
    for _ in range(3):
        _raw(srv, b"GET /status.json HTTP/1.0\r\n\r\n")
    assert daemon.calls == 1


def test_the_server_serves_no_files_by_name(server: tuple[WebServer, Daemon]) -> None:
    srv, _ = server
    for target in (b"/../../../../etc/passwd", b"/web/../routes.py", b"/%2e%2e/%2e%2e/etc/hosts"):
        ans = _raw(srv, b"GET " + target + b" HTTP/1.0\r\n\r\n")
        assert _status_line(ans).split()[1] == "404", (target, ans)
        assert b"root:" not in ans and b"localhost" not in ans


def test_the_server_bounds_requests(server: tuple[WebServer, Daemon]) -> None:
    srv, daemon = server
    ans = _raw(srv, b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n")
    assert _status_line(ans).split()[1] == "414"
    headers = b"".join(b"X-%d: y\r\n" % i for i in range(200))
    ans = _raw(srv, b"GET / HTTP/1.1\r\n" + headers + b"\r\n")
    assert _status_line(ans).split()[1] == "431"
    ans = _raw(srv, b"BREW /status.json HTTP/1.1\r\n\r\n")
    assert _status_line(ans).split()[1] == "501"
    ans = _raw(srv, b"POST /status.json HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")
    assert _status_line(ans).split()[1] == "405"
    ans = _raw(srv, b"\x16\x03\x01\x02\x00garbage\r\n\r\n")  # a TLS hello, say
    assert ans.startswith(b"400 Bad request syntax"), ans
    assert daemon.calls == 0


def test_a_client_trickling_its_request_is_cut_off_at_the_deadline(
        server: tuple[WebServer, Daemon], monkeypatch: pytest.MonkeyPatch) -> None:
    """Slowloris: one header line every 0.1 s never lets a per-read timeout (0.4 s here) fire;
    the deadline for the whole request (0.5 s here) closes the connection all the same, so
    MAX_CONNECTIONS such clients cannot hold the page for good."""
    srv, daemon = server
    monkeypatch.setattr(WebHandler, "timeout", 0.4)
    monkeypatch.setattr(WebHandler, "deadline", 0.5, raising=False)
    with socket.create_connection(srv.server_address[:2], timeout=5) as s:
        s.sendall(b"GET /status.json HTTP/1.1\r\n")
        closed_after = None
        for i in range(30):  # 3 s of trickling
            try:
                s.sendall(b"X-%d: y\r\n" % i)
            except OSError:
                closed_after = i
                break
            ready, _, _ = select.select([s], [], [], 0.1)
            if ready and s.recv(4096) == b"":
                closed_after = i
                break
        assert closed_after is not None and closed_after < 15, closed_after
    ans = _raw(srv, b"GET /status.json HTTP/1.0\r\n\r\n")  # the slot is free again
    assert _status_line(ans).split()[1] == "200"
    assert daemon.calls == 1  # the trickled request was never served


# the command ---------------------------------------------------------------------------------


def test_a_busy_port_is_one_error_line(env: Env) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        err = env.fails("web", "--listen", f"127.0.0.1:{port}", match="Address already in use")
    assert f"cannot listen on http://127.0.0.1:{port}/" in err


@pytest.mark.parametrize("listen", ["1.2.3", "host.example:80", "127.0.0.1:0x10", "70000",
                                    "[::1]:"])
def test_a_bad_listen_address_is_one_error_line(env: Env, listen: str) -> None:
    rc, out, err = env.run("web", "--listen", listen)
    assert rc == 1 and out == ""
    assert err.startswith("meshguard: error: --listen ") and err.count("\n") == 1, err


def test_serving_beyond_loopback_warns() -> None:
    assert exposure_warning("127.0.0.1") is None and exposure_warning("::1") is None
    for host in ("0.0.0.0", "::", "192.168.1.5", "10.99.1.2"):
        warning = exposure_warning(host)
        assert warning is not None and host in warning and "loopback" in warning
