"""Known answers from files the original Zig meshguard 0.10.0 wrote (tests/vectors/zig).

Each file is read the way a user migrating from the original would read it: through the
config dir code and the CLI, and every value the original printed for it (expected.md) is
checked. Where the original's format is deterministic, meshguard must write the same bytes
for the same key material.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest

from meshguard.cli.main import main
from meshguard.crypto.keys import Ed25519PrivateKey, X25519PrivateKey
from meshguard.errors import ConfigError
from meshguard.identity import store
from meshguard.identity.addressing import mesh_ipv4, mesh_ipv6, org_domain
from meshguard.identity.certificate import V1, V1_LEN, V2_LEN, NodeCertificate, sign_certificate
from meshguard.identity.errors import IdentityMissingError
from meshguard.identity.keygen import generate_node_keys, load_node_keys, rotate_wireguard_key
from meshguard.identity.names import node_dns_name
from meshguard.identity.trust import TrustStore
from meshguard.testing.rng import SeededRng

ZIG = Path(__file__).resolve().parents[1] / "vectors" / "zig"


@dataclass(frozen=True)
class Node:
    name: str
    ed25519: str  # "public key (Ed25519)" as the original printed it
    x25519: str  # "public key (WG X25519)": the WireGuard key the original derives
    ipv4: str  # "mesh IP"
    has_cert: bool


def _expected() -> tuple[dict[str, Node], str, str]:
    """Parse expected.md, so the test checks exactly what the original printed."""
    nodes: dict[str, Node] = {}
    org_pub = domain = ""
    section = ""
    fields: dict[str, str] = {}
    for line in [*(ZIG / "expected.md").read_text().splitlines(), "## end"]:
        if line.startswith("## "):
            if section.startswith("node-"):
                nodes[section] = Node(
                    section,
                    fields["public key (Ed25519)"],
                    fields["public key (WG X25519)"],
                    fields["mesh IP"],
                    (ZIG / section / "node.cert").exists(),
                )
            elif section == "org":
                org_pub, domain = fields["public key"], fields["domain"]
            section = line[3:].split()[0]
            fields = {}
        elif ":" in line and section:
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    return nodes, org_pub, domain


NODES, ORG_PUB, ORG_DOMAIN_MESH = _expected()
ORG_CERT_ISSUED_AT = 1796118824  # issued_at in both node.cert files (org-sign time)


def test_expected_md_parsed() -> None:
    assert sorted(NODES) == ["node-a", "node-b", "node-c"]
    assert [n.has_cert for n in NODES.values()] == [True, True, False]
    assert ORG_PUB and ORG_DOMAIN_MESH.endswith(".mesh")


def _config_dir(tmp_path: Path, node: str) -> Path:
    """A config dir as a user migrating from the original would have it (plus the org)."""
    cfg = tmp_path / node
    shutil.copytree(ZIG / node, cfg)
    for p in cfg.iterdir():
        p.chmod(0o600 if p.name.endswith(".key") else 0o644)
    cfg.chmod(0o700)
    return cfg


@pytest.mark.parametrize("node", sorted(NODES))
def test_identity_files_load_to_the_printed_key_and_addresses(tmp_path: Path, node: str) -> None:
    want = NODES[node]
    cfg = _config_dir(tmp_path, node)
    key = store.load_identity(cfg)
    assert key.public_key.b64() == want.ed25519
    assert (ZIG / node / "identity.pub").read_text() == want.ed25519 + "\n"
    assert str(mesh_ipv4(key.public_key.raw)) == want.ipv4
    # The original printed no IPv6; its interface identifier starts with the same two hash
    # bytes as the IPv4 address (none of these hit the 0/255 adjustments).
    v6 = mesh_ipv6(key.public_key.raw)
    assert v6.packed[:8] == bytes.fromhex("fd996d6700000000")
    assert v6.packed[8:10] == bytes(int(o) for o in want.ipv4.split(".")[2:])


@pytest.mark.parametrize("node", sorted(NODES))
def test_meshguard_writes_identity_files_byte_identical(tmp_path: Path, node: str) -> None:
    key = store.load_identity(_config_dir(tmp_path, node))
    out = tmp_path / "out"
    out.mkdir()
    store.write_files(store.identity_writes(out, key))
    for name in (store.IDENTITY_KEY, store.IDENTITY_PUB):
        assert (out / name).read_bytes() == (ZIG / node / name).read_bytes(), name
    assert (out / store.IDENTITY_KEY).stat().st_mode & 0o777 == 0o600


def test_org_key_files(tmp_path: Path) -> None:
    cfg = tmp_path / "admin"
    cfg.mkdir(mode=0o700)
    shutil.copytree(ZIG / "org", cfg / store.ORG_DIR)
    (cfg / store.ORG_DIR / store.ORG_KEY).chmod(0o600)
    org = store.load_org_key(cfg)
    assert org.public_key.b64() == ORG_PUB
    assert (ZIG / "org" / "org.pub").read_text() == ORG_PUB + "\n"
    assert org_domain(org.public_key.raw) + ".mesh" == ORG_DOMAIN_MESH
    out = tmp_path / "out"
    store.ensure_dir(out)
    store.ensure_dir(out / store.ORG_DIR)
    store.write_files(store.org_writes(out, org))
    for name in (store.ORG_KEY, store.ORG_PUB):
        assert (out / store.ORG_DIR / name).read_bytes() == (ZIG / "org" / name).read_bytes()


def _org() -> Ed25519PrivateKey:
    raw = base64.b64decode((ZIG / "org" / "org.key").read_text().strip(), validate=True)
    return Ed25519PrivateKey.from_secret_bytes(raw)


@pytest.mark.parametrize("node", [n for n, v in sorted(NODES.items()) if v.has_cert])
def test_certificate_fields_and_signature(node: str) -> None:
    raw = (ZIG / node / "node.cert").read_bytes()
    assert len(raw) == V2_LEN  # the original pads version 1 up to 314 bytes
    cert = NodeCertificate.from_bytes(raw)
    assert cert.version == V1
    assert base64.b64encode(cert.org_key).decode() == ORG_PUB
    assert base64.b64encode(cert.node_key).decode() == NODES[node].ed25519
    assert cert.name == node
    assert cert.issued_at == ORG_CERT_ISSUED_AT
    assert cert.expires_at == 0  # org-sign without --expires: never
    assert cert.flags == 0
    assert cert.signature_valid()
    assert cert.problem(ORG_CERT_ISSUED_AT + 1, cert.node_key) is None
    assert node_dns_name(cert.name, org_domain(cert.org_key)) == f"{node}.{ORG_DOMAIN_MESH}"
    # One flipped bit in the signed part and the org signature no longer verifies.
    tampered = bytearray(raw)
    tampered[100] ^= 1  # issued_at
    assert not NodeCertificate.from_bytes(bytes(tampered)).signature_valid()


@pytest.mark.parametrize("node", [n for n, v in sorted(NODES.items()) if v.has_cert])
def test_meshguard_signs_the_same_certificate(node: str) -> None:
    """Ed25519 signatures are deterministic: the same org key over the same fields gives the
    original's bytes; meshguard writes 186 bytes where the original zero-pads to 314."""
    raw = (ZIG / node / "node.cert").read_bytes()
    node_pub = base64.b64decode(NODES[node].ed25519)
    ours = sign_certificate(_org(), node_pub, node, ORG_CERT_ISSUED_AT).to_bytes()
    assert len(ours) == V1_LEN
    assert ours == raw[:V1_LEN]
    assert raw[V1_LEN:] == bytes(V2_LEN - V1_LEN)
    assert struct.unpack_from("<q", raw, 97)[0] == ORG_CERT_ISSUED_AT


