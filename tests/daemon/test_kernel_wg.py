from __future__ import annotations

import ipaddress
import struct
from pathlib import Path
from typing import Any

import pytest

from meshguard.crypto.keys import X25519PrivateKey
from meshguard.daemon.kernel_module import (
    MISSING_MODULE_MESSAGE,
    KernelModuleMissingError,
    ensure_module,
    gossip_port_for,
)
from meshguard.daemon.kernel_wg import (
    WGDEVICE_F_REPLACE_PEERS,
    WGPEER_F_REMOVE_ME,
    WGPEER_F_REPLACE_ALLOWEDIPS,
    KernelPeer,
    build_set_device,
)
from meshguard.testing.netns import Namespace, netns_skip_reason

from .helpers import PEER_PRIVATE, kernel_wireguard, run_kernel_link_probe

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


@pytest.mark.netns
@pytest.mark.skipif(netns_skip_reason() is not None, reason=str(netns_skip_reason()))
def test_kernel_link_in_a_namespace() -> None:
    """Kernel mode for real where the kernel has WireGuard, its refusal where it has not: the
    decision is kernel_wireguard()'s, shared with test_up_cli_netns.py."""
    support = kernel_wireguard()
    with Namespace.create("mgkwg") as ns:
        got = run_kernel_link_probe(ns)
    if not support.available:
        with pytest.raises(KernelModuleMissingError) as info:
            ensure_module()
        assert str(info.value).startswith(MISSING_MODULE_MESSAGE)
        assert got["created"] is False, (support, got)
        assert "EOPNOTSUPP" in str(got["create_error"]), got
        assert "generic netlink" in str(got["apply_error"]), got
        return
    ensure_module()  # loads the module if it is only installed: kernel mode needs it
    peer = X25519PrivateKey(PEER_PRIVATE).public_key.raw
    assert got == {
        "created": True,
        "peers": [{"public_key": peer.hex(), "endpoint": ["192.0.2.1", 51821],
                   "allowed_ips": ["10.99.1.2/32"]}],
        "kind": "wireguard",
        "deleted": True,
    }, support
