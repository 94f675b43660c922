"""Kernel mode wiring without a kernel module: the daemon turns the node's peer changes into
WG_CMD_SET_DEVICE messages and its gossip into datagrams on the gossip socket (port + 1)."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

from meshguard.daemon.gossip_socket import GossipSocket
from meshguard.daemon.host_probe import has_net_admin
from meshguard.daemon.kernel_runner import KernelRunner
from meshguard.daemon.kernel_wg import WGPEER_F_REMOVE_ME
from meshguard.daemon.mesh_daemon import DaemonConfig, MeshDaemon
from meshguard.mesh.node import PeerConfig, PeerDown, PeerUp
from meshguard.wireguard.actions import SendDatagram

from .helpers import RecordingKernel


def test_peer_actions_become_netlink_messages(tmp_path: Path) -> None:
    d = MeshDaemon(DaemonConfig("mgk-test", 51821, [], kernel=True, run_dir=tmp_path,
                                config_dir=tmp_path, env={}))
    k = RecordingKernel()
    runner = d.runner
    assert isinstance(runner, KernelRunner)
    runner.kernel = k
    nets = (ipaddress.ip_network("10.99.1.2/32"), ipaddress.ip_network("fd99:6d67::5/128"))
    up = PeerUp(PeerConfig(b"\x07" * 32, b"i" * 32, ("192.0.2.1", 51821), nets, 25))
    down = PeerDown(b"\x09" * 32, b"j" * 32, "dead")
    d._on_actions([up, down])
    (msg,) = k.sent
    assert msg.get_attr("WGDEVICE_A_IFNAME") == "mgk-test"
    p_up, p_down = msg.get_attr("WGDEVICE_A_PEERS")
    assert p_up.get_attr("WGPEER_A_ENDPOINT")["port"] == 51821
    assert p_up.get_attr("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL") == 25
    assert [a["addr"] for a in p_up.get_attr("WGPEER_A_ALLOWEDIPS")] == [str(n) for n in nets]
    assert p_down.get_attr("WGPEER_A_FLAGS") == WGPEER_F_REMOVE_ME
    d._on_actions([])
    assert len(k.sent) == 1  # nothing to do, nothing sent


def test_gossip_goes_out_on_the_gossip_socket(tmp_path: Path) -> None:
    d = MeshDaemon(DaemonConfig("mgk-test", 51821, [], kernel=True, run_dir=tmp_path,
                                config_dir=tmp_path, env={}))
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(2)
    tx = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    tx.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    tx.bind(("::", 0))
    runner = d.runner
    assert isinstance(runner, KernelRunner)
    runner.gossip = GossipSocket(tx, d.clock, runner.execute)
    runner.kernel = RecordingKernel()
    try:
        runner._dispatch([SendDatagram(b"\x01MG\x01\x00hello", ("127.0.0.1",
                                                                 rx.getsockname()[1]))])
        data, src = rx.recvfrom(100)
        assert data == b"\x01MG\x01\x00hello" and src[1] == tx.getsockname()[1]
    finally:
        rx.close()
        tx.close()


def test_net_admin_detection(tmp_path: Path) -> None:
    f = tmp_path / "status"
    f.write_text("Name:\tx\nCapEff:\t0000000000001000\n")
    assert has_net_admin(str(f))
    f.write_text("Name:\tx\nCapEff:\t0000000000000000\n")
    assert not has_net_admin(str(f))
