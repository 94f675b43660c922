"""The config dir on disk (docs/compatibility.md#the-config-dir): key files, certificates, writes.

    identity.key      base64(seed(32) || public(32)) + "\\n", mode 0600
    identity.pub      base64(public(32)) + "\\n"
    wireguard.key     base64(X25519 private(32)) + "\\n", mode 0600 (the `wg genkey` format)
    wireguard.pub     base64(X25519 public(32)) + "\\n" (the `wg pubkey` format)
    wireguard.vouch   base64(wg_pub(32) || issued_at(u64 LE) || Ed25519 signature(64)) + "\\n"
                      (the identity's signature over the WireGuard key, see wgkey.py)
    org/org.key, org/org.pub   the org keypair, same formats as the identity
    node.cert         a NodeCertificate, raw binary

Every write goes to a temporary file in the target's directory, is fsynced, then renamed
over the target (and the directory fsynced), so a crash never leaves a half-written file.
Several files written together are all staged before the first rename. Secrets are created
0600 from the start (never chmod-ed after the data is written).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from meshguard.crypto.keys import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
    X25519PrivateKey,
    b64encode,
)
from meshguard.errors import ConfigError, KeyFormatError
from meshguard.identity.certificate import MAX_LEN as CERT_MAX_LEN
from meshguard.identity.certificate import NodeCertificate
from meshguard.identity.errors import AlreadyExistsError, IdentityMissingError, KeyFileError
from meshguard.identity.wgkey import WgKeyVouch

IDENTITY_KEY = "identity.key"
IDENTITY_PUB = "identity.pub"
WIREGUARD_KEY = "wireguard.key"
WIREGUARD_PUB = "wireguard.pub"
WIREGUARD_VOUCH = "wireguard.vouch"
NODE_CERT = "node.cert"
ORG_DIR = "org"
ORG_KEY = "org.key"
ORG_PUB = "org.pub"
AUTHORIZED_KEYS = "authorized_keys"
TRUSTED_ORGS = "trusted_orgs"
REVOCATIONS = "revocations"
REVOCATIONS_LOCK = ".revocations.lock"

SECRET_MODE = 0o600
PUBLIC_MODE = 0o644
DIR_MODE = 0o700
MAX_KEY_FILE = 4096  # anything larger is not a key file


@dataclass(frozen=True)
class FileWrite:
    path: Path
    data: bytes
    mode: int = PUBLIC_MODE


def _os_problem(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def ensure_dir(path: Path, mode: int = DIR_MODE) -> None:
    """Create `path` (and parents) if needed and check that it is a writable directory."""
    try:
        path.mkdir(mode=mode, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create {path} ({_os_problem(exc)}); set MESHGUARD_CONFIG_DIR to a "
            "writable directory or run as root"
        ) from None
    if not path.is_dir():
        raise ConfigError(f"{path} is not a directory; move it away or set MESHGUARD_CONFIG_DIR")
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(
            f"cannot write to {path} (permission denied); set MESHGUARD_CONFIG_DIR to a "
            "writable directory or run as root"
        )


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process (EPERM): alive
        return True
    return True


def _remove_stale_temps(target: Path) -> None:
    """Delete the temporary files that writers killed before their rename left beside
    `target` (`.<name>.tmp<pid>-<n>` of a process that no longer runs). Readers never see
    them (hidden names), but each would keep a copy of what it held, secrets included."""
    prefix = f".{target.name}.tmp"
    try:
        names = os.listdir(target.parent)
    except OSError:
        return
    for name in names:
        if not name.startswith(prefix):
            continue
        pid, dash, n = name[len(prefix) :].partition("-")
        if not (pid.isdigit() and dash and n.isdigit()) or int(pid) == os.getpid():
            continue
        if not _pid_alive(int(pid)):
            with contextlib.suppress(OSError):
                os.unlink(target.parent / name)


def _stage(w: FileWrite) -> Path:
    """Write w.data to a fresh temporary file beside w.path; return its path."""
    base = f".{w.path.name}.tmp"
    for n in range(1000):
        tmp = w.path.with_name(f"{base}{os.getpid()}-{n}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, w.mode)
        except FileExistsError:
            continue
        try:
            os.fchmod(fd, w.mode)  # the umask may have narrowed it; never widen secrets
            view = memoryview(w.data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        return tmp
    raise ConfigError(f"cannot create a temporary file beside {w.path}; remove stale .tmp files")


def write_files(writes: Sequence[FileWrite]) -> None:
    """Atomically replace each file; all are staged before any is renamed into place.

    A kill at any point leaves each target whole, old or new; temporary files left by a
    killed writer are removed by the next write of the same file."""
    for w in writes:
        _remove_stale_temps(w.path)
    staged: list[tuple[Path, Path]] = []
    try:
        for w in writes:
            staged.append((_stage(w), w.path))
    except OSError as exc:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        target = writes[len(staged)].path
        raise ConfigError(
            f"cannot write {target} ({_os_problem(exc)}); check the permissions of "
            f"{target.parent} or set MESHGUARD_CONFIG_DIR"
        ) from None
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, target in staged:
        os.replace(tmp, target)
    for parent in {target.parent for _, target in staged}:
        _fsync_dir(parent)


def write_file(path: Path, data: bytes, mode: int = PUBLIC_MODE) -> None:
    write_files([FileWrite(path, data, mode)])


@contextlib.contextmanager
def locked(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock (flock) on lock_path, created 0600 if needed."""
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, SECRET_MODE)
    except OSError as exc:
        raise ConfigError(
            f"cannot create {lock_path} ({_os_problem(exc)}); check the permissions of "
            f"{lock_path.parent}"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def remove_file(path: Path) -> None:
    path.unlink(missing_ok=True)
    _fsync_dir(path.parent)


# --- encodings ---


def secret_key_file(key: Ed25519PrivateKey) -> bytes:
    return (b64encode(key.secret_bytes()) + "\n").encode("ascii")


def public_key_file(raw: bytes) -> bytes:
    return (b64encode(bytes(raw)) + "\n").encode("ascii")


def _read_small(path: Path, what: str, fix: str) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_KEY_FILE + 1)
    except FileNotFoundError:
        raise IdentityMissingError(f"no {what} at {path}; {fix}") from None
    except IsADirectoryError:
        raise KeyFileError(f"{path} is a directory, not a {what}; {fix}") from None
    except OSError as exc:
        problem = _os_problem(exc)
        raise ConfigError(f"cannot read {path} ({problem}); check its permissions") from None
    return data


