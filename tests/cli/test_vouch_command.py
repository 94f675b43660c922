"""`meshguard org-vouch` (no daemon): the vouch file in the original's layout and output, the
errors a user can hit (one line, non-zero exit), `org-revoke` of a vouched node, and `show`."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshguard.cli.main import main
from meshguard.crypto.keys import Ed25519PrivateKey, b64encode
from meshguard.identity import keygen, store
from meshguard.identity.trust import TrustStore
from meshguard.identity.vouch import VOUCH_LEN, VOUCHED_DIR, vouch_valid
from meshguard.rng import SystemRng
from meshguard.testing.rng import SeededRng
from meshguard.wire.org import OrgVouch


@pytest.fixture
def admin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cfg = tmp_path / "admin"
    keygen.generate_node_keys(cfg, SystemRng(), 1_750_000_000.0, force=False)
    org = keygen.generate_org_key(cfg, SystemRng(), force=False)
    (cfg / store.TRUSTED_ORGS).mkdir(parents=True)
    (cfg / store.TRUSTED_ORGS / "fleet.org").write_bytes(store.public_key_file(
        org.public_key.raw))
    monkeypatch.setenv("MESHGUARD_CONFIG_DIR", str(cfg))
    monkeypatch.chdir(tmp_path)
    return cfg


NODE = Ed25519PrivateKey(SeededRng(4).bytes(32)).public_key.raw


def test_org_vouch_writes_the_originals_file(admin: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    pub = tmp_path / "solo.pub"
    pub.write_bytes(store.public_key_file(NODE))
    assert main(["org-vouch", str(pub)]) == 0
    out = capsys.readouterr().out.splitlines()
    path = admin / VOUCHED_DIR / f"{NODE[:8].hex()}.vouch"
    assert out[:3] == ["Vouch signed for external node.", f"  node pubkey: {b64encode(NODE)}",
                       f"  saved to:    {path}"]
    raw = path.read_bytes()
    assert len(raw) == VOUCH_LEN
    v = OrgVouch.from_bytes(raw)
    org_pub = store.load_org_key(admin).public_key.raw
    assert raw[:32] == org_pub and raw[32:64] == NODE and vouch_valid(v)
    assert TrustStore.load(admin).admit(NODE, None, float(v.lamport)).reason == "org vouch"
    # again: nothing changes
    assert main(["org-vouch", b64encode(NODE)]) == 0
    assert "already vouches" in capsys.readouterr().out
    assert path.read_bytes() == raw


@pytest.mark.parametrize("arg", ["not-a-key", "AAAA", "missing/node.pub"])
def test_bad_node_keys_get_one_error_line(admin: Path, arg: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["org-vouch", arg]) == 1
    err = capsys.readouterr().err
    assert err.startswith("meshguard: error: ") and err.count("\n") == 1
    assert not (admin / VOUCHED_DIR).exists()


def test_without_the_org_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MESHGUARD_CONFIG_DIR", str(tmp_path / "member"))
    assert main(["org-vouch", b64encode(NODE)]) != 0
    err = capsys.readouterr().err
    assert "org-keygen" in err and err.count("\n") == 1


def test_org_revoke_ends_the_vouch_and_show_lists_it(admin: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["org-vouch", b64encode(NODE)]) == 0
    capsys.readouterr()
    assert main(["show"]) == 0
    shown = capsys.readouterr().out
    assert "vouched nodes: 1" in shown and f"{b64encode(NODE)}  by" in shown
    assert "(org vouch, signed " in shown
    assert main(["org-revoke", b64encode(NODE), "--out", "solo.revoke"]) == 0
    assert "revoked the vouch for" in capsys.readouterr().out
    assert not list((admin / VOUCHED_DIR).iterdir())
    trust = TrustStore.load(admin)
    assert not trust.admit(NODE, None, 1_750_000_000.0)
    # a vouch for a node this org revoked is refused
    assert main(["org-vouch", b64encode(NODE)]) == 1
    assert "revoked" in capsys.readouterr().err
    assert not list((admin / VOUCHED_DIR).iterdir())
