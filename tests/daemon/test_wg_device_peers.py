"""devices/ as WireGuard peers of the gateway's Device (daemon/wg_device_peers.py): what is
added and removed, the host routes, and a handshake with the exported keys (the preshared key
included: a device without it gets nothing through)."""

from __future__ import annotations

import ipaddress
import struct
from pathlib import Path

import pytest

from meshguard.crypto.keys import X25519PrivateKey, b64encode
from meshguard.daemon.kernel_runner import KernelRunner
from meshguard.daemon.kernel_wg import WGPEER_F_REMOVE_ME
from meshguard.daemon.mesh_daemon import DaemonConfig, MeshDaemon
from meshguard.daemon.wg_device_peers import WgDevicePeers, for_runner
from meshguard.identity import wg_devices
from meshguard.mesh.actions import IPNetwork
from meshguard.testing.rng import SeededRng
from meshguard.wireguard.actions import SendDatagram, WriteTun
from meshguard.wireguard.device import Device

from .helpers import RecordingKernel

WALL = 1_700_000_000.0
GW_EP = ("192.0.2.1", 51821)
PHONE_EP = ("198.51.100.7", 40000)
GW_MESH = "10.99.3.4"
rng = SeededRng(21)
IDENTITY = rng.bytes(32)


def ipv4(src: str, dst: str, payload: bytes = b"ping") -> bytes:
    s, d = ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, 64, 17, 0, s,
                       d) + payload


class Lab:
    def __init__(self, cfg: Path) -> None:
        self.cfg = cfg
        self.gw_key = X25519PrivateKey.generate(rng.bytes(32))
        self.gw = Device(SeededRng(1), self.gw_key)
        self.routes: list[tuple[str, str]] = []
        self.forwarding: list[str] = []
        self.reserved: list[frozenset[bytes]] = []
        self.peers = WgDevicePeers(cfg, "mg0", device=self.gw, on_keys=self.reserved.append,
                                   route=self._route, forwarding=self._forward)

    def _route(self, op: str, net: IPNetwork, iface: str) -> None:
        assert iface == "mg0"
        self.routes.append((op, str(net)))

    def _forward(self, iface: str) -> bool:
        self.forwarding.append(iface)
        return True

    def export(self, name: str, address: str | None = None
               ) -> tuple[X25519PrivateKey, wg_devices.WgDevice]:
        key = X25519PrivateKey.generate(rng.bytes(32))
        addr = ipaddress.ip_address(address) if address else None
        dev = wg_devices.add_device(self.cfg, name, key.public_key.raw, rng.bytes(32), IDENTITY,
                                    addr)
        return key, dev


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    return Lab(tmp_path)


def phone_device(key: X25519PrivateKey, gw: X25519PrivateKey, psk: bytes) -> Device:
    phone = Device(SeededRng(2), key)
    p = phone.add_peer(gw.public_key)
    p.preshared_key = psk
    p.endpoint = GW_EP
    phone.set_allowed_ips(p, ["10.99.0.0/16"])
    return phone


def exchange(phone: Device, gw: Device, packet: bytes) -> list[bytes]:
    """Send `packet` from the phone until nothing moves; what the gateway wrote to its TUN."""
    tun: list[bytes] = []
    to_gw = [a.data for a in phone.send_packet(0.0, WALL, packet) if isinstance(a, SendDatagram)]
    for _ in range(5):
        to_phone: list[bytes] = []
        for d in to_gw:
            for a in gw.receive(0.1, WALL, d, PHONE_EP):
                if isinstance(a, WriteTun):
                    tun.append(a.packet)
                elif isinstance(a, SendDatagram):
                    to_phone.append(a.data)
        to_gw = [a.data for d in to_phone for a in phone.receive(0.2, WALL, d, GW_EP)
                 if isinstance(a, SendDatagram)]
        if not to_gw:
            break
    return tun


def test_a_device_is_a_peer_with_its_psk_its_address_and_a_route(lab: Lab) -> None:
    key, dev = lab.export("phone")
    assert lab.peers.reload()
    p = lab.gw.peer(key.public_key)
    assert p is not None and p.preshared_key == dev.preshared_key
    assert p.persistent_keepalive == 0 and p.endpoint is None
    assert lab.gw.allowed_ips(p) == [dev.network]
    assert lab.routes == [("replace", str(dev.network))]
    assert lab.forwarding == ["mg0"]
    assert lab.reserved[-1] == frozenset({dev.public_key})
    assert lab.peers.prefixes() == (dev.network,)
    assert not lab.peers.reload()  # nothing changed: nothing done
    assert lab.routes == [("replace", str(dev.network))]


def test_the_exported_keys_complete_a_handshake_and_carry_packets(lab: Lab) -> None:
    key, dev = lab.export("phone")
    lab.peers.reload()
    phone = phone_device(key, lab.gw_key, dev.preshared_key)
    pkt = ipv4(str(dev.address), GW_MESH)
    assert exchange(phone, lab.gw, pkt) == [pkt]
    assert lab.gw.peer(key.public_key).endpoint == PHONE_EP  # type: ignore[union-attr]


