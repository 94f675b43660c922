"""Every offline command: success paths, and error paths that print one line, exit 1 and
leave the config dir untouched."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from meshguard.crypto.keys import Ed25519PrivateKey, X25519PrivateKey
from meshguard.identity import store
from meshguard.identity.addressing import mesh_ipv4, mesh_ipv6, org_domain
from meshguard.identity.certificate import NodeCertificate
from meshguard.identity.trust import TrustStore

from .helpers import Env, snapshot


def other_node(tmp_path: Path, name: str) -> Ed25519PrivateKey:
    key = Ed25519PrivateKey(name.encode().ljust(32, b"\x00"))
    (tmp_path / f"{name}.pub").write_bytes(store.public_key_file(key.public_key.raw))
    return key


def test_version(env: Env) -> None:
    assert env.ok("version").startswith("meshguard ")


def test_keygen_export_show(env: Env) -> None:
    out = env.ok("keygen")
    key = store.load_identity(env.cfg)
    pub = key.public_key.raw
    assert key.public_key.b64() in out
    assert str(mesh_ipv4(pub)) in out and str(mesh_ipv6(pub)) in out
    assert env.ok("export") == (env.cfg / "identity.pub").read_text()
    info = json.loads(env.ok("show", "--json"))
    assert info["identity"] == {
        "public_key": key.public_key.b64(),
        "mesh_ipv4": str(mesh_ipv4(pub)),
        "mesh_ipv6": str(mesh_ipv6(pub)),
    }
    assert info["wireguard"]["public_key"] == store.load_wireguard_key(env.cfg).public_key.b64()
    assert info["wireguard"]["vouched"] is True
    assert info["certificate"] is None and info["peers"] == [] and info["problems"] == []
    text = env.ok("show")
    assert key.public_key.b64() in text and "certificate:   (none)" in text


def test_keygen_refuses_to_overwrite(env: Env) -> None:
    env.ok("keygen")
    env.fails("keygen", match="already exists")
    before = store.load_identity(env.cfg)
    (env.cfg / "node.cert").write_bytes(b"old")
    rc, _, err = env.run("keygen", "--force")
    assert rc == 0
    assert "certifies the previous identity" in err
    assert store.load_identity(env.cfg) != before


def test_missing_identity(env: Env) -> None:
    for cmd in (["export"], ["show"], ["show", "--json"], ["rotate-wg-key"]):
        env.fails(*cmd, match="run `meshguard keygen`")


def test_unwritable_config_dir(env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a directory")
    monkeypatch.setenv("MESHGUARD_CONFIG_DIR", str(blocker / "cfg"))
    env.cfg = blocker
    env.fails("keygen", match="cannot create")
    env.fails("org-keygen", match="cannot create")


def test_trust_by_file_and_by_key(env: Env, tmp_path: Path) -> None:
    env.ok("keygen")
    bob = other_node(tmp_path, "bob")
    out = env.ok("trust", str(tmp_path / "bob.pub"))
    assert "trusted bob" in out
    carol = Ed25519PrivateKey(b"c" * 32)
    env.ok("trust", carol.public_key.b64(), "--name", "carol")
    dave = Ed25519PrivateKey(b"d" * 32)
    out = env.ok("trust", dave.public_key.b64())
    default = f"peer-{dave.public_key.raw[:4].hex()}"
    assert default in out
    assert TrustStore.load(env.cfg).peers == {
        "bob": bob.public_key.raw,
        "carol": carol.public_key.raw,
        default: dave.public_key.raw,
    }
    assert "already trusted" in env.ok("trust", str(tmp_path / "bob.pub"))
    info = json.loads(env.ok("show", "--json"))
    assert [p["name"] for p in info["peers"]] == ["bob", "carol", default]


@pytest.mark.parametrize(
    ("arg", "match"),
    [
        ("not-a-key", "neither a file nor a base64 key"),
        ("AAAA", "not a 32-byte key"),
        ("AgAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "not a curve point"),
        ("AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "small-order"),
        ("missing/peer.pub", "no such file"),
    ],
)
def test_trust_rejects_bad_keys(env: Env, arg: str, match: str) -> None:
    env.ok("keygen")
    env.fails("trust", arg, match=match)


def test_trust_rejects_secret_and_binary_files(env: Env) -> None:
    env.ok("keygen")
    env.fails("trust", str(env.cfg / "identity.key"), match="secret key")
    (env.cfg / "blob.cert").write_bytes(bytes(range(200)))
    env.fails("trust", str(env.cfg / "blob.cert"), match="not a key file")


@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden", "with space", "x" * 64, "-x"])
def test_trust_rejects_unsafe_names(env: Env, tmp_path: Path, name: str) -> None:
    env.ok("keygen")
    other_node(tmp_path, "bob")
    env.fails("trust", str(tmp_path / "bob.pub"), f"--name={name}", match="not a DNS label")
    assert not (tmp_path / "escape.pub").exists()


def test_trust_name_clash(env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env.ok("keygen")
    bob = other_node(tmp_path, "bob")
    eve = other_node(tmp_path, "eve")
    env.ok("trust", str(tmp_path / "bob.pub"), "--name", "peer")
    # No terminal: refuse without --force.
    env.fails("trust", str(tmp_path / "eve.pub"), "--name", "peer", match="--force")

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", Tty("n\n"))
    before = snapshot(env.cfg)
    rc, _, err = env.run("trust", str(tmp_path / "eve.pub"), "--name", "peer")
    assert rc == 1
    assert "already names another key; replace it? [y/N]" in err
    assert err.endswith("meshguard: error: kept the existing 'peer'; choose another --name\n")
    assert snapshot(env.cfg) == before
    assert TrustStore.load(env.cfg).peers["peer"] == bob.public_key.raw
    monkeypatch.setattr(sys, "stdin", Tty("y\n"))
    env.ok("trust", str(tmp_path / "eve.pub"), "--name", "peer")
    assert TrustStore.load(env.cfg).peers["peer"] == eve.public_key.raw
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    env.ok("trust", str(tmp_path / "bob.pub"), "--name", "peer", "--force")
    assert TrustStore.load(env.cfg).peers["peer"] == bob.public_key.raw
    assert err


def test_revoke_flow(env: Env, tmp_path: Path) -> None:
    env.ok("keygen")
    bob = other_node(tmp_path, "bob")
    env.ok("trust", str(tmp_path / "bob.pub"))
    assert "revoked key" in env.ok("revoke", "bob")
    assert not (env.cfg / "authorized_keys" / "bob.pub").exists()
    assert "already revoked" in env.ok("revoke", bob.public_key.b64())
    env.fails("trust", str(tmp_path / "bob.pub"), match="revoked; pass --force")
    env.fails("revoke", "nobody", match="no trusted peer or org named")
    env.fails("revoke", "AAA=", match="not a 32-byte key")
    info = json.loads(env.ok("show", "--json"))
    assert info["revocations"] == [
        {"kind": "key", "key": bob.public_key.b64(), "org_key": None, "label": "bob"}
    ]
    env.ok("trust", str(tmp_path / "bob.pub"), "--force")
    assert TrustStore.load(env.cfg).admit(bob.public_key.raw, None, 0).admitted


def test_org_flow(env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Org admin machine.
    org_cfg = tmp_path / "org-admin"
    monkeypatch.setenv("MESHGUARD_CONFIG_DIR", str(org_cfg))
    out = env.ok("org-keygen")
    org = store.load_org_key(org_cfg)
    assert org.public_key.b64() in out and org_domain(org.public_key.raw) in out
    assert (org_cfg / "org" / "org.key").stat().st_mode & 0o777 == 0o600
    assert (org_cfg / "org" / "org.pub").read_text() == org.public_key.b64() + "\n"
    env.cfg = org_cfg
    env.fails("org-keygen", match="already exists")
    node = other_node(tmp_path, "node1")
    out = env.ok(
        "org-sign", str(tmp_path / "node1.pub"), "--name", "node-1", "--expires", "2099-01-01"
    )
    cert_path = tmp_path / "node-1.cert"
    raw = cert_path.read_bytes()
    assert len(raw) == 186
    cert = NodeCertificate.from_bytes(raw)
    assert cert.name == "node-1" and cert.node_key == node.public_key.raw
    assert cert.org_key == org.public_key.raw and cert.expires_at == 4070908800
    assert f"node-1.{org_domain(org.public_key.raw)}.mesh" in out
    env.fails("org-sign", str(tmp_path / "node1.pub"), "--name", "node-1", match="already exists")
    env.ok(
        "org-sign",
        node.public_key.b64(),
        "--name",
        "n2",
        "--out",
        str(tmp_path / "x.cert"),
        "--expires",
        "4070908800",
    )
    assert NodeCertificate.from_bytes((tmp_path / "x.cert").read_bytes()).expires_at == 4070908800
    env.fails(
        "org-sign", str(tmp_path / "node1.pub"), "--name", "bad_name", match="not a DNS label"
    )
    env.fails("org-sign", str(tmp_path / "node1.pub"), "--name", "x" * 33, match="not a DNS label")
    env.fails(
        "org-sign",
        str(tmp_path / "node1.pub"),
        "--name",
        "n3",
        "--expires",
        "2001-01-01",
        match="in the past",
    )
    env.fails(
        "org-sign",
        str(tmp_path / "node1.pub"),
        "--name",
        "n3",
        "--expires",
        "soon",
        match="cannot read the date",
    )
    env.fails("org-sign", "garbage", "--name", "n3", match="neither a file nor a base64 key")
    # A node without an org key cannot sign.
    monkeypatch.setenv("MESHGUARD_CONFIG_DIR", str(env.cfg.parent / "plain"))
    env.cfg = env.cfg.parent / "plain"
    env.fails("org-sign", str(tmp_path / "node1.pub"), "--name", "n3", match="org-keygen")


def test_node_with_certificate(env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    org_cfg = tmp_path / "org-admin"
    node_cfg = env.cfg
    env.ok("keygen")
    monkeypatch.setenv("MESHGUARD_CONFIG_DIR", str(org_cfg))
    env.ok("org-keygen")
    env.ok(
        "org-sign",
        str(node_cfg / "identity.pub"),
        "--name",
        "web-1",
        "--out",
        str(node_cfg / "node.cert"),
    )
    org_pub = store.load_org_key(org_cfg).public_key
    monkeypatch.setenv("MESHGUARD_CONFIG_DIR", str(node_cfg))
    env.ok("trust", org_pub.b64(), "--org", "--name", "acme")
    info = json.loads(env.ok("show", "--json"))
    domain = org_domain(org_pub.raw)
    assert info["certificate"]["dns_name"] == f"web-1.{domain}.mesh"
    assert info["certificate"]["valid"] is True
    assert info["orgs"] == [{"name": "acme", "public_key": org_pub.b64(), "domain": domain}]
    # A certificate for another node shows as invalid.
    monkeypatch.setenv("MESHGUARD_CONFIG_DIR", str(org_cfg))
    other_node(tmp_path, "stranger")
    env.ok(
        "org-sign",
        str(tmp_path / "stranger.pub"),
        "--name",
        "s",
        "--out",
        str(node_cfg / "node.cert"),
        "--force",
    )
    monkeypatch.setenv("MESHGUARD_CONFIG_DIR", str(node_cfg))
    info = json.loads(env.ok("show", "--json"))
    assert info["certificate"]["valid"] is False
    assert info["certificate"]["problem"] == "certificate belongs to another node key"
    assert "INVALID" in env.ok("show")
    # Revoke the org by name.
    assert "revoked org" in env.ok("revoke", "acme")
    assert json.loads(env.ok("show", "--json"))["orgs"] == []


def test_revoke_single_certificate(env: Env, tmp_path: Path) -> None:
    env.ok("keygen")
    org = other_node(tmp_path, "acme")
    bob = other_node(tmp_path, "bob")
    env.ok("trust", str(tmp_path / "acme.pub"), "--org")
    out = env.ok("revoke", str(tmp_path / "bob.pub"), "--org", "acme")
    assert "revoked the certificate" in out
    ts = TrustStore.load(env.cfg)
    assert ts.is_cert_revoked(org.public_key.raw, bob.public_key.raw)
    assert ts.orgs == {"acme": org.public_key.raw}


def test_rotate_wg_key(env: Env) -> None:
    env.ok("keygen")
    ident = (env.cfg / "identity.key").read_bytes()
    before = store.load_wireguard_key(env.cfg)
    out = env.ok("rotate-wg-key")
    after = store.load_wireguard_key(env.cfg)
    assert after != before and after.public_key.b64() in out
    assert (env.cfg / "identity.key").read_bytes() == ident
    info = json.loads(env.ok("show", "--json"))
    assert info["wireguard"]["public_key"] == after.public_key.b64()
    assert info["wireguard"]["vouched"] is True


def test_corrupt_files_are_reported(env: Env) -> None:
    env.ok("keygen")
    (env.cfg / "node.cert").write_bytes(b"\x01" * 10)
    (env.cfg / "wireguard.vouch").write_text("junk\n")
    info = json.loads(env.ok("show", "--json"))
    assert info["certificate"] is None
    assert any("node.cert" in p for p in info["problems"])
    assert info["wireguard"]["vouched"] is False
    (env.cfg / "identity.key").write_text("junk!\n")
    env.fails("export", match="not base64")
    (env.cfg / "identity.key").write_text("junk\n")
    env.fails("export", match="decodes to 3 bytes, expected 64")


def test_console_script(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("meshguard")
    if not script.exists():
        pytest.skip("console script not installed in this environment")
    env = {**os.environ, "MESHGUARD_CONFIG_DIR": str(tmp_path / "c")}
    done = subprocess.run(
        [str(script), "keygen"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    exported = subprocess.run(
        [str(script), "export"], env=env, capture_output=True, text=True, timeout=60
    )
    assert exported.stdout == (tmp_path / "c" / "identity.pub").read_text()
    bad = subprocess.run(
        [str(script), "trust", "nope"], env=env, capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 1
    assert bad.stderr.startswith("meshguard: error: ") and bad.stderr.count("\n") == 1


def test_permission_denied_config_dir(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    env.cfg.mkdir(mode=0o500)
    real_access = os.access

    def no_write(path: object, mode: int, **kw: object) -> bool:
        if Path(str(path)) == env.cfg and mode & os.W_OK:
            return False  # as for a non-root user in a read-only dir (root bypasses modes)
        return real_access(path, mode)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "access", no_write)
    env.fails("keygen", match="permission denied")
    env.fails("trust", Ed25519PrivateKey(b"k" * 32).public_key.b64(), match="permission denied")
    env.fails("org-keygen", match="permission denied")


def test_migrated_identity_from_the_original(env: Env) -> None:
    """A config dir holding only the original's identity.key (0644, no WireGuard key)."""
    vectors = Path(__file__).resolve().parents[1] / "vectors" / "identity.json"
    vec = json.loads(vectors.read_text())
    env.cfg.mkdir()
    (env.cfg / "identity.key").write_text(vec["identity_key_file"])
    os.chmod(env.cfg / "identity.key", 0o644)
    info = json.loads(env.ok("show", "--json"))
    assert info["identity"]["public_key"] == vec["public_key_b64"]
    assert info["identity"]["mesh_ipv4"] == vec["mesh_ipv4"]
    assert info["identity"]["mesh_ipv6"] == vec["mesh_ipv6"]
    # the original's WireGuard key: the first half of SHA-512(seed) as an X25519 key
    seed = base64.b64decode(vec["identity_key_file"])[:32]
    derived = X25519PrivateKey.generate(hashlib.sha512(seed).digest()[:32]).public_key.b64()
    assert info["wireguard"] == {"public_key": derived, "source": "derived", "vouched": False,
                                 "vouched_at": None}
    assert info["problems"] == []
    assert [p.name for p in env.cfg.iterdir()] == ["identity.key"]  # `show` writes nothing
    assert env.ok("export") == vec["identity_pub_file"]
    env.ok("rotate-wg-key")
    info = json.loads(env.ok("show", "--json"))
    assert info["wireguard"]["vouched"] is True and info["problems"] == []
    assert info["wireguard"]["source"] == "file" and info["wireguard"]["public_key"] != derived
    assert (env.cfg / "identity.key").read_text() == vec["identity_key_file"]
    assert (env.cfg / "identity.key").stat().st_mode & 0o777 == 0o600
