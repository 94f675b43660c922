"""One meshguard interface with two wireguard-go peers on a LAN: routing by allowed IPs."""

from __future__ import annotations

import pytest
from wgpair import genkey, impl_argv

from meshguard.testing.netns import (
    Lan,
    netns_skip_reason,
    start_userspace_wg,
    unique_name,
    wait_until,
)

pytestmark = pytest.mark.netns


def test_meshguard_hub_with_two_wireguard_go_peers() -> None:
    reason = netns_skip_reason()
    if reason:
        pytest.skip(reason)
    with Lan(3) as lan:
        impls = ["meshguard", "wireguard-go", "wireguard-go"]
        ifs, keys = [], []
        for i, ns in enumerate(lan.nodes):
            ifname = unique_name(f"hub{i}")
            start_userspace_wg(ns, ifname, argv=impl_argv(impls[i], ifname))
            priv, pub = genkey(ns)
            ns.run(
                ["wg", "set", ifname, "private-key", "/dev/stdin", "listen-port", str(52000 + i)],
                input=priv + "\n",
            )
            ns.add_address(ifname, f"10.78.0.{i + 1}/24")
            ns.link_up(ifname)
            ifs.append(ifname)
            keys.append(pub)
        hub = lan.nodes[0]
        for i in (1, 2):
            # spokes know the hub; the hub knows both spokes (each with its own address)
            hub.run(
                [
                    "wg",
                    "set",
                    ifs[0],
                    "peer",
                    keys[i],
                    "endpoint",
                    f"{lan.ipv4[i]}:{52000 + i}",
                    "allowed-ips",
                    f"10.78.0.{i + 1}/32",
                ]
            )
            lan.nodes[i].run(
                [
                    "wg",
                    "set",
                    ifs[i],
                    "peer",
                    keys[0],
                    "endpoint",
                    f"{lan.ipv4[0]}:52000",
                    "allowed-ips",
                    "10.78.0.0/24",
                ]
            )
        for i in (1, 2):
            wait_until(lambda i=i: hub.ping(f"10.78.0.{i + 1}"), 10, f"hub -> spoke {i}")
            assert lan.nodes[i].ping("10.78.0.1", count=2)
        # a spoke spoofing the other spoke's inner address is dropped by the hub
        spoofer = lan.nodes[1]
        spoofer.run(["ip", "addr", "add", "10.78.0.3/32", "dev", ifs[1]])

        def hub_rx() -> tuple[int, int]:
            # packets the hub wrote into its TUN (RX of the interface) and bytes from spoke 1
            rx = int(hub.run(["cat", f"/sys/class/net/{ifs[0]}/statistics/rx_packets"]).stdout)
            for line in hub.run(["wg", "show", ifs[0], "transfer"]).stdout.splitlines():
                key, wire_rx, _ = line.split("\t")
                if key == keys[1]:
                    return rx, int(wire_rx)
            raise AssertionError("spoke 1 missing")

        before = hub_rx()
        res = spoofer.run(
            ["ping", "-n", "-c", "3", "-i", "0.2", "-W", "1", "-I", "10.78.0.3", "10.78.0.1"],
            check=False,
        )
        assert res.returncode != 0
        after = hub_rx()
        assert after[1] > before[1]  # the packets arrived and authenticated...
        assert after[0] == before[0]  # ...but none reached the hub's TUN
        hs = hub.run(["wg", "show", ifs[0], "latest-handshakes"]).stdout.split()
        assert len(hs) == 4 and all(int(t) > 0 for t in hs[1::2])
