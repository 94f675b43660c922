from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshguard.daemon.control_client import (
    AmbiguousDaemonError,
    ControlClient,
    ControlRequestError,
    DaemonNotRunningError,
    running_daemons,
    select_daemon,
)
from meshguard.daemon.control_server import AlreadyRunningError, ControlServer
from meshguard.daemon.runtime import InterfaceNameError, run_dir, socket_path
from meshguard.errors import MeshguardError, WireFormatError
from meshguard.testing.control_thread import ControlThread
from meshguard.wire.control import (
    SCHEMA_VERSION,
    MemberStatus,
    Request,
    Response,
    SelfStatus,
    StatusReport,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
    format_endpoint,
)


def sample_report() -> StatusReport:
    me = SelfStatus("a", "SUQ=", "V0c=", "10.99.1.2", "fd99:6d67::1", 51821, 51821)
    m = MemberStatus("b", "SUQy", "V0cy", "10.99.3.4", "fd99:6d67::2", "192.0.2.1:51821",
                     "alive", True, True, 1_700_000_000.0, 10, 20, "relayed",
                     why="relayed via 1a2b3c4d at 192.0.2.9:51821: the hole punch failed",
                     via="SUQz", via_endpoint="192.0.2.9:51821", own_nat="symmetric",
                     peer_nat="cone", last_punch="failed", last_punch_age=3.5,
                     next_punch_in=6.0, admission="org vouch")
    return StatusReport("mg0", "userspace", 42, 1.0, me, (m,), {"garbage_dropped": 3})


def test_request_response_roundtrip() -> None:
    line = encode_request(Request("status"))
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode_request(line) == Request("status", {})
    ok = decode_response(encode_response(Response(True, result={"x": 1})))
    assert ok.ok and ok.result == {"x": 1}
    err = decode_response(encode_response(Response(False, error="nope")))
    assert not err.ok and err.error == "nope"


@pytest.mark.parametrize("line", [b"", b"{", b"[]", b'{"op": "format-disk"}', b"\xff\n",
                                  b'{"op": "status", "args": 3}'])
def test_bad_requests(line: bytes) -> None:
    with pytest.raises(WireFormatError):
        decode_request(line)


def test_status_schema_roundtrip() -> None:
    rep = sample_report()
    doc = rep.to_json()
    assert doc["schema_version"] == SCHEMA_VERSION
    assert set(doc) == {"schema_version", "interface", "mode", "pid", "started_at", "self",
                        "members", "counters", "portmap"}
    assert set(doc["members"][0]) == {
        "name", "identity_key", "wireguard_key", "mesh_ipv4", "mesh_ipv6", "endpoint", "state",
        "trusted", "tunnel", "last_handshake", "rx_bytes", "tx_bytes", "path", "dns_names",
        "rtt_ms", "mtu", "rtt_source", "relay_rtt_ms", "why", "via", "via_endpoint", "own_nat",
        "peer_nat", "last_punch", "last_punch_age", "next_punch_in", "admission",
        "routes_offered", "routes_in_use"}
    assert StatusReport.from_json(doc) == rep
    # a document from a daemon that predates dns_names still reads (compatible addition)
    old = json.loads(json.dumps(doc))
    del old["members"][0]["dns_names"]
    assert StatusReport.from_json(old).members[0].dns_names == ()
    for k in ("why", "via", "via_endpoint", "own_nat", "peer_nat", "last_punch",
              "last_punch_age", "next_punch_in"):  # nor the path report's fields
        del old["members"][0][k]
    assert StatusReport.from_json(old).members[0].why is None
    # the router's port mapping, and a document that predates it
    pm = {"protocol": "pcp", "external": "198.51.100.7:51821", "internal_port": 51821,
          "expires_in": 3599}
    with_pm = rep.with_portmap(pm)
    assert StatusReport.from_json(json.loads(json.dumps(with_pm.to_json()))) == with_pm
    del old["portmap"]
    assert StatusReport.from_json(old).portmap is None
    bad = with_pm.to_json()
    bad["portmap"] = {"protocol": "pcp"}
    with pytest.raises(WireFormatError):
        StatusReport.from_json(bad)
    doc["schema_version"] = 99
    with pytest.raises(WireFormatError):
        StatusReport.from_json(doc)
    with pytest.raises(WireFormatError):
        StatusReport.from_json({"schema_version": 1})


