"""UAPI set semantics through the unmodified `wg` tool against the real backend.

The `meshguard wireguard` UAPI (uapi_server + uapi_protocol + DeviceUapiBackend over a real
Device and an Engine owning a real UDP socket) is served at /var/run/wireguard/<name>.sock,
where `wg` looks; no TUN device is created. Every `wg set`/`setconf`/`addconf` is read back
with `wg show <if> dump` and `wg showconf`, which must say exactly what was set.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from meshguard.daemon.uapi_server import DEFAULT_RUN_DIR, UapiServer
from meshguard.daemon.wg_interface import DeviceUapiBackend
from meshguard.dataplane.engine import Engine
from meshguard.testing.netns import unique_name
from meshguard.testing.rng import SeededRng
from meshguard.wireguard.device import Device

pytestmark = pytest.mark.netns  # /var/run/wireguard, where `wg` looks, is root's


def _wg(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["wg", *args], capture_output=True, text=True, input=input, timeout=10)


def _ok(*args: str, input: str | None = None) -> str:
    r = _wg(*args, input=input)
    assert r.returncode == 0, (args, r.stderr)
    return r.stdout


@dataclass
class Served:
    ifname: str
    device: Device
    engine: Engine
    tmp: Path

    def key_file(self, name: str, value: str) -> str:
        path = self.tmp / name
        path.write_text(value + "\n")
        return str(path)

    def dump(self) -> tuple[list[str], list[list[str]]]:
        """`wg show <if> dump`: the interface line and one line per peer, split on tabs."""
        lines = _ok("show", self.ifname, "dump").splitlines()
        return lines[0].split("\t"), [line.split("\t") for line in lines[1:]]

    def peers(self) -> dict[str, list[str]]:
        return {p[0]: p for p in self.dump()[1]}


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    if os.geteuid() != 0:
        pytest.skip(f"needs root ({DEFAULT_RUN_DIR} is where `wg` finds the socket)")
    if shutil.which("wg") is None:
        pytest.skip("needs wg (wireguard-tools)")
    ifname = unique_name("mgwg")
    device = Device(SeededRng(7))
    engine = Engine(device, -1)  # UDP socket only: listen-port binds for real, no TUN
    engine.bind(0)
    device.listen_port = engine.port
    loop = asyncio.new_event_loop()
    srv = UapiServer(ifname, DeviceUapiBackend(device, engine))
    loop.run_until_complete(srv.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield Served(ifname, device, engine, tmp_path)
    finally:
        asyncio.run_coroutine_threadsafe(srv.close(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
        engine.close()
    assert not os.path.exists(srv.path)


def _keypair() -> tuple[str, str]:
    priv = _ok("genkey").strip()
    return priv, _ok("pubkey", input=priv + "\n").strip()


def _free_port() -> int:
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


def test_interface_fields_read_back(served: Served) -> None:
    iface, peers = served.dump()
    assert iface == ["(none)", "(none)", str(served.engine.port), "off"] and peers == []
    priv, pub = _keypair()
    port = _free_port()
    _ok(
        "set", served.ifname,
        "private-key", served.key_file("priv", priv),
        "listen-port", str(port),
        "fwmark", "0x2a",
    )  # fmt: skip
    assert served.dump() == ([priv, pub, str(port), "0x2a"], [])
    assert served.engine.port == port  # the engine's socket really moved
    assert _ok("show", served.ifname, "listen-port").strip() == str(port)
    # fwmark 0 / "off" clears it; private-key /dev/null removes the key
    _ok("set", served.ifname, "fwmark", "off", "private-key", "/dev/null")
    assert served.dump() == (["(none)", "(none)", str(port), "off"], [])
    assert served.device.private_key is None


def test_peer_add_and_every_peer_option(served: Served) -> None:
    priv, _ = _keypair()
    _, peer = _keypair()
    psk = _ok("genpsk").strip()
    _ok(
        "set", served.ifname,
        "private-key", served.key_file("priv", priv),
        "peer", peer,
        "preshared-key", served.key_file("psk", psk),
        "endpoint", "192.0.2.7:51820",
        "allowed-ips", "10.7.0.0/16,fd07::/64,10.8.1.1/32",
        "persistent-keepalive", "25",
    )  # fmt: skip
    (row,) = served.dump()[1]
    # public, psk, endpoint, allowed ips (configured order), handshake, rx, tx, keepalive
    assert row[:4] == [peer, psk, "192.0.2.7:51820", "10.7.0.0/16,fd07::/64,10.8.1.1/32"]
    assert row[4] == "0" and row[7] == "25"
    conf = _ok("showconf", served.ifname)
    assert conf == (
        "[Interface]\n"
        f"ListenPort = {served.engine.port}\n"
        f"PrivateKey = {priv}\n"
        "\n"
        "[Peer]\n"
        f"PublicKey = {peer}\n"
        f"PresharedKey = {psk}\n"
        "AllowedIPs = 10.7.0.0/16, fd07::/64, 10.8.1.1/32\n"
        "Endpoint = 192.0.2.7:51820\n"
        "PersistentKeepalive = 25\n"
    )
    # IPv6 endpoint, keepalive off, preshared key removed
    _ok(
        "set", served.ifname, "peer", peer,
        "endpoint", "[2001:db8::9]:4500",
        "persistent-keepalive", "off",
        "preshared-key", "/dev/null",
    )  # fmt: skip
    (row,) = served.dump()[1]
    assert row[1:3] == ["(none)", "[2001:db8::9]:4500"] and row[7] == "off"
    assert row[3] == "10.7.0.0/16,fd07::/64,10.8.1.1/32"  # untouched by this set


def _uapi(ifname: str, request: str) -> str:
    """One raw UAPI request on the socket `wg` uses (for what the tool cannot send)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(os.path.join(DEFAULT_RUN_DIR, f"{ifname}.sock"))
        s.sendall(request.encode())
        out = b""
        while not out.endswith(b"\n\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    return out.decode()


def test_allowed_ips_replace_and_add(served: Served) -> None:
    _, a = _keypair()
    _, b = _keypair()
    _ok("set", served.ifname, "peer", a, "allowed-ips", "10.1.0.0/16,fd01::/64")
    # `wg set ... allowed-ips` replaces the peer's list
    _ok("set", served.ifname, "peer", a, "allowed-ips", "10.2.0.0/16")
    assert served.peers()[a][3] == "10.2.0.0/16"
    # allowed_ip lines without replace_allowed_ips add to it, keeping the configured order
    # (this wg release always sends replace_allowed_ips, so the request is written by hand)
    a_hex = base64.b64decode(a).hex()
    reply = _uapi(served.ifname, f"set=1\npublic_key={a_hex}\nallowed_ip=fd02::/64\n\n")
    assert reply == "errno=0\n\n"
    assert served.peers()[a][3] == "10.2.0.0/16,fd02::/64"
    # a network claimed by another peer moves to it
    _ok("set", served.ifname, "peer", b, "allowed-ips", "10.2.0.0/16,10.3.0.0/24")
    peers = served.peers()
    assert peers[a][3] == "fd02::/64" and peers[b][3] == "10.2.0.0/16,10.3.0.0/24"
    # addconf replaces the allowed IPs of the peers it names and leaves the others alone
    (served.tmp / "add.conf").write_text(f"[Peer]\nPublicKey = {a}\nAllowedIPs = 10.4.0.0/16\n")
    _ok("addconf", served.ifname, str(served.tmp / "add.conf"))
    peers = served.peers()
    assert peers[a][3] == "10.4.0.0/16" and peers[b][3] == "10.2.0.0/16,10.3.0.0/24"
    # an empty allowed-ips removes them all
    _ok("set", served.ifname, "peer", a, "allowed-ips", "")
    assert served.peers()[a][3] == "(none)"
    # a network given with host bits set is stored as its network
    _ok("set", served.ifname, "peer", a, "allowed-ips", "10.9.9.9/24")
    assert served.peers()[a][3] == "10.9.9.0/24"


def test_peer_remove_and_setconf_replaces_peers(served: Served) -> None:
    keys = [_keypair()[1] for _ in range(3)]
    for i, k in enumerate(keys):
        _ok("set", served.ifname, "peer", k, "allowed-ips", f"10.{i}.0.0/16")
    assert set(served.peers()) == set(keys)
    _ok("set", served.ifname, "peer", keys[1], "remove")
    assert set(served.peers()) == {keys[0], keys[2]}
    # removing a peer that is not there is not an error and changes nothing
    _ok("set", served.ifname, "peer", keys[1], "remove")
    assert set(served.peers()) == {keys[0], keys[2]}
    # setconf sends replace_peers: afterwards exactly the file's peers exist
    priv, pub = _keypair()
    _, newcomer = _keypair()
    conf = (
        f"[Interface]\nPrivateKey = {priv}\nListenPort = {served.engine.port}\n\n"
        f"[Peer]\nPublicKey = {keys[2]}\nAllowedIPs = 10.42.0.0/16\n\n"
        f"[Peer]\nPublicKey = {newcomer}\nAllowedIPs = fd42::/64\n"
        "Endpoint = 198.51.100.1:51820\n"
    )
    (served.tmp / "wg.conf").write_text(conf)
    _ok("setconf", served.ifname, str(served.tmp / "wg.conf"))
    iface, _ = served.dump()
    assert iface[:2] == [priv, pub]
    peers = served.peers()
    assert set(peers) == {keys[2], newcomer}
    assert peers[keys[2]][3] == "10.42.0.0/16"  # replaced, not added to 10.2.0.0/16
    assert peers[newcomer][2:4] == ["198.51.100.1:51820", "fd42::/64"]
    # showconf's output fed back through setconf is a fixed point
    shown = _ok("showconf", served.ifname)
    (served.tmp / "again.conf").write_text(shown)
    _ok("setconf", served.ifname, str(served.tmp / "again.conf"))
    assert _ok("showconf", served.ifname) == shown


def test_own_public_key_as_peer_is_ignored(served: Served) -> None:
    priv, pub = _keypair()
    _ok("set", served.ifname, "private-key", served.key_file("priv", priv))
    _ok("set", served.ifname, "peer", pub, "allowed-ips", "10.0.0.0/8")
    assert served.peers() == {}


def test_refused_set_changes_nothing(served: Served) -> None:
    _, peer = _keypair()
    _ok("set", served.ifname, "peer", peer, "allowed-ips", "10.5.0.0/16")
    before = _ok("showconf", served.ifname)
    busy = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    busy.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    busy.bind(("::", 0))
    try:
        _, other = _keypair()
        r = _wg(
            "set", served.ifname, "listen-port", str(busy.getsockname()[1]),
            "peer", other, "allowed-ips", "10.6.0.0/16",
            "peer", peer, "remove",
        )  # fmt: skip
        assert r.returncode != 0 and "Address already in use" in r.stderr
    finally:
        busy.close()
    assert _ok("showconf", served.ifname) == before
