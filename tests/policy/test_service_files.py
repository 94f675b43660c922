"""services/ read from a real config dir: the original's layout, names resolved through the
trust store (keys, authorized_keys and trusted_orgs names, certificate names), errors with
their file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshguard.crypto.keys import b64encode
from meshguard.policy.rules import PolicyError
from meshguard.policy.service_files import load_services

from .helpers import file_name_key, new_key, trust_store, write


def test_no_services_dir_means_nothing_configured(tmp_path: Path) -> None:
    local = load_services(tmp_path, trust_store(tmp_path))
    assert not local.configured and local.default_allow is None and local.rule_count == 0


@pytest.mark.parametrize(("content", "allow"), [
    ("deny", False), ("deny\n", False), ("  deny \r\n", False), ("allow", True),
    ("", True), ("Deny", True), ("deny all", True), ("nonsense", True), ("\udcff", True),
])
def test_default_is_deny_only_when_it_says_deny(tmp_path: Path, content: str,
                                                allow: bool) -> None:
    (tmp_path / "services").mkdir()
    (tmp_path / "services" / "default").write_bytes(content.encode(errors="surrogateescape"))
    assert load_services(tmp_path, trust_store(tmp_path)).default_allow is allow


def test_every_file_is_read_and_names_resolve(tmp_path: Path) -> None:
    db = new_key().public_key.raw
    aliased = new_key().public_key.raw
    org = file_name_key()
    by_key = file_name_key()
    trust = trust_store(tmp_path, peers={"db-1": db, "app": aliased}, orgs={"acme": org})
    s = tmp_path / "services"
    write(s / "global.policy", "allow tcp 22\ndeny all\n")
    write(s / "peer" / "db-1.policy", "allow tcp 5432\n")
    write(s / "peer" / f"{b64encode(by_key)}.policy", "allow udp 53\n")
    write(s / "peer" / "val-1.policy", "allow tcp 9100\n")  # a certificate name
    write(s / "peer" / "notes.txt", "not a policy\n")
    write(s / "peer" / ".hidden.policy", "garbage\n")
    write(s / "org" / "acme.policy", "allow tcp 80\n")
    write(s / "org" / f"{b64encode(org)}.policy", "allow tcp 81\n")
    write(s / "org" / "ghost.policy", "allow tcp 82\n")
    local = load_services(tmp_path, trust)
    assert [r.text for r in local.global_rules] == ["allow tcp 22", "deny all"]
    peers = {p.name: p for p in local.peers}
    assert set(peers) == {"db-1", b64encode(by_key), "val-1"}
    assert peers["db-1"].key == db and peers["db-1"].source == "services/peer/db-1.policy"
    assert peers[b64encode(by_key)].key == by_key
    assert peers["val-1"].key is None  # matched by certificate name when compiled
    orgs = {o.name: o for o in local.orgs}
    assert orgs["acme"].key == org and orgs[b64encode(org)].key == org
    assert orgs["ghost"].key is None
    assert local.problems == ("services/org/ghost.policy: no trusted org named 'ghost'; "
                              "its rules apply to nobody",)


@pytest.mark.parametrize("where", ["global.policy", "peer/db-1.policy", "org/acme.policy"])
def test_a_malformed_file_names_its_file_and_line(tmp_path: Path, where: str) -> None:
    write(tmp_path / "services" / where, "allow tcp 22\n\nallow tcp 99999\n")
    with pytest.raises(PolicyError, match=rf"^services/{where}:3: bad port '99999'; "):
        load_services(tmp_path, trust_store(tmp_path))


def test_a_file_that_is_not_text_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "services").mkdir()
    (tmp_path / "services" / "global.policy").write_bytes(b"allow tcp 22\n\xfe\xff\n")
    with pytest.raises(PolicyError, match=r"^services/global.policy:2: not UTF-8"):
        load_services(tmp_path, trust_store(tmp_path))
