"""`meshguard down`, `meshguard status`, `meshguard org-revoke`, `org-alias`; the helpers
`meshguard up` (cli/up_command.py) shares with them.

`down` asks the daemon on the control socket to leave the mesh gracefully, waits until it is
gone and exits 0; with no daemon it says so and exits 1. `status` prints a table or, with
`--json`, the document described in meshguard.wire.control (schema_version 1). With several
daemons and no `--interface`, `status` lists every one of them and `down` asks which.

The daemon answers DNS for `*.mesh` on its mesh addresses (port 53, `--dns-port`, `--no-dns`;
names in mesh/node.py and dns/resolver.py). Point systemd-resolved at it with
`resolvectl dns mg0 <mesh IPv4>; resolvectl domain mg0 '~mesh'`.

`org-revoke NODE` (org admin, where org/org.key lives) signs an OrgCertRevoke for NODE (a node
key, .pub file or .cert file; it also ends the org's vouch for a node, cli/vouch_command.py),
writes it to `<name>.revoke`, and records it in the local
`revocations` file, from which a daemon running here spreads it through the mesh (and which
every receiver persists). `org-revoke --import FILE.revoke` records a revocation carried by
hand on another member. `org-alias ALIAS` signs the org's alias into org/alias; a daemon with
that file announces it at start-up and on SIGHUP.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from meshguard.daemon.runtime import run_dir
from meshguard.errors import MeshguardError

if TYPE_CHECKING:
    from meshguard.wire.control import MemberStatus, StatusReport

# The handlers import what they use when they run: `meshguard --help` and `meshguard up`
# (which registers with this module's helpers) load none of it.

DEFAULT_PORT = 51821
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


def _routes_column(m: MemberStatus) -> str:
    """The prefixes routed through the member; those it offers that are not used (no grant,
    or not asked for with --accept-routes / --exit-node) in parentheses."""
    unused = [r for r in m.routes_offered if r not in m.routes_in_use]
    parts = list(m.routes_in_use) + ([f"({','.join(unused)})"] if unused else [])
    return ",".join(parts) if parts else "-"


def format_status(rep: StatusReport, now: float) -> str:
    me = rep.self_
    lines = [
        f"interface {rep.interface} ({rep.mode}), pid {rep.pid}, "
        f"up since {human_ago(rep.started_at, now)[:-4]}",
        f"  this node: {me.name or '-'}  key {me.identity_key[:12]}...  "
        f"{me.mesh_ipv4}  {me.mesh_ipv6}",
        f"  ports: wireguard {me.wg_port}, gossip {me.gossip_port}",
    ]
    pm = rep.portmap
    if pm is not None:
        lines.append(f"  port mapping: {pm['protocol']} {pm['external']} -> "
                     f"{pm['internal_port']}, expires in {pm['expires_in']} s")
    lines.append("")
    header = ("NAME", "KEY", "MESH IP", "ENDPOINT", "STATE", "HANDSHAKE", "IN", "OUT", "PATH",
              "RTT", "MTU", "DNS NAME", "ROUTES", "WHY")
    rows = [header]
    for m in rep.members:
        state = m.state if m.trusted else f"{m.state},untrusted"
        rows.append((
            m.name or ("(org vouch)" if m.admission == "org vouch" else "-"),
            m.identity_key[:8],
            m.mesh_ipv4,
            m.endpoint or "-",
            state,
            human_ago(m.last_handshake, now) if m.tunnel else "no tunnel",
            human_bytes(m.rx_bytes),
            human_bytes(m.tx_bytes),
            m.path,
            "-" if m.rtt_ms is None else f"{m.rtt_ms:.1f}ms",
            "-" if m.mtu is None else str(m.mtu),
            m.dns_names[0] if m.dns_names else "-",
            _routes_column(m),
            m.why or "-",
        ))
    if len(rows) == 1:
        lines.append("no other members yet")
    else:
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        for r in rows:
            lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    from meshguard.cli.seeds_view import format_seeds

    lines.extend(format_seeds(rep.seeds, now))
    dropped = rep.counters.get("garbage_dropped", 0)
    if dropped:
        lines.append(f"\n{dropped} malformed datagrams dropped")
    return "\n".join(lines)


# status / down ---------------------------------------------------------------------------


def run_dir_of(args: argparse.Namespace) -> Path:
    return run_dir(getattr(args, "run_dir", None))


def status_reports(args: argparse.Namespace) -> list[StatusReport]:
    """The status of the daemon named by --interface, or of every running one."""
    from meshguard.daemon.control_client import (
        ControlClient,
        DaemonNotRunningError,
        running_daemons,
        select_daemon,
    )

    directory = run_dir_of(args)
    if args.interface is None:
        daemons = running_daemons(directory)
        if not daemons:
            raise DaemonNotRunningError(f"meshguard is not running (no daemon in {directory})")
        clients = [ControlClient(d.path, d.interface) for d in daemons]
    else:
        clients = [select_daemon(directory, args.interface)]
    return [c.status() for c in clients]


def render_status(reports: list[StatusReport], as_json: bool, now: float,
                  indent: int | None = 2) -> str:
    if as_json:
        if len(reports) == 1:
            return json.dumps(reports[0].to_json(), indent=indent, sort_keys=True)
        return json.dumps({"schema_version": 1, "daemons": [r.to_json() for r in reports]},
                          indent=indent, sort_keys=True)
    return "\n\n".join(format_status(r, now) for r in reports)


def cmd_status(args: argparse.Namespace) -> int:
    if args.watch or args.interval is not None:
        from meshguard.cli.status_watch import cmd_watch

        return cmd_watch(args)
    print(render_status(status_reports(args), args.json, time.time()))
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from meshguard.daemon.control_client import select_daemon, wait_until_gone

    client = select_daemon(run_dir_of(args), args.interface)
    client.request("down")
    if not wait_until_gone(client.path, DOWN_TIMEOUT):
        raise MeshguardError(f"the daemon on {client.interface} did not stop within "
                             f"{DOWN_TIMEOUT:g} s")
    print(f"meshguard on {client.interface} is down")
    return 0


# seeds -----------------------------------------------------------------------------------


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


# registration ----------------------------------------------------------------------------


def add_common(p: argparse.ArgumentParser, default_iface: str | None) -> None:
    p.add_argument("--interface", "-i", default=default_iface, metavar="IFACE",
                   help="interface name" + (f" (default {default_iface})" if default_iface
                                            else " (default: the only running daemon)"))
    p.add_argument("--run-dir", default=None, help=argparse.SUPPRESS)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add this module's sub-commands to the parser."""
    down = sub.add_parser("down", help="leave the mesh and stop the daemon")
    add_common(down, None)
    down.set_defaults(func=cmd_down)

    st = sub.add_parser("status", help="show members and tunnels")
    add_common(st, None)
    st.add_argument("--json", action="store_true",
                    help="machine-readable output (schema in meshguard.wire.control)")
    st.add_argument("--watch", "-w", action="store_true",
                    help="refresh until Ctrl-C (with --json: one document per line)")
    st.add_argument("--interval", type=float, metavar="S",
                    help="seconds between refreshes of --watch (default 2)")
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
    from meshguard.config import resolve_config_dir
    from meshguard.identity import store
    from meshguard.identity.names import is_dns_label
    from meshguard.identity.trust import Revocation, TrustStore
    from meshguard.mesh import org_gossip

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
    vouched = (org.public_key.raw, node_key) in trust.vouches
    trust.revoke(Revocation("cert", node_key, org.public_key.raw, org_gossip.format_label(rev)))
    what = "vouch for" if vouched else "certificate of"  # a vouch ends like a certificate
    print(f"revoked the {what} {name} ({node_key.hex()[:12]}); signed revocation "
          f"written to {out}")
    print("a daemon running here spreads it through the mesh now; elsewhere run "
          f"`meshguard org-revoke --import {out}`")
    return 0


def cmd_org_alias(args: argparse.Namespace) -> int:
    from meshguard.config import resolve_config_dir
    from meshguard.daemon.daemon_config import ALIAS_FILE
    from meshguard.identity import store
    from meshguard.mesh import org_gossip

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
