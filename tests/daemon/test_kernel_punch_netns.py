"""The kernel punch core (nat/kernel_punch.py) drives a real WireGuard implementation behind
real nftables NATs (marked netns). This machine has no WireGuard module, so wireguard-go
stands in for the kernel device: it takes the same settings (`wg set ... endpoint ...
persistent-keepalive ...`) and reports the same statistics (`wg show IF dump`) as the kernel
over netlink, and follows the same handshake timers.

Topology (every name carries a random suffix; everything is removed at the end):

    hub: bridge br0 (the "internet", 203.0.113.0/24)
      ├─ natA  203.0.113.21   nftables NAT ── hostA 192.168.10.2 (wireguard-go, port 51821)
      └─ natB  203.0.113.22   nftables NAT ── hostB 192.168.20.2 (wireguard-go, port 51821)

Each host's peer starts without an endpoint, as a stalled pair. Then both sides do at once
what a kernel-mode daemon does after the rendezvous: the candidates come from the peer's
advertised gossip endpoint (its NAT's address, port 51822) with the WireGuard port
(`wireguard_candidates`), the core's `PunchEndpoint` is applied with `wg set`, and the
statistics are polled into `observe` every 0.5 s. Behind two cone NATs (port-preserving,
docs/nat-testbed.md#nat-types) the core proves the path and the tunnel carries a ping; with one
symmetric NAT nothing is proven within the kernel-mode punch timeout.
"""

from __future__ import annotations

import base64
import shutil
import time
from pathlib import Path

import pytest

from meshguard.daemon.mesh_daemon import KERNEL_PUNCH_TIMEOUT
from meshguard.nat.kernel_punch import (
    KernelPeerState,
    KernelPunch,
    PunchEndpoint,
    PunchProven,
    wireguard_candidates,
)
from meshguard.sansio import Endpoint
from meshguard.testing.netns import netns_skip_reason, start_userspace_wg, unique_name

from .meshnet import Node
from .natnet import CONE, SYMMETRIC, NatLan

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(netns_skip_reason() is not None, reason=str(netns_skip_reason())),
    pytest.mark.skipif(shutil.which("nft") is None, reason="needs nft"),
    pytest.mark.skipif(shutil.which("wireguard-go") is None or shutil.which("wg") is None,
                       reason="needs wireguard-go and wg"),
]

WG_PORT = 51821


class Wg:
    """wireguard-go on a host behind a NAT: the stand-in for the kernel device."""

    def __init__(self, node: Node, public_ip: str, inner: str) -> None:
        self.node, self.public_ip, self.inner = node, public_ip, inner
        self.ifname = unique_name("wgk")
        start_userspace_wg(node.ns, self.ifname)
        priv = node.ns.run(["wg", "genkey"]).stdout.strip()
        self.pub = node.ns.run(["wg", "pubkey"], input=priv + "\n").stdout.strip()
        self.wg("set", self.ifname, "private-key", "/dev/stdin", "listen-port", str(WG_PORT),
                input=priv + "\n")
        node.ns.add_address(self.ifname, f"{inner}/24")
        node.ns.link_up(self.ifname)

    @property
    def key(self) -> bytes:
        return base64.b64decode(self.pub)

    @property
    def advertised(self) -> tuple[Endpoint, ...]:
        """What a kernel-mode member's record says: its NAT's address, its gossip port."""
        return ((self.public_ip, WG_PORT + 1),)

    def wg(self, *args: str, input: str | None = None) -> str:
        return self.node.ns.run(["wg", *args], input=input).stdout

    def add_peer(self, peer: Wg) -> None:
        self.wg("set", self.ifname, "peer", peer.pub, "allowed-ips", f"{peer.inner}/32")

    def apply(self, peer: Wg, a: PunchEndpoint) -> None:
        assert a.wg_key == peer.key
        self.wg("set", self.ifname, "peer", peer.pub, "endpoint",
                f"{a.endpoint[0]}:{a.endpoint[1]}", "persistent-keepalive", str(a.keepalive))

    def stats(self) -> dict[bytes, KernelPeerState]:
        out: dict[bytes, KernelPeerState] = {}
        for line in self.wg("show", self.ifname, "dump").splitlines()[1:]:
            key, _psk, ep, _ips, hs, rx, _tx, _ka = line.split("\t")
            host, _, port = ep.rpartition(":")
            out[base64.b64decode(key)] = KernelPeerState(
                float(hs), int(rx), (host, int(port)) if ep != "(none)" else None)
        return out


def _punch(lan: NatLan, masq_b: str) -> tuple[Wg, Wg, list[PunchProven], list[PunchProven],
                                                float]:
    a = Wg(lan.add_behind_nat("a", "203.0.113.21", "192.168.10"), "203.0.113.21", "10.88.0.1")
    b = Wg(lan.add_behind_nat("b", "203.0.113.22", "192.168.20", masq_b), "203.0.113.22",
           "10.88.0.2")
    a.add_peer(b)
    b.add_peer(a)
    ka, kb = KernelPunch(), KernelPunch()
    start, wall = time.monotonic(), time.time()
    # both sides at once, as after the rendezvous
    for me, peer, core in ((a, b, ka), (b, a, kb)):
        cands = wireguard_candidates(peer.advertised, 1)
        assert cands == ((peer.public_ip, WG_PORT),)
        (first,) = core.start(start, wall, b"id-" + peer.pub.encode(), peer.key, cands, False)
        assert isinstance(first, PunchEndpoint) and first.keepalive == 1
        me.apply(peer, first)
    proofs_a: list[PunchProven] = []
    proofs_b: list[PunchProven] = []
    while time.monotonic() - start < KERNEL_PUNCH_TIMEOUT:
        now, wall = time.monotonic(), time.time()
        proofs_a += [x for x in ka.observe(now, wall, a.stats()) if isinstance(x, PunchProven)]
        proofs_b += [x for x in kb.observe(now, wall, b.stats()) if isinstance(x, PunchProven)]
        if proofs_a and proofs_b:
            break
        time.sleep(0.5)
    return a, b, proofs_a, proofs_b, time.monotonic() - start


@pytest.mark.timeout(60)
def test_two_cone_nats_punch_with_the_devices_own_handshakes(tmp_path: Path) -> None:
    with NatLan(tmp_path) as lan:
        a, b, pa, pb, took = _punch(lan, CONE)
        # both proven, at the peer's NAT address and WireGuard port (the NATs kept the port)
        assert [p.endpoint for p in pa] == [(b.public_ip, WG_PORT)], (pa, took)
        assert [p.endpoint for p in pb] == [(a.public_ip, WG_PORT)], (pb, took)
        print(f"cone <-> cone: proven on both sides {took:.1f} s after the endpoints were set")
        assert a.node.ns.ping(b.inner, count=3, wait=2.0)


@pytest.mark.timeout(60)
def test_a_symmetric_nat_proves_nothing(tmp_path: Path) -> None:
    with NatLan(tmp_path) as lan:
        _a, _b, pa, pb, took = _punch(lan, SYMMETRIC)
        assert pa == [] and pb == [] and took >= KERNEL_PUNCH_TIMEOUT
