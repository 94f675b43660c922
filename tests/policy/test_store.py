"""The store of signed policies: only a newer, validly signed, parseable policy of a trusted
org is taken; forged, replayed and untrusted ones change nothing and are counted; a restart
keeps the newest; writes are atomic."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from meshguard.errors import WireFormatError
from meshguard.policy.signed import SIG_LEN, SignedPolicy, decode_policy, sign_policy
from meshguard.policy.store import PolicyStore, policy_file_name

from .helpers import new_key

TEXT = "group mon mon-1\nto *\nallow tcp 9100 from mon\ndeny all\n"


def files_of(cfg: Path) -> dict[str, bytes]:
    d = cfg / "policies"
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())} if d.exists() else {}


def nonzero(store: PolicyStore) -> dict[str, int]:
    return {k: v for k, v in store.counts.items() if v}


def test_serials_only_go_up(tmp_path: Path) -> None:
    org = new_key()
    trusted = {org.public_key.raw}
    st = PolicyStore.load(tmp_path)
    assert st.offer(sign_policy(org, TEXT, 5, 0), trusted) == "accepted"
    assert st.offer(sign_policy(org, TEXT + "# v4\n", 4, 0), trusted) == "older"
    assert st.offer(sign_policy(org, TEXT + "# v5 again\n", 5, 0), trusted) == "older"
    newest = st.newest(org.public_key.raw)
    assert newest is not None and newest.serial == 5 and newest.text == TEXT
    assert st.offer(sign_policy(org, TEXT + "# v6\n", 6, 0), trusted) == "accepted"
    assert nonzero(st) == {"accepted": 2, "older": 2}
    again = st.newest(org.public_key.raw)
    assert again is not None and st.offer(again, trusted) == "held"  # gossip's repeats
    assert nonzero(st) == {"accepted": 2, "older": 2, "held": 1}
    assert [sp.serial for sp, _ in st.in_force(trusted)] == [6]
    assert files_of(tmp_path) == {policy_file_name(org.public_key.raw):
                                  sign_policy(org, TEXT + "# v6\n", 6, 0).raw}


def test_untrusted_forged_and_unparseable_policies_change_nothing(tmp_path: Path) -> None:
    org, stranger = new_key(), new_key()
    trusted = {org.public_key.raw}
    st = PolicyStore.load(tmp_path)
    good = sign_policy(org, TEXT, 10, 0)
    assert st.offer(good, trusted) == "accepted"
    before = files_of(tmp_path)
    # signed by a key this node does not trust
    assert st.offer(sign_policy(stranger, "deny all\n", 99, 0), trusted) == "untrusted"
    # the org's key in the frame, a higher serial, the stranger's signature
    forged = sign_policy(stranger, "allow all\n", 11, 0)
    raw = forged.raw[:4] + org.public_key.raw + forged.raw[36:]
    assert st.offer(decode_policy(raw), trusted) == "invalid"
    # a captured good policy with its serial raised (the signature no longer covers it)
    bumped = bytearray(good.raw)
    bumped[36:44] = (11).to_bytes(8, "little")
    assert st.offer(decode_policy(bytes(bumped)), trusted) == "invalid"
    # a newer policy with its text changed on the way
    flipped = bytearray(sign_policy(org, TEXT, 13, 0).raw)
    flipped[-SIG_LEN - 3] ^= 0x01
    assert st.offer(decode_policy(bytes(flipped)), trusted) == "invalid"
    # validly signed by the org, but the text does not parse: the last good one stays
    assert st.offer(sign_policy(org, "to nobody\n", 12, 0), trusted) == "invalid"
    # the captured good policy itself, replayed: the one in force, nothing changes
    assert st.offer(good, trusted) == "held"
    assert nonzero(st) == {"accepted": 1, "untrusted": 1, "invalid": 4, "held": 1}
    assert st.newest(org.public_key.raw) == good
    assert files_of(tmp_path) == before
    assert st.newest(stranger.public_key.raw) is None


def test_a_signed_policy_whose_port_has_thousands_of_digits_is_invalid_not_a_crash(
        tmp_path: Path) -> None:
    """int() of more than 4300 digits raises ValueError: such a text, validly signed, must be
    refused as any unparseable policy, by gossip's offer and at a restart alike."""
    org = new_key()
    trusted = {org.public_key.raw}
    st = PolicyStore.load(tmp_path)
    good = sign_policy(org, TEXT, 10, 0)
    assert st.offer(good, trusted) == "accepted"
    huge = sign_policy(org, "to *\nallow tcp " + "7" * 5000 + "\n", 11, 0)
    assert st.offer(huge, trusted) == "invalid"
    assert st.newest(org.public_key.raw) == good
    (tmp_path / "policies" / policy_file_name(org.public_key.raw)).write_bytes(huge.raw)
    again = PolicyStore.load(tmp_path)
    assert again.counts["bad_file"] == 1 and again.newest(org.public_key.raw) is None


