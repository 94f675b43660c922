"""`meshguard up`, `meshguard down`, `meshguard status`, `meshguard org-revoke`, `org-alias`.

`up` runs the daemon (meshguard.daemon.mesh_daemon). With `-f` it stays in the foreground
(systemd, tests); without, it starts itself again in the background with `-f` and returns once
the daemon reports ready (joined, or no seeds to join) or failed, printing the failure as one
line. Readiness travels over the systemd notify protocol: the parent listens on a private
datagram socket named in the child's $NOTIFY_SOCKET.

`down` asks the daemon on the control socket to leave the mesh gracefully, waits until it is
gone and exits 0; with no daemon it says so and exits 1. `status` prints a table or, with
`--json`, the document described in meshguard.wire.control (schema_version 1). With several
daemons and no `--interface`, `status` lists every one of them and `down` asks which.

The daemon answers DNS for `*.mesh` on its mesh addresses (port 53, `--dns-port`, `--no-dns`;
names in mesh/node.py and dns/resolver.py). Point systemd-resolved at it with
`resolvectl dns mg0 <mesh IPv4>; resolvectl domain mg0 '~mesh'`.

`org-revoke NODE` (org admin, where org/org.key lives) signs an OrgCertRevoke for NODE (a node
key, .pub file or .cert file), writes it to `<name>.revoke`, and records it in the local
`revocations` file, from which a daemon running here spreads it through the mesh (and which
every receiver persists). `org-revoke --import FILE.revoke` records a revocation carried by
hand on another member. `org-alias ALIAS` signs the org's alias into org/alias; a daemon with
that file announces it at start-up and on SIGHUP.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from meshguard.config import resolve_config_dir
from meshguard.daemon.control_client import (
    ControlClient,
    DaemonNotRunningError,
    running_daemons,
    select_daemon,
    wait_until_gone,
)
from meshguard.daemon.mesh_daemon import ALIAS_FILE, DaemonConfig, run_foreground
from meshguard.daemon.runtime import DEFAULT_INTERFACE, run_dir, validate_interface
from meshguard.errors import MeshguardError
from meshguard.identity import store
from meshguard.identity.names import is_dns_label
from meshguard.identity.trust import Revocation, TrustStore
from meshguard.mesh import org_gossip
from meshguard.wire.control import StatusReport

DEFAULT_PORT = 51821
READY_TIMEOUT = 30.0  # seconds `up` waits for the background daemon before giving up
DOWN_TIMEOUT = 10.0


class UsageError(MeshguardError):
    """A command-line value is unusable."""


# formatting ------------------------------------------------------------------------------


def human_ago(then: float | None, now: float) -> str:
    if not then:
        return "never"
    d = max(0.0, now - then)
    if d < 60:
        return f"{int(d)}s ago"
    if d < 3600:
        return f"{int(d // 60)}m{int(d % 60):02d}s ago"
    if d < 86400:
        return f"{int(d // 3600)}h{int(d % 3600 // 60):02d}m ago"
    return f"{int(d // 86400)}d ago"


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def format_status(rep: StatusReport, now: float) -> str:
    me = rep.self_
    lines = [
        f"interface {rep.interface} ({rep.mode}), pid {rep.pid}, "
        f"up since {human_ago(rep.started_at, now)[:-4]}",
        f"  this node: {me.name or '-'}  key {me.identity_key[:12]}...  "
        f"{me.mesh_ipv4}  {me.mesh_ipv6}",
        f"  ports: wireguard {me.wg_port}, gossip {me.gossip_port}",
        "",
    ]
    header = ("NAME", "KEY", "MESH IP", "ENDPOINT", "STATE", "HANDSHAKE", "IN", "OUT", "PATH",
              "DNS NAME")
    rows = [header]
    for m in rep.members:
        state = m.state if m.trusted else f"{m.state},untrusted"
        rows.append((
            m.name or "-",
            m.identity_key[:8],
            m.mesh_ipv4,
            m.endpoint or "-",
            state,
            human_ago(m.last_handshake, now) if m.tunnel else "no tunnel",
            human_bytes(m.rx_bytes),
            human_bytes(m.tx_bytes),
            m.path,
            m.dns_names[0] if m.dns_names else "-",
        ))
    if len(rows) == 1:
        lines.append("no other members yet")
    else:
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        for r in rows:
            lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    dropped = rep.counters.get("garbage_dropped", 0)
    if dropped:
        lines.append(f"\n{dropped} malformed datagrams dropped")
    return "\n".join(lines)


# status / down ---------------------------------------------------------------------------


def _run_dir(args: argparse.Namespace) -> Path:
    return run_dir(getattr(args, "run_dir", None))


def cmd_status(args: argparse.Namespace) -> int:
    directory = _run_dir(args)
    now = time.time()
    if args.interface is None:
        daemons = running_daemons(directory)
        if not daemons:
            raise DaemonNotRunningError(f"meshguard is not running (no daemon in {directory})")
        clients = [ControlClient(d.path, d.interface) for d in daemons]
    else:
        clients = [select_daemon(directory, args.interface)]
    reports = [c.status() for c in clients]
    if args.json:
        if (len(reports) == 1 and args.interface is not None) or len(reports) == 1:
            print(json.dumps(reports[0].to_json(), indent=2, sort_keys=True))
        else:
            print(json.dumps({"schema_version": 1,
                              "daemons": [r.to_json() for r in reports]}, indent=2,
                             sort_keys=True))
        return 0
    print("\n\n".join(format_status(r, now) for r in reports))
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    client = select_daemon(_run_dir(args), args.interface)
    client.request("down")
    if not wait_until_gone(client.path, DOWN_TIMEOUT):
        raise MeshguardError(f"the daemon on {client.interface} did not stop within "
                             f"{DOWN_TIMEOUT:g} s")
    print(f"meshguard on {client.interface} is down")
    return 0


# up --------------------------------------------------------------------------------------


STUN_PORT = 3478  # RFC 5389 section 9


def parse_seed(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """HOST:PORT, [IPv6]:PORT or HOST (default port). Host names are resolved later."""
    t = text.strip()
    if t.startswith("["):
        host, sep, rest = t[1:].partition("]")
        if not sep:
            raise UsageError(f"bad seed {text!r}: missing ']'")
        port_s = rest[1:] if rest.startswith(":") else ""
    elif t.count(":") == 1:
        host, port_s = t.split(":")
    else:
        host, port_s = t, ""  # bare host or bare IPv6 address
    if not host:
        raise UsageError(f"bad seed {text!r}: empty host")
    try:
        port = int(port_s) if port_s else default_port
    except ValueError:
        raise UsageError(f"bad seed {text!r}: port must be a number") from None
    if not 0 < port < 65536:
        raise UsageError(f"bad seed {text!r}: port out of range")
    return host, port


def _parse_announce(text: str | None) -> str | None:
    if text is None:
        return None
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise UsageError(f"--announce needs an IP address, got {text!r}") from None


def cmd_up(args: argparse.Namespace) -> int:
    validate_interface(args.interface)
    if not 0 < args.port < 65535:
        raise UsageError("--port must be between 1 and 65534")
    config = DaemonConfig(
        interface=args.interface,
        port=args.port,
        seeds=[parse_seed(s) for s in args.seed],
        announce=_parse_announce(args.announce),
        stun=[parse_seed(s, STUN_PORT) for s in args.stun],
        kernel=args.kernel,
        split_port=args.split_port,
        open_mesh=args.open,
        run_dir=_run_dir(args),
        log_level=args.log_level,
        dns=not args.no_dns,
        dns_port=args.dns_port,
    )
    if not 0 < args.dns_port < 65536:
        raise UsageError("--dns-port must be between 1 and 65535")
    if args.foreground:
        return run_foreground(config)
    return _start_background(args, config.run_dir)


def _start_background(args: argparse.Namespace, directory: Path) -> int:
    argv = [sys.executable, "-m", "meshguard", "up", "-f",
            "--interface", args.interface, "--port", str(args.port),
            "--log-level", args.log_level, "--run-dir", str(directory)]
    for s in args.seed:
        argv += ["--seed", s]
    if args.announce:
        argv += ["--announce", args.announce]
    for s in args.stun:
        argv += ["--stun", s]
    if args.kernel:
        argv.append("--kernel")
    if args.split_port:
        argv.append("--split-port")
    if args.open:
        argv.append("--open")
    if args.no_dns:
        argv.append("--no-dns")
    argv += ["--dns-port", str(args.dns_port)]
    with tempfile.TemporaryDirectory(prefix="meshguard-up-") as tmp:
        notify_path = os.path.join(tmp, "notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as ns:
            ns.bind(notify_path)
            ns.settimeout(0.2)
            log_path = directory / f"{args.interface}.log"
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
            return _wait_ready(ns, proc, args.interface, log_path)


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


# registration ----------------------------------------------------------------------------


def _add_common(p: argparse.ArgumentParser, default_iface: str | None) -> None:
    p.add_argument("--interface", "-i", default=default_iface, metavar="IFACE",
                   help="interface name" + (f" (default {default_iface})" if default_iface
                                            else " (default: the only running daemon)"))
    p.add_argument("--run-dir", default=None, help=argparse.SUPPRESS)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add this module's sub-commands to the parser."""
    up = sub.add_parser("up", help="join the mesh (start the daemon)")
    _add_common(up, DEFAULT_INTERFACE)
    up.add_argument("--seed", action="append", default=[], metavar="HOST:PORT",
                    help="a member to join through: its gossip port, which is its --port, or "
                         "--port + 1 for a --kernel node (repeatable; host names allowed)")
    up.add_argument("--port", type=int, default=DEFAULT_PORT,
                    help=f"UDP port for WireGuard and gossip (default {DEFAULT_PORT})")
    up.add_argument("--announce", metavar="IP",
                    help="the address other members should use to reach this node")
    up.add_argument("--stun", action="append", default=[], metavar="HOST:PORT",
                    help="STUN server to discover the public endpoint with (repeatable)")
    up.add_argument("--kernel", action="store_true",
                    help="use the kernel WireGuard module (gossip then on PORT+1)")
    # userspace WireGuard with kernel mode's port layout (gossip on PORT+1), for interop tests
    up.add_argument("--split-port", action="store_true", help=argparse.SUPPRESS)
    up.add_argument("--open", action="store_true",
                    help="start even with an empty trust store (no member will be admitted "
                         "until one is trusted)")
    up.add_argument("--dns-port", type=int, default=53,
                    help="port of the *.mesh DNS server on the mesh addresses (default 53); "
                         "point a resolver at it with `resolvectl dns IFACE <mesh IPv4>; "
                         "resolvectl domain IFACE '~mesh'` (docs/mesh-dns-and-org-revocation.md)")
    up.add_argument("--no-dns", action="store_true", help="do not serve *.mesh names")
    up.add_argument("-f", "--foreground", action="store_true",
                    help="stay in the foreground (systemd, debugging)")
    up.add_argument("--log-level", default="info",
                    choices=["debug", "info", "warning", "error"])
    up.set_defaults(func=cmd_up)

    down = sub.add_parser("down", help="leave the mesh and stop the daemon")
    _add_common(down, None)
    down.set_defaults(func=cmd_down)

    st = sub.add_parser("status", help="show members and tunnels")
    _add_common(st, None)
    st.add_argument("--json", action="store_true",
                    help="machine-readable output (schema in meshguard.wire.control)")
    st.set_defaults(func=cmd_status)

    rv = sub.add_parser("org-revoke", help="revoke this org's certificate of a node and "
                                           "spread the signed revocation (org admin)")
    rv.add_argument("node", nargs="?", metavar="NODE",
                    help="the node: base64 key, .pub file or its .cert file")
    rv.add_argument("--out", metavar="FILE", help="where to write the signed revocation "
                                                  "(default ./<name>.revoke)")
    rv.add_argument("--import", dest="import_file", metavar="FILE",
                    help="record a signed .revoke file from the org admin instead")
    rv.set_defaults(func=cmd_org_revoke)

    al = sub.add_parser("org-alias", help="sign a human-readable alias for this org's domain "
                                          "(<node>.<alias>.mesh; org admin)")
    al.add_argument("alias", help="a lowercase DNS label, e.g. 'acme'")
    al.set_defaults(func=cmd_org_alias)


