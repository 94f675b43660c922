"""Network-namespace testbeds for real-network tests, interop tests and benchmarks.

Everything here is a context manager that always cleans up, even when the body raises:
namespaces are deleted, veth pairs vanish with them, and every process started through a
`Namespace` (plus any stray process still living in the namespace) is killed.

Typical use::

    from meshguard.testing.netns import Testbed, netns_skip_reason, wait_until

    with Testbed() as tb:                       # two namespaces "a" and "b" joined by a veth
        a, b = tb.a, tb.b
        a.run(["ping", "-c1", "-W1", str(tb.link.b_ipv4)])
        proc = b.popen(["iperf3", "-s", "-1"])  # killed when the testbed closes
        wait_until(lambda: b.run(["ss", "-ltn"]).stdout.count("5201") > 0, 5, "iperf3 listening")

Names are unique per run (random suffix), so parallel runs never collide. Other pieces:
`Lan(n)` (n namespaces on one bridged segment), `Namespace.create(prefix)`,
`veth_pair(ns_a, ns_b, ...)`, `unique_name(prefix, length)`, `wait_until(pred, timeout, what)`,
`start_userspace_wg(ns, ifname, argv=None)` (wireguard-go or `meshguard wireguard` in the
foreground, returning once its interface and UAPI socket exist).

IPv6 addresses are added with `nodad` so they are usable at once. Interface names are at most
15 characters (IFNAMSIZ - 1).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

IFNAMSIZ_MAX = 15


def unique_name(prefix: str, length: int = IFNAMSIZ_MAX) -> str:
    """`prefix` plus a random hex suffix, at most `length` characters (default: interface-safe)."""
    suffix = secrets.token_hex(4)
    name = f"{prefix}{suffix}"
    return name[:length]


def netns_skip_reason() -> str | None:
    """Why real-network tests cannot run here (None when they can): root, TUN, `ip` needed."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, TUN)"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    if shutil.which("ip") is None:
        return "needs iproute2 (`ip`)"
    return None


