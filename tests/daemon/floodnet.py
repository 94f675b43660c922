"""Flood scenarios against real daemons in network namespaces (bench/flood.py and
tests/daemon/test_flood_netns.py).

Userspace WireGuard (`meshguard wireguard` or a wireguard-go binary), on one bridged LAN:
    S  the server under test; C  a client with a live tunnel to S, pinging S through it;
    L  a legitimate peer that starts its first handshake with S just after the flood starts;
    X  the stranger, flooding S's port from its own address.
Mesh daemons (`meshguard up`): a seed and a member that trust each other (and an org), the
member pinging the seed's mesh address, and the stranger X flooding the seed's port.

Every flood runs against fresh daemons; every namespace and process is removed at the end.
"""

from __future__ import annotations

import base64
import contextlib
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from meshguard.identity import keygen, store
from meshguard.rng import SystemRng
from meshguard.testing import flood
from meshguard.testing.netns import Lan, Namespace, start_userspace_wg, unique_name, wait_until

from .meshnet import MeshLan, Node, trust_all

WG_PORT = 51820
PING_INTERVAL = 0.1
USERSPACE_FLOODS = ("initiation", "garbage", "cookie", "transport")
MESH_FLOODS = ("initiation", "org", "holepunch", "relay", "join", "garbage")
_PING_LINE = re.compile(r"icmp_seq=(\d+) .*time=([\d.]+) ms")


