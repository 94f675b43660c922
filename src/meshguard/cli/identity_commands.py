"""Offline sub-commands: identity, WireGuard key, trust, revocation and org certificates.

Handlers only parse arguments, call meshguard.identity and print; every failure is a
MeshguardError, which cli.main prints as `meshguard: error: <problem>; <fix>` (exit 1).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from meshguard import __version__

# The handlers import what they use when they run, so `meshguard --help` and `meshguard
# version` load no key or trust code.


def _config_dir() -> Path:
    from meshguard.config import resolve_config_dir

    return resolve_config_dir()


def _now() -> float:
    from meshguard.clock import SystemClock

    return SystemClock().wall()


def _version(args: argparse.Namespace) -> int:
    from meshguard.dataplane import fastpath

    print(f"meshguard {__version__}")
    if fastpath.IMPLEMENTATION == "c":
        print("data path: C (meshguard.dataplane._fastpath)")
    else:
        print(f"data path: pure Python ({fastpath.PYTHON_REASON})")
    return 0


def _keygen(args: argparse.Namespace) -> int:
    from meshguard.crypto.keys import b64encode
    from meshguard.identity import keygen, store
    from meshguard.identity.addressing import mesh_ipv4, mesh_ipv6
    from meshguard.rng import SystemRng

    cfg = _config_dir()
    keys = keygen.generate_node_keys(cfg, SystemRng(), _now(), args.force)
    pub = keys.identity.public_key.raw
    print(f"identity:      {b64encode(pub)}")
    print(f"WireGuard key: {keys.wireguard.public_key.b64()}")
    print(f"mesh IPv4:     {mesh_ipv4(pub)}")
    print(f"mesh IPv6:     {mesh_ipv6(pub)}")
    print(f"written to {cfg}; share your key with `meshguard export`")
    cert = cfg / store.NODE_CERT
    if args.force and cert.exists():
        print(
            f"meshguard: warning: {cert} certifies the previous identity; "
            "ask the org admin to sign the new one",
            file=sys.stderr,
        )
    return 0


def _export(args: argparse.Namespace) -> int:
    from meshguard.identity import store

    identity = store.load_identity(_config_dir())
    sys.stdout.write(store.public_key_file(identity.public_key.raw).decode("ascii"))
    return 0


def _confirm(question: str) -> bool:
    sys.stderr.write(f"{question} [y/N] ")
    sys.stderr.flush()
    answer = sys.stdin.readline().strip().lower()
    return answer in ("y", "yes")


def _trust(args: argparse.Namespace) -> int:
    from meshguard.crypto.keys import b64encode
    from meshguard.identity import store
    from meshguard.identity.addressing import mesh_ipv4, org_domain
    from meshguard.identity.errors import TrustError
    from meshguard.identity.names import validate_label
    from meshguard.identity.trust import TrustStore, default_name

    cfg = _config_dir()
    what = "org key" if args.org else "node key"
    key = store.read_public_key_argument(args.key, what)
    name = args.name if args.name is not None else default_name(args.key, key, args.org)
    validate_label(name, "name")
    trust = TrustStore.load(cfg)
    table = trust.orgs if args.org else trust.peers
    existing = table.get(name)
    if existing == key:
        print(f"{name} is already trusted")
        return 0
    replace = args.force
    if existing is not None and not replace:
        if not sys.stdin.isatty():
            raise TrustError(
                f"name {name!r} is already used for another key; choose another --name or "
                "pass --force to replace it"
            )
        if not _confirm(f"{name!r} already names another key; replace it?"):
            raise TrustError(f"kept the existing {name!r}; choose another --name")
        replace = True
    store.ensure_dir(cfg)
    if args.force and trust.lift(key):
        print(f"lifted the revocation of {b64encode(key)}", file=sys.stderr)
    path = trust.add(name, key, org=args.org, replace=replace)
    if args.org:
        print(f"trusted org {name} ({b64encode(key)}, domain {org_domain(key)}) -> {path}")
    else:
        print(f"trusted {name} ({b64encode(key)}, mesh {mesh_ipv4(key)}) -> {path}")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    from meshguard.crypto.keys import b64encode
    from meshguard.identity import store
    from meshguard.identity.trust import TrustStore, resolve_revocation

    cfg = _config_dir()
    trust = TrustStore.load(cfg)
    revocation = resolve_revocation(trust, args.target, args.org)
    store.ensure_dir(cfg)
    if not trust.revoke(revocation):
        print(f"{args.target} was already revoked")
        return 0
    label = f" ({revocation.label})" if revocation.label else ""
    if revocation.kind == "cert":
        assert revocation.org_key is not None
        print(
            f"revoked the certificate of {b64encode(revocation.key)}{label} "
            f"from org {b64encode(revocation.org_key)}"
        )
    else:
        print(f"revoked {revocation.kind} {b64encode(revocation.key)}{label}")
    return 0


def _org_keygen(args: argparse.Namespace) -> int:
    from meshguard.crypto.keys import b64encode
    from meshguard.identity import keygen, store
    from meshguard.identity.addressing import org_domain
    from meshguard.rng import SystemRng

    cfg = _config_dir()
    key = keygen.generate_org_key(cfg, SystemRng(), args.force)
    pub = key.public_key.raw
    print(f"org public key: {b64encode(pub)}")
    print(f"org domain:     {org_domain(pub)} (nodes are <name>.{org_domain(pub)}.mesh)")
    print(f"written to {cfg / store.ORG_DIR}; peers trust it with `meshguard trust <key> --org`")
    return 0


def _org_sign(args: argparse.Namespace) -> int:
    from meshguard.identity import keygen, store
    from meshguard.identity.addressing import org_domain
    from meshguard.identity.certificate import parse_expiry
    from meshguard.identity.names import node_dns_name

    cfg = _config_dir()
    node_key = store.read_public_key_argument(args.node, "node key")
    expires = parse_expiry(args.expires) if args.expires is not None else 0
    out = Path(args.out) if args.out is not None else Path(f"{args.name}.cert")
    cert = keygen.issue_certificate_file(
        cfg, node_key, args.name, out, _now(), expires, force=args.force
    )
    domain = org_domain(cert.org_key)
    print(f"wrote {out} ({len(cert.to_bytes())} bytes): {node_dns_name(cert.name, domain)}")
    print(f"install it on the node as {store.NODE_CERT} in its config dir")
    return 0


def _rotate_wg_key(args: argparse.Namespace) -> int:
    from meshguard.identity import keygen
    from meshguard.rng import SystemRng

    keys = keygen.rotate_wireguard_key(_config_dir(), SystemRng(), _now())
    print(
        f"new WireGuard key: {keys.wireguard.public_key.b64()} (vouched at {keys.vouch.issued_at})"
    )
    print("a running daemon picks it up when restarted")
    return 0


def _show(args: argparse.Namespace) -> int:
    from meshguard.identity.overview import describe, render_text

    info = describe(_config_dir(), _now())
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
    else:
        sys.stdout.write(render_text(info))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("version", help="print the version and the data path in use (C or pure "
                                       "Python)")
    p.set_defaults(func=_version)

    p = sub.add_parser("keygen", help="create this node's identity and WireGuard key")
    p.add_argument("--force", action="store_true", help="replace an existing identity")
    p.set_defaults(func=_keygen)

    p = sub.add_parser("export", help="print this node's public identity key")
    p.set_defaults(func=_export)

    p = sub.add_parser("trust", help="trust a node key (or an org key with --org)")
    p.add_argument("key", help="base64 public key or a file holding one")
    p.add_argument("--name", help="name of the trust entry (a DNS label)")
    p.add_argument("--org", action="store_true", help="the key is an org key")
    p.add_argument("--force", action="store_true", help="replace a name in use; lift a revocation")
    p.set_defaults(func=_trust)

    p = sub.add_parser("revoke", help="stop trusting a peer, an org or one org certificate")
    p.add_argument("target", help="trusted name, base64 key or key file")
    p.add_argument("--org", help="revoke only this org's (name or key) certificate of the node")
    p.set_defaults(func=_revoke)

    p = sub.add_parser("org-keygen", help="create an org keypair (org admin)")
    p.add_argument("--force", action="store_true", help="replace an existing org key")
    p.set_defaults(func=_org_keygen)

    p = sub.add_parser("org-sign", help="sign a node key into a certificate (org admin)")
    p.add_argument("node", help="the node's base64 public key or .pub file")
    p.add_argument("--name", required=True, help="node name (DNS label, at most 32 characters)")
    p.add_argument("--expires", help="YYYY-MM-DD, ISO datetime or unix seconds (default never)")
    p.add_argument("--out", help="output file (default ./<name>.cert)")
    p.add_argument("--force", action="store_true", help="overwrite the output file")
    p.set_defaults(func=_org_sign)

    p = sub.add_parser("rotate-wg-key", help="replace the WireGuard key (identity unchanged)")
    p.set_defaults(func=_rotate_wg_key)

    p = sub.add_parser("show", help="show identity, addresses, certificate and trust (offline)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_show)