def wait_until(
    predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.05
) -> None:
    """Poll `predicate` until truthy; raise TimeoutError naming `what` after `timeout` seconds.

    OSError and SubprocessError raised by the predicate count as "not yet"; anything else
    propagates at once (a predicate can raise to give up early).
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except (OSError, subprocess.SubprocessError):
            pass
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


class Namespace:
    """One named network namespace, with `lo` up. Close (or use `with`) to delete it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._procs: list[subprocess.Popen[bytes]] = []
        self._on_close: list[Callable[[], object]] = []
        self._closed = False

    @classmethod
    def create(cls, prefix: str = "mg") -> Namespace:
        name = unique_name(f"{prefix}-", 32)
        _ip("netns", "add", name)
        ns = cls(name)
        try:
            ns.run(["ip", "link", "set", "lo", "up"])
            # no duplicate address detection: link-local addresses usable at once too
            ns.run(
                [
                    "sysctl",
                    "-q",
                    "-w",
                    "net.ipv6.conf.all.accept_dad=0",
                    "net.ipv6.conf.default.accept_dad=0",
                ]
            )
        except BaseException:
            ns.close()
            raise
        return ns

    def __enter__(self) -> Namespace:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Namespace({self.name!r})"

    def argv(self, argv: Sequence[str]) -> list[str]:
        """The command line that runs `argv` inside this namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 60,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command to completion inside the namespace (text output captured).

        Raises subprocess.CalledProcessError (with stderr in the message) when `check` and the
        command fails.
        """
        full_env = None if env is None else {**os.environ, **env}
        res = subprocess.run(
            self.argv(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            env=full_env,
        )
        if check and res.returncode != 0:
            raise subprocess.CalledProcessError(
                res.returncode, list(argv), res.stdout, f"[{self.name}] {res.stderr.strip()}"
            )
        return res

    def popen(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        stdout: int | None = subprocess.DEVNULL,
        stderr: int | None = subprocess.DEVNULL,
        stdin: int | None = subprocess.DEVNULL,
    ) -> subprocess.Popen[bytes]:
        """Start a background process inside the namespace; it is killed when this closes.

        The process gets its own session, so the kill reaches its whole process group.
        """
        full_env = None if env is None else {**os.environ, **env}
        proc = subprocess.Popen(
            self.argv(argv),
            env=full_env,
            stdout=stdout,
            stderr=stderr,
            stdin=stdin,
            start_new_session=True,
        )
        self._procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 5.0) -> int | None:
        """SIGTERM the process (group), then SIGKILL after `timeout`; returns its exit code."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        else:
            # the leader exited; its group may still hold children
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        if proc in self._procs:
            self._procs.remove(proc)
        return proc.returncode

    def pids(self) -> list[int]:
        """Processes currently living in the namespace."""
        res = _ip("netns", "pids", self.name, check=False)
        return [int(p) for p in res.stdout.split() if p.isdigit()]

    def close(self) -> None:
        """Kill every process started here or still inside, then delete the namespace."""
        if self._closed:
            return
        self._closed = True
        for proc in list(self._procs):
            with contextlib.suppress(Exception):
                self.stop(proc, timeout=3)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 2
            while self.pids() and time.monotonic() < deadline:
                time.sleep(0.02)
        _ip("netns", "del", self.name, check=False)
        for fn in reversed(self._on_close):
            with contextlib.suppress(Exception):
                fn()

    def on_close(self, fn: Callable[[], object]) -> None:
        """Run `fn` after the namespace is gone (e.g. remove files its processes left)."""
        self._on_close.append(fn)

    # small conveniences -------------------------------------------------------------

    def add_address(self, ifname: str, cidr: str) -> None:
        """Add an address (IPv6 gets `nodad`, usable immediately)."""
        extra = ["nodad"] if ":" in cidr else []
        self.run(["ip", "addr", "add", cidr, "dev", ifname, *extra])

    def link_up(self, ifname: str) -> None:
        self.run(["ip", "link", "set", ifname, "up"])

    def ping(self, address: str, count: int = 1, wait: float = 1.0, interval: float = 0.2) -> bool:
        """True when `count` echo replies come back (each waited for `wait` seconds at most)."""
        argv = ["ping", "-n", "-q", "-c", str(count), "-W", str(wait), "-i", str(interval)]
        if ":" in address:
            argv.append("-6")
        res = self.run([*argv, address], check=False, timeout=count * (wait + interval) + 10)
        return res.returncode == 0


@dataclass
class VethLink:
    """A veth pair between two namespaces, with IPv4 /24 and IPv6 /64 addresses on each end."""

    a: Namespace
    b: Namespace
    a_ifname: str
    b_ifname: str
    a_ipv4: ipaddress.IPv4Address
    b_ipv4: ipaddress.IPv4Address
    a_ipv6: ipaddress.IPv6Address
    b_ipv6: ipaddress.IPv6Address
    extra: dict[str, object] = field(default_factory=dict)


def veth_pair(
    a: Namespace,
    b: Namespace,
    ipv4_net: str = "10.200.0.0/24",
    ipv6_net: str = "fd00:200::/64",
    mtu: int | None = None,
) -> VethLink:
    """Join two namespaces with a veth pair; host .1 on `a`, .2 on `b`; links up."""
    a_if = unique_name("va")
    b_if = unique_name("vb")
    v4 = ipaddress.IPv4Network(ipv4_net)
    v6 = ipaddress.IPv6Network(ipv6_net)
    _ip("link", "add", a_if, "netns", a.name, "type", "veth", "peer", "name", b_if, "netns", b.name)
    link = VethLink(a, b, a_if, b_if, v4[1], v4[2], v6[1], v6[2])
    for ns, ifname, ip4, ip6 in ((a, a_if, v4[1], v6[1]), (b, b_if, v4[2], v6[2])):
        if mtu is not None:
            ns.run(["ip", "link", "set", ifname, "mtu", str(mtu)])
        ns.add_address(ifname, f"{ip4}/{v4.prefixlen}")
        ns.add_address(ifname, f"{ip6}/{v6.prefixlen}")
        ns.link_up(ifname)
    # static neighbour entries: no ARP/ND round trip (nor its first-packet delay) in tests
    mac_a, mac_b = _mac(a, a_if), _mac(b, b_if)
    for ns, ifname, peer_ips, mac in (
        (a, a_if, (v4[2], v6[2]), mac_b),
        (b, b_if, (v4[1], v6[1]), mac_a),
    ):
        for ip in peer_ips:
            ns.run(
                [
                    "ip",
                    "neigh",
                    "replace",
                    str(ip),
                    "lladdr",
                    mac,
                    "dev",
                    ifname,
                    "nud",
                    "permanent",
                ]
            )
    return link


def _mac(ns: Namespace, ifname: str) -> str:
    out = ns.run(["ip", "-j", "link", "show", ifname]).stdout
    return str(json.loads(out)[0]["address"])


class Testbed:
    """Two namespaces `a` and `b` joined by one veth pair (`link`); deleted on exit."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        prefix: str = "mg",
        ipv4_net: str = "10.200.0.0/24",
        ipv6_net: str = "fd00:200::/64",
    ) -> None:
        self._prefix = prefix
        self._v4 = ipv4_net
        self._v6 = ipv6_net
        self._stack = contextlib.ExitStack()
        self.a: Namespace
        self.b: Namespace
        self.link: VethLink

    def __enter__(self) -> Testbed:
        try:
            self.a = self._stack.enter_context(Namespace.create(f"{self._prefix}a"))
            self.b = self._stack.enter_context(Namespace.create(f"{self._prefix}b"))
            self.link = veth_pair(self.a, self.b, self._v4, self._v6)
        except BaseException:
            self._stack.close()
            raise
        return self

    def callback(self, fn: Callable[[], object]) -> None:
        """Run `fn` at teardown, before the namespaces go (LIFO like ExitStack)."""
        self._stack.callback(fn)

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stack.close()


