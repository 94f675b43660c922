"""N real `meshguard up` daemons on this machine: one network namespace each, one bridge.

    with DaemonMesh(6, seeds=2, workdir=tmp) as mesh:   # namespaces, keys, trust; no daemon yet
        mesh.start()                                     # every daemon at once, returns at once
        views = mesh.views()                             # status of every daemon, in parallel
        failed = mesh.ping_pairs(mesh.all_pairs())       # `ping -c1 -W1`, all pairs in parallel

Layout: a hub namespace holds the bridge `br0`; member i has its own namespace, a veth pair
into the bridge and LAN address 10.233.0.(i+1)/24. Every member knows every other's MAC address
from a static (permanent) neighbour entry: the kernel's ARP table is one table for all
namespaces, its dynamic entries are capped host-wide (net.ipv4.neigh.default.gc_thresh3,
1024 by default), and a full mesh of 50 needs 2,450 of them, so with ARP the kernel would
drop packets ("neighbor table overflow"); permanent entries do not count.

Every member has its own identity and trusts every other one by key
(`authorized_keys/m<j>.pub`, what `meshguard trust` writes); the first `seeds` members are
the seeds, and every member is started with `--seed` for each seed but itself. Each daemon
is `python -m meshguard up -f` with its stderr in `<workdir>/m<i>.log`, its control socket
in `<workdir>/run/`.

Names carry a random tag, so several meshes can run at once. Closing (or leaving the `with`)
stops every daemon (SIGTERM to all at once, SIGKILL after a grace period), deletes every
namespace and removes the UAPI socket files a killed daemon leaves behind, even on failure.
Status is read over each daemon's control socket (the request `meshguard status --json`
makes), in-process, so polling 50 daemons costs no interpreter start-ups.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import meshguard
from meshguard.daemon.control_client import ControlClient
from meshguard.errors import MeshguardError
from meshguard.identity import keygen, store
from meshguard.identity.addressing import mesh_ipv4
from meshguard.rng import SystemRng
from meshguard.testing.netns import Namespace, uapi_socket_path

PORT = 51821
LAN_NET = ipaddress.IPv4Network("10.233.0.0/24")
MAX_MEMBERS = LAN_NET.num_addresses - 2
STOP_GRACE = 10.0
# For each address argument: one `ping -c1 -W<wait>` in the background, "ok ADDR" or "no ADDR".
_PING_SCRIPT = ('w=$1; shift; for a in "$@"; do '
                '(if ping -n -q -c1 -W"$w" "$a" >/dev/null 2>&1; then echo "ok $a"; '
                'else echo "no $a"; fi) & done; wait')

Pair = tuple[int, int]


def _ip(*args: str) -> None:
    res = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {res.stderr.strip()}")


@dataclass
class Member:
    """One daemon of the mesh: its namespace, LAN address, interface, config and process."""

    index: int
    ns: Namespace
    lan_ip: str
    iface: str
    cfg: Path
    identity: bytes
    log: Path
    sock: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return f"m{self.index}"

    @property
    def identity_b64(self) -> str:
        return base64.b64encode(self.identity).decode()


@dataclass
class MemberView:
    """What one daemon's status says about the others, as member indices."""

    alive: set[int] = field(default_factory=set)
    tunnels: set[int] = field(default_factory=set)
    mesh_ipv4: str = ""
    pid: int = 0
    counters: dict[str, int] = field(default_factory=dict)
    at: float = 0.0  # time.monotonic() when the answer arrived