def test_in_force_holds_only_trusted_orgs_by_key_order(tmp_path: Path) -> None:
    orgs = sorted((new_key() for _ in range(3)), key=lambda k: k.public_key.raw)
    everyone = {k.public_key.raw for k in orgs}
    st = PolicyStore.load(tmp_path)
    for k in reversed(orgs):
        assert st.offer(sign_policy(k, TEXT, 1, 0), everyone) == "accepted"
    assert [sp.org_key for sp, _ in st.in_force(everyone)] == [k.public_key.raw for k in orgs]
    # an org no longer trusted is held but not in force
    assert [sp.org_key for sp, _ in st.in_force(everyone - {orgs[1].public_key.raw})] == [
        orgs[0].public_key.raw, orgs[2].public_key.raw]


def test_a_restart_keeps_the_newest_and_ignores_bad_files(tmp_path: Path) -> None:
    org, other = new_key(), new_key()
    trusted = {org.public_key.raw, other.public_key.raw}
    st = PolicyStore.load(tmp_path)
    st.offer(sign_policy(org, TEXT, 3, 0), trusted)
    st.offer(sign_policy(org, TEXT + "deny all\n", 4, 0), trusted)
    d = tmp_path / "policies"
    (d / ("ab" * 32 + ".mgpolicy")).write_bytes(b"garbage")
    # a good policy of `other` under the wrong name
    (d / policy_file_name(org.public_key.raw[::-1])).write_bytes(
        sign_policy(other, TEXT, 1, 0).raw)
    # a tampered one under the right name
    tampered = bytearray(sign_policy(other, TEXT, 2, 0).raw)
    tampered[-1] ^= 1
    (d / policy_file_name(other.public_key.raw)).write_bytes(bytes(tampered))
    (d / "README").write_text("ignored: not a .mgpolicy file\n")
    again = PolicyStore.load(tmp_path)
    newest = again.newest(org.public_key.raw)
    assert newest is not None and newest.serial == 4
    assert again.newest(other.public_key.raw) is None
    assert nonzero(again) == {"bad_file": 3}
    assert len(again.problems) == 3
    assert again.offer(sign_policy(org, TEXT, 4, 0), trusted) == "older"


def test_writes_are_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    org = new_key()
    trusted = {org.public_key.raw}
    st = PolicyStore.load(tmp_path)
    first = sign_policy(org, TEXT, 1, 0)
    st.offer(first, trusted)
    path = tmp_path / "policies" / policy_file_name(org.public_key.raw)

    def crash(src: object, dst: object) -> None:
        raise KeyboardInterrupt  # killed between writing the new file and renaming it

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        st.offer(sign_policy(org, TEXT, 2, 0), trusted)
    monkeypatch.undo()
    assert path.read_bytes() == first.raw  # the old file, whole
    assert PolicyStore.load(tmp_path).newest(org.public_key.raw) == first


def test_an_unwritable_dir_keeps_the_policy_in_force_and_says_so(tmp_path: Path) -> None:
    org = new_key()
    (tmp_path / "policies").write_text("a file where the directory should be")
    st = PolicyStore.load(tmp_path)
    assert st.offer(sign_policy(org, TEXT, 1, 0), {org.public_key.raw}) == "accepted"
    assert st.counts["unsaved"] == 1 and st.problems
    assert [sp.serial for sp, _ in st.in_force({org.public_key.raw})] == [1]


def test_the_frame_refuses_garbage() -> None:
    for raw in (b"", b"MGP1" + bytes(200), sign_policy(new_key(), TEXT, 1, 0).raw + b"x"):
        with pytest.raises(WireFormatError):
            decode_policy(raw)
    assert isinstance(decode_policy(sign_policy(new_key(), TEXT, 1, 0).raw), SignedPolicy)
