"""`meshguard export-wg`: a wg-quick configuration for a device that cannot run meshguard.

    meshguard export-wg NAME [--address IP] [--endpoint HOST:PORT] [--dns] [--out FILE]
                             [--no-qr] [--interface IFACE]
    meshguard export-wg --list
    meshguard export-wg --remove NAME

A new X25519 key and a preshared key are made for the device; the device is stored on this
member (identity/wg_devices.py: devices/NAME.peer) and the configuration is printed, with a
QR code for a phone's WireGuard app, or written to FILE (0600: it holds the private key).
The device's one peer is this member: its WireGuard key, and its endpoint, which is --endpoint
or else the first endpoint the running daemon advertises (`meshguard status --json`,
self.endpoints). A running daemon picks the device up within seconds (daemon/
wg_device_peers.py). docs/policy.md#plain-wireguard-devices describes routes and policies.
"""

from __future__ import annotations

import argparse
import io
import ipaddress
import os
import sys
from pathlib import Path

from meshguard.errors import MeshguardError

# the mesh prefixes a device routes to its gateway
MESH_ALLOWED_IPS = ("10.99.0.0/16", "fd99:6d67::/64")
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
DNS_SEARCH = "mesh"


class ExportError(MeshguardError):
    """A command-line value of export-wg is unusable."""


