"""The UAPI unix-socket server: framing over a real socket, file mode, and the real `wg` tool."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from uapi_fake import FakeBackend

from meshguard.daemon.uapi_server import UapiServer, UapiSocketError
from meshguard.testing.netns import netns_skip_reason, unique_name

K2 = "22" * 32


def _roundtrip(path: str, data: bytes, replies: int) -> bytes:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(path)
    s.sendall(data)
    out = b""
    while out.count(b"\n\n") < replies:
        chunk = s.recv(65536)
        if not chunk:
            break
        out += chunk
    s.close()
    return out


def test_server_pipelined_requests_mode_and_cleanup(tmp_path: Path) -> None:
    async def main() -> None:
        be = FakeBackend()
        srv = UapiServer("mgx0", be, run_dir=str(tmp_path / "wg"))
        await srv.start()
        assert stat.S_IMODE(os.stat(srv.path).st_mode) == 0o600
        assert stat.S_ISSOCK(os.stat(srv.path).st_mode)
        with pytest.raises(UapiSocketError, match="in use"):
            await UapiServer("mgx0", FakeBackend(), run_dir=str(tmp_path / "wg")).start()
        req = (
            f"set=1\npublic_key={K2}\nallowed_ip=10.0.0.0/8\n\nset=1\nlisten_port=nope\n\nget=1\n\n"
        ).encode()
        out = await asyncio.to_thread(_roundtrip, srv.path, req, 3)
        first, second, third = out.split(b"\n\n")[:3]
        assert first == b"errno=0" and second == b"errno=-22"
        assert f"public_key={K2}".encode() in third and third.endswith(b"errno=0")
        await srv.close()
        assert not os.path.exists(srv.path)

    asyncio.run(main())


def test_stale_socket_is_replaced(tmp_path: Path) -> None:
    run = tmp_path / "wg"
    run.mkdir()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(run / "mgx1.sock"))
    stale.close()  # file remains, nobody listening

    async def main() -> None:
        srv = UapiServer("mgx1", FakeBackend(), run_dir=str(run))
        await srv.start()
        out = await asyncio.to_thread(_roundtrip, srv.path, b"get=1\n\n", 1)
        assert out.endswith(b"errno=0\n\n")
        await srv.close()

    asyncio.run(main())


@pytest.fixture
def served() -> Iterator[tuple[str, FakeBackend]]:
    reason = netns_skip_reason()
    if reason:
        pytest.skip(reason)
    if shutil.which("wg") is None:
        pytest.skip("needs wg (wireguard-tools)")
    ifname = unique_name("mguapi")
    be = FakeBackend()
    loop = asyncio.new_event_loop()
    srv = UapiServer(ifname, be)
    loop.run_until_complete(srv.start())
    t = threading.Thread(target=loop.run_forever, daemon=True)
    t.start()
    try:
        yield ifname, be
    finally:
        asyncio.run_coroutine_threadsafe(srv.close(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        t.join(5)
        loop.close()


@pytest.mark.netns
def test_real_wg_tool_against_server(served: tuple[str, FakeBackend], tmp_path: Path) -> None:
    ifname, be = served

    def wg(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["wg", *args], capture_output=True, text=True, input=input, timeout=10
        )

    priv = wg("genkey").stdout.strip()
    pub = wg("pubkey", input=priv + "\n").stdout.strip()
    peer_pub = wg("pubkey", input=wg("genkey").stdout).stdout.strip()
    psk = wg("genpsk").stdout.strip()
    (tmp_path / "psk").write_text(psk + "\n")
    (tmp_path / "priv").write_text(priv + "\n")
    r = wg(
        "set",
        ifname,
        "private-key",
        str(tmp_path / "priv"),
        "listen-port",
        "51999",
        "peer",
        peer_pub,
        "preshared-key",
        str(tmp_path / "psk"),
        "endpoint",
        "[fd00::2]:51820",
        "allowed-ips",
        "10.5.0.0/16,fd05::/64",
        "persistent-keepalive",
        "25",
    )
    assert r.returncode == 0, r.stderr
    assert be.state.listen_port == 51999
    out = wg("show", ifname).stdout
    assert f"public key: {pub}" in out and "listening port: 51999" in out
    assert f"peer: {peer_pub}" in out and "endpoint: [fd00::2]:51820" in out
    assert "allowed ips: 10.5.0.0/16, fd05::/64" in out
    assert "every 25 seconds" in out
    conf = wg("showconf", ifname).stdout
    assert f"PrivateKey = {priv}" in conf and f"PresharedKey = {psk}" in conf
    # setconf round trip through showconf's output
    (tmp_path / "conf").write_text(conf)
    assert wg("setconf", ifname, str(tmp_path / "conf")).returncode == 0
    assert wg("showconf", ifname).stdout == conf
    # a refused set: wg reports the errno as text and nothing changes
    be.busy_ports.add(4444)
    r = wg("set", ifname, "listen-port", "4444")
    assert r.returncode != 0 and "Address already in use" in r.stderr
    assert be.state.listen_port == 51999
    r = wg("set", ifname, "peer", peer_pub, "remove")
    assert r.returncode == 0 and be.state.peers == []
