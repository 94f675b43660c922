"""The trust store: who may join the mesh.

    authorized_keys/<name>.pub    one trusted node key (base64 + "\\n")
    trusted_orgs/<name>.org       one trusted org key; nodes with a valid cert from it are trusted
    revocations                   persistent refusals, one per line (format below)
    vouched/<hex16>.vouch         an org's signed vouch for a node without its certificate
                                  (identity/vouch.py); admits it while the org is trusted

`revocations` is a text file that wins over everything else: a revoked key is refused even if
its .pub file is copied back, and a revoked org certificate is refused even though the org is
still trusted. Lines (blank lines and `#` comments ignored; a trailing label is informational):

    key  <base64 node key>                  [label]   refuse this node however it is vouched for
    org  <base64 org key>                   [label]   refuse every certificate of this org
    cert <base64 org key> <base64 node key> [label]   refuse this org's certificate of this node

File names are DNS labels (see names.py), so they can never escape their directory. Files
whose names do not end in `.pub` / `.org` are ignored, as are hidden files; unreadable or
malformed key files are skipped and listed in `problems` (a malformed `revocations` file is an
error, since ignoring it could re-admit a revoked key).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from pathlib import Path

from meshguard.crypto.keys import KEY_LEN, Ed25519PublicKey, b64encode
from meshguard.errors import ConfigError, KeyFormatError, MeshguardError
from meshguard.identity import store, vouch
from meshguard.identity.addressing import org_domain
from meshguard.identity.certificate import NodeCertificate
from meshguard.identity.errors import CertificateError, TrustError
from meshguard.identity.names import is_dns_label, validate_label
from meshguard.identity.wg_devices import DEVICES_DIR
from meshguard.wire.org import OrgVouch

PEER_SUFFIX = ".pub"
ORG_SUFFIX = ".org"
REVOCATIONS_HEADER = (
    "# meshguard revocations: `key <node>`, `org <org>` or `cert <org> <node>` (base64 keys)\n"
)


@dataclass(frozen=True)
class Admission:
    admitted: bool
    reason: str
    name: str | None = None
    org_domain: str | None = None
    # the trusted orgs whose certificate or vouch admits the node (policy MemberInfo.orgs)
    orgs: tuple[bytes, ...] = ()

    def __bool__(self) -> bool:
        return self.admitted


@dataclass(frozen=True)
class Revocation:
    kind: str  # "key", "org" or "cert"
    key: bytes  # the node key ("key", "cert") or the org key ("org")
    org_key: bytes | None = None  # "cert" only
    label: str = ""

    def same_target(self, other: Revocation) -> bool:
        """Whether both refuse the same thing (labels aside)."""
        return (self.kind, self.key, self.org_key) == (other.kind, other.key, other.org_key)

    def line(self) -> str:
        parts = [self.kind]
        if self.org_key is not None:
            parts.append(b64encode(self.org_key))
        parts.append(b64encode(self.key))
        if self.label:
            parts.append(self.label)
        return " ".join(parts) + "\n"


def _decode_key(text: str) -> bytes | None:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == KEY_LEN else None


def parse_revocations(text: str, path: Path) -> list[Revocation]:
    out: list[Revocation] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        kind = fields[0]
        nkeys = 2 if kind == "cert" else 1
        keys = [_decode_key(f) for f in fields[1 : 1 + nkeys]]
        if kind not in ("key", "org", "cert") or len(keys) != nkeys or None in keys:
            raise ConfigError(
                f"{path}:{lineno}: not a revocation line; fix or delete that line "
                "(`key <base64>`, `org <base64>` or `cert <org base64> <node base64>`)"
            )
        label = " ".join(fields[1 + nkeys :])
        ks = [k for k in keys if k is not None]
        if kind == "cert":
            out.append(Revocation(kind, ks[1], ks[0], label))
        else:
            out.append(Revocation(kind, ks[0], None, label))
    return out


def _read_key_dir(directory: Path, suffix: str, problems: list[str]) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    try:
        entries = sorted(directory.iterdir())
    except FileNotFoundError:
        return found
    except OSError as exc:
        problems.append(f"cannot list {directory}: {exc.strerror}")
        return found
    for path in entries:
        if not path.name.endswith(suffix) or path.name.startswith("."):
            continue
        name = path.name[: -len(suffix)]
        try:
            data = path.read_bytes()[: store.MAX_KEY_FILE + 1]
            raw = _decode_key(data.decode("ascii").strip())
            if raw is None:
                raise KeyFormatError("not a base64 32-byte key")
            Ed25519PublicKey(raw)
        except (OSError, UnicodeDecodeError, KeyFormatError) as exc:
            problems.append(f"{path}: ignored ({exc})")
            continue
        found[name] = raw
    return found


@dataclass
class TrustStore:
    config_dir: Path
    peers: dict[str, bytes] = field(default_factory=dict)  # name -> node key
    orgs: dict[str, bytes] = field(default_factory=dict)  # name -> org key
    revocations: list[Revocation] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    vouches: dict[tuple[bytes, bytes], OrgVouch] = field(default_factory=dict)  # (org, node)
    vouch_paths: dict[tuple[bytes, bytes], Path] = field(default_factory=dict)

    @classmethod
    def load(cls, config_dir: Path) -> TrustStore:
        problems: list[str] = []
        peers = _read_key_dir(config_dir / store.AUTHORIZED_KEYS, PEER_SUFFIX, problems)
        orgs = _read_key_dir(config_dir / store.TRUSTED_ORGS, ORG_SUFFIX, problems)
        path = config_dir / store.REVOCATIONS
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            text = ""
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read {path} ({exc}); fix its permissions") from None
        vouched = vouch.load_vouches(config_dir)
        return cls(config_dir, peers, orgs, parse_revocations(text, path),
                   problems + vouched.problems, vouched.vouches, vouched.paths)

    # --- queries ---

    def is_empty(self) -> bool:
        """No trusted peer and no trusted org: nobody can be admitted."""
        return not self.peers and not self.orgs

    def _revoked(self, kind: str, key: bytes, org_key: bytes | None = None) -> bool:
        return any(
            r.kind == kind and r.key == key and r.org_key == org_key for r in self.revocations
        )

    def is_key_revoked(self, node_key: bytes) -> bool:
        return self._revoked("key", bytes(node_key))

    def is_org_revoked(self, org_key: bytes) -> bool:
        return self._revoked("org", bytes(org_key))

    def is_cert_revoked(self, org_key: bytes, node_key: bytes) -> bool:
        return self._revoked("cert", bytes(node_key), bytes(org_key))

    def peer_names(self, node_key: bytes) -> list[str]:
        return [n for n, k in self.peers.items() if k == bytes(node_key)]

    def org_names(self, org_key: bytes) -> list[str]:
        return [n for n, k in self.orgs.items() if k == bytes(org_key)]

    def admit(self, node_key: bytes, certificate: bytes | None, now_wall: float) -> Admission:
        """May `node_key` (an Ed25519 identity) join, given its certificate bytes if any?"""
        node_key = bytes(node_key)
        if self.is_key_revoked(node_key):
            return Admission(False, "node key revoked")
        cert: NodeCertificate | None = None
        cert_problem = "no certificate"
        if certificate is not None:
            try:
                cert = NodeCertificate.from_bytes(certificate)
            except CertificateError:
                cert_problem = "malformed certificate"
            else:
                cert_problem = self._certificate_problem(cert, node_key, now_wall) or ""
        cert_ok = cert is not None and not cert_problem
        domain = org_domain(cert.org_key) if cert is not None and cert_ok else None
        vouchers = self.vouching_orgs(node_key)
        orgs = tuple(dict.fromkeys(
            ([cert.org_key] if cert is not None and cert_ok else []) + list(vouchers)))
        names = self.peer_names(node_key)
        if names:
            return Admission(True, "authorized key", names[0], domain, orgs)
        if cert is not None and cert_ok:
            return Admission(True, "org certificate", cert.name, domain, orgs)
        if vouchers:
            return Admission(True, "org vouch", None, org_domain(vouchers[0]), orgs)
        if certificate is None:
            return Admission(False, "unknown key")
        return Admission(False, cert_problem)

    def vouch_problem(self, v: OrgVouch) -> str | None:
        """Why the (signature-checked) vouch `v` admits nobody here, or None if it does."""
        if not self.org_names(v.org_key):
            return "untrusted"
        if self.is_org_revoked(v.org_key) or self.is_key_revoked(v.node_key) \
                or self.is_cert_revoked(v.org_key, v.node_key):
            return "revoked"
        return None

    def vouching_orgs(self, node_key: bytes) -> tuple[bytes, ...]:
        """The trusted, unrevoked orgs whose vouch for `node_key` stands (sorted)."""
        node_key = bytes(node_key)
        return tuple(sorted(org for (org, node), v in self.vouches.items()
                            if node == node_key and self.vouch_problem(v) is None))

    def _certificate_problem(
        self, cert: NodeCertificate, node_key: bytes, now_wall: float
    ) -> str | None:
        if cert.node_key != node_key:
            return "certificate belongs to another node key"
        if not self.org_names(cert.org_key):
            return "certificate from an untrusted org"
        if self.is_org_revoked(cert.org_key):
            return "org revoked"
        if self.is_cert_revoked(cert.org_key, node_key):
            return "certificate revoked"
        return cert.problem(now_wall, node_key)

    # --- changes (each one atomic on disk, then applied in memory) ---

    def _key_path(self, name: str, org: bool) -> Path:
        if org:
            return self.config_dir / store.TRUSTED_ORGS / f"{name}{ORG_SUFFIX}"
        return self.config_dir / store.AUTHORIZED_KEYS / f"{name}{PEER_SUFFIX}"

    def add(self, name: str, key: bytes, *, org: bool = False, replace: bool = False) -> Path:
        """Trust `key` under `name`; raises TrustError if revoked or the name is taken."""
        validate_label(name, "name")
        key = bytes(key)
        Ed25519PublicKey(key)
        table = self.orgs if org else self.peers
        if self.is_key_revoked(key) or (org and self.is_org_revoked(key)):
            raise TrustError(
                f"{b64encode(key)} is revoked; pass --force to lift the revocation and trust it"
            )
        existing = table.get(name)
        if existing is not None and existing != key and not replace:
            raise TrustError(
                f"name {name!r} is already used for another key; choose another --name "
                "or pass --force to replace it"
            )
        directory = self.config_dir / (store.TRUSTED_ORGS if org else store.AUTHORIZED_KEYS)
        store.ensure_dir(directory, 0o755)
        path = self._key_path(name, org)
        store.write_file(path, store.public_key_file(key))
        table[name] = key
        return path

    def add_vouch(self, v: OrgVouch) -> str:
        """Keep a vouch (from `org-vouch` or the mesh) in vouched/: "accepted", "known" (this
        org already vouches for the node: the first vouch stays), "untrusted", "revoked" or
        "invalid" (bad signature). Cheap checks first; the file is written atomically."""
        if v.target in self.vouches:
            return "known"
        problem = self.vouch_problem(v)
        if problem is not None:
            return problem
        if not vouch.vouch_valid(v):
            return "invalid"
        self.vouch_paths[v.target] = vouch.write_vouch(self.config_dir, v)
        self.vouches[v.target] = v
        return "accepted"

    def _drop_vouch(self, target: tuple[bytes, bytes]) -> None:
        path = self.vouch_paths.pop(target, None)
        self.vouches.pop(target, None)
        if path is not None:
            store.remove_file(path)

    def _reread_revocations(self) -> list[Revocation]:
        path = self.config_dir / store.REVOCATIONS
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read {path} ({exc}); fix its permissions") from None
        return parse_revocations(text, path)

    def _write_revocations(self, revocations: list[Revocation]) -> None:
        text = REVOCATIONS_HEADER + "".join(r.line() for r in revocations)
        store.write_file(self.config_dir / store.REVOCATIONS, text.encode("utf-8"))
        self.revocations = revocations

    def revoke(self, revocation: Revocation) -> bool:
        """Record a revocation and remove the matching trust files; False if already there.

        The file is re-read under a lock, so revocations written meanwhile by another process
        (the CLI and a daemon) are kept. The revocation is written before any trust file is
        removed, so a crash between the two steps errs on the side of refusing.
        """
        with store.locked(self.config_dir / store.REVOCATIONS_LOCK):
            current = self._reread_revocations()
            self.revocations = current
            known = any(r.same_target(revocation) for r in current)
            if not known:
                self._write_revocations([*current, revocation])
        if revocation.kind == "cert" and revocation.org_key is not None:
            self._drop_vouch((revocation.org_key, revocation.key))  # that org's vouch ends
        if known:
            return False
        if revocation.kind == "key":
            for name in self.peer_names(revocation.key):
                store.remove_file(self._key_path(name, org=False))
                del self.peers[name]
        elif revocation.kind == "org":
            for name in self.org_names(revocation.key):
                store.remove_file(self._key_path(name, org=True))
                del self.orgs[name]
        return True

    def lift(self, key: bytes) -> bool:
        """Remove every `key`/`org` revocation of `key` (used by `trust --force`)."""
        with store.locked(self.config_dir / store.REVOCATIONS_LOCK):
            current = self._reread_revocations()
            keep = [r for r in current if not (r.kind in ("key", "org") and r.key == key)]
            self.revocations = current
            if len(keep) == len(current):
                return False
            self._write_revocations(keep)
        return True


def default_name(arg: str, key: bytes, org: bool) -> str:
    """The name `trust` uses without --name: the file's stem if it is a DNS label, else one
    derived from the key (`peer-<hex8>` or `org-<domain>`)."""
    p = Path(arg)
    for suffix in (".pub", ".org"):
        if p.name.endswith(suffix) and p.is_file():
            stem = p.name[: -len(suffix)]
            if stem != "identity" and is_dns_label(stem):
                return stem
    return f"org-{org_domain(key)}" if org else f"peer-{bytes(key)[:4].hex()}"


def resolve_revocation(trust: TrustStore, target: str, org: str | None = None) -> Revocation:
    """What `revoke <target> [--org ORG]` means.

    target is a trusted peer name, a trusted org name, a base64 key or a key file. With --org
    (an org name or key), only that org's certificate for the node is revoked.
    """
    if org is not None:
        org_key = trust.orgs.get(org) or store.read_public_key_argument(org, "org key")
        node_key = trust.peers.get(target) or store.read_public_key_argument(target, "node key")
        return Revocation("cert", node_key, org_key, target if is_dns_label(target) else "")
    if target in trust.peers:
        return Revocation("key", trust.peers[target], None, target)
    if target in trust.orgs:
        return Revocation("org", trust.orgs[target], None, target)
    try:
        key = store.read_public_key_argument(target)
    except MeshguardError as exc:
        if is_dns_label(target):
            raise TrustError(
                f"no trusted peer or org named {target!r}; see `meshguard show` for the names"
            ) from None
        raise exc from None
    names = trust.org_names(key)
    if names:
        return Revocation("org", key, None, names[0])
    names = trust.peer_names(key)
    return Revocation("key", key, None, names[0] if names else "")


def trust_stamp(config_dir: Path) -> tuple[tuple[str, int, int], ...]:
    """A cheap fingerprint of the trust files (names, sizes, mtimes): when it changes, a
    daemon should `TrustStore.load` again (and read `devices/` again, identity/wg_devices.py).
    Missing directories simply contribute nothing."""
    entries: list[tuple[str, int, int]] = []
    # services/ and policies/ too: the daemon's policies follow them (daemon/policy_runner.py);
    # vouched/: the org vouches (identity/vouch.py); devices/: export-wg's (wg_devices.py)
    for sub in (store.AUTHORIZED_KEYS, store.TRUSTED_ORGS, "services", "services/peer",
                "services/org", "policies", vouch.VOUCHED_DIR, DEVICES_DIR):
        directory = config_dir / sub
        try:
            st = directory.stat()
            entries.append((sub, st.st_size, st.st_mtime_ns))
            paths = sorted(directory.iterdir())
        except OSError:
            continue
        for p in paths:
            try:
                st = p.stat()
            except OSError:
                continue
            entries.append((f"{sub}/{p.name}", st.st_size, st.st_mtime_ns))
    try:
        st = (config_dir / store.REVOCATIONS).stat()
        entries.append((store.REVOCATIONS, st.st_size, st.st_mtime_ns))
    except OSError:
        pass
    return tuple(entries)
