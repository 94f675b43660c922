"""Two userspace WireGuard interfaces (meshguard or wireguard-go) across a namespace testbed."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field

from meshguard.testing.netns import Namespace, Testbed, start_userspace_wg, unique_name

IMPLS = ("meshguard", "wireguard-go")


def impl_argv(impl: str, ifname: str) -> list[str]:
    if impl == "meshguard":
        return [sys.executable, "-m", "meshguard", "wireguard", ifname, "-f"]
    return ["wireguard-go", ifname]


def genkey(ns: Namespace) -> tuple[str, str]:
    priv = ns.run(["wg", "genkey"]).stdout.strip()
    pub = ns.run(["wg", "pubkey"], input=priv + "\n").stdout.strip()
    return priv, pub


@dataclass
class Node:
    ns: Namespace
    impl: str
    ifname: str
    priv: str
    pub: str
    port: int
    inner4: str
    inner6: str
    outer4: str
    outer6: str
    proc: subprocess.Popen[bytes] | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def wg(self, *args: str, input: str | None = None, check: bool = True) -> str:
        return self.ns.run(["wg", *args], input=input, check=check).stdout

    def handshake_time(self, peer: Node) -> int:
        """`wg show latest-handshakes` seconds for peer (0 = never)."""
        for line in self.wg("show", self.ifname, "latest-handshakes").splitlines():
            key, _, ts = line.partition("\t")
            if key == peer.pub:
                return int(ts)
        raise AssertionError(f"peer {peer.pub} not on {self.ifname}")

    def endpoint_of(self, peer: Node) -> str:
        for line in self.wg("show", self.ifname, "endpoints").splitlines():
            key, _, ep = line.partition("\t")
            if key == peer.pub:
                return ep
        raise AssertionError(f"peer {peer.pub} not on {self.ifname}")

    def ping(self, other: Node, v6: bool = False, count: int = 1, wait: float = 1.0) -> bool:
        return self.ns.ping(other.inner6 if v6 else other.inner4, count=count, wait=wait)


def start_node(tb: Testbed, side: str, impl: str, env: Mapping[str, str] | None = None) -> Node:
    ns = tb.a if side == "a" else tb.b
    n = 1 if side == "a" else 2
    ifname = unique_name(f"{impl[0]}{side}")
    proc = start_userspace_wg(ns, ifname, argv=impl_argv(impl, ifname), env=env)
    priv, pub = genkey(ns)
    link = tb.link
    node = Node(
        ns=ns,
        impl=impl,
        ifname=ifname,
        priv=priv,
        pub=pub,
        port=51000 + n,
        inner4=f"10.77.0.{n}",
        inner6=f"fd77::{n}",
        outer4=str(link.a_ipv4 if side == "a" else link.b_ipv4),
        outer6=str(link.a_ipv6 if side == "a" else link.b_ipv6),
        proc=proc,
    )
    node.wg(
        "set", ifname, "private-key", "/dev/stdin", "listen-port", str(node.port), input=priv + "\n"
    )
    ns.add_address(ifname, f"{node.inner4}/24")
    ns.add_address(ifname, f"{node.inner6}/64")
    ns.link_up(ifname)
    return node


def add_peer(
    node: Node,
    peer: Node,
    *,
    endpoint: bool = True,
    v6_outer: bool = False,
    psk: str | None = None,
    public_key: str | None = None,
    keepalive: int = 0,
) -> None:
    args = [
        "set",
        node.ifname,
        "peer",
        public_key or peer.pub,
        "allowed-ips",
        f"{peer.inner4}/32,{peer.inner6}/128",
    ]
    if endpoint:
        host = f"[{peer.outer6}]" if v6_outer else peer.outer4
        args += ["endpoint", f"{host}:{peer.port}"]
    if keepalive:
        args += ["persistent-keepalive", str(keepalive)]
    if psk is not None:
        args += ["preshared-key", "/dev/stdin"]
    node.wg(*args, input=(psk + "\n") if psk is not None else None)


def pair(
    tb: Testbed,
    impl_b: str,
    *,
    impl_a: str = "meshguard",
    a_knows_b: bool = True,
    b_knows_a: bool = True,
    v6_outer: bool = False,
    psk: str | None = None,
    env_a: Mapping[str, str] | None = None,
) -> tuple[Node, Node]:
    a = start_node(tb, "a", impl_a, env=env_a)
    b = start_node(tb, "b", impl_b)
    add_peer(a, b, endpoint=a_knows_b, v6_outer=v6_outer, psk=psk)
    add_peer(b, a, endpoint=b_knows_a, v6_outer=v6_outer, psk=psk)
    return a, b