def _trusting_store(tmp_path: Path) -> TrustStore:
    cfg = tmp_path / "peer"
    store.ensure_dir(cfg)
    ts = TrustStore.load(cfg)
    ts.add("acme", base64.b64decode(ORG_PUB), org=True)
    return TrustStore.load(cfg)


def test_a_node_trusting_the_org_admits_its_certificates(tmp_path: Path) -> None:
    ts = _trusting_store(tmp_path)
    now = ORG_CERT_ISSUED_AT + 60
    for node in ("node-a", "node-b"):
        key = base64.b64decode(NODES[node].ed25519)
        cert = (ZIG / node / "node.cert").read_bytes()
        adm = ts.admit(key, cert, now)
        assert adm.admitted, adm
        assert (adm.reason, adm.name, adm.org_domain) == (
            "org certificate",
            node,
            ORG_DOMAIN_MESH.removesuffix(".mesh"),
        )
    a_cert = (ZIG / "node-a" / "node.cert").read_bytes()
    b_key = base64.b64decode(NODES["node-b"].ed25519)
    c_key = base64.b64decode(NODES["node-c"].ed25519)
    assert ts.admit(b_key, a_cert, now).reason == "certificate belongs to another node key"
    assert ts.admit(c_key, a_cert, now).reason == "certificate belongs to another node key"
    assert ts.admit(c_key, None, now).reason == "unknown key"
    # Without the org in trusted_orgs, the same certificate admits nobody.
    bare = TrustStore.load(tmp_path / "nobody")
    a_key = base64.b64decode(NODES["node-a"].ed25519)
    assert bare.admit(a_key, a_cert, now).reason == "certificate from an untrusted org"


