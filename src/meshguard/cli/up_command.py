"""`meshguard up` runs the daemon (meshguard.daemon.mesh_daemon). With `-f` it stays in the
foreground (systemd, tests); without, it starts itself again in the background with `-f` and
returns once the daemon reports ready (joined, or no seeds to join) or failed, printing the
failure as one line. Readiness travels over the systemd notify protocol: the parent listens on a
private datagram socket named in the child's $NOTIFY_SOCKET.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from meshguard.cli.daemon_commands import (
    DEFAULT_PORT,
    UsageError,
    add_common,
    run_dir_of,
)
from meshguard.daemon.runtime import DEFAULT_INTERFACE
from meshguard.daemon.startup_trace import mark
from meshguard.errors import MeshguardError

if TYPE_CHECKING:
    from meshguard.daemon.daemon_config import DaemonConfig
    from meshguard.mesh.routes import RouteOptions

PORTMAP_METHODS = ("pcp", "nat-pmp", "upnp")  # nat.portmap.Method values
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
READY_TIMEOUT = 30.0  # seconds `up` waits for the background daemon before giving up


def _parse_announce(text: str | None) -> str | None:
    if text is None:
        return None
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise UsageError(f"--announce needs an IP address, got {text!r}") from None


def _parse_portmap(text: str) -> tuple[str, ...]:
    methods = tuple(m.strip() for m in text.split(",") if m.strip())
    bad = [m for m in methods if m not in PORTMAP_METHODS]
    if bad or not methods:
        raise UsageError(f"--portmap-methods takes a list of {', '.join(PORTMAP_METHODS)}, "
                         f"got {text!r}")
    return methods


DEFAULT_METRICS_PORT = 9586


def parse_metrics(text: str, option: str = "--metrics") -> tuple[str, int]:
    """`PORT`, `ADDR:PORT` or `[ADDR]:PORT` (an IP address; loopback when only a port)."""
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = "127.0.0.1", text
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        addr = str(ipaddress.ip_address(host))
        port = int(port_text)
    except ValueError:
        raise UsageError(f"{option} needs PORT or ADDR:PORT with an IP address, "
                         f"got {text!r}") from None
    if not 0 < port < 65536:
        raise UsageError(f"{option} port must be between 1 and 65535, got {port}")
    return addr, port


def _parse_routes(args: argparse.Namespace) -> RouteOptions:
    """--advertise-routes, --advertise-exit-node, --accept-routes, --exit-node (one usage
    error line for a bad prefix)."""
    from meshguard.mesh.routes import DEFAULT_ROUTES, MESH_PREFIXES, RouteOptions
    from meshguard.wire.gossip import MAX_ROUTES, canonical_routes

    nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for text in args.advertise_routes or []:
        for item in (t.strip() for t in text.split(",")):
            if not item:
                continue
            try:
                net = ipaddress.ip_network(item)
            except ValueError:
                raise UsageError(f"--advertise-routes needs networks such as 10.20.0.0/24 "
                                 f"(no host bits), got {item!r}") from None
            if net.prefixlen == 0:
                raise UsageError("--advertise-routes takes subnets; offer the default routes "
                                 "with --advertise-exit-node")
            if any(net.overlaps(m) for m in MESH_PREFIXES if m.version == net.version):
                raise UsageError(f"--advertise-routes: {net} overlaps the mesh prefixes")
            nets.append(net)
    if args.advertise_exit_node:
        nets += DEFAULT_ROUTES
    advertise = canonical_routes(nets)
    if len(advertise) > MAX_ROUTES:
        raise UsageError(f"at most {MAX_ROUTES} routes may be advertised (the exit node "
                         "counts as two)")
    if args.exit_node_allow_lan_access and not args.exit_node:
        raise UsageError("--exit-node-allow-lan-access needs --exit-node")
    return RouteOptions(advertise=advertise, accept_routes=bool(args.accept_routes),
                        exit_node=args.exit_node,
                        exit_node_allow_lan_access=bool(args.exit_node_allow_lan_access))


def _with_saved_seeds(seeds: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """--seed values, then the seeds `meshguard connect` saved (identity/saved_seeds.py)."""
    from meshguard.config import resolve_config_dir
    from meshguard.identity import saved_seeds

    return seeds + [s for s in saved_seeds.load(resolve_config_dir()) if s not in seeds]


def cmd_up(args: argparse.Namespace) -> int:
    # imported here, not at the top: `meshguard --help` needs none of the daemon. The options
    # come from the defaults, the config file and the flags (settings/, docs/config.md).
    from meshguard.settings.daemon_options import daemon_config
    from meshguard.settings.sources import settings_from_args

    settings = settings_from_args(args, os.environ)
    config = daemon_config(settings, run_dir_of(args))
    if args.foreground:
        from meshguard.daemon.mesh_daemon import run_foreground

        mark("imports")
        return run_foreground(config)
    return _start_background(args, config)


def _start_background(args: argparse.Namespace, config: DaemonConfig) -> int:
    """`up -f` in the background, with the same config file and the flags given."""
    from meshguard.settings.sources import flag_argv

    directory = config.run_dir
    argv = [sys.executable, "-m", "meshguard", "up", "-f", "--run-dir", str(directory)]
    if args.config is not None:
        argv += ["--config", str(args.config)]
    assert config.settings is not None
    argv += flag_argv(config.settings.flags)
    interface = config.interface
    with tempfile.TemporaryDirectory(prefix="meshguard-up-") as tmp:
        notify_path = os.path.join(tmp, "notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as ns:
            ns.bind(notify_path)
            ns.settimeout(0.2)
            log_path = directory / f"{interface}.log"
            with contextlib.suppress(OSError):
                directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            try:
                log = open(log_path, "ab")  # noqa: SIM115 - handed to the child
            except OSError:
                log = open(os.devnull, "ab")  # noqa: SIM115
            with log:
                env = {**os.environ, "NOTIFY_SOCKET": notify_path}
                proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=log,
                                        start_new_session=True, close_fds=True)
            return _wait_ready(ns, proc, interface, log_path)


def _wait_ready(ns: socket.socket, proc: subprocess.Popen[bytes], iface: str,
                log_path: Path) -> int:
    deadline = time.monotonic() + READY_TIMEOUT
    status = ""
    while time.monotonic() < deadline:
        try:
            msg = ns.recv(4096).decode("utf-8", "replace")
        except TimeoutError:
            msg = ""
        fields = dict(line.split("=", 1) for line in msg.splitlines() if "=" in line)
        status = fields.get("STATUS", status)
        if fields.get("READY") == "1":
            print(f"meshguard is up on {iface} (pid {proc.pid}): {status or 'running'}")
            return 0
        rc = proc.poll()
        if rc is not None:
            # drain a last STATUS sent just before exiting
            with contextlib.suppress(TimeoutError, OSError):
                last = ns.recv(4096).decode("utf-8", "replace")
                for line in last.splitlines():
                    if line.startswith("STATUS="):
                        status = line[len("STATUS="):]
            raise MeshguardError(status or f"the daemon exited with status {rc} "
                                 f"(see {log_path})")
    print(f"meshguard started on {iface} (pid {proc.pid}) but has not joined yet "
          f"({status or 'waiting for seeds'}); see `meshguard status`")
    return 0


def add_up_options(up: argparse.ArgumentParser) -> None:
    """The options of `up` (and of `config show`). Each default is None, so a flag given is
    told from one left out: the config file or the default fills those (settings/)."""
    add_common(up, DEFAULT_INTERFACE)
    up.set_defaults(interface=None)
    up.add_argument("--config", "-c", metavar="FILE",
                    help="the config file (default: meshguard.toml in the config dir, if it "
                         "exists; docs/config.md); flags override it")
    up.add_argument("--seed", action="append", default=None, metavar="HOST:PORT",
                    help="a member to join through: its gossip port, which is its --port, or "
                         "--port + 1 for a --kernel node (repeatable; host names allowed)")
    up.add_argument("--dns", action="append", default=None, metavar="DOMAIN",
                    help="discover seeds in the TXT records meshguard=IP:PORT at "
                         "_meshguard._udp.DOMAIN (repeatable; docs/seeds.md)")
    up.add_argument("--mdns", action="store_true", default=None,
                    help="advertise this node and discover seeds on the LAN by mDNS "
                         "(_meshguard._udp.local)")
    up.add_argument("--port", type=int, default=None,
                    help=f"UDP port for WireGuard and gossip (default {DEFAULT_PORT})")
    up.add_argument("--announce", metavar="IP",
                    help="the address other members should use to reach this node")
    up.add_argument("--stun", action="append", default=None, metavar="HOST:PORT",
                    help="STUN server to discover the public endpoint with (repeatable)")
    up.add_argument("--kernel", action="store_true", default=None,
                    help="use the kernel WireGuard module (gossip then on PORT+1)")
    # userspace WireGuard with kernel mode's port layout (gossip on PORT+1), for interop tests
    up.add_argument("--split-port", action="store_true", default=None, help=argparse.SUPPRESS)
    up.add_argument("--open", action="store_true", default=None,
                    help="start even with an empty trust store (no member will be admitted "
                         "until one is trusted)")
    up.add_argument("--dns-port", type=int, default=None,
                    help="port of the *.mesh DNS server on the mesh addresses (default 53; "
                         "docs/mesh-dns-and-org-revocation.md)")
    up.add_argument("--no-dns", action="store_true", default=None,
                    help="do not serve *.mesh names")
    up.add_argument("--no-resolved", action="store_true", default=None,
                    help="do not register the DNS server and ~mesh with systemd-resolved")
    up.add_argument("--no-portmap", action="store_true", default=None,
                    help="do not ask the home router (PCP, NAT-PMP, UPnP-IGD) to forward the "
                         "UDP port")
    # the mapping methods, in the order tried (tests pin one)
    up.add_argument("--portmap-methods", default=None, help=argparse.SUPPRESS)
    up.add_argument("--advertise-routes", action="append", default=None,
                    metavar="CIDR[,CIDR...]",
                    help="offer to carry these subnets for the mesh (used only where an "
                         "org-signed policy grants them; docs/policy.md#routes)")
    up.add_argument("--advertise-exit-node", action="store_true", default=None,
                    help="offer to be an exit node (0.0.0.0/0 and ::/0), if a policy grants it")
    up.add_argument("--accept-routes", action="store_true", default=None,
                    help="use the subnets that granted members carry")
    up.add_argument("--exit-node", metavar="NAME",
                    help="send the default routes through this granted exit node (its name or "
                         "identity key)")
    up.add_argument("--exit-node-allow-lan-access", action="store_true", default=None,
                    help="with --exit-node: keep the local LAN reachable directly")
    up.add_argument("--log-level", default=None, choices=LOG_LEVELS,
                    help="how much the daemon logs (default info)")
    up.add_argument("--log-format", default=None, choices=LOG_FORMATS,
                    help="log lines as text, or one JSON object per line for log shippers")
    up.add_argument("--metrics", metavar="[ADDR:]PORT",
                    help=f"serve Prometheus metrics over HTTP (loopback unless ADDR is given; "
                         f"the usual port is {DEFAULT_METRICS_PORT})")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `up` to the parser."""
    up = sub.add_parser("up", help="join the mesh (start the daemon)")
    add_up_options(up)
    up.add_argument("-f", "--foreground", action="store_true",
                    help="stay in the foreground (systemd, debugging)")
    up.set_defaults(func=cmd_up)
