"""Org vouches: an org admin's signature admitting a node that holds no certificate of the org
(docs/policy.md#org-vouches, docs/mesh-dns-and-org-revocation.md#org-vouches).

A vouch is the original meshguard's, byte for byte. The org signs

    Ed25519(org key, node key(32) || lamport(u64 LE))      lamport = unix seconds

and the config dir's `vouched/` holds one vouch a file, 136 bytes, named
`<first 8 bytes of the node key in hex>.vouch`:

    0   32  org public key
    32  32  vouched node public key
    64   8  lamport, u64 little-endian
    72  64  Ed25519 signature

The same 136 bytes are the item of the OrgTrustVouch gossip message (0x43, wire/org.py). A
second org's vouch for the same node goes to `<node hex16>-<org hex16>.vouch` (the original has
one file a node); every `*.vouch` file is read whatever its name. Files that are not exactly a
vouch with a valid signature are ignored, counted and listed in `problems` (one line each).
Whether a vouch admits anyone is the trust store's decision (identity/trust.py): its org must
be trusted and not revoked, and neither the node nor the (org, node) pair revoked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from meshguard.crypto.keys import Ed25519PrivateKey, ed25519_verify
from meshguard.errors import WireFormatError
from meshguard.identity import store
from meshguard.wire.org import VOUCH_ITEM_LEN, OrgVouch, vouch_message

VOUCHED_DIR = "vouched"
VOUCH_SUFFIX = ".vouch"
VOUCH_LEN = VOUCH_ITEM_LEN  # 136
MAX_VOUCH_FILES = 4096  # more files than this are not read (each costs a signature check)

__all__ = ["VOUCHED_DIR", "VOUCH_LEN", "OrgVouch", "VouchDir", "load_vouches", "parse_vouch",
           "remove_vouch", "sign_vouch", "vouch_file_name", "vouch_valid", "write_vouch"]


def sign_vouch(org: Ed25519PrivateKey, node_key: bytes, lamport: int) -> OrgVouch:
    """The org vouches for `node_key` at `lamport` (unix seconds)."""
    node_key = bytes(node_key)
    return OrgVouch(org.public_key.raw, node_key, lamport,
                    org.sign(vouch_message(node_key, lamport)))


def vouch_valid(v: OrgVouch) -> bool:
    """The org signature over node || lamport verifies."""
    try:
        msg = vouch_message(v.node_key, v.lamport)
    except WireFormatError:
        return False
    return len(v.org_key) == 32 and ed25519_verify(v.org_key, v.signature, msg)


def parse_vouch(data: bytes) -> OrgVouch | None:
    """A vouch file's content, or None unless it is exactly 136 bytes (no signature check)."""
    if len(data) != VOUCH_LEN:
        return None
    return OrgVouch.from_bytes(bytes(data))


def vouch_file_name(v: OrgVouch, taken_by_other_org: bool = False) -> str:
    """`<node hex16>.vouch` as the original names it; a second org's `<node>-<org>.vouch`."""
    base = v.node_key[:8].hex()
    return f"{base}-{v.org_key[:8].hex()}{VOUCH_SUFFIX}" if taken_by_other_org \
        else f"{base}{VOUCH_SUFFIX}"


@dataclass
class VouchDir:
    """The valid vouches of a config dir's `vouched/`, by (org, node), and their files."""

    vouches: dict[tuple[bytes, bytes], OrgVouch] = field(default_factory=dict)
    paths: dict[tuple[bytes, bytes], Path] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    ignored: int = 0


def load_vouches(config_dir: Path) -> VouchDir:
    """Read `vouched/`: bad files are ignored, counted and listed (one problem line each); a
    duplicate (org, node) keeps the first file in name order."""
    out = VouchDir()
    directory = config_dir / VOUCHED_DIR
    try:
        entries = sorted(directory.iterdir())
    except FileNotFoundError:
        return out
    except OSError as exc:
        out.problems.append(f"cannot list {directory}: {exc.strerror}")
        return out
    for path in entries:
        if not path.name.endswith(VOUCH_SUFFIX) or path.name.startswith("."):
            continue
        if len(out.vouches) + out.ignored >= MAX_VOUCH_FILES:
            out.problems.append(f"{directory}: more than {MAX_VOUCH_FILES} vouch files; "
                                "the rest are ignored")
            break
        problem = None
        try:
            with path.open("rb") as f:
                data = f.read(VOUCH_LEN + 1)
        except OSError as exc:
            problem = exc.strerror or type(exc).__name__
        else:
            v = parse_vouch(data)
            if v is None:
                problem = f"not a {VOUCH_LEN}-byte vouch ({len(data)} bytes)"
            elif not vouch_valid(v):
                problem = "the org signature does not verify"
            elif v.target in out.vouches:
                problem = "another file holds the same org's vouch for this node"
            else:
                out.vouches[v.target] = v
                out.paths[v.target] = path
                continue
        out.ignored += 1
        out.problems.append(f"{path}: ignored ({problem})")
    return out


def write_vouch(config_dir: Path, v: OrgVouch) -> Path:
    """Store `v` in `vouched/` atomically, as `<node hex16>.vouch` unless that file holds
    another org's vouch for the node (then `<node hex16>-<org hex16>.vouch`)."""
    directory = config_dir / VOUCHED_DIR
    store.ensure_dir(directory, 0o755)
    path = directory / vouch_file_name(v)
    try:
        with path.open("rb") as f:
            there = parse_vouch(f.read(VOUCH_LEN + 1))
    except OSError:
        there = None
    if there is not None and there.org_key != v.org_key:
        path = directory / vouch_file_name(v, taken_by_other_org=True)
    store.write_file(path, v.to_bytes())
    return path


def remove_vouch(path: Path) -> None:
    store.remove_file(path)