def test_format_endpoint() -> None:
    assert format_endpoint(("192.0.2.1", 5)) == "192.0.2.1:5"
    assert format_endpoint(("2001:db8::1", 5)) == "[2001:db8::1]:5"
    assert format_endpoint(None) is None


def test_paths(tmp_path: Path) -> None:
    assert run_dir(env={"MESHGUARD_RUN_DIR": str(tmp_path)}) == tmp_path
    assert run_dir(env={}) == Path("/run/meshguard")
    assert socket_path("mg0", tmp_path) == tmp_path / "mg0.sock"
    for bad in ["", "a/b", "x" * 16, "..", "a b"]:
        with pytest.raises(InterfaceNameError):
            socket_path(bad, tmp_path)


class ServerThread(ControlThread):
    """A ControlServer answering the sample report, refusing `hello` and noting `down`."""

    def __init__(self, path: Path, iface: str) -> None:
        self.requests: list[Request] = []
        self.down = threading.Event()

        async def handler(req: Request) -> dict[str, Any]:
            self.requests.append(req)
            if req.op == "status":
                return sample_report().to_json()
            if req.op == "down":
                self.down.set()
                return {"leaving": True}
            if req.op == "hello":
                raise MeshguardError("refused for the test")
            return {}

        super().__init__(path, iface, handler)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    s = ServerThread(tmp_path / "run" / "mgt0.sock", "mgt0")
    try:
        yield s
    finally:
        s.stop()


def test_server_socket_mode_and_requests(server: ServerThread, tmp_path: Path) -> None:
    path = tmp_path / "run" / "mgt0.sock"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    client = ControlClient(path, "mgt0")
    rep = client.status()
    assert rep == sample_report()
    with pytest.raises(ControlRequestError, match="refused for the test"):
        client.request("hello")
    assert client.request("down") == {"leaving": True}
    assert server.down.is_set()
    assert [r.op for r in server.requests] == ["status", "hello", "down"]


def test_server_survives_garbage(server: ServerThread, tmp_path: Path) -> None:
    import socket

    path = tmp_path / "run" / "mgt0.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(str(path))
    s.sendall(b"this is not json\n")
    answer = s.makefile("rb").readline()
    s.close()
    assert decode_response(answer).ok is False
    assert ControlClient(path, "mgt0").status().interface == "mg0"


def test_second_server_refused_and_stale_socket_replaced(server: ServerThread,
                                                         tmp_path: Path) -> None:
    path = tmp_path / "run" / "mgt0.sock"
    with pytest.raises(AlreadyRunningError, match="already running on mgt0"):
        asyncio.run(ControlServer(path, "mgt0", lambda r: None).start())  # type: ignore[arg-type]
    # A stale file (no listener) is replaced.
    stale = tmp_path / "run" / "mgt1.sock"
    import socket

    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(stale))
    s.close()
    other = ServerThread(stale, "mgt1")
    try:
        assert {d.interface for d in running_daemons(tmp_path / "run")} == {"mgt0", "mgt1"}
        with pytest.raises(AmbiguousDaemonError, match="mgt0, mgt1"):
            select_daemon(tmp_path / "run", None)
        assert select_daemon(tmp_path / "run", "mgt1").interface == "mgt1"
    finally:
        other.stop()
    assert not stale.exists()
    assert select_daemon(tmp_path / "run", None).interface == "mgt0"


def test_no_daemon(tmp_path: Path) -> None:
    with pytest.raises(DaemonNotRunningError, match="not running"):
        select_daemon(tmp_path, None)
    with pytest.raises(DaemonNotRunningError, match="not running on mg9"):
        select_daemon(tmp_path, "mg9").request("status")


def test_status_self_endpoints_roundtrip_and_an_older_document_without_them() -> None:
    rep = sample_report()
    me = dataclasses.replace(rep.self_, endpoints=("203.0.113.7:51821", "[2001:db8::1]:51821"))
    rep = dataclasses.replace(rep, self_=me)
    doc = json.loads(json.dumps(rep.to_json()))
    assert doc["self"]["endpoints"] == ["203.0.113.7:51821", "[2001:db8::1]:51821"]
    assert StatusReport.from_json(doc) == rep
    del doc["self"]["endpoints"]  # a daemon from before `export-wg`
    assert StatusReport.from_json(doc).self_.endpoints == ()
    doc["self"]["endpoints"] = [3]
    with pytest.raises(WireFormatError):
        StatusReport.from_json(doc)
