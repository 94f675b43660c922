"""The Prometheus exporter (daemon/metrics_families.py, daemon/metrics_exporter.py): the
families of a hand-built status report, the HTTP responder over a real loopback socket and
what it does with hostile requests, a busy port, and docs/metrics.md against the exporter."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from meshguard import __version__
from meshguard.daemon.metrics_exporter import (
    MAX_REQUEST_HEAD,
    MetricsExporter,
    StatusCollector,
    listen_error,
    parse_request_line,
    start_metrics,
)
from meshguard.daemon.metrics_families import SPECS, counter_class, metric_families
from meshguard.testing.clock import ManualClock
from meshguard.wire.control import MemberStatus, SelfStatus, StatusReport

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
WALL = 1_700_000_000.0

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def member(name: str | None, key: str, state: str = "alive", *, tunnel: bool = True,
           path: str = "direct", hs: float | None = None, rx: int = 0, tx: int = 0,
           rtt_ms: float | None = None, mtu: int | None = None) -> MemberStatus:
    return MemberStatus(name=name, identity_key=key, wireguard_key=key, mesh_ipv4="10.99.0.1",
                        mesh_ipv6="fd99::1", endpoint="192.0.2.1:51821", state=state,
                        trusted=True, tunnel=tunnel, last_handshake=hs, rx_bytes=rx,
                        tx_bytes=tx, path=path, rtt_ms=rtt_ms, mtu=mtu)


COUNTERS = {
    "wireguard_bad_mac1": 3, "swim_bad_mac": 2, "relay_replayed": 1, "dns_foreign_source": 4,
    "engine_udp_send_errors": 5, "wireguard_handshakes_completed": 6, "peers_added": 2,
    "swim_rx_ping": 7, "swim_tx_ping": 8, "swim_rx_sync_req": 1, "swim_joins_answered": 9,
    "relay_forwarded": 10, "relay_forwarded_bytes": 1000, "relay_tx": 11,
    "relay_tx_bytes": 1100, "relay_rx": 12, "relay_rx_bytes": 1200,
}
KEY_A = "AAAAAAAAdbkey+/1111111111111111111111111111="
KEY_B = "BBBBBBBBnokey+/2222222222222222222222222222="
KEY_C = "CCCCCCCCgone+/33333333333333333333333333333="


def report(counters: dict[str, int] | None = None) -> StatusReport:
    return StatusReport(
        interface="mg0", mode="userspace", pid=1, started_at=WALL - 100,
        self_=SelfStatus(name="me", identity_key="SELF", wireguard_key="SELFWG",
                         mesh_ipv4="10.99.0.9", mesh_ipv6="fd99::9", wg_port=51821,
                         gossip_port=51821),
        members=(
            member("db-1", KEY_A, hs=WALL - 12, rx=1000, tx=2000, rtt_ms=1.5, mtu=1420),
            member(None, KEY_B, "suspect", path="relayed", hs=WALL - 3, rx=10, tx=20),
            member("gone", KEY_C, "dead", tunnel=False),
        ),
        counters=dict(COUNTERS if counters is None else counters))


def render(rep: StatusReport, scrapes: dict[str, int] | None = None) -> str:
    reg = CollectorRegistry(auto_describe=False)
    col = StatusCollector(Counter(scrapes or {}))
    col.snapshot = (rep, WALL)
    reg.register(col)
    return generate_latest(reg).decode()


def samples(text: str) -> Samples:
    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            k = (s.name, frozenset(s.labels.items()))
            assert k not in out, f"duplicate series {k}"
            out[k] = s.value
    return out


def value(got: Samples, name: str, **labels: str) -> float:
    return got[(name, frozenset(labels.items()))]


def test_members_by_state_and_tunnels_by_path() -> None:
    got = samples(render(report()))
    assert {s: value(got, "meshguard_members", state=s)
            for s in ("alive", "suspect", "dead", "left")} == {
        "alive": 1, "suspect": 1, "dead": 1, "left": 0}
    assert value(got, "meshguard_peers", path="direct") == 1
    assert value(got, "meshguard_peers", path="relayed") == 1
    assert value(got, "meshguard_build_info", version=__version__, mode="userspace",
                 interface="mg0") == 1
    assert value(got, "meshguard_start_time_seconds") == WALL - 100


def test_per_peer_values_come_from_the_status_columns() -> None:
    got = samples(render(report()))
    a = {"peer": "db-1", "key": KEY_A[:8]}
    b = {"peer": KEY_B[:8], "key": KEY_B[:8]}  # no name: the short key
    assert value(got, "meshguard_peer_handshake_age_seconds", **a) == pytest.approx(12)
    assert value(got, "meshguard_peer_handshake_age_seconds", **b) == pytest.approx(3)
    assert value(got, "meshguard_peer_receive_bytes_total", **a) == 1000
    assert value(got, "meshguard_peer_transmit_bytes_total", **a) == 2000
    assert value(got, "meshguard_peer_receive_bytes_total", **b) == 10
    assert value(got, "meshguard_peer_rtt_seconds", **a) == pytest.approx(0.0015)
    assert value(got, "meshguard_peer_path_mtu_bytes", **a) == 1420
    per_peer = {n for n, _ in got if n.startswith("meshguard_peer_")}
    for name in per_peer - {"meshguard_peer_info"}:  # a dead member without a tunnel: none
        assert not any(n == name and ("peer", "gone") in lab for n, lab in got)
    assert ("meshguard_peer_rtt_seconds", frozenset(b.items())) not in got  # relayed
    info = [dict(lab) for n, lab in got if n == "meshguard_peer_info"]
    assert {(i["peer"], i["state"], i["path"]) for i in info} == {
        ("db-1", "alive", "direct"), (KEY_B[:8], "suspect", "relayed"), ("gone", "dead", "none")}


def test_gossip_by_type_and_relay_traffic() -> None:
    got = samples(render(report()))
    rx, tx = "meshguard_gossip_messages_received_total", "meshguard_gossip_messages_sent_total"
    assert value(got, rx, type="ping") == 7 and value(got, tx, type="ping") == 8
    assert value(got, rx, type="sync_req") == 1 and value(got, tx, type="sync_req") == 0
    assert value(got, rx, type="join") == 9  # swim_joins_answered
    assert len([n for n, _ in got if n == rx]) == 10  # every type, 0 when none went
    assert value(got, "meshguard_relay_forwarded_packets_total") == 10
    assert value(got, "meshguard_relay_forwarded_bytes_total") == 1000
    assert value(got, "meshguard_relay_sent_packets_total") == 11
    assert value(got, "meshguard_relay_sent_bytes_total") == 1100
    assert value(got, "meshguard_relay_received_packets_total") == 12
    assert value(got, "meshguard_relay_received_bytes_total") == 1200


def test_every_counter_reaches_exactly_one_metric() -> None:
    got = samples(render(report()))
    assert value(got, "meshguard_drops_total", reason="wireguard_bad_mac1") == 3
    assert value(got, "meshguard_drops_total", reason="dns_foreign_source") == 4
    assert value(got, "meshguard_errors_total", error="engine_udp_send_errors") == 5
    assert value(got, "meshguard_events_total", event="wireguard_handshakes_completed") == 6
    labelled = [v for (n, lab), _ in got.items()
                if n in ("meshguard_drops_total", "meshguard_errors_total",
                         "meshguard_events_total") for _, v in lab]
    own = {"swim_rx_ping", "swim_tx_ping", "swim_rx_sync_req", "swim_joins_answered",
           "relay_forwarded", "relay_forwarded_bytes", "relay_tx", "relay_tx_bytes",
           "relay_rx", "relay_rx_bytes"}
    assert sorted(labelled) == sorted(set(COUNTERS) - own)


@pytest.mark.parametrize(("name", "klass"), [
    ("wireguard_bad_mac1", "drop"), ("wireguard_replay", "drop"), ("swim_not_admitted", "drop"),
    ("swim_non_member", "drop"), ("swim_record_too_old", "drop"), ("relay_rate_limited", "drop"),
    ("relay_not_forwarded", "drop"), ("wireguard_no_route", "drop"), ("org_vouch_full", "drop"),
    ("policy_digest_mismatch", "drop"), ("garbage_dropped", "drop"), ("dns_formerr", "drop"),
    ("wireguard_handshake_gave_up", "drop"), ("swim_wg_key_taken", "drop"),
    ("punch_unknown_origin", "drop"), ("swim_accusation_not_current", "drop"),
    ("engine_tun_bad_reads", "drop"), ("dns_tcp_refused", "drop"), ("swim_from_self", "drop"),
    ("engine_udp_send_errors", "error"), ("timer_errors", "error"),
    ("engine_udp_send_would_block", "error"), ("engine_udp_send_refused", "error"),
    ("wireguard_handshakes_completed", "event"), ("wireguard_no_endpoint", "event"),
    ("dns_refused", "event"), ("dns_answered", "event"), ("peers_added", "event"),
    ("portmap_refused", "event"), ("swim_probe_failed", "event"), ("answers_taken", "event"),
    ("org_revoke_known", "event"), ("stun_error_responses", "event"),
])
def test_counter_classes(name: str, klass: str) -> None:
    assert counter_class(name) == klass


def _doc_table() -> dict[str, tuple[str, tuple[str, ...]]]:
    rows: dict[str, tuple[str, tuple[str, ...]]] = {}
    for line in DOC.read_text().splitlines():
        m = re.match(r"^\| `(meshguard_\w+)` \| (\w+) \|([^|]*)\|", line)
        if m:
            labels = tuple(re.findall(r"`(\w+)`", m.group(3)))
            assert m.group(1) not in rows, f"{m.group(1)} twice in the table"
            rows[m.group(1)] = (m.group(2), labels)
    return rows


def test_the_doc_lists_every_metric_the_exporter_has() -> None:
    doc = _doc_table()
    assert doc == {s.name: (s.kind, s.labels) for s in SPECS}
    # and the exporter emits exactly those names (a report that fills every family)
    emitted = {n.removesuffix("_created") for n, _ in samples(render(report()))}
    assert emitted == set(doc)
    assert {f.name for f in metric_families(report(), WALL)} == {
        n.removesuffix("_total") for n in doc}


# ---- the HTTP responder -------------------------------------------------------------------


class Source:
    """The report source the daemon passes (`status_now`), counting its calls."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self) -> StatusReport:
        self.calls += 1
        return report()