@dataclass
class FloodResult:
    target: str
    flood: str
    rate: float
    seconds: float
    sent: int = 0
    pings_sent: int = 0
    pings_answered: int = 0
    rtts: list[float] = field(default_factory=list)
    handshake_after: float | None = None  # s from the flood's start; None: not within it
    rx_datagrams: int = 0  # UDP datagrams the target's socket took (kernel counter)
    rx_dropped: int = 0  # datagrams the kernel dropped at the target's socket (full buffer)
    replies: int = 0  # datagrams the stranger's flooding sockets got back (cookie replies, ...)
    counters: dict[str, int] = field(default_factory=dict)  # the daemon's, grown in the flood
    note: str = ""

    @property
    def answered_pct(self) -> float:
        return 100.0 * self.pings_answered / self.pings_sent if self.pings_sent else 0.0

    @property
    def median_rtt(self) -> float | None:
        return statistics.median(self.rtts) if self.rtts else None

    @property
    def p99_rtt(self) -> float | None:
        if not self.rtts:
            return None
        s = sorted(self.rtts)
        return s[min(len(s) - 1, int(0.99 * len(s)))]

    @property
    def pps(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0


def udp_counters(ns: Namespace) -> dict[str, int]:
    """The namespace's UDP counters (InDatagrams, RcvbufErrors, ...), IPv4 and IPv6 summed
    (/proc/net/snmp's Udp: lines and /proc/net/snmp6's Udp6* ones)."""
    out = ns.run(["cat", "/proc/net/snmp", "/proc/net/snmp6"]).stdout.splitlines()
    lines = [ln.split() for ln in out if ln.startswith("Udp:")]
    res = {k: int(v) for k, v in zip(lines[0][1:], lines[1][1:], strict=True)}
    for ln in out:
        parts = ln.split()
        if len(parts) == 2 and parts[0].startswith("Udp6") and parts[1].isdigit():
            key = parts[0][4:]
            res[key] = res.get(key, 0) + int(parts[1])
    return res


class Pinger:
    """`ping -i 0.1` for `seconds` in the background; parse_into fills a FloodResult."""

    def __init__(self, ns: Namespace, address: str, seconds: float) -> None:
        self.count = max(1, int(seconds / PING_INTERVAL))
        self.proc = ns.popen(["ping", "-n", "-i", str(PING_INTERVAL), "-W", "1", "-c",
                              str(self.count), address], stdout=subprocess.PIPE)

    def parse_into(self, res: FloodResult) -> None:
        out, _ = self.proc.communicate(timeout=self.count * PING_INTERVAL + 30)
        seqs: dict[int, float] = {}
        for line in out.decode(errors="replace").splitlines():
            m = _PING_LINE.search(line)
            if m:
                seqs.setdefault(int(m.group(1)), float(m.group(2)))
        res.pings_sent = self.count
        res.pings_answered = len(seqs)
        res.rtts = list(seqs.values())


# --- userspace WireGuard -------------------------------------------------------------------


@dataclass
class WgIf:
    ns: Namespace
    ifname: str
    priv: str
    pub: str
    port: int
    inner: str
    outer: str

    def wg(self, *args: str, input: str | None = None) -> str:
        return self.ns.run(["wg", *args], input=input).stdout

    def handshake_with(self, peer: WgIf) -> int:
        for line in self.wg("show", self.ifname, "latest-handshakes").splitlines():
            key, _, ts = line.partition("\t")
            if key == peer.pub:
                return int(ts)
        return 0


def _genkey(ns: Namespace) -> tuple[str, str]:
    priv = ns.run(["wg", "genkey"]).stdout.strip()
    return priv, ns.run(["wg", "pubkey"], input=priv + "\n").stdout.strip()


def impl_argv(impl: str, ifname: str, wireguard_go: str = "wireguard-go") -> list[str]:
    """meshguard[-python], wireguard-go (the `wireguard_go` binary) or wireguard-go@PATH."""
    if impl.startswith("meshguard"):
        return [sys.executable, "-m", "meshguard", "wireguard", ifname, "-f"]
    if "@" in impl:
        return [impl.partition("@")[2], ifname]
    return [wireguard_go, ifname]


def impl_label(impl: str) -> str:
    """wireguard-go@/x/wireguard-go-2025/wireguard-go -> wireguard-go-2025 (its folder)."""
    if "@" not in impl:
        return impl
    path = Path(impl.partition("@")[2])
    return path.parent.name if path.parent.name else path.name


def _start_wg(ns: Namespace, impl: str, inner: str, outer: str, port: int,
              wireguard_go: str, env: dict[str, str]) -> WgIf:
    ifname = unique_name("fl")
    start_userspace_wg(ns, ifname, argv=impl_argv(impl, ifname, wireguard_go), env=env)
    priv, pub = _genkey(ns)
    ns.run(["wg", "set", ifname, "private-key", "/dev/stdin", "listen-port", str(port)],
           input=priv + "\n")
    ns.add_address(ifname, f"{inner}/24")
    ns.link_up(ifname)
    return WgIf(ns, ifname, priv, pub, port, inner, outer)


def _peer(a: WgIf, b: WgIf, endpoint: bool) -> None:
    args = ["set", a.ifname, "peer", b.pub, "allowed-ips", f"{b.inner}/32"]
    if endpoint:
        host = f"[{b.outer}]" if ":" in b.outer else b.outer
        args += ["endpoint", f"{host}:{b.port}"]
    a.wg(*args)


def _stop_all(ns: Namespace) -> None:
    for proc in list(ns._procs):
        with contextlib.suppress(Exception):
            ns.stop(proc, timeout=3)


def userspace_flood(lan: Lan, impl: str, kind: str, rate: float, seconds: float,
                    wireguard_go: str = "wireguard-go", senders: int = 1,
                    v6: bool = False) -> FloodResult:
    """One flood against a fresh S (impl) with C and L (same impl) on `lan` (4 nodes); `v6`:
    the tunnels and the flood run over the LAN's IPv6 addresses."""
    s_ns, c_ns, l_ns, x_ns = lan.nodes[:4]
    env = {"MESHGUARD_PURE_PYTHON": "1"} if impl == "meshguard-python" else {}
    res = FloodResult(impl_label(impl) + ("/v6" if v6 else ""), kind, rate, seconds)
    flooders: list[flood.FloodSender] = []
    try:
        outer = lan.ipv6 if v6 else lan.ipv4
        s = _start_wg(s_ns, impl, "10.88.0.1", str(outer[0]), WG_PORT, wireguard_go, env)
        c = _start_wg(c_ns, impl, "10.88.0.2", str(outer[1]), WG_PORT, wireguard_go, env)
        legit = _start_wg(l_ns, impl, "10.88.0.3", str(outer[2]), WG_PORT, wireguard_go, env)
        _peer(s, c, False)
        _peer(c, s, True)
        _peer(s, legit, False)
        wait_until(lambda: c_ns.ping(s.inner, wait=0.5), 20, "client tunnel to the server")
        if kind == "initiation":
            pkts = flood.initiations(base64.b64decode(s.pub), 512)
        else:
            pkts = flood.GENERATORS[kind](512)
        before_s = udp_counters(s_ns)
        flooders = [flood.FloodSender(x_ns, s.outer, WG_PORT, pkts, rate / senders, seconds,
                                      src_port=40000 + i) for i in range(senders)]
        t0 = time.monotonic()
        for f in flooders:
            f.start()
        time.sleep(0.3)
        pinger = Pinger(c_ns, s.inner, seconds - 0.5)
        # the legitimate peer's first handshake: configured now, started by a ping
        _peer(legit, s, True)
        l_ns.popen(["ping", "-n", "-c", "1", "-W", "1", s.inner])
        deadline = t0 + seconds
        while time.monotonic() < deadline:
            if legit.handshake_with(s):
                res.handshake_after = time.monotonic() - t0
                break
            time.sleep(0.2)
        res.sent = sum(f.wait() for f in flooders)
        pinger.parse_into(res)
        after_s = udp_counters(s_ns)
        res.rx_datagrams = after_s["InDatagrams"] - before_s["InDatagrams"]
        res.rx_dropped = after_s["RcvbufErrors"] - before_s["RcvbufErrors"]
        res.replies = sum(f.replies for f in flooders)
    finally:
        for f in flooders:
            f.stop()
        for ns in (s_ns, c_ns, l_ns, x_ns):
            _stop_all(ns)
    return res


@contextlib.contextmanager
def userspace_lan() -> Iterator[Lan]:
    with Lan(4, prefix="mgfl", ipv4_net="10.213.0.0/24", ipv6_net="fd00:213::/64") as lan:
        yield lan


# --- mesh daemons ---------------------------------------------------------------------------


@dataclass
class MeshBed:
    lan: MeshLan
    org_pub: bytes
    x: Namespace
    x_ip: str


@contextlib.contextmanager
def mesh_lan(tmp: Path) -> Iterator[MeshBed]:
    """A MeshLan with a seed and a member trusting each other and an org, plus the stranger."""
    with MeshLan(tmp) as lan:
        seed, member = lan.add_node("seed"), lan.add_node("member")
        x = lan.add_node("x", keys=False)
        trust_all([seed, member])
        org = keygen.generate_org_key(tmp / "orgadmin", SystemRng(), force=False)
        for n in (seed, member):
            p = n.cfg / store.TRUSTED_ORGS / "fleet.org"
            p.parent.mkdir(mode=0o700, exist_ok=True)
            p.write_text(store.public_key_file(org.public_key.raw).decode())
        yield MeshBed(lan, org.public_key.raw, x.ns, x.ip)


_BORING = frozenset({"engine_udp_rx", "engine_udp_rx_batches", "engine_udp_tx", "engine_tun_rx",
                     "engine_tun_tx", "engine_tun_rx_batches", "engine_timer_runs",
                     "wireguard_packets_received", "wireguard_packets_sent", "gossip_rx",
                     "wireguard_rx", "engine_udp_gro_reads"})


def _counters(node: Node) -> dict[str, int]:
    try:
        return {k: int(v) for k, v in node.status().get("counters", {}).items()
                if isinstance(v, int)}
    except (OSError, ValueError, RuntimeError):
        return {}


def mesh_up(bed: MeshBed) -> None:
    """Start the seed and the member (if not running) and wait for their tunnel."""
    lan = bed.lan
    seed, member = lan.nodes[0], lan.nodes[1]
    if seed.proc is None or seed.proc.poll() is not None:
        seed.up()
    if member.proc is None or member.proc.poll() is not None:
        member.up([seed])
    lan.wait(lambda: member.tunnel_to(seed), "member's tunnel to the seed", 30)
    lan.wait(lambda: member.ping(seed), "member pings the seed", 15)


def mesh_down(bed: MeshBed) -> None:
    for n in bed.lan.nodes[:2]:
        if n.proc is not None and n.proc.poll() is None:
            with contextlib.suppress(Exception):
                n.ns.stop(n.proc, timeout=3)
        n.proc = None


def mesh_flood(bed: MeshBed, kind: str, rate: float, seconds: float,
               senders: int = 1, fresh: bool = True, rejoin: float = 0.0) -> FloodResult:
    """One flood at the seed while the member pings it; `fresh`: new daemons, stopped after
    (else the running ones are used and left running). `rejoin` > 0: the flood goes on that
    many seconds more, during which the member is killed and restarted: handshake_after is
    then the time from its restart until it has a tunnel to the seed again."""
    lan = bed.lan
    seed, member = lan.nodes[0], lan.nodes[1]
    res = FloodResult("meshguard-up", kind, rate, seconds)
    flooders: list[flood.FloodSender] = []
    try:
        mesh_up(bed)
        makers: dict[str, Callable[[int], list[bytes]]] = {
            "initiation": lambda n: flood.initiations(seed.wg_pub, n),
            "org": lambda n: flood.org_revokes(bed.org_pub, n),
            **flood.GENERATORS}
        pkts = makers[kind](512)
        before_c = _counters(seed)
        before_s = udp_counters(seed.ns)
        flooders = [flood.FloodSender(bed.x, seed.ip, seed.port, pkts, rate / senders,
                                      seconds + rejoin, src_port=40000 + i)
                    for i in range(senders)]
        for f in flooders:
            f.start()
        t0 = time.monotonic()
        time.sleep(0.3)
        pinger = Pinger(member.ns, seed.mesh_v4, seconds - 0.5)
        pinger.parse_into(res)
        if rejoin:
            member.kill()
            t1 = time.monotonic()
            member.up([seed], wait=False)
            while time.monotonic() < t0 + seconds + rejoin:
                with contextlib.suppress(Exception):
                    if member.tunnel_to(seed) and member.ping(seed):
                        res.handshake_after = time.monotonic() - t1
                        break
                time.sleep(0.2)
        res.sent = sum(f.wait() for f in flooders)
        res.seconds = seconds + rejoin  # the flood's length (the pings took `seconds`)
        after_c = _counters(seed)
        res.counters = {k: v - before_c.get(k, 0) for k, v in after_c.items()
                        if v - before_c.get(k, 0) > 0 and k not in _BORING}
        top = sorted(res.counters.items(), key=lambda kv: -kv[1])[:3]
        res.note = " ".join(f"{k}={v}" for k, v in top)
        after_s = udp_counters(seed.ns)
        res.rx_datagrams = after_s["InDatagrams"] - before_s["InDatagrams"]
        res.rx_dropped = after_s["RcvbufErrors"] - before_s["RcvbufErrors"]
        res.replies = sum(f.replies for f in flooders)
    finally:
        for f in flooders:
            f.stop()
        if fresh:
            mesh_down(bed)
    return res

