"""The mesh demo run by `./dev demo`: a real meshguard mesh in network namespaces.

Steps: N namespaces on one bridged LAN; every node gets an identity and a WireGuard key
(`meshguard keygen`); an org key signs a certificate for every node (`meshguard org-sign`) and
every node trusts the org (`meshguard trust --org`), so no node lists any other node's key;
each node runs `meshguard up` with the first node as its seed; once every node has a tunnel to
every other, `meshguard status` is shown and every pair pings over its mesh IPv4 and IPv6
addresses; then everything is torn down (`--keep` leaves it running until Enter or Ctrl-C).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from meshguard.identity.addressing import mesh_ipv4, mesh_ipv6
from meshguard.identity.store import IDENTITY_PUB, load_identity
from meshguard.testing.netns import Lan, netns_skip_reason, wait_until

PORT = 51821
JOIN_TIMEOUT = 60.0


@dataclass
class DemoNode:
    name: str
    index: int
    cfg: Path
    iface: str
    lan_ip: str
    identity: bytes = b""

    @property
    def mesh_v4(self) -> str:
        return str(mesh_ipv4(self.identity))

    @property
    def mesh_v6(self) -> str:
        return str(mesh_ipv6(self.identity))


def _say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def _mg(args: list[str], env: dict[str, str], ns_argv: list[str] | None = None,
        check: bool = True, show: bool = True, who: str = "") -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "meshguard", *args]
    if ns_argv is not None:
        argv = [*ns_argv, *argv]
    if show:
        print(f"  [{who}] $ meshguard {' '.join(args)}", flush=True)
    res = subprocess.run(argv, env={**os.environ, **env}, capture_output=True, text=True,
                         timeout=120)
    if check and res.returncode != 0:
        raise SystemExit(f"demo step failed: meshguard {' '.join(args)}: {res.stderr.strip()}")
    return res


def _env(node: DemoNode, run_dir: Path) -> dict[str, str]:
    return {"MESHGUARD_CONFIG_DIR": str(node.cfg), "MESHGUARD_RUN_DIR": str(run_dir)}


@contextlib.contextmanager
def _workdir() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="meshguard-demo-"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _status(lan: Lan, node: DemoNode, run_dir: Path) -> dict[str, object]:
    res = _mg(["status", "--json", "--interface", node.iface], _env(node, run_dir),
              lan.nodes[node.index].argv([]), check=False, show=False)
    if res.returncode != 0:
        return {}
    doc: dict[str, object] = json.loads(res.stdout)
    return doc


def _tunnels(lan: Lan, node: DemoNode, run_dir: Path) -> int:
    members = _status(lan, node, run_dir).get("members", [])
    if not isinstance(members, list):
        return 0
    return sum(1 for m in members if isinstance(m, dict) and m.get("tunnel"))


def _wait_ping(lan: Lan, a: DemoNode, b: DemoNode) -> None:
    ns = lan.nodes[a.index]
    wait_until(lambda: ns.ping(b.mesh_v4, 1, 0.5), JOIN_TIMEOUT, f"{a.name} to reach {b.name}",
               0.05)


def mesh_demo(n: int = 4, keep: bool = False) -> int:
    reason = netns_skip_reason()
    if reason is not None:
        print(f"meshguard demo: {reason}; run `./dev demo` as root", file=sys.stderr)
        return 1
    if not 2 <= n <= 20:
        print("meshguard demo: --nodes must be between 2 and 20", file=sys.stderr)
        return 2
    print(f"meshguard demo: a {n}-node mesh in network namespaces on this machine.")
    with _workdir() as root, Lan(n, prefix="mgdemo", ipv4_net="10.231.0.0/24",
                                     ipv6_net="fd00:231::/64") as lan:
        run_dir = root / "run"
        org_dir = root / "org-admin"
        nodes = [
            DemoNode(f"node-{i + 1}", i, root / f"node-{i + 1}", f"mgdemo{i + 1}",
                     str(lan.ipv4[i]))
            for i in range(n)
        ]
        _say("1. Each node creates its identity (Ed25519) and WireGuard key.")
        for node in nodes:
            _mg(["keygen"], _env(node, run_dir), who=node.name)
            node.identity = load_identity(node.cfg).public_key.raw

        _say("2. An org admin creates an org key and signs a certificate for every node.")
        org_env = {"MESHGUARD_CONFIG_DIR": str(org_dir)}
        out = _mg(["org-keygen"], org_env, who="org-admin").stdout
        print("    " + out.strip().replace("\n", "\n    "))
        org_pub = (org_dir / "org" / "org.pub").read_text().strip()
        for node in nodes:
            cert = node.cfg / "node.cert"
            _mg(["org-sign", str(node.cfg / IDENTITY_PUB), "--name", node.name,
                 "--out", str(cert)], org_env, who="org-admin")

        _say("3. Every node trusts the org once; no node lists any other node's key.")
        for node in nodes:
            _mg(["trust", org_pub, "--org", "--name", "demo-org"], _env(node, run_dir),
                who=node.name)

        _say(f"4. Every node runs `meshguard up`, with {nodes[0].name} as the seed.")
        logs: list[Path] = []
        started = time.monotonic()
        for node in nodes:
            args = ["up", "-f", "--interface", node.iface, "--port", str(PORT),
                    "--announce", node.lan_ip]
            if node.index:
                args += ["--seed", f"{nodes[0].lan_ip}:{PORT}"]
            print(f"  [{node.name}] $ meshguard {' '.join(args)}", flush=True)
            log = root / f"{node.name}.log"
            logs.append(log)
            with open(log, "wb") as logf:
                lan.nodes[node.index].popen([sys.executable, "-m", "meshguard", *args],
                                            env={**os.environ, **_env(node, run_dir)},
                                            stderr=logf.fileno())
        try:
            wait_until(lambda: all(_tunnels(lan, x, run_dir) >= n - 1 for x in nodes),
                       JOIN_TIMEOUT, "every node to have a tunnel to every other", 0.2)
            joined = time.monotonic() - started
            for a in nodes:
                for b in nodes:
                    if a is not b:
                        _wait_ping(lan, a, b)
            reachable = time.monotonic() - started
        except TimeoutError as exc:
            print(f"meshguard demo: {exc}", file=sys.stderr)
            for log in logs:
                print(f"--- {log.name}\n" + "\n".join(log.read_text().splitlines()[-15:]),
                      file=sys.stderr)
            return 1
        print(f"  all {n * (n - 1)} tunnels up {joined:.1f}s after the first `up`; "
              f"every pair reachable after {reachable:.1f}s")

        _say(f"5. `meshguard status` on {nodes[0].name}:")
        res = _mg(["status", "--interface", nodes[0].iface], _env(nodes[0], run_dir),
                  lan.nodes[0].argv([]), show=False)
        print(res.stdout.rstrip())

        _say("6. Every pair pings over the mesh (IPv4 and IPv6 mesh addresses).")
        width = max(len(x.name) for x in nodes)
        print(" " * (width + 2) + "  ".join(f"{x.name:>{width}}" for x in nodes))
        failures = 0
        for a in nodes:
            cells = []
            for b in nodes:
                if a is b:
                    cells.append(f"{'-':>{width}}")
                    continue
                ok4 = lan.nodes[a.index].ping(b.mesh_v4, count=2, wait=1.0, interval=0.2)
                ok6 = lan.nodes[a.index].ping(b.mesh_v6, count=2, wait=1.0, interval=0.2)
                failures += (not ok4) + (not ok6)
                mark = ("v4" if ok4 else "--") + "+" + ("v6" if ok6 else "--")
                cells.append(f"{mark:>{width}}")
            print(f"{a.name:>{width}}  " + "  ".join(cells))
        for node in nodes:
            print(f"  {node.name}: {node.mesh_v4:<15} {node.mesh_v6}  (namespace "
                  f"{lan.nodes[node.index].name})")

        if keep:
            _say("The mesh keeps running. Explore it, e.g.:")
            ns0 = lan.nodes[0].name
            print(f"  ip netns exec {ns0} env MESHGUARD_RUN_DIR={run_dir} "
                  f"{sys.executable} -m meshguard status -i {nodes[0].iface}")
            print(f"  ip netns exec {ns0} ping {nodes[-1].mesh_v6}")
            print("Press Enter (or Ctrl-C) to tear everything down.", flush=True)
            with contextlib.suppress(KeyboardInterrupt, EOFError):
                input()

        _say("7. `meshguard down` on every node: each leaves gracefully.")
        for node in reversed(nodes):
            _mg(["down", "--interface", node.iface], _env(node, run_dir),
                lan.nodes[node.index].argv([]), check=False, who=node.name)
        _say("Done; namespaces and files removed.")
        if failures:
            print(f"meshguard demo: {failures} pings failed", file=sys.stderr)
            return 1
    return 0
