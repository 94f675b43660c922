"""The testbed itself works: wireguard-go in two namespaces, configured with `wg`, pings."""

from __future__ import annotations

import subprocess

import pytest

from meshguard.testing.netns import (
    Namespace,
    Testbed,
    start_userspace_wg,
    uapi_socket_path,
    unique_name,
    wait_until,
)

pytestmark = pytest.mark.netns


def _genkey(ns: Namespace) -> tuple[str, str]:
    priv = ns.run(["wg", "genkey"]).stdout.strip()
    pub = ns.run(["wg", "pubkey"], input=priv + "\n").stdout.strip()
    return priv, pub


def test_veth_pair_pings_both_families(tb: Testbed) -> None:
    assert tb.a.ping(str(tb.link.b_ipv4))
    assert tb.b.ping(str(tb.link.a_ipv4))
    assert tb.a.ping(str(tb.link.b_ipv6))
    assert not tb.a.ping("10.201.0.9", wait=0.3)


def test_namespace_cleanup_kills_processes_and_deletes() -> None:
    ns = Namespace.create("mgt")
    proc = ns.popen(["sleep", "300"])
    name = ns.name
    ns.close()
    assert proc.poll() is not None
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert name not in listed.split()


def test_wireguard_go_pair_pings_both_ways(tb: Testbed) -> None:
    ifa, ifb = unique_name("wga"), unique_name("wgb")
    start_userspace_wg(tb.a, ifa)
    start_userspace_wg(tb.b, ifb)
    a_priv, a_pub = _genkey(tb.a)
    b_priv, b_pub = _genkey(tb.b)
    for ns, ifname, priv, port, peer, ep, inner, peer_inner in (
        (tb.a, ifa, a_priv, 51001, b_pub, f"{tb.link.b_ipv4}:51002", "10.77.0.1", "10.77.0.2"),
        (tb.b, ifb, b_priv, 51002, a_pub, f"{tb.link.a_ipv4}:51001", "10.77.0.2", "10.77.0.1"),
    ):
        ns.run(
            [
                "wg",
                "set",
                ifname,
                "private-key",
                "/dev/stdin",
                "listen-port",
                str(port),
                "peer",
                peer,
                "endpoint",
                ep,
                "allowed-ips",
                f"{peer_inner}/32",
            ],
            input=priv + "\n",
        )
        ns.add_address(ifname, f"{inner}/24")
        ns.link_up(ifname)
    wait_until(lambda: tb.a.ping("10.77.0.2"), 10, "ping a->b through wireguard-go")
    assert tb.b.ping("10.77.0.1", count=3)
    shown = tb.a.run(["wg", "show", ifa, "latest-handshakes"]).stdout.split()
    assert shown[0] == b_pub and int(shown[1]) > 0
    assert uapi_socket_path(ifa).endswith(f"{ifa}.sock")


def test_lan_of_three_all_pairs_reach_each_other() -> None:
    from meshguard.testing.netns import Lan, netns_skip_reason

    if netns_skip_reason():
        pytest.skip(netns_skip_reason() or "")
    with Lan(3) as lan:
        names = [ns.name for ns in lan.nodes] + [lan.switch.name]
        for i, ns in enumerate(lan.nodes):
            for j in range(3):
                if i != j:
                    assert ns.ping(str(lan.ipv4[j]))
        assert lan.nodes[0].ping(str(lan.ipv6[2]))
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(n in listed for n in names)


def test_killed_process_socket_is_removed_with_the_namespace() -> None:
    import os
    import signal

    from meshguard.testing.netns import netns_skip_reason

    if netns_skip_reason():
        pytest.skip(netns_skip_reason() or "")
    ifname = unique_name("wgk")
    with Namespace.create("mgk") as ns:
        proc = start_userspace_wg(ns, ifname)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
        assert os.path.exists(uapi_socket_path(ifname))  # left behind by the killed process
    assert not os.path.exists(uapi_socket_path(ifname))
