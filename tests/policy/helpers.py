"""Shared set-ups of the policy tests: real keys, certificates, trust stores and members."""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path

from meshguard.crypto.keys import Ed25519PrivateKey
from meshguard.identity.certificate import NodeCertificate, sign_certificate
from meshguard.identity.trust import TrustStore
from meshguard.policy.table import MemberInfo

NOW = 1_800_000_000.0


def new_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey(os.urandom(32))


def file_name_key() -> bytes:
    """A public key whose base64 has no '/', so it can name a file."""
    while True:
        key = new_key().public_key.raw
        if b"/" not in base64.b64encode(key):
            return key


@dataclass
class Node:
    identity: Ed25519PrivateKey
    wg_public: bytes
    cert: NodeCertificate | None = None

    @property
    def key(self) -> bytes:
        return self.identity.public_key.raw


def node(org: Ed25519PrivateKey | None = None, name: str | None = None) -> Node:
    identity = new_key()
    cert = None
    if org is not None:
        assert name is not None
        cert = sign_certificate(org, identity.public_key.raw, name, int(NOW) - 10)
    return Node(identity, os.urandom(32), cert)


def member(trust: TrustStore, n: Node) -> MemberInfo:
    """The member as a daemon knows it: admitted by `trust`, named and with its org."""
    cert = n.cert.to_bytes() if n.cert is not None else None
    admission = trust.admit(n.key, cert, NOW)
    assert admission, admission.reason
    orgs = (n.cert.org_key,) if n.cert is not None and admission.org_domain else ()
    return MemberInfo(n.key, n.wg_public, admission.name, orgs)


def trust_store(cfg: Path, peers: dict[str, bytes] | None = None,
                orgs: dict[str, bytes] | None = None) -> TrustStore:
    cfg.mkdir(parents=True, exist_ok=True)
    trust = TrustStore.load(cfg)
    for name, key in (peers or {}).items():
        trust.add(name, key)
    for name, key in (orgs or {}).items():
        trust.add(name, key, org=True)
    return TrustStore.load(cfg)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path