def parse_endpoint(text: str) -> str:
    """HOST:PORT or [IPv6]:PORT, returned in wg-quick's spelling."""
    t = text.strip()
    if t.startswith("["):
        host, sep, rest = t[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ExportError(f"bad endpoint {text!r}; use HOST:PORT or [IPv6]:PORT")
        port_s = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ExportError(f"bad endpoint {text!r}: {host!r} is not an IPv6 address"
                              ) from None
    else:
        host, sep, port_s = t.rpartition(":")
        if not sep or not host or ":" in host:
            raise ExportError(f"bad endpoint {text!r}; use HOST:PORT or [IPv6]:PORT")
    if not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise ExportError(f"bad endpoint {text!r}: the port must be 1-65535")
    return f"[{host}]:{port_s}" if ":" in host else f"{host}:{port_s}"


def parse_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    t = text.strip()
    for suffix in ("/32", "/128"):
        if t.endswith(suffix):
            t = t[: -len(suffix)]
    try:
        return ipaddress.ip_address(t)
    except ValueError:
        raise ExportError(f"bad --address {text!r}; give one IP address, e.g. 10.98.7.5"
                          ) from None


def _is_private(endpoint: str) -> bool:
    try:
        return ipaddress.ip_address(endpoint.rpartition(":")[0].strip("[]")).is_private
    except ValueError:  # a host name
        return False


def qr_text(config: str) -> str:
    """The configuration as a QR code of terminal block characters (two rows a line)."""
    import qrcode

    qr = qrcode.QRCode(border=2, error_correction=qrcode.constants.ERROR_CORRECT_L)
    qr.add_data(config)
    qr.make(fit=True)
    out = io.StringIO()
    qr.print_ascii(out=out, invert=True)
    return out.getvalue()


def _daemon_self(args: argparse.Namespace) -> dict[str, object] | None:
    """The running daemon's `self` status, or None when no daemon runs here."""
    from meshguard.daemon.control_client import DaemonNotRunningError, select_daemon
    from meshguard.daemon.runtime import run_dir

    try:
        client = select_daemon(run_dir(args.run_dir), args.interface)
        obj = client.request("status")
    except DaemonNotRunningError:
        return None
    me = obj.get("self")
    return dict(me) if isinstance(me, dict) else None


def _granted_prefixes(cfg: Path, identity: bytes) -> list[IPNetwork]:
    """The prefixes the org policies in force here grant this member (a device's address is
    picked inside one of them when one lies in the device range)."""
    from meshguard.identity import store
    from meshguard.identity.trust import TrustStore
    from meshguard.policy.compiler import route_grants
    from meshguard.policy.store import PolicyStore
    from meshguard.policy.table import MemberInfo

    trust = TrustStore.load(cfg)
    in_force = PolicyStore.load(cfg).in_force(set(trust.orgs.values()))
    if not in_force:
        return []
    cert = store.load_node_certificate(cfg)
    me = MemberInfo(identity, b"me", cert.name if cert else None,
                    (cert.org_key,) if cert else ())
    return [g.prefix for g in route_grants(in_force, [me])]


def _export(args: argparse.Namespace) -> int:
    from meshguard.config import resolve_config_dir
    from meshguard.crypto.keys import X25519PrivateKey, b64encode
    from meshguard.identity import store, wg_devices
    from meshguard.identity.addressing import mesh_ipv4
    from meshguard.identity.names import validate_label
    from meshguard.identity.wg_key_source import node_wireguard_key
    from meshguard.rng import SystemRng
    from meshguard.wire.wg_quick import WgQuickConfig

    name = validate_label(args.name, "device name")
    address = parse_address(args.address) if args.address is not None else None
    endpoint = parse_endpoint(args.endpoint) if args.endpoint is not None else None
    out = Path(args.out) if args.out is not None else None
    if out is not None and not (out.parent.is_dir() and os.access(out.parent, os.W_OK)):
        raise ExportError(f"cannot write {out}: {out.parent} is not a writable directory")
    cfg = resolve_config_dir()
    own = store.load_identity(cfg)
    identity = own.public_key.raw
    gateway_wg = node_wireguard_key(cfg, own).key.public_key
    if wg_devices.device_path(cfg, name).exists():
        raise ExportError(f"device {name} exists; remove it first with "
                          f"`meshguard export-wg --remove {name}`")
    me = _daemon_self(args) if endpoint is None or args.dns else None
    if endpoint is None:
        eps = me.get("endpoints") if me is not None else None
        if not isinstance(eps, list) or not eps or not isinstance(eps[0], str):
            why = ("no daemon runs here" if me is None
                   else "the daemon advertises no endpoint yet")
            raise ExportError(f"{why}, so this member's endpoint is unknown; give "
                              "--endpoint HOST:PORT (its public address and port)")
        endpoint = parse_endpoint(eps[0])
        if _is_private(endpoint):
            print(f"meshguard: note: the endpoint {endpoint} is a private address, reachable "
                  "from this LAN only; for a device elsewhere give --endpoint with this "
                  "member's public address", file=sys.stderr)
    resolver = str(me.get("mesh_ipv4") or "") if me is not None else ""
    rng = SystemRng()
    key = X25519PrivateKey.generate(rng.bytes(32))
    psk = rng.bytes(32)
    granted = _granted_prefixes(cfg, identity)
    dev = wg_devices.add_device(cfg, name, key.public_key.raw, psk, identity, address, granted)
    conf = WgQuickConfig(
        private_key=key.b64(), address=str(dev.network), peer_public_key=gateway_wg.b64(),
        preshared_key=b64encode(psk), endpoint=endpoint, allowed_ips=MESH_ALLOWED_IPS,
        dns=(resolver or str(mesh_ipv4(identity)), DNS_SEARCH) if args.dns else (),
        comment=f"meshguard device {name}, through {gateway_wg.b64()[:8]}...").render()
    if out is not None:
        try:
            store.write_file(out, conf.encode(), store.SECRET_MODE)
        except BaseException:
            wg_devices.remove_device(cfg, name)  # no device without its configuration
            raise
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(conf)
    if not args.no_qr:
        sys.stdout.write(("\n" if args.out is None else "") + qr_text(conf))
    sub = wg_devices.pick_subnet(identity, granted)
    carry = str(sub) if dev.address in sub else str(dev.network)
    print(f"device {name} at {dev.address}; a running daemon adds it within seconds. Other "
          f"members reach it once this member offers {carry} (`up --advertise-routes "
          f"{carry}`), a policy grants it (`route {carry} via <this member>`) and they run "
          "`up --accept-routes`.", file=sys.stderr)
    return 0


def _list(args: argparse.Namespace) -> int:
    from meshguard.config import resolve_config_dir
    from meshguard.crypto.keys import b64encode
    from meshguard.identity import wg_devices

    devices, problems = wg_devices.load_devices(resolve_config_dir())
    for p in problems:
        print(f"meshguard: warning: {p}", file=sys.stderr)
    if not devices:
        print("no devices")
        return 0
    rows = [("NAME", "ADDRESS", "PUBLIC KEY")]
    rows += [(d.name, str(d.address), b64encode(d.public_key)) for d in devices]
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    for r in rows:
        print(f"{r[0].ljust(widths[0])}  {r[1].ljust(widths[1])}  {r[2]}")
    return 0


def _remove(args: argparse.Namespace) -> int:
    from meshguard.config import resolve_config_dir
    from meshguard.identity import wg_devices
    from meshguard.identity.names import validate_label

    wg_devices.remove_device(resolve_config_dir(), validate_label(args.remove, "device name"))
    print(f"device {args.remove} removed; a running daemon drops its peer within seconds")
    return 0


def cmd_export_wg(args: argparse.Namespace) -> int:
    if args.list:
        if args.name is not None or args.remove is not None:
            raise ExportError("--list takes no device name")
        return _list(args)
    if args.remove is not None:
        if args.name is not None:
            raise ExportError("--remove NAME takes no other device name")
        return _remove(args)
    if args.name is None:
        raise ExportError("name the device: `meshguard export-wg NAME` (or --list)")
    return _export(args)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("export-wg", help="a wg-quick config (and QR code) for a plain "
                       "WireGuard device reaching the mesh through this member")
    p.add_argument("name", nargs="?", metavar="NAME", help="the device's name (a DNS label)")
    p.add_argument("--address", metavar="IP", help="the device's address (default: the first "
                   "free one of this member's device subnet 10.98.X.0/24)")
    p.add_argument("--endpoint", metavar="HOST:PORT", help="where the device reaches this "
                   "member (default: the endpoint the running daemon advertises)")
    p.add_argument("--dns", action="store_true", help="use this member's mesh resolver "
                   "(*.mesh names) on the device")
    p.add_argument("--out", metavar="FILE", help="write the config to FILE (0600) instead "
                   "of printing it")
    p.add_argument("--no-qr", action="store_true", help="do not print the QR code")
    p.add_argument("--list", action="store_true", help="list this member's devices")
    p.add_argument("--remove", metavar="NAME", help="remove a device")
    p.add_argument("--interface", "-i", default=None, metavar="IFACE",
                   help="the daemon to ask for the endpoint (when several run)")
    p.add_argument("--run-dir", default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_export_wg)
