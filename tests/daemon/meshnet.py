"""Real-daemon test helpers: nodes in network namespaces on one bridged LAN.

    with MeshLan(tmp_path) as lan:
        a = lan.add_node("a")              # namespace + veth into the LAN bridge + config dir
        b = lan.add_node("b")
        trust_each_other([a, b])
        a.up(); b.up(seeds=[a])             # `python -m meshguard up -f` in the namespace
        lan.wait(lambda: b.tunnel_to(a), "b's tunnel to a")

Every namespace, interface and process is removed when the LAN closes, even on failure.
Interface and namespace names carry a random suffix. Daemon stderr goes to <tmp>/<name>.log,
which `MeshLan.logs()` returns for assertion messages.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from meshguard.daemon.control_client import ControlClient, DaemonNotRunningError
from meshguard.identity import keygen, store
from meshguard.identity.addressing import mesh_ipv4, mesh_ipv6
from meshguard.rng import SystemRng
from meshguard.testing.netns import Namespace, uapi_socket_path, unique_name, wait_until

PY = sys.executable
LAN_V4 = "10.210.0."
LAN_V6 = "fd00:210::"


def run_cli(args: list[str], env: dict[str, str], ns: Namespace | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    argv = [PY, "-m", "meshguard", *args]
    if ns is not None:
        argv = ns.argv(argv)
    return subprocess.run(argv, env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=timeout)


@dataclass
class Node:
    lan: MeshLan
    name: str
    ns: Namespace
    cfg: Path
    ip: str
    iface: str
    ip6: str = ""
    port: int = 51821
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    identity: bytes = b""
    wg_pub: bytes = b""
    extra_env: dict[str, str] = field(default_factory=dict)
    lan_if: str = ""  # the node's underlay interface in its namespace

    @property
    def env(self) -> dict[str, str]:
        return {"MESHGUARD_CONFIG_DIR": str(self.cfg), "MESHGUARD_RUN_DIR": str(self.lan.run),
                **self.extra_env}

    @property
    def mesh_v4(self) -> str:
        return str(mesh_ipv4(self.identity))

    @property
    def mesh_v6(self) -> str:
        return str(mesh_ipv6(self.identity))

    @property
    def sock(self) -> Path:
        return self.lan.run / f"{self.iface}.sock"

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return run_cli(list(args), self.env, self.ns, timeout)

    def up(self, seeds: list[Node] | None = None, *extra: str, wait: bool = True,
           v6: bool = False, announce: bool = True, log_level: str | None = "debug") -> None:
        """`up -f` with these flags (log_level None: the config file's, or the default)."""
        argv = ["up", "-f", "--interface", self.iface, "--port", str(self.port), *extra]
        if log_level is not None:
            argv += ["--log-level", log_level]
        if announce:
            argv += ["--announce", self.ip6 if v6 else self.ip]
        for s in seeds or []:
            argv += ["--seed", f"[{s.ip6}]:{s.port}" if v6 else f"{s.ip}:{s.port}"]
        self.log = self.lan.tmp / f"{self.name}.log"
        with open(self.log, "ab") as logf:
            self.proc = self.ns.popen([PY, "-m", "meshguard", *argv],
                                      env={**os.environ, **self.env}, stderr=logf)
        if wait:
            self.lan.wait(lambda: self.alive_and_answering(), f"{self.name} to come up", 20)

    def write_config(self, text: str) -> Path:
        """The node's meshguard.toml (in its config dir, so `up` reads it without --config)."""
        path = self.cfg / "meshguard.toml"
        path.write_text(text)
        return path

    def alive_and_answering(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n"
                               + self.lan.logs())
        if not self.sock.exists():
            return False
        try:
            return bool(self.status())
        except DaemonNotRunningError:  # the socket file is bound a moment before it listens
            return False

    def status(self) -> dict[str, Any]:
        return ControlClient(self.sock, self.iface, timeout=5).request("status")

    def member(self, other: Node) -> dict[str, Any] | None:
        import base64

        key = base64.b64encode(other.identity).decode()
        for m in self.status()["members"]:
            if m["identity_key"] == key:
                return dict(m)
        return None

    def tunnel_to(self, other: Node) -> bool:
        m = self.member(other)
        return m is not None and bool(m["tunnel"])

    def ping(self, other: Node, v6: bool = False, count: int = 1) -> bool:
        return self.ns.ping(other.mesh_v6 if v6 else other.mesh_v4, count=count, wait=1.0)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        self.proc.wait(10)

    def trust(self, other: Node) -> Path:
        p = self.cfg / store.AUTHORIZED_KEYS / f"{other.name}.pub"
        p.parent.mkdir(mode=0o700, exist_ok=True)
        p.write_text(store.public_key_file(other.identity).decode())
        return p


class MeshLan:
    """A hub namespace with a bridge; each node namespace hangs off it by a veth pair."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.run = tmp / "run"
        self.nodes: list[Node] = []
        self._stack = contextlib.ExitStack()
        self.hub: Namespace

    def __enter__(self) -> MeshLan:
        try:
            self.hub = self._stack.enter_context(Namespace.create("mghub"))
            self.hub.run(["ip", "link", "add", "br0", "type", "bridge"])
            self.hub.run(["ip", "link", "set", "br0", "up"])
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        for n in self.nodes:
            if n.proc is not None and n.proc.poll() is None:
                with contextlib.suppress(Exception):
                    n.ns.stop(n.proc, timeout=3)
        self._stack.close()
        for n in self.nodes:  # a SIGKILLed daemon leaves its UAPI socket file behind
            with contextlib.suppress(OSError):
                Path(uapi_socket_path(n.iface)).unlink()

    def add_node(self, name: str, *, keys: bool = True) -> Node:
        idx = len(self.nodes) + 1
        ns = self._stack.enter_context(Namespace.create(f"mgn{name}"))
        hub_if = unique_name("vh")
        node_if = unique_name("vn")
        subprocess.run(["ip", "link", "add", hub_if, "netns", self.hub.name, "type", "veth",
                        "peer", "name", node_if, "netns", ns.name], check=True, timeout=30)
        self.hub.run(["ip", "link", "set", hub_if, "master", "br0"])
        self.hub.link_up(hub_if)
        ip = f"{LAN_V4}{idx}"
        ns.add_address(node_if, f"{ip}/24")
        ns.add_address(node_if, f"{LAN_V6}{idx}/64")
        ns.link_up(node_if)
        cfg = self.tmp / name
        node = Node(self, name, ns, cfg, ip, unique_name("mg"), ip6=f"{LAN_V6}{idx}",
                    lan_if=node_if)
        if keys:
            k = keygen.generate_node_keys(cfg, SystemRng(), time.time(), force=False)
            node.identity = k.identity.public_key.raw
            node.wg_pub = k.wireguard.public_key.raw
        self.nodes.append(node)
        return node

    def add_host_behind(self, node: Node, name: str, v4: str, v6: str = "") -> Namespace:
        """A host namespace on a link of its own to `node`: `node` is `v4`.1/24 (and `v6`1/64),
        the host `v4`.2 (and `v6`2) with no route beyond that link, so it answers the mesh
        only when `node` masquerades (a LAN behind a subnet router, a server behind an exit
        node's upstream)."""
        host = self._stack.enter_context(Namespace.create(f"mgh{name}"))
        node_if, host_if = unique_name("vr"), unique_name("vs")
        subprocess.run(["ip", "link", "add", node_if, "netns", node.ns.name, "type", "veth",
                        "peer", "name", host_if, "netns", host.name], check=True, timeout=30)
        for ns, ifname, last in ((node.ns, node_if, "1"), (host, host_if, "2")):
            ns.add_address(ifname, f"{v4}.{last}/24")
            if v6:
                ns.add_address(ifname, f"{v6}{last}/64")
            ns.link_up(ifname)
        return host

    def wait(self, pred: Callable[[], object], what: str, timeout: float = 20) -> None:
        try:
            wait_until(pred, timeout, what, interval=0.1)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from None

    def logs(self, tail: int = 40) -> str:
        out = []
        for n in self.nodes:
            if n.log is not None and n.log.exists():
                lines = n.log.read_text(errors="replace").splitlines()[-tail:]
                out.append(f"--- {n.name} ---\n" + "\n".join(lines))
        return "\n".join(out)


def trust_all(nodes: list[Node]) -> None:
    for a in nodes:
        for b in nodes:
            if a is not b:
                a.trust(b)


def status_json(node: Node) -> dict[str, Any]:
    res = node.cli("status", "--interface", node.iface, "--json")
    assert res.returncode == 0, res.stderr
    return dict(json.loads(res.stdout))


class LanDns:
    """dnsmasq in a namespace of its own on the LAN: host names from a hosts file (`set_host`
    rewrites it and has dnsmasq re-read it; TTL `ttl`) and fixed TXT records; any other name
    under .test is NXDOMAIN. A node's daemon
    uses it through $MESHGUARD_RESOLV_CONF (`env`)."""

    def __init__(self, lan: MeshLan, txt: Sequence[tuple[str, str]] = (), ttl: int = 1) -> None:
        self.node = lan.add_node("dns", keys=False)
        self.ip = self.node.ip
        self.hosts = lan.tmp / "dns.hosts"
        self.hosts.write_text("")
        self.resolv = lan.tmp / "dns.resolv.conf"
        self.resolv.write_text(f"nameserver {self.ip}\noptions timeout:1 attempts:2\n")
        argv = ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv",
                "--no-hosts", "--bind-interfaces", f"--listen-address={self.ip}",
                "--user=root", "--pid-file", f"--addn-hosts={self.hosts}", f"--local-ttl={ttl}",
                "--local=/test/", "--log-queries", "--log-facility=-"]
        argv += [f"--txt-record={name},{value}" for name, value in txt]
        self.node.log = lan.tmp / "dns.log"
        with open(self.node.log, "ab") as logf:
            self.proc = self.node.ns.popen(argv, stderr=logf, stdout=logf)
        self.node.proc = self.proc

        log = self.node.log
        lan.wait(lambda: "read " in log.read_text(errors="replace"), "dnsmasq to start")

    @property
    def env(self) -> dict[str, str]:
        return {"MESHGUARD_RESOLV_CONF": str(self.resolv)}

    def set_host(self, name: str, ip: str) -> None:
        self.hosts.write_text(f"{ip} {name}\n")
        os.kill(self.proc.pid, signal.SIGHUP)


def move_node(node: Node, new_ip: str) -> None:
    """Give a (stopped) node's LAN interface another IPv4 address."""
    out = node.ns.run(["ip", "-o", "-4", "addr", "show"]).stdout
    ifname = next(line.split()[1] for line in out.splitlines() if f" {node.ip}/" in line)
    node.ns.run(["ip", "addr", "del", f"{node.ip}/24", "dev", ifname])
    node.ns.add_address(ifname, f"{new_ip}/24")
    node.ip = new_ip


def start_web(node: Node, port: int, iface: str | None = None) -> subprocess.Popen[bytes]:
    """`meshguard web --listen 127.0.0.1:PORT -i IFACE` (default: the node's) in the node's
    namespace, stopped when the LAN closes; returns once it serves, its stderr in
    <tmp>/<name>-web.log."""
    argv = [PY, "-m", "meshguard", "web", "--listen", f"127.0.0.1:{port}",
            "--interface", iface or node.iface]
    with open(node.lan.tmp / f"{node.name}-web.log", "ab") as logf:
        proc = node.ns.popen(argv, env={**os.environ, **node.env}, stdout=subprocess.PIPE,
                             stderr=logf)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode(errors="replace")  # "... serving URL ..." or EOF
    if "serving" not in line:
        proc.wait(5)
        log = (node.lan.tmp / f"{node.name}-web.log").read_text(errors="replace")
        raise RuntimeError(f"meshguard web did not start ({proc.returncode}): {line}{log}")
    return proc


@dataclass
class PlainWgDevice:
    """A plain WireGuard device (Debian's wireguard-go) in a namespace, set up from a wg-quick
    config as wg-quick does it: `wg-quick strip` into `wg setconf`, the Address on the
    interface, and a route to it for every AllowedIPs prefix. `close` stops wireguard-go,
    which removes its interface; the namespace removes its socket file."""

    ns: Namespace
    iface: str
    proc: subprocess.Popen[bytes]

    @classmethod
    def start(cls, ns: Namespace, conf: str, tmp: Path) -> PlainWgDevice:
        from meshguard.testing.netns import start_userspace_wg

        iface = unique_name("wgd")
        path = tmp / f"{iface}.conf"
        path.write_text(conf)
        path.chmod(0o600)
        proc = start_userspace_wg(ns, iface)
        dev = cls(ns, iface, proc)
        try:
            stripped = ns.run(["wg-quick", "strip", str(path)]).stdout
            ns.run(["wg", "setconf", iface, "/dev/stdin"], input=stripped)
            values = wg_quick_values(conf)
            for addr in values["Address"]:
                ns.add_address(iface, addr)
            ns.run(["ip", "link", "set", iface, "mtu", "1420", "up"])
            for net in values["AllowedIPs"]:
                ns.run(["ip", "-6" if ":" in net else "-4", "route", "add", net, "dev", iface])
        except BaseException:
            dev.close()
            raise
        return dev

    def close(self) -> None:
        self.ns.stop(self.proc)


def wg_quick_values(conf: str) -> dict[str, list[str]]:
    """Every `Key = a, b` of a wg-quick config, the comma lists split (both sections)."""
    out: dict[str, list[str]] = {}
    for line in conf.splitlines():
        key, eq, value = line.partition("=")
        if eq and not line.lstrip().startswith("#"):
            out.setdefault(key.strip(), []).extend(v.strip() for v in value.split(","))
    return out
