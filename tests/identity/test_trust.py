"""TrustStore: authorized_keys, trusted_orgs, persistent revocations, admission."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshguard.errors import ConfigError
from meshguard.identity.addressing import org_domain
from meshguard.identity.certificate import sign_certificate
from meshguard.identity.errors import TrustError, UnsafeNameError
from meshguard.identity.trust import (
    Revocation,
    TrustStore,
    default_name,
    parse_revocations,
    resolve_revocation,
)

from .helpers import make_key

T0 = 1_700_000_000.0
ORG = make_key("org")
ORG_PUB = ORG.public_key.raw
ALICE = make_key("alice").public_key.raw
BOB = make_key("bob").public_key.raw


def cert_for(node: bytes, name: str = "bob", expires: int = 0) -> bytes:
    return sign_certificate(ORG, node, name, int(T0), expires).to_bytes()


def test_empty_store(tmp_path: Path) -> None:
    ts = TrustStore.load(tmp_path)
    assert ts.is_empty()
    adm = ts.admit(ALICE, None, T0)
    assert not adm and adm.reason == "unknown key"


def test_add_and_reload(tmp_path: Path) -> None:
    ts = TrustStore.load(tmp_path)
    path = ts.add("alice", ALICE)
    assert path == tmp_path / "authorized_keys" / "alice.pub"
    assert path.read_text() == make_key("alice").public_key.b64() + "\n"
    ts.add("acme", ORG_PUB, org=True)
    assert (tmp_path / "trusted_orgs" / "acme.org").exists()
    again = TrustStore.load(tmp_path)
    assert again.peers == {"alice": ALICE}
    assert again.orgs == {"acme": ORG_PUB}
    assert not again.is_empty()


def test_loading_ignores_other_and_bad_files(tmp_path: Path) -> None:
    ak = tmp_path / "authorized_keys"
    ak.mkdir()
    (ak / "good.pub").write_text(make_key("alice").public_key.b64() + "  \n")
    (ak / "notes.txt").write_text("hello")
    (ak / ".hidden.pub").write_text(make_key("bob").public_key.b64())
    (ak / "bad.pub").write_text("not a key")
    (ak / "offcurve.pub").write_text("AgAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")
    ts = TrustStore.load(tmp_path)
    assert ts.peers == {"good": ALICE}
    assert len(ts.problems) == 2


def test_admission_by_key_and_certificate(tmp_path: Path) -> None:
    ts = TrustStore.load(tmp_path)
    ts.add("alice", ALICE)
    assert ts.admit(ALICE, None, T0) == ts.admit(ALICE, None, T0)
    adm = ts.admit(ALICE, None, T0)
    assert adm.admitted and adm.name == "alice" and adm.reason == "authorized key"
    # Bob has a valid cert, but the org is not trusted yet.
    assert ts.admit(BOB, cert_for(BOB), T0).reason == "certificate from an untrusted org"
    ts.add("acme", ORG_PUB, org=True)
    adm = ts.admit(BOB, cert_for(BOB), T0)
    assert adm.admitted and adm.name == "bob" and adm.org_domain == org_domain(ORG_PUB)
    # Someone replaying Bob's certificate under another key is refused.
    carol = make_key("carol").public_key.raw
    assert ts.admit(carol, cert_for(BOB), T0).reason == "certificate belongs to another node key"
    assert ts.admit(BOB, b"\x01" * 186, T0).reason == "malformed certificate"
    assert ts.admit(BOB, b"junk", T0).reason == "malformed certificate"
    assert ts.admit(BOB, None, T0).reason == "unknown key"
    expiring = cert_for(BOB, expires=int(T0) + 10)
    assert ts.admit(BOB, expiring, T0).admitted
    assert ts.admit(BOB, expiring, T0 + 10).reason == "certificate expired"
    assert ts.admit(BOB, cert_for(BOB), T0 - 3600).reason == "certificate issued in the future"
    forged = bytearray(cert_for(BOB))
    forged[150] ^= 1
    assert ts.admit(BOB, bytes(forged), T0).reason == "certificate signature does not verify"


def test_revocations_persist_and_win(tmp_path: Path) -> None:
    ts = TrustStore.load(tmp_path)
    ts.add("alice", ALICE)
    ts.add("acme", ORG_PUB, org=True)
    assert ts.revoke(Revocation("key", ALICE, None, "alice"))
    assert not ts.revoke(Revocation("key", ALICE, None, "alice"))
    assert not (tmp_path / "authorized_keys" / "alice.pub").exists()
    # Copying the key back under another name does not re-admit it.
    (tmp_path / "authorized_keys" / "alice2.pub").write_text(make_key("alice").public_key.b64())
    reloaded = TrustStore.load(tmp_path)
    assert reloaded.peers == {"alice2": ALICE}
    assert reloaded.admit(ALICE, None, T0).reason == "node key revoked"
    assert reloaded.admit(ALICE, cert_for(ALICE, "alice"), T0).reason == "node key revoked"
    with pytest.raises(TrustError, match="revoked; pass --force"):
        reloaded.add("alice3", ALICE)
    # Revoking one org certificate refuses that node through the org, nobody else.
    assert reloaded.admit(BOB, cert_for(BOB), T0).admitted
    reloaded.revoke(Revocation("cert", BOB, ORG_PUB))
    carol = make_key("carol").public_key.raw
    again = TrustStore.load(tmp_path)
    assert again.admit(BOB, cert_for(BOB), T0).reason == "certificate revoked"
    assert again.admit(carol, cert_for(carol, "carol"), T0).admitted
    # Revoking the org removes its file and refuses its certificates even if re-added.
    again.revoke(Revocation("org", ORG_PUB, None, "acme"))
    assert not (tmp_path / "trusted_orgs" / "acme.org").exists()
    (tmp_path / "trusted_orgs" / "acme2.org").write_text(make_key("org").public_key.b64())
    final = TrustStore.load(tmp_path)
    assert final.admit(carol, cert_for(carol, "carol"), T0).reason == "org revoked"
    # Lifting a revocation (trust --force) lets the key back in.
    assert final.lift(ALICE)
    assert not final.lift(ALICE)
    assert TrustStore.load(tmp_path).admit(ALICE, None, T0).admitted


def test_name_clash_and_unsafe_names(tmp_path: Path) -> None:
    ts = TrustStore.load(tmp_path)
    ts.add("peer", ALICE)
    ts.add("peer", ALICE)  # same key, same name: fine
    with pytest.raises(TrustError, match="already used"):
        ts.add("peer", BOB)
    assert TrustStore.load(tmp_path).peers == {"peer": ALICE}
    ts.add("peer", BOB, replace=True)
    assert TrustStore.load(tmp_path).peers == {"peer": BOB}
    for bad in ("../evil", "a/b", ".x", "", "a" * 64):
        with pytest.raises(UnsafeNameError):
            ts.add(bad, ALICE)
    assert not (tmp_path / "evil.pub").exists()


def test_revocations_file_format(tmp_path: Path) -> None:
    ts = TrustStore.load(tmp_path)
    ts.revoke(Revocation("key", ALICE, None, "alice"))
    ts.revoke(Revocation("cert", BOB, ORG_PUB))
    text = (tmp_path / "revocations").read_text()
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    a64 = make_key("alice").public_key.b64()
    assert lines == [
        f"key {a64} alice",
        f"cert {ORG.public_key.b64()} {make_key('bob').public_key.b64()}",
    ]
    assert parse_revocations(text, tmp_path / "r") == ts.revocations
    for bad in ("key", "key notbase64", "cert " + a64, "ban " + a64):
        with pytest.raises(ConfigError, match="not a revocation line"):
            parse_revocations(bad + "\n", tmp_path / "r")
    (tmp_path / "revocations").write_text("garbage line\n")
    with pytest.raises(ConfigError):
        TrustStore.load(tmp_path)


def test_default_names(tmp_path: Path) -> None:
    f = tmp_path / "validator-3.pub"
    f.write_text("x")
    assert default_name(str(f), ALICE, org=False) == "validator-3"
    odd = tmp_path / "my_node.pub"
    odd.write_text("x")
    assert default_name(str(odd), ALICE, org=False) == f"peer-{ALICE[:4].hex()}"
    assert default_name("base64text", ORG_PUB, org=True) == f"org-{org_domain(ORG_PUB)}"
    ident = tmp_path / "identity.pub"
    ident.write_text("x")
    assert default_name(str(ident), ALICE, org=False).startswith("peer-")


def test_resolve_revocation(tmp_path: Path) -> None:
    ts = TrustStore.load(tmp_path)
    ts.add("alice", ALICE)
    ts.add("acme", ORG_PUB, org=True)
    assert resolve_revocation(ts, "alice") == Revocation("key", ALICE, None, "alice")
    assert resolve_revocation(ts, "acme") == Revocation("org", ORG_PUB, None, "acme")
    assert resolve_revocation(ts, ORG.public_key.b64()).kind == "org"
    assert resolve_revocation(ts, make_key("bob").public_key.b64()) == Revocation(
        "key", BOB, None, ""
    )
    assert resolve_revocation(ts, make_key("bob").public_key.b64(), "acme") == Revocation(
        "cert", BOB, ORG_PUB, ""
    )
    with pytest.raises(TrustError, match="no trusted peer or org named 'nobody'"):
        resolve_revocation(ts, "nobody")


def test_revoke_keeps_revocations_written_meanwhile(tmp_path: Path) -> None:
    first = TrustStore.load(tmp_path)
    second = TrustStore.load(tmp_path)  # e.g. a daemon that loaded earlier
    first.revoke(Revocation("key", ALICE, None, "alice"))
    second.revoke(Revocation("key", BOB, None, "bob"))
    assert not second.revoke(Revocation("key", ALICE, None, "other label"))
    final = TrustStore.load(tmp_path)
    assert final.is_key_revoked(ALICE) and final.is_key_revoked(BOB)
    assert first.lift(BOB)  # lifts what `second` wrote, keeps the rest
    final = TrustStore.load(tmp_path)
    assert final.is_key_revoked(ALICE) and not final.is_key_revoked(BOB)


def test_trust_stamp_changes_with_trust_files(tmp_path: Path) -> None:
    from meshguard.identity.trust import trust_stamp

    empty = trust_stamp(tmp_path)
    assert empty == ()
    ts = TrustStore.load(tmp_path)
    ts.add("alice", ALICE)
    one = trust_stamp(tmp_path)
    assert one != empty
    assert trust_stamp(tmp_path) == one  # stable while nothing changes
    ts.add("bob", BOB)
    two = trust_stamp(tmp_path)
    assert two != one
    ts.revoke(Revocation("cert", BOB, ORG_PUB))
    assert trust_stamp(tmp_path) != two


@settings(max_examples=200, deadline=None)
@given(
    node=st.binary(min_size=0, max_size=40),
    cert=st.one_of(st.none(), st.binary(min_size=0, max_size=330)),
    flip=st.integers(0, 185),
)
def test_admit_never_raises_on_remote_garbage(node: bytes, cert: bytes | None, flip: int) -> None:
    ts = _STORE
    adm = ts.admit(node, cert, T0)
    assert isinstance(adm.reason, str)
    assert ts.admit(BOB, cert_for(BOB), T0).admitted
    # Any single flipped bit in a real certificate (signed bytes, signature or padding)
    # makes it unacceptable.
    bad = bytearray(cert_for(BOB))
    bad[flip] ^= 0x01
    assert not ts.admit(BOB, bytes(bad), T0).admitted


_STORE = TrustStore(Path("/nonexistent"), {}, {"acme": ORG_PUB}, [], [])


_revocation = st.builds(
    lambda kind, key, org, label: Revocation(kind, key, org if kind == "cert" else None, label),
    st.sampled_from(["key", "org", "cert"]),
    st.binary(min_size=32, max_size=32),
    st.binary(min_size=32, max_size=32),
    st.from_regex(r"([A-Za-z0-9-]{1,20})?", fullmatch=True),
)


@settings(max_examples=100, deadline=None)
@given(st.lists(_revocation, max_size=8))
def test_revocations_text_round_trips(revocations: list[Revocation]) -> None:
    from meshguard.identity.trust import REVOCATIONS_HEADER

    text = REVOCATIONS_HEADER + "".join(r.line() for r in revocations)
    assert parse_revocations(text, Path("revocations")) == revocations