# org revocations and aliases -------------------------------------------------------------


def cmd_org_revoke(args: argparse.Namespace) -> int:
    cfg = resolve_config_dir()
    if args.import_file:
        path = Path(args.import_file)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read {path} ({exc})") from None
        revs = [r for r in (org_gossip.parse_line(x) for x in text.splitlines()) if r]
        if not revs:
            raise UsageError(f"{path} holds no signed revocation (`cert ... signed ...`)")
        trust = TrustStore.load(cfg)
        for r in revs:
            if not org_gossip.revocation_valid(r):
                raise UsageError(f"{path}: the revocation's signature does not verify")
            if not trust.org_names(r.org_key):
                raise UsageError(f"{path}: the revocation comes from an org this node does not "
                                 "trust; nothing to do")
            new = trust.revoke(Revocation("cert", r.node_key, r.org_key,
                                          org_gossip.format_label(r)))
            print(("recorded" if new else "already recorded") +
                  f": org {r.org_key.hex()[:12]} revoked node {r.node_key.hex()[:12]}")
        return 0
    if not args.node:
        raise UsageError("name the node to revoke (key, .pub or .cert), or pass --import FILE")
    org = store.load_org_key(cfg)
    name = ""
    node_path = Path(args.node)
    if node_path.suffix == ".cert" and node_path.is_file():
        cert = store.read_certificate(node_path)
        if cert.org_key != org.public_key.raw:
            raise UsageError(f"{node_path} was issued by another org; only that org can "
                             "revoke it")
        node_key, name = cert.node_key, cert.name
    else:
        node_key = store.read_public_key_argument(args.node, "node key")
        stem = node_path.name.removesuffix(".pub")
        name = stem if node_path.is_file() and is_dns_label(stem) else ""
    name = name or f"node-{node_key[:4].hex()}"
    rev = org_gossip.sign_revocation(org, node_key, int(time.time()))
    out = Path(args.out) if args.out else Path(f"{name}.revoke")
    line = org_gossip.format_line(rev)
    store.write_file(out, f"# meshguard org revocation of {name}\n{line}".encode())
    trust = TrustStore.load(cfg)
    trust.revoke(Revocation("cert", node_key, org.public_key.raw, org_gossip.format_label(rev)))
    print(f"revoked the certificate of {name} ({node_key.hex()[:12]}); signed revocation "
          f"written to {out}")
    print("a daemon running here spreads it through the mesh now; elsewhere run "
          f"`meshguard org-revoke --import {out}`")
    return 0


def cmd_org_alias(args: argparse.Namespace) -> int:
    problem = org_gossip.alias_problem(args.alias)
    if problem is not None:
        raise UsageError(f"{problem}: {args.alias!r}")
    cfg = resolve_config_dir()
    org = store.load_org_key(cfg)
    ann = org_gossip.sign_alias(org, args.alias, int(time.time()))
    path = cfg / store.ORG_DIR / ALIAS_FILE
    store.write_file(path, org_gossip.format_alias_line(ann).encode())
    print(f"alias {args.alias}.mesh signed into {path}; members that trust this org will "
          f"resolve <node>.{args.alias}.mesh once a daemon here announces it (start or SIGHUP)")
    return 0