class DaemonMesh:
    """N `meshguard up` daemons in namespaces on one bridge, all trusting each other."""

    def __init__(self, n: int, workdir: Path, *, seeds: int = 1, log_level: str = "info",
                 extra_args: Sequence[str] = (), env: dict[str, str] | None = None) -> None:
        if not 2 <= n <= MAX_MEMBERS:
            raise ValueError(f"a DaemonMesh holds 2-{MAX_MEMBERS} members")
        if not 1 <= seeds <= n:
            raise ValueError("seeds must be between 1 and the number of members")
        self.n = n
        self.seeds = seeds
        self.workdir = workdir
        self.run_dir = workdir / "run"
        self.log_level = log_level
        self.extra_args = list(extra_args)
        self.env = dict(env or {})
        self.tag = secrets.token_hex(3)
        self.members: list[Member] = []
        self.hub: Namespace | None = None
        self._namespaces: list[Namespace] = []
        self._by_key: dict[str, int] = {}
        self._addr: list[str] = []
        self._pool = ThreadPoolExecutor(max_workers=16)
        self._closed = False

    # building and tearing down ------------------------------------------------------------

    def __enter__(self) -> DaemonMesh:
        try:
            self.build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def build(self) -> None:
        """The namespaces, the bridge, keys and trust; no daemon runs yet."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(mode=0o700, exist_ok=True)
        hub = self.hub = Namespace.create(f"mgsh{self.tag}")
        _ip("-n", hub.name, "link", "add", "br0", "type", "bridge")
        _ip("-n", hub.name, "link", "set", "br0", "up")
        rng = SystemRng()
        for i in range(self.n):
            ns = Namespace.create(f"mgs{self.tag}n{i}")
            self._namespaces.append(ns)
            hub_if, node_if = f"mh{self.tag}{i}", self._lan_ifname(i)
            _ip("link", "add", hub_if, "netns", hub.name, "type", "veth", "peer", "name",
                node_if, "netns", ns.name, "address", self._mac(i))
            _ip("-n", hub.name, "link", "set", hub_if, "master", "br0", "up")
            ip = str(LAN_NET[i + 1])
            _ip("-n", ns.name, "addr", "add", f"{ip}/{LAN_NET.prefixlen}", "dev", node_if)
            _ip("-n", ns.name, "link", "set", node_if, "up")
            cfg = self.workdir / f"m{i}"
            keys = keygen.generate_node_keys(cfg, rng, time.time(), force=False)
            iface = f"ms{self.tag}{i}"
            m = Member(i, ns, ip, iface, cfg, keys.identity.public_key.raw,
                       self.workdir / f"m{i}.log", self.run_dir / f"{iface}.sock")
            self.members.append(m)
            self._by_key[m.identity_b64] = i
            self._addr.append(str(mesh_ipv4(m.identity)))
        for a in self.members:
            lines = [f"neigh replace {b.lan_ip} lladdr {self._mac(b.index)} dev "
                     f"{self._lan_ifname(a.index)} nud permanent\n"
                     for b in self.members if b is not a]
            res = subprocess.run(["ip", "-n", a.ns.name, "-batch", "-"], input="".join(lines),
                                 capture_output=True, text=True, timeout=60, check=False)
            if res.returncode != 0:
                raise RuntimeError(f"static neighbours in {a.ns.name}: {res.stderr.strip()}")
            trusted = a.cfg / store.AUTHORIZED_KEYS
            trusted.mkdir(mode=0o700, exist_ok=True)
            for b in self.members:
                if b is not a:
                    (trusted / f"{b.name}.pub").write_bytes(store.public_key_file(b.identity))

    def _lan_ifname(self, i: int) -> str:
        return f"mn{self.tag}{i}"

    def _mac(self, i: int) -> str:
        """Member i's LAN MAC: locally administered, from the tag and the index."""
        t = self.tag
        return f"02:{t[0:2]}:{t[2:4]}:{t[4:6]}:{i >> 8:02x}:{i & 0xFF:02x}"

    def close(self) -> None:
        """Stop every daemon, delete every namespace, remove leftover UAPI sockets."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self.stop_all()
        for ns in [*self._namespaces, *([self.hub] if self.hub else [])]:
            with contextlib.suppress(Exception):
                ns.close()
        for m in self.members:  # a SIGKILLed daemon leaves its UAPI socket file behind
            with contextlib.suppress(OSError):
                Path(uapi_socket_path(m.iface)).unlink()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # the daemons --------------------------------------------------------------------------

    def argv(self, m: Member) -> list[str]:
        argv = [sys.executable, "-m", "meshguard", "up", "-f", "--interface", m.iface,
                "--port", str(PORT), "--announce", m.lan_ip, "--log-level", self.log_level,
                *self.extra_args]
        for s in self.members[:self.seeds]:
            if s is not m:
                argv += ["--seed", f"{s.lan_ip}:{PORT}"]
        return argv

    def daemon_env(self, m: Member) -> dict[str, str]:
        # the daemons run the meshguard this process imported
        src = str(Path(meshguard.__file__).resolve().parents[1])
        path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH", "")) if p)
        return {**os.environ, "PYTHONPATH": path, "MESHGUARD_CONFIG_DIR": str(m.cfg),
                "MESHGUARD_RUN_DIR": str(self.run_dir), **self.env}

    def start(self, members: Iterable[Member] | None = None) -> float:
        """Start the daemons (seeds first) without waiting; returns time.monotonic() before
        the first start."""
        t0 = time.monotonic()
        for m in members if members is not None else self.members:
            with open(m.log, "ab") as logf:
                m.proc = m.ns.popen(self.argv(m), env=self.daemon_env(m), stderr=logf.fileno())
        return t0

    def stop_all(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM every daemon at once (they leave gracefully), SIGKILL what is left."""
        running = [m for m in self.members if m.proc is not None and m.proc.poll() is None]
        for m in running:
            assert m.proc is not None
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(m.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for m in running:
            assert m.proc is not None
            with contextlib.suppress(subprocess.TimeoutExpired):
                m.proc.wait(max(0.0, deadline - time.monotonic()))
        for m in self.members:
            if m.proc is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(m.proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    m.proc.wait(5)

    def exited(self) -> list[Member]:
        """Members whose daemon has exited."""
        return [m for m in self.members if m.proc is not None and m.proc.poll() is not None]

    # observing ----------------------------------------------------------------------------

    def status(self, m: Member, timeout: float = 5.0) -> dict[str, Any] | None:
        """The daemon's status (the `meshguard status --json` document), None if it does not
        answer."""
        try:
            return ControlClient(m.sock, m.iface, timeout=timeout).request("status")
        except MeshguardError:
            return None

    def view(self, m: Member, status: dict[str, Any]) -> MemberView:
        v = MemberView(at=time.monotonic())
        for entry in status.get("members", []):
            j = self._by_key.get(str(entry.get("identity_key")))
            if j is None or j == m.index:
                continue
            if entry.get("state") == "alive":
                v.alive.add(j)
            if entry.get("tunnel"):
                v.tunnels.add(j)
        me = status.get("self", {})
        v.mesh_ipv4 = str(me.get("mesh_ipv4") or "")
        if v.mesh_ipv4:
            self._addr[m.index] = v.mesh_ipv4
        v.pid = int(status.get("pid", 0))
        v.counters = {str(k): int(c) for k, c in status.get("counters", {}).items()}
        return v

    def views(self, members: Sequence[Member] | None = None) -> dict[int, MemberView]:
        """Every answering daemon's view, asked in parallel (index -> view)."""
        ms = list(members if members is not None else self.members)
        out: dict[int, MemberView] = {}
        for m, st in zip(ms, self._pool.map(self.status, ms), strict=True):
            if st is not None:
                out[m.index] = self.view(m, st)
        return out

    def others(self, i: int) -> set[int]:
        return set(range(self.n)) - {i}

    def missing(self, views: dict[int, MemberView], what: str = "tunnels") -> dict[int, set[int]]:
        """Per member, the others it does not see alive ("alive") or has no tunnel to
        ("tunnels"); members without a view miss everyone."""
        out: dict[int, set[int]] = {}
        for i in range(self.n):
            v = views.get(i)
            seen = set() if v is None else (v.alive if what == "alive" else v.tunnels)
            lack = self.others(i) - seen
            if lack:
                out[i] = lack
        return out

    def address(self, i: int) -> str:
        """Member i's mesh IPv4: from its own status once seen, else its natural address."""
        return self._addr[i]

    def all_pairs(self) -> list[Pair]:
        return [(a, b) for a in range(self.n) for b in range(self.n) if a != b]

    def ping_pairs(self, pairs: Iterable[Pair], wait: float = 1.0) -> list[Pair]:
        """`ping -c1 -W<wait>` from a to b's mesh IPv4 for every pair, all in parallel (one
        shell per source namespace); returns the pairs that got no reply."""
        by_src: dict[int, list[int]] = {}
        for a, b in pairs:
            by_src.setdefault(a, []).append(b)
        procs: list[tuple[int, dict[str, int], subprocess.Popen[str]]] = []
        for a, dsts in by_src.items():
            addrs = {self.address(b): b for b in dsts}
            argv = self.members[a].ns.argv(["sh", "-c", _PING_SCRIPT, "sh", f"{wait:g}",
                                            *addrs])
            procs.append((a, addrs, subprocess.Popen(argv, stdout=subprocess.PIPE,
                                                      stderr=subprocess.DEVNULL, text=True)))
        failed: list[Pair] = []
        for a, addrs, p in procs:
            try:
                out, _ = p.communicate(timeout=wait + 60)
            except subprocess.TimeoutExpired:
                p.kill()
                out, _ = p.communicate()
            ok = {line.split()[1] for line in out.splitlines()
                  if line.startswith("ok ") and len(line.split()) == 2}
            failed += [(a, b) for addr, b in addrs.items() if addr not in ok]
        return sorted(failed)

    def wait(self, pred: Callable[[], object], timeout: float, what: str,
             interval: float = 0.5) -> None:
        """Poll `pred` until truthy; AssertionError with the daemons' log tails on timeout or
        when a daemon exits."""
        deadline = time.monotonic() + timeout
        while not pred():
            dead = self.exited()
            if dead:
                raise AssertionError(f"{', '.join(m.name for m in dead)} exited while waiting "
                                     f"for {what}\n{self.logs()}")
            if time.monotonic() >= deadline:
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n"
                                     f"{self.logs()}")
            time.sleep(interval)

    def logs(self, tail: int = 15, members: Iterable[Member] | None = None) -> str:
        out = []
        for m in members if members is not None else self.members:
            if m.log.exists():
                lines = m.log.read_text(errors="replace").splitlines()[-tail:]
                out.append(f"--- {m.name} ({m.lan_ip}) ---\n" + "\n".join(lines))
        return "\n".join(out)


__all__ = ["LAN_NET", "PORT", "DaemonMesh", "Member", "MemberView", "Pair"]