class Lan:
    """N namespaces on one Ethernet segment: a bridge in its own (switch) namespace.

    `lan.nodes[i]` has address `lan.ipv4[i]` (/24) and `lan.ipv6[i]` (/64) on `lan.ifnames[i]`.
    Every node has static neighbour entries for every other node (no ARP/ND delays).
    """

    __test__ = False

    def __init__(
        self,
        n: int,
        prefix: str = "mg",
        ipv4_net: str = "10.201.0.0/24",
        ipv6_net: str = "fd00:201::/64",
    ) -> None:
        if not 1 <= n <= 250:
            raise ValueError("a Lan holds 1-250 namespaces")
        self._n = n
        self._prefix = prefix
        self._v4 = ipaddress.IPv4Network(ipv4_net)
        self._v6 = ipaddress.IPv6Network(ipv6_net)
        self._stack = contextlib.ExitStack()
        self.switch: Namespace
        self.nodes: list[Namespace] = []
        self.ifnames: list[str] = []
        self.ipv4: list[ipaddress.IPv4Address] = []
        self.ipv6: list[ipaddress.IPv6Address] = []

    def __enter__(self) -> Lan:
        try:
            self.switch = self._stack.enter_context(Namespace.create(f"{self._prefix}sw"))
            self.switch.run(["ip", "link", "add", "br0", "type", "bridge"])
            self.switch.link_up("br0")
            macs: list[str] = []
            for i in range(self._n):
                ns = self._stack.enter_context(Namespace.create(f"{self._prefix}{i}"))
                ifname, port = unique_name("ln"), unique_name("lp")
                _ip(
                    "link",
                    "add",
                    ifname,
                    "netns",
                    ns.name,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    port,
                    "netns",
                    self.switch.name,
                )
                self.switch.run(["ip", "link", "set", port, "master", "br0", "up"])
                ip4, ip6 = self._v4[i + 1], self._v6[i + 1]
                ns.add_address(ifname, f"{ip4}/{self._v4.prefixlen}")
                ns.add_address(ifname, f"{ip6}/{self._v6.prefixlen}")
                ns.link_up(ifname)
                self.nodes.append(ns)
                self.ifnames.append(ifname)
                self.ipv4.append(ip4)
                self.ipv6.append(ip6)
                macs.append(_mac(ns, ifname))
            for i, ns in enumerate(self.nodes):
                for j in range(self._n):
                    if i == j:
                        continue
                    for ip in (self.ipv4[j], self.ipv6[j]):
                        ns.run(
                            [
                                "ip",
                                "neigh",
                                "replace",
                                str(ip),
                                "lladdr",
                                macs[j],
                                "dev",
                                self.ifnames[i],
                                "nud",
                                "permanent",
                            ]
                        )
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stack.close()


WG_RUN_DIR = "/var/run/wireguard"


def uapi_socket_path(ifname: str) -> str:
    """Where a userspace WireGuard implementation serves UAPI for `ifname`."""
    return os.path.join(WG_RUN_DIR, f"{ifname}.sock")


def start_userspace_wg(
    ns: Namespace,
    ifname: str,
    argv: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 10.0,
    stderr: int | None = subprocess.DEVNULL,
) -> subprocess.Popen[bytes]:
    """Start a userspace WireGuard (default `wireguard-go IFNAME`) in the foreground in `ns`.

    Waits until both the interface and its UAPI socket exist. `argv` replaces the command
    (e.g. `[python, "-m", "meshguard", "wireguard", ifname, "-f"]`). The process is owned by
    `ns` and killed when it closes; configure it with `ns.run(["wg", ...])`.
    """
    cmd = list(argv) if argv is not None else ["wireguard-go", ifname]
    full_env = {"WG_PROCESS_FOREGROUND": "1", "LOG_LEVEL": "error", **(env or {})}
    proc = ns.popen(cmd, env=full_env, stderr=stderr)
    sock = uapi_socket_path(ifname)
    # a process that had to be SIGKILLed leaves its socket file behind in the shared directory
    ns.on_close(lambda: Path(sock).unlink(missing_ok=True))

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[0]} {ifname} exited with {proc.returncode}")
        if not os.path.exists(sock):
            return False
        return ns.run(["ip", "link", "show", ifname], check=False).returncode == 0

    try:
        wait_until(ready, timeout, f"{cmd[0]} {ifname} to come up")
    except BaseException:
        ns.stop(proc)
        raise
    return proc


@contextlib.contextmanager
def testbed(prefix: str = "mg") -> Iterator[Testbed]:
    """Function form of `Testbed` (for pytest fixtures: `with testbed() as tb: yield tb`)."""
    with Testbed(prefix) as tb:
        yield tb


__all__ = [
    "Lan",
    "Namespace",
    "Testbed",
    "VethLink",
    "netns_skip_reason",
    "start_userspace_wg",
    "testbed",
    "uapi_socket_path",
    "unique_name",
    "veth_pair",
    "wait_until",
]