def _decode_b64(data: bytes, path: Path, what: str, length: int, fix: str) -> bytes:
    if len(data) > MAX_KEY_FILE:
        raise KeyFileError(f"{path} does not hold a valid {what} (too large); {fix}")
    try:
        text = data.decode("ascii").strip()
        raw = base64.b64decode(text, validate=True)
    except (UnicodeDecodeError, binascii.Error, ValueError):
        raise KeyFileError(f"{path} does not hold a valid {what} (not base64); {fix}") from None
    if len(raw) != length:
        raise KeyFileError(
            f"{path} does not hold a valid {what} "
            f"(decodes to {len(raw)} bytes, expected {length}); {fix}"
        )
    return raw


def parse_secret_key_file(data: bytes, path: Path, what: str, fix: str) -> Ed25519PrivateKey:
    raw = _decode_b64(data, path, what, 64, fix)
    try:
        return Ed25519PrivateKey.from_secret_bytes(raw)
    except KeyFormatError as exc:
        raise KeyFileError(f"{path}: {exc}; {fix}") from None


def _heal_public(path: Path, raw: bytes) -> None:
    """Make an existing public key file match the secret key just loaded. Files written
    together are renamed one by one, so a crash can leave `identity.key` new and
    `identity.pub` old; the secret key is the truth. Best effort (read-only dirs stay)."""
    want = public_key_file(raw)
    try:
        with path.open("rb") as f:
            have = f.read(MAX_KEY_FILE + 1)
    except OSError:
        return
    if have != want:
        with contextlib.suppress(OSError, ConfigError):
            write_file(path, want)


def _tighten(path: Path) -> None:
    """Secret files readable by others (the original wrote them 0644) are made 0600."""
    try:
        if path.stat().st_mode & 0o077:
            os.chmod(path, SECRET_MODE)
    except OSError:
        pass


# --- identity ---

_KEYGEN_FIX = "run `meshguard keygen` to create one"


def load_identity(config_dir: Path) -> Ed25519PrivateKey:
    path = config_dir / IDENTITY_KEY
    data = _read_small(path, "identity key", _KEYGEN_FIX)
    key = parse_secret_key_file(
        data, path, "identity key", "restore it from a backup or run `meshguard keygen --force`"
    )
    _tighten(path)
    _heal_public(config_dir / IDENTITY_PUB, key.public_key.raw)
    return key


def identity_writes(config_dir: Path, key: Ed25519PrivateKey) -> list[FileWrite]:
    return [
        FileWrite(config_dir / IDENTITY_KEY, secret_key_file(key), SECRET_MODE),
        FileWrite(config_dir / IDENTITY_PUB, public_key_file(key.public_key.raw)),
    ]


# --- WireGuard key ---

_WG_FIX = "run `meshguard rotate-wg-key` to create a new one"


def load_wireguard_key(config_dir: Path) -> X25519PrivateKey:
    path = config_dir / WIREGUARD_KEY
    data = _read_small(path, "WireGuard key", _WG_FIX)
    key = X25519PrivateKey(_decode_b64(data, path, "WireGuard private key", 32, _WG_FIX))
    _tighten(path)
    _heal_public(config_dir / WIREGUARD_PUB, key.public_key.raw)
    return key