def test_without_the_psk_nothing_gets_through(lab: Lab) -> None:
    key, dev = lab.export("phone")
    lab.peers.reload()
    wrong = phone_device(key, lab.gw_key, bytes(32))
    assert exchange(wrong, lab.gw, ipv4(str(dev.address), GW_MESH)) == []
    # the psk enters at the response, which the device without it cannot open
    assert wrong.counters.bad_handshake >= 1 and lab.gw.counters.handshakes_completed == 0


def test_a_device_sending_from_another_address_gets_nothing_through(lab: Lab) -> None:
    key, dev = lab.export("phone")
    lab.peers.reload()
    phone = phone_device(key, lab.gw_key, dev.preshared_key)
    # spoofing a member's mesh address (or any but its own): dropped by the allowed IPs
    assert exchange(phone, lab.gw, ipv4("10.99.7.7", GW_MESH)) == []
    assert lab.gw.counters.handshakes_completed == 1 and lab.gw.counters.bad_source == 1


def test_removal_and_replacement_follow_the_files(lab: Lab) -> None:
    k1, d1 = lab.export("phone")
    k2, d2 = lab.export("tablet")
    lab.peers.reload()
    wg_devices.remove_device(lab.cfg, "phone")
    assert lab.peers.reload()
    assert lab.gw.peer(k1.public_key) is None and lab.gw.peer(k2.public_key) is not None
    assert ("del", str(d1.network)) in lab.routes
    assert lab.reserved[-1] == frozenset({d2.public_key})
    # the same name, a new key and address: the old peer goes, the new one comes
    wg_devices.remove_device(lab.cfg, "tablet")
    k3, d3 = lab.export("tablet", "10.98.77.5")
    assert lab.peers.reload()
    assert lab.gw.peer(k2.public_key) is None
    p = lab.gw.peer(k3.public_key)
    assert p is not None and lab.gw.allowed_ips(p) == [d3.network]
    assert lab.forwarding == ["mg0"]  # switched on once


def test_a_file_naming_the_gateways_own_key_is_refused(lab: Lab,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    _, good = lab.export("phone")
    bad = wg_devices.WgDevice("self", lab.gw_key.public_key.raw, bytes(32),
                              ipaddress.IPv4Address("10.98.9.9"))
    (lab.cfg / "devices" / "self.peer").write_bytes(bad.encode())
    lab.peers.reload()
    assert "device self not added" in caplog.text
    assert set(lab.peers.active) == {"phone"}
    assert lab.reserved[-1] == frozenset({good.public_key})


def test_kernel_mode_sends_devices_to_the_kernel_device(tmp_path: Path) -> None:
    d = MeshDaemon(DaemonConfig("mgk-test", 51821, [], kernel=True, run_dir=tmp_path,
                                config_dir=tmp_path, env={}))
    runner = d.runner
    assert isinstance(runner, KernelRunner)
    k = RecordingKernel()
    runner.kernel = k
    routes: list[tuple[str, str]] = []
    peers = for_runner(tmp_path, "mgk-test", runner, lambda keys: None)
    peers.route = lambda op, net, iface: routes.append((op, str(net)))
    peers.forwarding = lambda iface: True
    key = X25519PrivateKey.generate(rng.bytes(32))
    dev = wg_devices.add_device(tmp_path, "phone", key.public_key.raw, rng.bytes(32), IDENTITY)
    assert peers.device is None and peers.reload()
    (msg,) = k.sent
    (p,) = msg.get_attr("WGDEVICE_A_PEERS")
    assert p.get_attr("WGPEER_A_PUBLIC_KEY") == key.public_key.b64().encode()
    assert p.get_attr("WGPEER_A_PRESHARED_KEY") == b64encode(dev.preshared_key).encode()
    assert [a["addr"] for a in p.get_attr("WGPEER_A_ALLOWEDIPS")] == [str(dev.network)]
    assert p.get_attr("WGPEER_A_ENDPOINT") is None
    wg_devices.remove_device(tmp_path, "phone")
    assert peers.reload()
    assert k.sent[-1].get_attr("WGDEVICE_A_PEERS")[0].get_attr("WGPEER_A_FLAGS") \
        == WGPEER_F_REMOVE_ME
    assert routes == [("replace", str(dev.network)), ("del", str(dev.network))]


def test_a_bad_file_is_warned_about_once_not_at_every_reload(
        lab: Lab, caplog: pytest.LogCaptureFixture) -> None:
    lab.export("phone")
    (lab.cfg / "devices" / "bad.peer").write_text("PublicKey = nope\n")
    for _ in range(3):
        lab.peers.reload()
    assert caplog.text.count("bad.peer") == 1
    assert set(lab.peers.active) == {"phone"}
