"""Org vouches on disk and in the trust store: the original's 136-byte file read and written
byte for byte, the 40-byte signed message, and admission (only a trusted, unrevoked org's
valid vouch admits; a revocation by one org ends only that org's vouch)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from meshguard.crypto.keys import Ed25519PrivateKey, ed25519_verify
from meshguard.identity import store
from meshguard.identity.addressing import org_domain
from meshguard.identity.certificate import sign_certificate
from meshguard.identity.trust import Revocation, TrustStore, trust_stamp
from meshguard.identity.vouch import (
    VOUCH_LEN,
    VOUCHED_DIR,
    load_vouches,
    sign_vouch,
    vouch_valid,
    write_vouch,
)
from meshguard.mesh.org_gossip import sign_revocation
from meshguard.testing.rng import SeededRng
from meshguard.wire.org import OrgVouch, revoke_message

ORG = Ed25519PrivateKey(b"\x11" * 32)
OTHER_ORG = Ed25519PrivateKey(b"\x22" * 32)
NODE = Ed25519PrivateKey(b"\x33" * 32).public_key.raw
NOW = 1_750_000_000


def trust_org(cfg: Path, org: Ed25519PrivateKey, name: str) -> None:
    d = cfg / store.TRUSTED_ORGS
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{name}.org").write_bytes(store.public_key_file(org.public_key.raw))


def hand_built(org: Ed25519PrivateKey, node: bytes, lamport: int) -> bytes:
    """The original's layout, assembled field by field: org(32) node(32) lamport(u64 LE)
    signature(64) with the signature over node || lamport."""
    sig = org.sign(node + lamport.to_bytes(8, "little"))
    return org.public_key.raw + node + lamport.to_bytes(8, "little") + sig


def test_the_originals_file_reads_and_is_written_byte_for_byte(tmp_path: Path) -> None:
    raw = hand_built(ORG, NODE, NOW)
    assert len(raw) == VOUCH_LEN == 136
    d = tmp_path / VOUCHED_DIR
    d.mkdir()
    name = f"{NODE[:8].hex()}.vouch"  # the original names it by the first 8 key bytes
    (d / name).write_bytes(raw)
    loaded = load_vouches(tmp_path)
    assert loaded.problems == [] and loaded.ignored == 0
    v = loaded.vouches[(ORG.public_key.raw, NODE)]
    assert (v.org_key, v.node_key, v.lamport) == (ORG.public_key.raw, NODE, NOW)
    assert vouch_valid(v) and v.to_bytes() == raw
    # and what meshguard writes is the same file (Ed25519 signatures are deterministic)
    other = tmp_path / "other"
    path = write_vouch(other, sign_vouch(ORG, NODE, NOW))
    assert path == other / VOUCHED_DIR / name and path.read_bytes() == raw


def test_the_signed_message_is_node_and_lamport_only() -> None:
    v = sign_vouch(ORG, NODE, NOW)
    assert ed25519_verify(ORG.public_key.raw, v.signature, NODE + NOW.to_bytes(8, "little"))
    # every changed field breaks it
    assert not vouch_valid(OrgVouch(v.org_key, NODE, NOW + 1, v.signature))
    other_node = Ed25519PrivateKey(b"\x44" * 32).public_key.raw
    assert not vouch_valid(OrgVouch(v.org_key, other_node, NOW, v.signature))
    assert not vouch_valid(OrgVouch(OTHER_ORG.public_key.raw, NODE, NOW, v.signature))
    # another org-signed message over the same node is no vouch: a revocation's signature
    # (domain-separated, 101 bytes) and a certificate's (114 bytes) never verify as one
    rev = sign_revocation(ORG, NODE, NOW)
    assert len(revoke_message(ORG.public_key.raw, NODE, NOW)) != 40
    assert not vouch_valid(OrgVouch(v.org_key, NODE, NOW, rev.signature))
    cert = sign_certificate(ORG, NODE, "x", NOW)
    assert not vouch_valid(OrgVouch(v.org_key, NODE, cert.issued_at, cert.signature))


def test_bad_files_are_ignored_counted_and_listed(tmp_path: Path) -> None:
    d = tmp_path / VOUCHED_DIR
    d.mkdir()
    good = hand_built(ORG, NODE, NOW)
    forged = bytearray(good)
    forged[64] ^= 1  # the lamport changed after signing
    (d / "a-short.vouch").write_bytes(good[:-1])
    (d / "b-long.vouch").write_bytes(good + b"\0")
    (d / "c-forged.vouch").write_bytes(bytes(forged))
    (d / "d-good.vouch").write_bytes(good)
    (d / "e-duplicate.vouch").write_bytes(good)
    (d / ".hidden.vouch").write_bytes(b"junk")
    (d / "notes.txt").write_bytes(b"junk")
    (d / "f-dir.vouch").mkdir()
    loaded = load_vouches(tmp_path)
    assert list(loaded.vouches) == [(ORG.public_key.raw, NODE)]
    assert loaded.ignored == 5 and len(loaded.problems) == 5
    assert all("ignored" in p for p in loaded.problems)
    for part in ("a-short", "b-long", "c-forged", "e-duplicate", "f-dir"):
        assert sum(part in p for p in loaded.problems) == 1, part
    # the trust store loads the good one and reports the others as problems
    trust_org(tmp_path, ORG, "fleet")
    trust = TrustStore.load(tmp_path)
    assert trust.admit(NODE, None, NOW).reason == "org vouch"
    assert len(trust.problems) == 5


def test_a_trusted_orgs_vouch_admits_a_node_without_certificate(tmp_path: Path) -> None:
    trust_org(tmp_path, ORG, "fleet")
    before = TrustStore.load(tmp_path)
    assert not before.admit(NODE, None, NOW)
    stamp = trust_stamp(tmp_path)
    assert before.add_vouch(sign_vouch(ORG, NODE, NOW)) == "accepted"
    assert trust_stamp(tmp_path) != stamp  # a running daemon reloads
    for trust in (before, TrustStore.load(tmp_path)):  # in memory and from the file
        adm = trust.admit(NODE, None, NOW)
        assert adm.admitted and adm.reason == "org vouch" and adm.name is None
        assert adm.org_domain == org_domain(ORG.public_key.raw)
        assert adm.orgs == (ORG.public_key.raw,)
    # a certificate from an org we do not trust does not stand in the way
    foreign = sign_certificate(OTHER_ORG, NODE, "ext", NOW - 10).to_bytes()
    assert before.admit(NODE, foreign, NOW).reason == "org vouch"


def test_a_vouch_from_an_org_we_do_not_trust_admits_nothing(tmp_path: Path) -> None:
    trust_org(tmp_path, ORG, "fleet")
    rogue = sign_vouch(OTHER_ORG, NODE, NOW)
    trust = TrustStore.load(tmp_path)
    assert trust.add_vouch(rogue) == "untrusted"
    assert not (tmp_path / VOUCHED_DIR).exists()
    # copied into vouched/ by hand: loaded (it is well signed), admits nobody
    write_vouch(tmp_path, rogue)
    trust = TrustStore.load(tmp_path)
    assert trust.vouches and not trust.admit(NODE, None, NOW)
    assert trust.admit(NODE, None, NOW).reason == "unknown key"


def test_forged_duplicate_and_revoked_vouches_change_nothing(tmp_path: Path) -> None:
    trust_org(tmp_path, ORG, "fleet")
    trust = TrustStore.load(tmp_path)
    v = sign_vouch(ORG, NODE, NOW)
    forged = OrgVouch(v.org_key, NODE, NOW + 5, v.signature)
    assert trust.add_vouch(forged) == "invalid"
    assert not trust.admit(NODE, None, NOW) and not (tmp_path / VOUCHED_DIR).exists()
    assert trust.add_vouch(v) == "accepted"
    path = trust.vouch_paths[v.target]
    later = sign_vouch(ORG, NODE, NOW + 100)
    assert trust.add_vouch(later) == "known"  # the first vouch stays
    assert path.read_bytes() == v.to_bytes()
    # revoked: (org, node) by a `cert` line; the vouch file goes, a new vouch is refused
    assert trust.revoke(Revocation("cert", NODE, ORG.public_key.raw))
    assert not trust.admit(NODE, None, NOW) and not path.exists()
    assert trust.add_vouch(later) == "revoked"
    assert not TrustStore.load(tmp_path).admit(NODE, None, NOW)


def test_a_node_key_or_org_revocation_overrides_the_vouch(tmp_path: Path) -> None:
    for rev in (Revocation("key", NODE), Revocation("org", ORG.public_key.raw)):
        cfg = tmp_path / rev.kind
        trust_org(cfg, ORG, "fleet")
        write_vouch(cfg, sign_vouch(ORG, NODE, NOW))
        trust = TrustStore.load(cfg)
        assert trust.admit(NODE, None, NOW)
        trust.revoke(rev)
        assert not trust.admit(NODE, None, NOW), rev.kind
        assert not TrustStore.load(cfg).admit(NODE, None, NOW), rev.kind


def test_a_revocation_by_one_org_ends_only_that_orgs_vouch(tmp_path: Path) -> None:
    trust_org(tmp_path, ORG, "fleet")
    trust_org(tmp_path, OTHER_ORG, "partner")
    trust = TrustStore.load(tmp_path)
    assert trust.add_vouch(sign_vouch(ORG, NODE, NOW)) == "accepted"
    assert trust.add_vouch(sign_vouch(OTHER_ORG, NODE, NOW)) == "accepted"
    names = sorted(p.name for p in (tmp_path / VOUCHED_DIR).iterdir())
    first = f"{NODE[:8].hex()}.vouch"
    assert names == sorted([first, f"{NODE[:8].hex()}-{OTHER_ORG.public_key.raw[:8].hex()}"
                                   ".vouch"])  # the second org does not overwrite the first
    both = tuple(sorted([ORG.public_key.raw, OTHER_ORG.public_key.raw]))
    assert trust.admit(NODE, None, NOW).orgs == both
    trust.revoke(Revocation("cert", NODE, ORG.public_key.raw))
    for t in (trust, TrustStore.load(tmp_path)):
        adm = t.admit(NODE, None, NOW)
        assert adm.admitted and adm.reason == "org vouch"
        assert adm.orgs == (OTHER_ORG.public_key.raw,)
        assert adm.org_domain == org_domain(OTHER_ORG.public_key.raw)


def test_certificate_admissions_name_their_org(tmp_path: Path) -> None:
    trust_org(tmp_path, ORG, "fleet")
    trust_org(tmp_path, OTHER_ORG, "partner")
    key = Ed25519PrivateKey(SeededRng(5).bytes(32)).public_key.raw
    cert = sign_certificate(ORG, key, "web-1", int(time.time()) - 10).to_bytes()
    trust = TrustStore.load(tmp_path)
    assert trust.admit(key, cert, time.time()).orgs == (ORG.public_key.raw,)
    trust.add_vouch(sign_vouch(OTHER_ORG, key, NOW))  # a member of one org, vouched by another
    adm = trust.admit(key, cert, time.time())
    assert adm.reason == "org certificate" and adm.name == "web-1"
    assert adm.orgs == (ORG.public_key.raw, OTHER_ORG.public_key.raw)


@pytest.mark.parametrize("lamport", [0, 2**64 - 1])
def test_lamport_is_an_unsigned_64_bit_field(lamport: int) -> None:
    v = sign_vouch(ORG, NODE, lamport)
    assert vouch_valid(v) and OrgVouch.from_bytes(v.to_bytes()) == v
    assert v.to_bytes()[64:72] == lamport.to_bytes(8, "little")