def load_wireguard_vouch(config_dir: Path, identity_pub: bytes) -> WgKeyVouch | None:
    """The stored vouch, or None if it is missing, malformed or does not verify."""
    path = config_dir / WIREGUARD_VOUCH
    try:
        data = _read_small(path, "WireGuard key vouch", _WG_FIX)
        raw = _decode_b64(data, path, "WireGuard key vouch", 104, _WG_FIX)
    except (IdentityMissingError, KeyFileError):
        return None
    vouch = WgKeyVouch.from_bytes(identity_pub, raw)
    return vouch if vouch.verify() else None


def wireguard_writes(config_dir: Path, key: X25519PrivateKey, vouch: WgKeyVouch) -> list[FileWrite]:
    return [
        FileWrite(config_dir / WIREGUARD_KEY, (key.b64() + "\n").encode("ascii"), SECRET_MODE),
        FileWrite(config_dir / WIREGUARD_PUB, public_key_file(key.public_key.raw)),
        FileWrite(config_dir / WIREGUARD_VOUCH, public_key_file(vouch.to_bytes())),
    ]


# --- org keypair ---

_ORG_FIX = "run `meshguard org-keygen` on the org admin machine"


def load_org_key(config_dir: Path) -> Ed25519PrivateKey:
    path = config_dir / ORG_DIR / ORG_KEY
    data = _read_small(path, "org key", _ORG_FIX)
    key = parse_secret_key_file(data, path, "org key", "restore it from a backup")
    _tighten(path)
    _heal_public(config_dir / ORG_DIR / ORG_PUB, key.public_key.raw)
    return key


def org_writes(config_dir: Path, key: Ed25519PrivateKey) -> list[FileWrite]:
    org = config_dir / ORG_DIR
    return [
        FileWrite(org / ORG_KEY, secret_key_file(key), SECRET_MODE),
        FileWrite(org / ORG_PUB, public_key_file(key.public_key.raw)),
    ]


# --- certificates ---


def read_certificate(path: Path) -> NodeCertificate:
    fix = "pass a .cert file written by `meshguard org-sign`"
    try:
        with path.open("rb") as f:
            data = f.read(CERT_MAX_LEN + 1)
    except FileNotFoundError:
        raise IdentityMissingError(f"no certificate at {path}; {fix}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path} ({_os_problem(exc)}); {fix}") from None
    return NodeCertificate.from_bytes(data)


def load_node_certificate(config_dir: Path) -> NodeCertificate | None:
    """The node's own certificate, None when there is none (raises if it is corrupt)."""
    path = config_dir / NODE_CERT
    if not path.exists():
        return None
    return read_certificate(path)


# --- public keys given on the command line ---


def read_public_key_argument(arg: str, what: str = "public key") -> bytes:
    """An Ed25519 public key from base64 text or from a file holding one; validated."""
    fix = "pass a base64 key (as printed by `meshguard export`) or a .pub file"
    path = Path(arg)
    data: bytes | None = None
    try:
        if path.is_file():
            data = _read_small(path, what, fix)
    except OSError:
        data = None
    if data is None:
        if path.exists():
            raise KeyFileError(f"{arg} is not a regular file; {fix}")
        text = arg.strip()
        if len(text) != 44 and ("/" in text or text.endswith((".pub", ".org", ".key"))):
            raise KeyFileError(f"no such file: {arg}; {fix}")
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise KeyFileError(f"{arg!r} is neither a file nor a base64 key; {fix}") from None
        source = repr(arg)
    else:
        if len(data) > MAX_KEY_FILE:
            raise KeyFileError(f"{arg} is not a key file (too large); {fix}")
        try:
            raw = base64.b64decode(data.decode("ascii").strip(), validate=True)
        except (UnicodeDecodeError, binascii.Error, ValueError):
            raise KeyFileError(f"{arg} is not a key file; {fix}") from None
        source = arg
    if len(raw) == 64:
        raise KeyFileError(
            f"{source} is a secret key; pass the matching public key (never share .key files)"
        )
    if len(raw) != 32:
        raise KeyFileError(f"{source} decodes to {len(raw)} bytes, not a 32-byte key; {fix}")
    try:
        Ed25519PublicKey(raw)
    except KeyFormatError as exc:
        raise KeyFileError(f"{source}: {exc}; {fix}") from None
    return raw


def exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def refuse_overwrite(path: Path, force: bool, fix: str) -> None:
    if not force and exists(path):
        raise AlreadyExistsError(f"{path} already exists; {fix}")


__all__ = [
    "AUTHORIZED_KEYS",
    "IDENTITY_KEY",
    "IDENTITY_PUB",
    "NODE_CERT",
    "REVOCATIONS",
    "TRUSTED_ORGS",
    "WIREGUARD_KEY",
    "WIREGUARD_PUB",
    "WIREGUARD_VOUCH",
    "FileWrite",
    "ensure_dir",
    "load_identity",
    "load_node_certificate",
    "load_org_key",
    "load_wireguard_key",
    "load_wireguard_vouch",
    "read_certificate",
    "read_public_key_argument",
    "write_file",
    "write_files",
]
