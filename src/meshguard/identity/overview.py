"""What `meshguard show` reports: everything known about this node without the network."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import TypedDict

from meshguard.crypto.keys import b64encode
from meshguard.errors import MeshguardError
from meshguard.identity import store
from meshguard.identity.addressing import mesh_ipv4, mesh_ipv6, org_domain
from meshguard.identity.names import node_dns_name
from meshguard.identity.trust import TrustStore
from meshguard.identity.wg_key_source import node_wireguard_key

SCHEMA_VERSION = 1


# the document `describe` returns (the JSON of `meshguard show --json`)


class IdentityInfo(TypedDict):
    public_key: str
    mesh_ipv4: str
    mesh_ipv6: str


class WireGuardInfo(TypedDict):
    public_key: str
    vouched: bool
    vouched_at: int | None
    source: str  # "file" (wireguard.key) or "derived" (from the identity, as the original)


class CertificateInfo(TypedDict):
    version: int
    name: str
    org_key: str
    org_domain: str
    dns_name: str
    issued_at: int
    expires_at: int | None
    valid: bool
    problem: str | None


class OrgInfo(TypedDict):
    public_key: str
    domain: str


class PeerInfo(TypedDict):
    name: str
    public_key: str
    mesh_ipv4: str
    mesh_ipv6: str


class TrustedOrgInfo(TypedDict):
    name: str
    public_key: str
    domain: str


class RevocationInfo(TypedDict):
    kind: str
    key: str
    org_key: str | None
    label: str | None


class VouchInfo(TypedDict):
    node_key: str
    org_key: str
    org_domain: str
    lamport: int
    admits: bool  # the org is trusted here and nothing revoked the node
    admission: str  # "org vouch", or why not


class Overview(TypedDict):
    schema: int
    config_dir: str
    identity: IdentityInfo
    wireguard: WireGuardInfo | None
    certificate: CertificateInfo | None
    org: OrgInfo | None
    peers: list[PeerInfo]
    orgs: list[TrustedOrgInfo]
    revocations: list[RevocationInfo]
    vouches: list[VouchInfo]
    problems: list[str]


def _iso(ts: int) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def describe(config_dir: Path, now_wall: float) -> Overview:
    """A JSON-ready description (stable keys, `schema` versioned) of the config dir."""
    identity = store.load_identity(config_dir)
    pub = identity.public_key.raw
    problems: list[str] = []
    wg: WireGuardInfo | None = None
    try:
        choice = node_wireguard_key(config_dir, identity)
    except MeshguardError as exc:
        problems.append(str(exc))
    else:
        wg_key = choice.key
        vouch = store.load_wireguard_vouch(config_dir, pub)
        valid = vouch is not None and vouch.wg_key == wg_key.public_key.raw
        wg = {
            "public_key": wg_key.public_key.b64(),
            "vouched": valid,
            "vouched_at": vouch.issued_at if vouch is not None and valid else None,
            "source": choice.source,
        }
        if not valid and not choice.derived:  # `up` vouches for a derived key when it saves it
            problems.append("WireGuard key is not vouched for; run `meshguard rotate-wg-key`")
    trust = TrustStore.load(config_dir)
    cert_info: CertificateInfo | None = None
    try:
        cert = store.load_node_certificate(config_dir)
    except MeshguardError as exc:
        problems.append(f"node.cert: {exc}")
        cert = None
    if cert is not None:
        domain = org_domain(cert.org_key)
        problem = cert.problem(now_wall, pub)
        cert_info = {
            "version": cert.version,
            "name": cert.name,
            "org_key": b64encode(cert.org_key),
            "org_domain": domain,
            "dns_name": node_dns_name(cert.name, domain),
            "issued_at": cert.issued_at,
            "expires_at": cert.expires_at or None,
            "valid": problem is None,
            "problem": problem,
        }
    org_info: OrgInfo | None = None
    org_pub_path = config_dir / store.ORG_DIR / store.ORG_PUB
    if org_pub_path.exists():
        try:
            org_pub = store.load_org_key(config_dir).public_key.raw
            org_info = {"public_key": b64encode(org_pub), "domain": org_domain(org_pub)}
        except MeshguardError as exc:
            problems.append(str(exc))
    return {
        "schema": SCHEMA_VERSION,
        "config_dir": str(config_dir),
        "identity": {
            "public_key": b64encode(pub),
            "mesh_ipv4": str(mesh_ipv4(pub)),
            "mesh_ipv6": str(mesh_ipv6(pub)),
        },
        "wireguard": wg,
        "certificate": cert_info,
        "org": org_info,
        "peers": [
            {
                "name": name,
                "public_key": b64encode(key),
                "mesh_ipv4": str(mesh_ipv4(key)),
                "mesh_ipv6": str(mesh_ipv6(key)),
            }
            for name, key in sorted(trust.peers.items())
        ],
        "orgs": [
            {"name": name, "public_key": b64encode(key), "domain": org_domain(key)}
            for name, key in sorted(trust.orgs.items())
        ],
        "revocations": [
            {
                "kind": r.kind,
                "key": b64encode(r.key),
                "org_key": b64encode(r.org_key) if r.org_key is not None else None,
                "label": r.label or None,
            }
            for r in trust.revocations
        ],
        "vouches": [
            {
                "node_key": b64encode(v.node_key),
                "org_key": b64encode(v.org_key),
                "org_domain": org_domain(v.org_key),
                "lamport": v.lamport,
                "admits": trust.vouch_problem(v) is None,
                "admission": trust.vouch_problem(v) or "org vouch",
            }
            for v in sorted(trust.vouches.values(), key=lambda v: (v.node_key, v.org_key))
        ],
        "problems": problems + trust.problems,
    }


def render_text(info: Overview) -> str:
    """The human-readable form of `describe`."""
    ident = info["identity"]
    lines = [
        f"config dir:    {info['config_dir']}",
        f"identity:      {ident['public_key']}",
        f"mesh IPv4:     {ident['mesh_ipv4']}/16",
        f"mesh IPv6:     {ident['mesh_ipv6']}/64",
    ]
    wg = info["wireguard"]
    if wg is None:
        lines.append("WireGuard key: (none)")
    elif wg["source"] == "derived":
        lines.append(f"WireGuard key: {wg['public_key']} (derived from the identity, as the "
                     "original meshguard does; `meshguard up` saves it)")
    else:
        at = wg["vouched_at"]  # set whenever vouched
        state = f"vouched at {_iso(at)}" if wg["vouched"] and at is not None else "NOT vouched"
        lines.append(f"WireGuard key: {wg['public_key']} ({state})")
    cert = info["certificate"]
    if cert is None:
        lines.append("certificate:   (none)")
    else:
        expiry = _iso(cert["expires_at"]) if cert["expires_at"] else "never"
        state = "valid" if cert["valid"] else f"INVALID: {cert['problem']}"
        lines += [
            f"certificate:   {cert['dns_name']} (v{cert['version']}, {state})",
            f"  org:         {cert['org_key']} (domain {cert['org_domain']})",
            f"  issued:      {_iso(cert['issued_at'])}, expires: {expiry}",
        ]
    if info["org"] is not None:
        lines.append(f"org key:       {info['org']['public_key']} (domain {info['org']['domain']})")
    lines.append(f"trusted peers: {len(info['peers'])}")
    lines += [f"  {p['name']:<20} {p['public_key']}  {p['mesh_ipv4']}" for p in info["peers"]]
    lines.append(f"trusted orgs:  {len(info['orgs'])}")
    lines += [f"  {o['name']:<20} {o['public_key']}  *.{o['domain']}.mesh" for o in info["orgs"]]
    lines.append(f"revocations:   {len(info['revocations'])}")
    for r in info["revocations"]:
        what = f"{r['org_key']} -> {r['key']}" if r["kind"] == "cert" else r["key"]
        label = f"  ({r['label']})" if r["label"] else ""
        lines.append(f"  {r['kind']:<4} {what}{label}")
    lines.append(f"vouched nodes: {len(info['vouches'])}")
    for v in info["vouches"]:
        state = "org vouch" if v["admits"] else (
            "not admitted: org not trusted here" if v["admission"] == "untrusted"
            else "not admitted: revoked")
        try:
            when = _iso(v["lamport"])
        except (ValueError, OverflowError, OSError):  # a lamport beyond the calendar
            when = str(v["lamport"])
        lines.append(f"  {v['node_key']}  by {v['org_domain']} ({state}, signed {when})")
    lines += [f"warning: {p}" for p in info["problems"]]
    return "\n".join(lines) + "\n"