def _show_json(
    cfg: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> dict[str, object]:
    monkeypatch.setenv("MESHGUARD_CONFIG_DIR", str(cfg))
    assert main(["show", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert isinstance(info, dict)
    return info


@pytest.mark.parametrize("node", sorted(NODES))
def test_show_on_a_migrated_config_dir(
    tmp_path: Path, node: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    want = NODES[node]
    info = _show_json(_config_dir(tmp_path, node), monkeypatch, capsys)
    assert info["identity"] == {
        "public_key": want.ed25519,
        "mesh_ipv4": want.ipv4,
        "mesh_ipv6": str(mesh_ipv6(base64.b64decode(want.ed25519))),
    }
    cert = info["certificate"]
    if want.has_cert:
        assert isinstance(cert, dict)
        assert cert["valid"] is True and cert["problem"] is None
        assert cert["dns_name"] == f"{node}.{ORG_DOMAIN_MESH}"
        assert cert["org_key"] == ORG_PUB
        assert cert["issued_at"] == ORG_CERT_ISSUED_AT and cert["expires_at"] is None
    else:
        assert cert is None
    # No wireguard.key: the key derived from the identity, the one the original printed.
    assert info["wireguard"] == {
        "public_key": want.x25519,
        "source": "derived",
        "vouched": False,
        "vouched_at": None,
    }
    assert info["problems"] == []


@pytest.mark.parametrize("node", sorted(NODES))
def test_show_prints_the_originals_wireguard_key(
    tmp_path: Path, node: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`meshguard show` prints the WireGuard key the original's `config show` printed, and
    writes nothing into the migrated dir."""
    cfg = _config_dir(tmp_path, node)
    before = {p.name: p.read_bytes() for p in cfg.iterdir()}
    monkeypatch.setenv("MESHGUARD_CONFIG_DIR", str(cfg))
    assert main(["show"]) == 0
    out = capsys.readouterr().out
    assert f"WireGuard key: {NODES[node].x25519} (derived from the identity" in out
    assert "warning" not in out
    assert {p.name: p.read_bytes() for p in cfg.iterdir()} == before


@pytest.mark.parametrize("node", sorted(NODES))
def test_up_loads_the_derived_key_and_saves_it_with_its_vouch(tmp_path: Path, node: str) -> None:
    """What `up` loads (load_node_keys, the daemon's preflight) on a dir made by the original:
    the derived key, written once with its public key and a vouch; nothing else changes."""
    cfg = _config_dir(tmp_path, node)
    before = {p.name: p.read_bytes() for p in cfg.iterdir()}
    wall = ORG_CERT_ISSUED_AT + 60
    keys = load_node_keys(cfg, wall)
    assert keys.wireguard.public_key.b64() == NODES[node].x25519
    assert keys.identity.public_key.b64() == NODES[node].ed25519
    assert keys.vouch.verify() and keys.vouch.issued_at == wall
    assert keys.vouch.wg_key == keys.wireguard.public_key.raw
    assert store.load_wireguard_key(cfg) == keys.wireguard
    assert (cfg / store.WIREGUARD_PUB).read_text() == NODES[node].x25519 + "\n"
    assert (cfg / store.WIREGUARD_KEY).stat().st_mode & 0o777 == 0o600
    after = {p.name: p.read_bytes() for p in cfg.iterdir()}
    assert {k: v for k, v in after.items() if k in before} == before
    assert sorted(set(after) - set(before)) == sorted(
        [store.WIREGUARD_KEY, store.WIREGUARD_PUB, store.WIREGUARD_VOUCH]
    )
    assert keys.unsaved is None
    again = load_node_keys(cfg, wall + 100)  # a restart: the same key, the same vouch
    assert again.wireguard == keys.wireguard and again.vouch == keys.vouch


def test_up_runs_on_a_migrated_dir_it_cannot_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only config dir: `up` still gets the derived key (and is told what was not
    saved); the next start derives the same key again."""
    cfg = _config_dir(tmp_path, "node-b")
    before = sorted(p.name for p in cfg.iterdir())

    def read_only(writes: object) -> None:
        raise ConfigError(f"cannot write {cfg / store.WIREGUARD_KEY} (Read-only file system)")

    monkeypatch.setattr(store, "write_files", read_only)
    for _ in range(2):
        keys = load_node_keys(cfg, ORG_CERT_ISSUED_AT + 60)
        assert keys.wireguard.public_key.b64() == NODES["node-b"].x25519
        assert keys.unsaved is not None and "Read-only" in keys.unsaved
        assert keys.vouch.verify()
    assert sorted(p.name for p in cfg.iterdir()) == before


def test_a_rotated_key_wins_and_the_derived_one_never_comes_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    node = "node-a"
    cfg = _config_dir(tmp_path, node)
    wall = ORG_CERT_ISSUED_AT + 60
    derived = load_node_keys(cfg, wall)  # the first `up` saves the derived key at `wall`
    rotated = rotate_wireguard_key(cfg, SeededRng(7), wall - 1000)  # with a clock behind
    assert rotated.wireguard != derived.wireguard
    assert rotated.vouch.issued_at == wall + 1  # still supersedes the derived key's vouch
    assert load_node_keys(cfg, wall + 5).wireguard == rotated.wireguard
    info = _show_json(cfg, monkeypatch, capsys)
    assert info["wireguard"] == {
        "public_key": rotated.wireguard.public_key.b64(),
        "source": "file",
        "vouched": True,
        "vouched_at": wall + 1,
    }
    # wireguard.key lost after the rotation: its vouch says the derived key is no longer
    # this node's, so neither `up` nor `show` falls back to it
    (cfg / store.WIREGUARD_KEY).unlink()
    with pytest.raises(IdentityMissingError, match="rotated"):
        load_node_keys(cfg, wall + 10)
    assert not (cfg / store.WIREGUARD_KEY).exists()
    info = _show_json(cfg, monkeypatch, capsys)
    assert info["wireguard"] is None
    assert any("rotate-wg-key" in p for p in info["problems"])  # type: ignore[union-attr]
    # another rotation is the way out, again vouched later than everything before
    again = rotate_wireguard_key(cfg, SeededRng(8), wall + 20)
    assert again.vouch.issued_at == wall + 20 > rotated.vouch.issued_at
    assert load_node_keys(cfg, wall + 30).wireguard == again.wireguard


@pytest.mark.parametrize("node", sorted(NODES))
def test_the_derived_wireguard_key_is_the_identitys_signing_scalar(node: str) -> None:
    """Why a derived key is as secret as identity.key (docs/security.md#assumptions-and-limits):
    its X25519 public key is the Montgomery form, u = (1 + y) / (1 - y), of the Ed25519
    public key, so the two share one secret scalar, and whoever holds the WireGuard key can
    sign as the identity. An independent key (`rotate-wg-key`) breaks the relation."""
    p = 2**255 - 19
    ed = base64.b64decode(NODES[node].ed25519)
    y = int.from_bytes(ed, "little") & ((1 << 255) - 1)
    u = (1 + y) * pow(1 - y, p - 2, p) % p
    assert u.to_bytes(32, "little") == base64.b64decode(NODES[node].x25519)
    rotated = X25519PrivateKey.generate(hashlib.sha256(ed).digest())
    assert u.to_bytes(32, "little") != rotated.public_key.raw


def test_keygen_gives_a_new_node_the_originals_wireguard_key(tmp_path: Path) -> None:
    """A node made by `meshguard keygen` has the WireGuard key the original would use for
    the same identity."""
    keys = generate_node_keys(tmp_path / "new", SeededRng(3), 1_800_000_000, force=False)
    assert keys.wireguard == _original_wireguard_key(keys.identity)
    assert store.load_wireguard_key(tmp_path / "new") == keys.wireguard
    assert keys.vouch.verify()


def _original_wireguard_key(identity: Ed25519PrivateKey) -> X25519PrivateKey:
    """The X25519 key the original uses for WireGuard: libsodium's
    crypto_sign_ed25519_sk_to_curve25519, the first half of SHA-512(seed), clamped."""
    return X25519PrivateKey.generate(hashlib.sha512(identity.seed).digest()[:32])


@pytest.mark.parametrize("node", sorted(NODES))
def test_the_originals_wireguard_key_carries_over(
    tmp_path: Path, node: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Writing the original's derived key as wireguard.key keeps the node's WireGuard public
    key across the migration: meshguard vouches for it and shows what the original printed."""
    cfg = _config_dir(tmp_path, node)
    identity = store.load_identity(cfg)
    wg = _original_wireguard_key(identity)
    assert wg.public_key.b64() == NODES[node].x25519
    (cfg / store.WIREGUARD_KEY).write_text(wg.b64() + "\n")
    (cfg / store.WIREGUARD_KEY).chmod(0o600)
    keys = load_node_keys(cfg, ORG_CERT_ISSUED_AT + 60)
    assert keys.vouch.verify() and keys.vouch.wg_key == wg.public_key.raw
    info = _show_json(cfg, monkeypatch, capsys)
    wg_info = info["wireguard"]
    assert isinstance(wg_info, dict)
    assert NODES[node].x25519 in wg_info.values()


def test_cli_trusts_the_originals_key_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`meshguard trust` takes the original's .pub files as they are, for an org and a node."""
    cfg = _config_dir(tmp_path, "node-b")
    monkeypatch.setenv("MESHGUARD_CONFIG_DIR", str(cfg))
    assert main(["trust", str(ZIG / "org" / "org.pub"), "--org", "--name", "acme"]) == 0
    assert main(["trust", str(ZIG / "node-c" / "identity.pub"), "--name", "node-c"]) == 0
    capsys.readouterr()
    info = _show_json(cfg, monkeypatch, capsys)
    assert info["orgs"] == [
        {"name": "acme", "public_key": ORG_PUB, "domain": ORG_DOMAIN_MESH.removesuffix(".mesh")}
    ]
    peers = info["peers"]
    assert isinstance(peers, list) and len(peers) == 1
    assert peers[0]["name"] == "node-c" and peers[0]["public_key"] == NODES["node-c"].ed25519
    # the trust files meshguard wrote hold the original's bytes
    assert (cfg / store.TRUSTED_ORGS / "acme.org").read_bytes() == (
        ZIG / "org" / "org.pub"
    ).read_bytes()
    assert (cfg / store.AUTHORIZED_KEYS / "node-c.pub").read_bytes() == (
        ZIG / "node-c" / "identity.pub"
    ).read_bytes()
    # and the original's certificates are now admitted here
    ts = TrustStore.load(cfg)
    a_key = base64.b64decode(NODES["node-a"].ed25519)
    adm = ts.admit(a_key, (ZIG / "node-a" / "node.cert").read_bytes(), ORG_CERT_ISSUED_AT + 1)
    assert adm.admitted and adm.name == "node-a"
