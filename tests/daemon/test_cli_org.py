"""`meshguard org-revoke` and `meshguard org-alias` (no daemon): signed files, the local
`revocations` file, --import on another member, and the errors a user can hit."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from meshguard.cli.main import main
from meshguard.crypto.keys import Ed25519PrivateKey
from meshguard.identity import keygen, store
from meshguard.identity.trust import TrustStore
from meshguard.mesh import org_gossip
from meshguard.rng import SystemRng


@pytest.fixture
def admin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cfg = tmp_path / "admin"
    org = keygen.generate_org_key(cfg, SystemRng(), force=False)
    (cfg / store.TRUSTED_ORGS).mkdir(parents=True)
    (cfg / store.TRUSTED_ORGS / "fleet.org").write_bytes(store.public_key_file(
        org.public_key.raw))
    monkeypatch.setenv("MESHGUARD_CONFIG_DIR", str(cfg))
    monkeypatch.chdir(tmp_path)
    return cfg


def node_cert(admin: Path, tmp: Path, name: str) -> tuple[bytes, Path]:
    key = Ed25519PrivateKey(SystemRng().bytes(32)).public_key.raw
    out = tmp / f"{name}.cert"
    keygen.issue_certificate_file(admin, key, name, out, time.time())
    return key, out


def test_org_revoke_signs_writes_and_records_locally(admin: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    key, cert = node_cert(admin, tmp_path, "web-1")
    assert main(["org-revoke", str(cert)]) == 0
    assert "web-1.revoke" in capsys.readouterr().out
    text = (tmp_path / "web-1.revoke").read_text()
    rev = next(r for r in map(org_gossip.parse_line, text.splitlines()) if r)
    assert rev.node_key == key and org_gossip.revocation_valid(rev)
    trust = TrustStore.load(admin)
    assert trust.is_cert_revoked(rev.org_key, key)
    assert not trust.admit(key, cert.read_bytes(), time.time()).admitted


def test_import_on_another_member(admin: Path, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    key, cert = node_cert(admin, tmp_path, "db")
    assert main(["org-revoke", str(cert), "--out", str(tmp_path / "x.revoke")]) == 0
    member = tmp_path / "member"
    monkeypatch.setenv("MESHGUARD_CONFIG_DIR", str(member))
    # a member that does not trust the org refuses it
    assert main(["org-revoke", "--import", str(tmp_path / "x.revoke")]) == 1
    (member / store.TRUSTED_ORGS).mkdir(parents=True)
    (member / store.TRUSTED_ORGS / "fleet.org").write_bytes(
        (admin / store.TRUSTED_ORGS / "fleet.org").read_bytes())
    assert main(["org-revoke", "--import", str(tmp_path / "x.revoke")]) == 0
    assert not TrustStore.load(member).admit(key, cert.read_bytes(), time.time()).admitted
    # a tampered file is refused
    bad = tmp_path / "bad.revoke"
    text = (tmp_path / "x.revoke").read_text()
    rev = next(r for r in map(org_gossip.parse_line, text.splitlines()) if r)
    forged = org_gossip.CertRevocation(rev.org_key, bytes(32), rev.revoked_at, rev.signature)
    bad.write_text(org_gossip.format_line(forged))
    assert main(["org-revoke", "--import", str(bad)]) == 1


def test_org_revoke_errors(admin: Path, tmp_path: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["org-revoke"]) == 1
    other = tmp_path / "other"
    keygen.generate_org_key(other, SystemRng(), force=False)
    _, foreign = node_cert(other, tmp_path, "elsewhere")
    assert main(["org-revoke", str(foreign)]) == 1
    assert "another org" in capsys.readouterr().err


def test_org_alias(admin: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["org-alias", "acme"]) == 0
    ann = org_gossip.parse_alias_line((admin / store.ORG_DIR / "alias").read_text())
    assert ann is not None and ann.alias == "acme" and org_gossip.alias_valid(ann)
    assert main(["org-alias", "abc123"]) == 1  # looks like an org domain
    assert main(["org-alias", "Bad_Name"]) == 1
