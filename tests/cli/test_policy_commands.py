"""`meshguard service` and `meshguard org-policy` end to end: what they write is what the
loaders read, bad input is one error line with exit 1 and changes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meshguard.crypto.keys import Ed25519PrivateKey, b64encode
from meshguard.identity.trust import TrustStore
from meshguard.policy.service_files import load_services
from meshguard.policy.signed import decode_policy, sign_policy, signature_valid
from meshguard.policy.store import PolicyStore

from .helpers import Env


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path

POLICY = """default deny
group validators val-1 val-2
group monitoring mon-1
to validators
allow tcp 9100 from monitoring
deny all
route 10.20.0.0/24 via gw-1
exit via validators
"""


def test_service_commands_write_the_originals_files(env: Env) -> None:
    assert "no service policies configured" in env.ok("service", "list")
    assert env.ok("service", "allow", "tcp", "22") == "rule added (global): allow tcp 22\n"
    env.ok("service", "deny", "all")
    env.ok("service", "allow", "--peer", "db-1", "tcp", "5432")
    env.ok("service", "allow", "--peer", "db-1", "udp", "8000-8010")
    env.ok("service", "deny", "--org", "acme", "all", "all")
    assert env.ok("service", "default", "deny") == "default policy set to: deny\n"
    s = env.cfg / "services"
    assert (s / "global.policy").read_text() == "allow tcp 22\ndeny all\n"
    assert (s / "peer" / "db-1.policy").read_text() == "allow tcp 5432\nallow udp 8000-8010\n"
    assert (s / "org" / "acme.policy").read_text() == "deny all\n"
    assert (s / "default").read_text() == "deny\n"
    local = load_services(env.cfg, TrustStore.load(env.cfg))
    assert local.default_allow is False and local.rule_count == 5
    listed = env.ok("service", "list")
    assert "default: deny" in listed and "[peer db-1 (by certificate name)]" in listed
    assert "     2  allow udp 8000-8010" in listed
    assert env.ok("service", "show").splitlines() == [
        "default: deny", "global policy: yes", "peer policies: 1", "org policies: 1"]
    shown = env.ok("service", "show", "db-1")
    assert "  5432   PostgreSQL     allow  deny" in shown
    assert "  22     SSH            allow  deny" in shown
    assert "  80     HTTP           deny   deny" in shown
    assert env.ok("service", "reset") == "service policies reset (default: allow all)\n"
    assert not s.exists() and not list(env.cfg.glob(".services*"))
    assert env.ok("service", "reset") == "no service policies to reset\n"


def test_a_peer_named_by_key_or_certificate_name_of_an_org(env: Env) -> None:
    env.cfg.mkdir()
    key = b"\x01" * 32  # base64 AQEB...: no '/'
    env.ok("service", "allow", "--peer", b64encode(key), "tcp", "1")
    env.ok("service", "allow", "--peer", "db-1.3fa2c1", "tcp", "2")
    names = sorted(p.name for p in (env.cfg / "services" / "peer").iterdir())
    assert names == sorted([f"{b64encode(key)}.policy", "db-1.3fa2c1.policy"])


@pytest.mark.parametrize(("argv", "match"), [
    (("service", "allow", "tcp", "65536"), "bad rule 'allow tcp 65536': bad port '65536'"),
    (("service", "allow", "icmp", "8"), "unknown protocol 'icmp'"),
    (("service", "deny", "tcp"), "missing port"),
    (("service", "allow", "tcp", "9-1"), "runs backwards"),
    (("service", "allow", "--peer", "../../etc/x", "tcp", "1"), "--peer '../../etc/x' is neither"),
    (("service", "allow", "--org", "a.b", "tcp", "1"), "--org 'a.b' is neither"),
    (("service", "allow", "--peer", "x" * 64, "tcp", "1"), "is neither"),
])
def test_bad_service_input_is_one_line_and_writes_nothing(env: Env, argv: tuple[str, ...],
                                                          match: str) -> None:
    env.cfg.mkdir()
    env.fails(*argv, match=match)
    assert not (env.cfg / "services").exists()


def test_a_rule_is_not_added_to_a_malformed_file(env: Env) -> None:
    write(env.cfg / "services" / "global.policy", "allow tcp 22\nallow tpc 23\n")
    env.fails("service", "allow", "tcp", "80",
              match="services/global.policy:2: unknown protocol 'tpc'")
    env.fails("service", "list", match="services/global.policy:2: unknown protocol 'tpc'")


def test_org_policy_sign_check_and_show(env: Env, tmp_path: Path) -> None:
    env.ok("org-keygen")
    src = write(tmp_path / "acme.policy", POLICY)
    assert env.ok("org-policy", "check", str(src)) == (
        f"{src}: ok (2 groups, 2 rules, 2 routes)\n")
    before = int(time.time())
    out = tmp_path / "acme.mgpolicy"
    printed = env.ok("org-policy", "sign", str(src), "--out", str(out))
    assert "2 groups, 2 rules, 2 routes" in printed
    sp = decode_policy(out.read_bytes())
    assert signature_valid(sp) and sp.text == POLICY and sp.serial >= before
    stored = PolicyStore.load(env.cfg)
    assert stored.newest(sp.org_key) == sp and not stored.problems
    # the next default serial is above the last one signed here, even a far-future one
    env.ok("org-policy", "sign", str(src), "--serial", str(2**40))
    env.ok("org-policy", "sign", str(src))
    newest = PolicyStore.load(env.cfg).newest(sp.org_key)
    assert newest is not None and newest.serial == 2**40 + 1
    env.fails("org-policy", "sign", str(src), "--serial", str(2**40 + 1),
              match=f"--serial {2**40 + 1} is not above {2**40 + 1}")
    env.fails("org-policy", "sign", str(src), "--serial", "5", match="is not above")
    shown = env.ok("org-policy", "show", str(out))
    assert f"serial:  {sp.serial}\n" in shown and shown.endswith(POLICY)
    assert f"org:     {b64encode(sp.org_key)} domain " in shown
    tampered = bytearray(out.read_bytes())
    tampered[-70] ^= 1
    out.write_bytes(bytes(tampered))
    env.fails("org-policy", "show", str(out), match="the signature does not verify")
    write(tmp_path / "junk", "not a policy")
    env.fails("org-policy", "show", str(tmp_path / "junk"), match="is not a signed policy")


@pytest.mark.parametrize("issued_at", [2**62, -(2**62), 2**63 - 1])
def test_show_prints_a_validly_signed_policy_whatever_its_issue_time(
        env: Env, tmp_path: Path, issued_at: int) -> None:
    """Anyone can sign a blob with their own key and any 64-bit `issued_at`; showing it must
    not end in a traceback."""
    env.cfg.mkdir()
    sp = sign_policy(Ed25519PrivateKey(bytes(32)), POLICY, 3, issued_at)
    out = tmp_path / "far.mgpolicy"
    out.write_bytes(sp.raw)
    shown = env.ok("org-policy", "show", str(out))
    assert f"issued:  {issued_at} (unix seconds, not a date)\n" in shown


@pytest.mark.parametrize(("line", "match"), [
    ("to nobody", ":9: to names an unknown group 'nobody'"),
    ("allow tcp 22 from ghosts", ":9: from names an unknown group 'ghosts'"),
    ("route 10.0.0.1/8 via gw-1", ":9: bad prefix"),
    ("alow tcp 22", ":9: unknown keyword 'alow'"),
])
def test_a_malformed_policy_is_not_signed(env: Env, tmp_path: Path, line: str,
                                          match: str) -> None:
    env.ok("org-keygen")
    src = write(tmp_path / "acme.policy", POLICY + line + "\n")
    out = tmp_path / "out.mgpolicy"
    err = env.fails("org-policy", "sign", str(src), "--out", str(out), match=str(src) + match)
    assert not out.exists() and "; " in err
    env.fails("org-policy", "check", str(src), match=str(src) + match)


def test_signing_needs_the_org_key(env: Env, tmp_path: Path) -> None:
    env.cfg.mkdir()
    src = write(tmp_path / "acme.policy", POLICY)
    env.fails("org-policy", "sign", str(src), match="no org key")


def test_the_installed_command_signs_and_a_store_reads_it(tmp_path: Path) -> None:
    cfg = tmp_path / "cfg"
    env = {**os.environ, "MESHGUARD_CONFIG_DIR": str(cfg)}
    src = write(tmp_path / "acme.policy", POLICY)

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "meshguard", *argv], env=env, text=True,
                              capture_output=True, timeout=60)

    assert run("org-keygen").returncode == 0
    done = run("org-policy", "sign", str(src))
    assert done.returncode == 0, done.stderr
    bad = run("org-policy", "sign", str(write(tmp_path / "bad.policy", "to x\n")))
    assert bad.returncode == 1
    assert bad.stderr == (f"meshguard: error: {tmp_path / 'bad.policy'}:1: to names an unknown "
                          "group 'x'; define it with `group NAME MEMBER...` or use *\n")
    [(sp, policy)] = PolicyStore.load(cfg).held.values()
    assert policy.routes[1].via == "validators" and sp.text == POLICY


def test_every_write_changes_the_stamp_a_running_daemon_polls(env: Env, tmp_path: Path) -> None:
    from meshguard.identity.trust import trust_stamp

    env.ok("org-keygen")
    seen = [trust_stamp(env.cfg)]
    src = write(tmp_path / "acme.policy", POLICY)
    for argv in (("service", "allow", "tcp", "22"), ("service", "allow", "tcp", "23"),
                 ("service", "allow", "--peer", "db-1", "tcp", "5432"),
                 ("service", "deny", "--peer", "db-1", "all"),
                 ("service", "deny", "--org", "acme", "all"), ("service", "default", "deny"),
                 ("org-policy", "sign", str(src)),
                 ("org-policy", "sign", str(src)), ("service", "reset")):
        env.ok(*argv)
        stamp = trust_stamp(env.cfg)
        assert stamp not in seen, argv
        seen.append(stamp)
