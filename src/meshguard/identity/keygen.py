"""Creating and replacing keys: node identity, WireGuard key (with its vouch), org keypair,
and writing certificates. Randomness and time are injected (the CLI passes the real ones)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from meshguard.crypto.keys import Ed25519PrivateKey, X25519PrivateKey
from meshguard.errors import ConfigError
from meshguard.identity import store
from meshguard.identity.certificate import NodeCertificate, sign_certificate
from meshguard.identity.errors import CertificateError
from meshguard.identity.names import CERT_NAME_LEN, validate_label
from meshguard.identity.wg_key_source import derived_wireguard_key, node_wireguard_key
from meshguard.identity.wgkey import WgKeyVouch, vouch_wg_key
from meshguard.rng import Rng


@dataclass(frozen=True)
class NodeKeys:
    identity: Ed25519PrivateKey
    wireguard: X25519PrivateKey
    vouch: WgKeyVouch
    unsaved: str | None = None  # load_node_keys could not write what it meant to (why)


def generate_node_keys(config_dir: Path, rng: Rng, now_wall: float, force: bool) -> NodeKeys:
    """Write a new identity and its WireGuard key (refuses to replace an identity without
    force). The WireGuard key is the one derived from the identity, as the original meshguard
    derives it (identity/wg_key_source.py), so the node has the same WireGuard key under
    either; `rotate-wg-key` replaces it with a random one."""
    store.ensure_dir(config_dir)
    store.refuse_overwrite(
        config_dir / store.IDENTITY_KEY,
        force,
        "pass --force to replace it (the node gets a new identity and mesh address)",
    )
    identity = Ed25519PrivateKey(rng.bytes(32))
    wg = derived_wireguard_key(identity)
    vouch = vouch_wg_key(identity, wg.public_key.raw, int(now_wall))
    store.write_files(
        store.identity_writes(config_dir, identity)
        + store.wireguard_writes(config_dir, wg, vouch)
    )
    return NodeKeys(identity, wg, vouch)


def rotate_wireguard_key(config_dir: Path, rng: Rng, now_wall: float) -> NodeKeys:
    """Replace the WireGuard key; the identity signs the new one with a later issued_at."""
    identity = store.load_identity(config_dir)
    store.ensure_dir(config_dir)
    previous = store.load_wireguard_vouch(config_dir, identity.public_key.raw)
    issued = int(now_wall)
    if previous is not None and issued <= previous.issued_at:
        issued = previous.issued_at + 1  # a rotation must supersede, even if the clock went back
    wg = X25519PrivateKey.generate(rng.bytes(32))
    vouch = vouch_wg_key(identity, wg.public_key.raw, issued)
    store.write_files(store.wireguard_writes(config_dir, wg, vouch))
    return NodeKeys(identity, wg, vouch)


def generate_org_key(config_dir: Path, rng: Rng, force: bool) -> Ed25519PrivateKey:
    org_dir = config_dir / store.ORG_DIR
    store.ensure_dir(config_dir)
    store.refuse_overwrite(
        org_dir / store.ORG_KEY,
        force,
        "pass --force to replace it (every certificate it signed stops being trusted)",
    )
    store.ensure_dir(org_dir)
    key = Ed25519PrivateKey(rng.bytes(32))
    store.write_files(store.org_writes(config_dir, key))
    return key


def issue_certificate_file(
    config_dir: Path,
    node_key: bytes,
    name: str,
    out: Path,
    now_wall: float,
    expires_at: int = 0,
    force: bool = False,
) -> NodeCertificate:
    """Sign `node_key` as `name` with this machine's org key and write the 186-byte cert."""
    validate_label(name, "node name", CERT_NAME_LEN)
    org = store.load_org_key(config_dir)
    issued = int(now_wall)
    if expires_at and expires_at <= issued:
        raise CertificateError("the expiry date is in the past; pick a later --expires")
    store.refuse_overwrite(out, force, "pass --force to overwrite it or choose --out")
    cert = sign_certificate(org, node_key, name, issued, expires_at)
    store.write_file(out, cert.to_bytes())
    return cert


def load_node_keys(config_dir: Path, now_wall: float) -> NodeKeys:
    """What a daemon needs at start: identity, WireGuard key and a vouch that matches it.

    If the vouch is missing, does not verify, or is for another WireGuard key (say, the user
    replaced wireguard.key by hand), a fresh one is signed and written. A dir without
    wireguard.key (one made by the original meshguard) gets the key derived from the identity
    written, with its public key and vouch, in one atomic write (identity/wg_key_source.py).
    In a dir that cannot be written the keys are returned all the same, with `unsaved` saying
    why: the derived key is derived again next time, and peers learn the key from the signed
    gossip record, not from these files.
    """
    identity = store.load_identity(config_dir)
    choice = node_wireguard_key(config_dir, identity)
    wg = choice.key
    vouch = store.load_wireguard_vouch(config_dir, identity.public_key.raw)
    writes: list[store.FileWrite] = []
    if vouch is None or vouch.wg_key != wg.public_key.raw:
        issued = int(now_wall)
        if vouch is not None and issued <= vouch.issued_at:
            issued = vouch.issued_at + 1
        vouch = vouch_wg_key(identity, wg.public_key.raw, issued)
        writes = store.wireguard_writes(config_dir, wg, vouch)[1:]  # pub + vouch
    if choice.derived:
        writes = store.wireguard_writes(config_dir, wg, vouch)  # key, pub and vouch together
    unsaved = None
    if writes:
        try:
            store.write_files(writes)
        except ConfigError as exc:
            unsaved = str(exc)
    return NodeKeys(identity, wg, vouch, unsaved)
