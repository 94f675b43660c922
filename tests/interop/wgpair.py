"""Two userspace WireGuard interfaces (meshguard or wireguard-go) across a namespace testbed."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field

from meshguard.testing.netns import Namespace, Testbed, start_userspace_wg, unique_name, wait_until

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


def wait_ping(src: Node, dst: Node, v6: bool = False, timeout: float = 10) -> None:
    wait_until(lambda: src.ping(dst, v6=v6), timeout, f"ping {src.impl}->{dst.impl} v6={v6}")


# A bulk TCP transfer checked by sha256: the receiver prints the digest of what arrived.
RECEIVER = textwrap.dedent(
    """
    import hashlib, socket, sys
    fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
    s = socket.socket(fam); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], 5555)); s.listen(1); print("listening", flush=True)
    c, _ = s.accept(); h = hashlib.sha256(); n = 0
    while True:
        d = c.recv(1 << 20)
        if not d: break
        h.update(d); n += len(d)
    print(n, h.hexdigest(), flush=True)
    """
)
SENDER = textwrap.dedent(
    """
    import hashlib, random, socket, sys, time
    data = random.Random(7).randbytes(int(sys.argv[2]))
    deadline = time.monotonic() + 10
    while True:
        try:
            c = socket.create_connection((sys.argv[1], 5555), timeout=5); break
        except OSError:
            if time.monotonic() > deadline: raise
            time.sleep(0.1)
    c.settimeout(60); c.sendall(data); c.close()
    print(len(data), hashlib.sha256(data).hexdigest())
    """
)


def transfer(src: Node, dst_ns_node: Node, ip: str, size: int) -> None:
    """`size` bytes over TCP from `src` to `ip` in `dst_ns_node`'s namespace, checked by sha256."""
    server = dst_ns_node.ns.popen([sys.executable, "-c", RECEIVER, ip], stdout=subprocess.PIPE)
    assert server.stdout is not None
    assert server.stdout.readline().strip() == b"listening"
    sent = src.ns.run([sys.executable, "-c", SENDER, ip, str(size)], timeout=120).stdout
    got = server.communicate(timeout=60)[0].decode()
    assert sent.split() == got.split(), (sent, got)
    assert sent.split()[0] == str(size)
