from __future__ import annotations

import ipaddress
import os
import struct
from pathlib import Path
from typing import Any

import pytest

from meshguard.daemon.kernel_wg import (
    MISSING_MODULE_MESSAGE,
    WGDEVICE_F_REPLACE_PEERS,
    WGPEER_F_REMOVE_ME,
    WGPEER_F_REPLACE_ALLOWEDIPS,
    KernelModuleMissingError,
    KernelPeer,
    KernelWireGuard,
    build_set_device,
    ensure_module,
    gossip_port_for,
)

PRIV = bytes(range(32))
PEER = bytes([7] * 32)
GONE = bytes([9] * 32)


def _encode(msg: Any) -> bytes:
    msg["header"]["type"] = 0x1F  # any family id; the kernel assigns the real one
    msg.encode()
    return bytes(msg.data)


def _decode(data: bytes) -> Any:
    from pyroute2.netlink.generic.wireguard import wgmsg

    d = wgmsg(data)
    d.decode()
    return d


def test_set_device_message() -> None:
    msg = build_set_device(
        "mgk0", private_key=PRIV, listen_port=51821, fwmark=0x51, replace_peers=True,
        peers=[
            KernelPeer(PEER, ("192.0.2.1", 51821), 25,
                       (ipaddress.ip_network("10.99.1.2/32"),
                        ipaddress.ip_network("fd99:6d67::1/128"))),
            KernelPeer(GONE, remove=True),
        ])
    data = _encode(msg)
    # genetlink header: cmd 1 (WG_CMD_SET_DEVICE), version 1
    assert data[16] == 1 and data[17] == 1
    # the raw private key travels as a 32-byte attribute (type 3, WGDEVICE_A_PRIVATE_KEY)
    assert struct.pack("<HH", 36, 3) + PRIV in data
    d = _decode(data)
    assert d.get_attr("WGDEVICE_A_IFNAME") == "mgk0"
    assert d.get_attr("WGDEVICE_A_LISTEN_PORT") == 51821
    assert d.get_attr("WGDEVICE_A_FWMARK") == 0x51
    assert d.get_attr("WGDEVICE_A_FLAGS") == WGDEVICE_F_REPLACE_PEERS
    peers = d.get_attr("WGDEVICE_A_PEERS")
    assert len(peers) == 2
    p0, p1 = peers
    assert p0.get_attr("WGPEER_A_FLAGS") == WGPEER_F_REPLACE_ALLOWEDIPS
    ep = p0.get_attr("WGPEER_A_ENDPOINT")
    assert (ep["family"], ep["addr"], ep["port"]) == (2, "192.0.2.1", 51821)
    assert p0.get_attr("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL") == 25
    ips = [a["addr"] for a in p0.get_attr("WGPEER_A_ALLOWEDIPS")]
    assert ips == ["10.99.1.2/32", "fd99:6d67::1/128"]
    assert p1.get_attr("WGPEER_A_FLAGS") == WGPEER_F_REMOVE_ME
    assert p1.get_attr("WGPEER_A_ALLOWEDIPS") is None
    assert p1.get_attr("WGPEER_A_ENDPOINT") is None


def test_ipv6_endpoint_and_minimal_message() -> None:
    d = _decode(_encode(build_set_device(
        "mgk0", peers=[KernelPeer(PEER, ("2001:db8::7", 4000), None, (), False)])))
    assert d.get_attr("WGDEVICE_A_PRIVATE_KEY") is None
    assert d.get_attr("WGDEVICE_A_LISTEN_PORT") is None
    assert d.get_attr("WGDEVICE_A_FLAGS") is None
    (p,) = d.get_attr("WGDEVICE_A_PEERS")
    ep = p.get_attr("WGPEER_A_ENDPOINT")
    assert (ep["family"], ep["addr"], ep["port"]) == (10, "2001:db8::7", 4000)
    assert p.get_attr("WGPEER_A_FLAGS") == 0
    assert p.get_attr("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL") is None


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        build_set_device("mgk0", private_key=b"short")
    with pytest.raises(ValueError):
        build_set_device("mgk0", peers=[KernelPeer(PEER, ("example.com", 1))])


def test_gossip_port_design() -> None:
    assert gossip_port_for(False, 51821) == 51821
    assert gossip_port_for(True, 51821) == 51822


def test_ensure_module_paths(tmp_path: Path) -> None:
    present = tmp_path / "wireguard"
    present.mkdir()
    ensure_module(present)  # no error
    with pytest.raises(KernelModuleMissingError, match="modprobe wireguard` or run without"):
        ensure_module(tmp_path / "absent", modprobe=("false",))
    with pytest.raises(KernelModuleMissingError, match="not installed"):
        ensure_module(tmp_path / "absent", modprobe=("no-such-modprobe-xyz", "wireguard"))


@pytest.mark.skipif(Path("/sys/module/wireguard").exists(), reason="this kernel has WireGuard")
def test_missing_module_for_real() -> None:
    with pytest.raises(KernelModuleMissingError) as info:
        ensure_module()
    assert str(info.value).startswith(MISSING_MODULE_MESSAGE)
    if os.geteuid() != 0:
        pytest.skip("creating a link needs root")
    kwg = KernelWireGuard("mgk" + os.urandom(3).hex())
    with pytest.raises(KernelModuleMissingError, match="EOPNOTSUPP"):
        kwg.create_link()
    assert not kwg.created
    with pytest.raises(KernelModuleMissingError, match="generic netlink"):
        kwg.apply(build_set_device(kwg.ifname, listen_port=1))
