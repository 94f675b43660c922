"""Key files byte for byte (docs/compatibility.md), atomic writes, typed load errors."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from meshguard.crypto.keys import Ed25519PrivateKey, X25519PrivateKey
from meshguard.errors import ConfigError
from meshguard.identity import keygen, store
from meshguard.identity.errors import (
    AlreadyExistsError,
    CertificateError,
    IdentityMissingError,
    KeyFileError,
)
from meshguard.identity.wgkey import vouch_wg_key
from meshguard.testing.rng import SeededRng

from .helpers import make_key

VEC = json.loads((Path(__file__).resolve().parents[1] / "vectors" / "identity.json").read_text())


def test_identity_files_byte_for_byte(tmp_path: Path) -> None:
    key = Ed25519PrivateKey(bytes.fromhex(VEC["seed"]))
    store.write_files(store.identity_writes(tmp_path, key))
    assert (tmp_path / "identity.key").read_text() == VEC["identity_key_file"]
    assert (tmp_path / "identity.pub").read_text() == VEC["identity_pub_file"]
    assert (tmp_path / "identity.key").stat().st_mode & 0o777 == 0o600
    assert store.load_identity(tmp_path) == key


def test_reads_a_file_written_by_the_original(tmp_path: Path) -> None:
    # The original writes identity.key world-readable; we read it and tighten it to 0600.
    path = tmp_path / "identity.key"
    path.write_text(VEC["identity_key_file"].rstrip("\n") + "\r\n")
    os.chmod(path, 0o644)
    assert store.load_identity(tmp_path).public_key.b64() == VEC["public_key_b64"]
    assert path.stat().st_mode & 0o777 == 0o600


def test_keygen_writes_everything(tmp_path: Path) -> None:
    cfg = tmp_path / "cfg"
    keys = keygen.generate_node_keys(cfg, SeededRng(1), 1000.0, force=False)
    assert sorted(p.name for p in cfg.iterdir()) == [
        "identity.key",
        "identity.pub",
        "wireguard.key",
        "wireguard.pub",
        "wireguard.vouch",
    ]
    assert cfg.stat().st_mode & 0o777 == 0o700
    assert (cfg / "wireguard.key").stat().st_mode & 0o777 == 0o600
    assert (cfg / "wireguard.key").read_text() == keys.wireguard.b64() + "\n"
    assert (cfg / "wireguard.pub").read_text() == keys.wireguard.public_key.b64() + "\n"
    assert store.load_wireguard_key(cfg) == keys.wireguard
    vouch = store.load_wireguard_vouch(cfg, keys.identity.public_key.raw)
    assert vouch == keys.vouch
    assert vouch is not None and vouch.wg_key == keys.wireguard.public_key.raw
    with pytest.raises(AlreadyExistsError, match="--force"):
        keygen.generate_node_keys(cfg, SeededRng(2), 1000.0, force=False)
    assert store.load_identity(cfg) == keys.identity
    again = keygen.generate_node_keys(cfg, SeededRng(2), 1000.0, force=True)
    assert again.identity != keys.identity
    assert not [p for p in cfg.iterdir() if ".tmp" in p.name]


def test_rotate_wireguard_key(tmp_path: Path) -> None:
    first = keygen.generate_node_keys(tmp_path, SeededRng(1), 5000.0, force=False)
    ident_before = (tmp_path / "identity.key").read_bytes()
    second = keygen.rotate_wireguard_key(tmp_path, SeededRng(9), 4000.0)  # clock went back
    assert second.wireguard != first.wireguard
    assert second.vouch.issued_at == 5001
    assert second.vouch.supersedes(first.vouch)
    assert (tmp_path / "identity.key").read_bytes() == ident_before
    assert store.load_wireguard_vouch(tmp_path, first.identity.public_key.raw) == second.vouch


def test_rotate_needs_identity(tmp_path: Path) -> None:
    with pytest.raises(IdentityMissingError, match="meshguard keygen"):
        keygen.rotate_wireguard_key(tmp_path, SeededRng(1), 1.0)


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(IdentityMissingError, match="run `meshguard keygen`"):
        store.load_identity(tmp_path)
    with pytest.raises(IdentityMissingError, match="rotate-wg-key"):
        store.load_wireguard_key(tmp_path)
    with pytest.raises(IdentityMissingError, match="org-keygen"):
        store.load_org_key(tmp_path)
    (tmp_path / "identity.key").write_text("garbage!\n")
    with pytest.raises(KeyFileError, match="not base64"):
        store.load_identity(tmp_path)
    (tmp_path / "identity.key").write_text("AAAA\n")
    with pytest.raises(KeyFileError, match="expected 64"):
        store.load_identity(tmp_path)
    secret = make_key("a").secret_bytes()
    import base64

    (tmp_path / "identity.key").write_text(
        base64.b64encode(secret[:32] + make_key("b").public_key.raw).decode() + "\n"
    )
    with pytest.raises(KeyFileError, match="halves do not match"):
        store.load_identity(tmp_path)
    (tmp_path / "identity.key").write_bytes(b"\xff" * 10000)
    with pytest.raises(KeyFileError, match="too large"):
        store.load_identity(tmp_path)
    assert store.load_wireguard_vouch(tmp_path, make_key("a").public_key.raw) is None


def test_vouch_for_another_identity_is_ignored(tmp_path: Path) -> None:
    keys = keygen.generate_node_keys(tmp_path, SeededRng(1), 10.0, force=False)
    assert store.load_wireguard_vouch(tmp_path, make_key("z").public_key.raw) is None
    forged = vouch_wg_key(make_key("z"), keys.wireguard.public_key.raw, 99)
    store.write_files(store.wireguard_writes(tmp_path, keys.wireguard, forged))
    assert store.load_wireguard_vouch(tmp_path, keys.identity.public_key.raw) is None


def test_atomic_write_failure_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a").write_bytes(b"old")
    real_stage = store._stage
    calls = []

    def failing(w: store.FileWrite) -> Path:
        calls.append(w.path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_stage(w)

    monkeypatch.setattr(store, "_stage", failing)
    with pytest.raises(ConfigError, match="No space left"):
        store.write_files(
            [store.FileWrite(tmp_path / "a", b"new"), store.FileWrite(tmp_path / "b", b"x")]
        )
    assert (tmp_path / "a").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_secret_mode_is_set_despite_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        store.write_file(tmp_path / "s", b"x", store.SECRET_MODE)
    finally:
        os.umask(old)
    assert (tmp_path / "s").stat().st_mode & 0o777 == 0o600


def _ensure_dir_error(path: Path) -> str:
    """The ConfigError message of store.ensure_dir(path), as an unprivileged user.

    Root ignores directory modes, so as root a forked child drops to nobody (65534) first.
    """
    if os.geteuid() != 0:
        with pytest.raises(ConfigError) as info:
            store.ensure_dir(path)
        return str(info.value)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: unprivileged, report the message through the pipe
        os.close(r)
        code = 1
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            store.ensure_dir(path)
        except ConfigError as exc:
            os.write(w, str(exc).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        message = f.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "ensure_dir did not refuse"
    return message


def test_unwritable_config_dir_is_refused() -> None:
    base = Path(tempfile.mkdtemp(prefix="mg-ro-"))
    try:
        base.chmod(0o755)
        ro = base / "ro"
        ro.mkdir(mode=0o555)
        ro.chmod(0o555)
        message = _ensure_dir_error(ro / "meshguard")
        assert "MESHGUARD_CONFIG_DIR" in message, message
        assert not (ro / "meshguard").exists()
        message = _ensure_dir_error(ro)  # exists, but cannot be written
        assert "MESHGUARD_CONFIG_DIR" in message, message
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_config_dir_that_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ConfigError):
        store.ensure_dir(f)
    with pytest.raises(ConfigError, match="cannot create"):
        store.ensure_dir(f / "sub")


def test_read_public_key_argument(tmp_path: Path) -> None:
    key = make_key("k")
    pub = key.public_key
    assert store.read_public_key_argument(pub.b64()) == pub.raw
    (tmp_path / "k.pub").write_text(pub.b64() + "\n")
    assert store.read_public_key_argument(str(tmp_path / "k.pub")) == pub.raw
    (tmp_path / "k.key").write_bytes(store.secret_key_file(key))
    with pytest.raises(KeyFileError, match="secret key"):
        store.read_public_key_argument(str(tmp_path / "k.key"))
    (tmp_path / "bin.cert").write_bytes(bytes(range(256)))
    with pytest.raises(KeyFileError, match="not a key file"):
        store.read_public_key_argument(str(tmp_path / "bin.cert"))
    with pytest.raises(KeyFileError, match="no such file"):
        store.read_public_key_argument(str(tmp_path / "missing.pub"))
    with pytest.raises(KeyFileError, match="neither a file nor a base64 key"):
        store.read_public_key_argument("hello world")
    with pytest.raises(KeyFileError, match="not a 32-byte key"):
        store.read_public_key_argument("AAAA")
    with pytest.raises(KeyFileError, match="not a curve point"):
        store.read_public_key_argument("AgAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")
    with pytest.raises(KeyFileError, match="small-order"):
        store.read_public_key_argument("AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")
    with pytest.raises(KeyFileError, match="not a regular file"):
        store.read_public_key_argument(str(tmp_path))
    x = X25519PrivateKey.generate(bytes(32))
    assert len(x.public_key.raw) == 32


def test_certificate_file(tmp_path: Path) -> None:
    with pytest.raises(IdentityMissingError):
        store.read_certificate(tmp_path / "none.cert")
    assert store.load_node_certificate(tmp_path) is None
    (tmp_path / "node.cert").write_bytes(b"\x01" * 100)
    with pytest.raises(CertificateError, match="100 bytes"):
        store.load_node_certificate(tmp_path)


def test_load_node_keys_refreshes_a_stale_vouch(tmp_path: Path) -> None:
    made = keygen.generate_node_keys(tmp_path, SeededRng(3), 100.0, force=False)
    loaded = keygen.load_node_keys(tmp_path, 200.0)
    assert loaded == made  # matching vouch: nothing rewritten
    # The user drops in another WireGuard key by hand: the next start vouches for it.
    other = X25519PrivateKey.generate(bytes(range(32)))
    (tmp_path / "wireguard.key").write_text(other.b64() + "\n")
    fresh = keygen.load_node_keys(tmp_path, 50.0)  # clock behind the old vouch
    assert fresh.wireguard == other
    assert fresh.vouch.wg_key == other.public_key.raw and fresh.vouch.verify()
    assert fresh.vouch.issued_at == 101 and fresh.vouch.supersedes(made.vouch)
    assert (tmp_path / "wireguard.pub").read_text() == other.public_key.b64() + "\n"
    assert store.load_wireguard_vouch(tmp_path, made.identity.public_key.raw) == fresh.vouch
    (tmp_path / "wireguard.vouch").unlink()
    assert keygen.load_node_keys(tmp_path, 300.0).vouch.issued_at == 300