@contextlib.asynccontextmanager
async def exporter(timeout: float = 5.0, max_connections: int = 8
                   ) -> AsyncIterator[tuple[MetricsExporter, Source, ManualClock]]:
    src, clock = Source(), ManualClock()
    exp = MetricsExporter(src, clock, timeout=timeout, max_connections=max_connections)
    assert await exp.start(("127.0.0.1", 0))
    try:
        yield exp, src, clock
    finally:
        await exp.close()


async def http(port: int, raw: bytes, eof: bool = False) -> bytes:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(raw)
    if eof:
        w.write_eof()
    await w.drain()
    try:
        data = await asyncio.wait_for(r.read(), 10)
    except ConnectionResetError:  # closed with the request unread
        data = b""
    w.close()
    return data


def split(resp: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = resp.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


GET = b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n"


def test_a_scrape_over_http_parses_with_the_library() -> None:
    async def main() -> None:
        async with exporter() as (exp, src, _clock):
            assert exp.port is not None
            code, headers, body = split(await http(exp.port, GET))
            assert code == 200 and headers["Content-Type"].startswith("text/plain")
            assert int(headers["Content-Length"]) == len(body)
            got = samples(body.decode())
            assert value(got, "meshguard_peers", path="direct") == 1
            code, headers, body = split(await http(exp.port, b"HEAD /metrics?x=1 HTTP/1.0\r\n\r\n"))
            assert code == 200 and body == b"" and int(headers["Content-Length"]) > 0
            assert src.calls == 1  # both within MIN_BUILD_INTERVAL: one rendering

    asyncio.run(main())


def test_scrapes_close_together_share_one_report() -> None:
    async def main() -> None:
        async with exporter() as (exp, src, clock):
            assert exp.port is not None
            await asyncio.gather(*(http(exp.port, GET) for _ in range(5)))
            assert src.calls == 1
            clock.advance(1.0)
            body = split(await http(exp.port, GET))[2]
            assert src.calls == 2
            # the five before (the one being answered counts once it is answered)
            assert value(samples(body.decode()), "meshguard_scrapes_total", result="ok") == 5

    asyncio.run(main())


def test_hostile_requests_are_refused_counted_and_build_nothing() -> None:
    async def main() -> None:
        async with exporter() as (exp, src, clock):
            port = exp.port
            assert port is not None
            assert split(await http(port, b"GET / HTTP/1.1\r\n\r\n"))[0] == 404
            assert split(await http(port, b"GET /metricsX HTTP/1.1\r\n\r\n"))[0] == 404
            resp = split(await http(port, b"POST /metrics HTTP/1.1\r\n\r\n"))
            assert resp[0] == 405 and resp[1]["Allow"] == "GET, HEAD"
            assert split(await http(port, b"\x16\x03\x01\x02\x00\x01\r\n\r\n"))[0] == 400
            assert split(await http(port, b"GET /metrics\r\n\r\n"))[0] == 400
            huge = b"GET /metrics HTTP/1.1\r\nX: " + b"a" * (2 * MAX_REQUEST_HEAD) + b"\r\n\r\n"
            assert split(await http(port, huge))[0] == 431
            assert await http(port, b"GET /metr", eof=True) == b""  # EOF before the head
            assert src.calls == 0  # nothing of that reached the daemon's state
            clock.advance(1.0)
            got = samples(split(await http(port, GET))[2].decode())
            assert {r: value(got, "meshguard_scrapes_total", result=r) for r in (
                "not_found", "bad_method", "bad_request", "too_large")} == {
                "not_found": 2, "bad_method": 1, "bad_request": 3, "too_large": 1}

    asyncio.run(main())


def test_a_client_that_never_finishes_is_cut_off_and_others_are_still_served() -> None:
    async def main() -> None:
        async with exporter(timeout=0.3, max_connections=2) as (exp, src, clock):
            port = exp.port
            assert port is not None
            slow = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
            for _r, w in slow:
                w.write(b"GET /metrics HTTP/1.1\r\n")  # and never the blank line
                await w.drain()
            await asyncio.sleep(0.05)
            # a third connection while two are held: closed at once, no answer
            assert await http(port, GET) == b""
            # the slow ones are closed by the server after the timeout, unanswered
            for r, w in slow:
                assert await asyncio.wait_for(r.read(), 10) == b""
                w.close()
            clock.advance(1.0)
            got = samples(split(await http(port, GET))[2].decode())
            assert value(got, "meshguard_scrapes_total", result="timeout") == 2
            assert value(got, "meshguard_scrapes_total", result="busy") == 1
            assert src.calls == 1

    asyncio.run(main())


def test_a_failing_report_is_a_500_and_the_exporter_goes_on() -> None:
    async def main() -> None:
        calls = 0

        async def flaky() -> StatusReport:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("boom")
            return report()

        clock = ManualClock()
        exp = MetricsExporter(flaky, clock)
        assert await exp.start(("127.0.0.1", 0)) and exp.port is not None
        try:
            assert split(await http(exp.port, GET))[0] == 500
            assert split(await http(exp.port, GET))[0] == 200
        finally:
            await exp.close()

    asyncio.run(main())


@pytest.fixture
def busy_port() -> Iterator[int]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    try:
        yield int(s.getsockname()[1])
    finally:
        s.close()


def test_a_busy_port_is_one_warning_and_no_exporter(busy_port: int,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> MetricsExporter | None:
        async with contextlib.AsyncExitStack() as stack:
            return await start_metrics(("127.0.0.1", busy_port), Source(), ManualClock(), stack)

    with caplog.at_level(logging.INFO, logger="meshguard.metrics"):
        assert asyncio.run(main()) is None
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [f"metrics: cannot listen on 127.0.0.1:{busy_port}: address in use; "
                     "metrics are off"]
    assert caplog.records[0].levelno == logging.WARNING


def test_listen_errors_and_request_lines() -> None:
    import errno

    assert listen_error(OSError(errno.EACCES, "Permission denied"), ("::1", 80)) == (
        "metrics: cannot listen on [::1]:80: permission denied; metrics are off")
    assert "address not available" in listen_error(
        OSError(errno.EADDRNOTAVAIL, "x"), ("192.0.2.1", 9586))
    assert parse_request_line(b"GET /metrics HTTP/1.1\r\n\r\n") == (200, False)
    assert parse_request_line(b"HEAD /metrics HTTP/1.0\r\n\r\n") == (200, True)
    assert parse_request_line(b"GET /metrics HTTP/2\r\n\r\n")[0] == 400
    assert parse_request_line(b"GET  /metrics HTTP/1.1\r\n\r\n")[0] == 400
    assert parse_request_line(b"DELETE /metrics HTTP/1.1\r\n\r\n")[0] == 405
