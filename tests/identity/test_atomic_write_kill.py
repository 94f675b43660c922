"""kill -9 at any point of any write of the config dir leaves every file old or new, whole.

Every writer of the config dir (keys, the WireGuard key and its vouch, the org key,
certificates, authorized_keys/, trusted_orgs/, revocations, the daemon's gossip.state) goes
through identity/store.py's write_files. Two ways of killing a writer:

* deterministic: a forked child counts the system calls of the write path (open, fchmod,
  write, fsync, close, rename/replace, unlink) and SIGKILLs itself before call N, for every N,
  and also in the middle of each write() (half of the buffer written);
* random: a forked child rewrites a set of files in a loop and the parent SIGKILLs it after a
  random delay, 200 times.

After each kill: every file is byte for byte its old or its new content and parses; no file
appears that is neither (temporary files are hidden, and readers skip hidden files); a later
write removes the temporary files killed writers left; the node's keys still load with a
vouch that matches its WireGuard key, and public key files match their secret keys once those
are loaded (several files written together may be caught half renamed).
"""

from __future__ import annotations

import functools
import os
import random
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from meshguard.crypto.keys import Ed25519PrivateKey, X25519PrivateKey
from meshguard.daemon import gossip_state
from meshguard.identity import keygen, store
from meshguard.identity.trust import Revocation, TrustStore
from meshguard.identity.wgkey import vouch_wg_key
from meshguard.testing.rng import SeededRng

WALL = 1_700_000_000.0
PATCHED = ("open", "fchmod", "write", "fsync", "close", "replace", "rename", "unlink")
PEER_OLD = Ed25519PrivateKey(b"\x51" * 32).public_key.raw
PEER_NEW = Ed25519PrivateKey(b"\x52" * 32).public_key.raw
ORG_OLD = Ed25519PrivateKey(b"\x53" * 32).public_key.raw
ORG_NEW = Ed25519PrivateKey(b"\x54" * 32).public_key.raw
REVOKED = Ed25519PrivateKey(b"\x55" * 32).public_key.raw


class _Killer:
    """Replaces the write path's os functions; SIGKILLs this process before call `at` (with
    `partial`: only if that call is a write(), after writing half of its buffer)."""

    def __init__(self, at: int | None, partial: bool) -> None:
        self.at = at
        self.partial = partial
        self.calls = 0

    def install(self) -> None:
        for name in PATCHED:
            setattr(os, name, self._wrap(name, getattr(os, name)))

    def _wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            if self.at is not None and self.calls == self.at:
                if not self.partial:
                    os.kill(os.getpid(), signal.SIGKILL)
                elif name == "write":
                    fd, data = args
                    fn(fd, bytes(data)[: max(1, len(data) // 2)])
                    os.kill(os.getpid(), signal.SIGKILL)
            self.calls += 1
            return fn(*args, **kwargs)

        return call


def _in_child(work: Callable[[], None], killer: _Killer | None = None) -> tuple[int, int]:
    """Run `work` in a forked child -> (wait status, system calls counted by the child)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 0
        try:
            os.close(r)
            if killer is not None:
                killer.install()
            work()
            os.write(w, str(killer.calls if killer else 0).encode())
        except BaseException:
            code = 3
        os._exit(code)
    os.close(w)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(r, "rb") as f:
        out = f.read()
    return status, int(out) if out else -1


# -- the config dir before each operation -------------------------------------------------


def _old_state(d: Path) -> None:
    keygen.generate_node_keys(d, SeededRng(1), WALL, force=False)
    keygen.generate_org_key(d, SeededRng(2), force=False)
    node_pub = store.load_identity(d).public_key.raw
    keygen.issue_certificate_file(d, node_pub, "node-a", d / store.NODE_CERT, WALL)
    trust = TrustStore.load(d)
    trust.add("peer", PEER_OLD)
    trust.add("corp", ORG_OLD, org=True)
    trust.revoke(Revocation("key", REVOKED, None, "gone"))
    gossip_state.save_high_water(d, _gossip_marks(1), 0)


def _stale_vouch(d: Path) -> None:
    """As after a crash between writing wireguard.key and wireguard.vouch: the vouch is for
    another WireGuard key (load_node_keys signs a new one)."""
    ident = store.load_identity(d)
    other = vouch_wg_key(ident, X25519PrivateKey.generate(b"\x56" * 32).public_key.raw,
                         int(WALL) + 5)
    store.write_file(d / store.WIREGUARD_VOUCH, store.public_key_file(other.to_bytes()))


def _keygen_force(d: Path) -> None:
    keygen.generate_node_keys(d, SeededRng(11), WALL, force=True)


def _rotate(d: Path) -> None:
    keygen.rotate_wireguard_key(d, SeededRng(12), WALL + 60)


def _org_keygen_force(d: Path) -> None:
    keygen.generate_org_key(d, SeededRng(13), force=True)


def _org_sign_force(d: Path) -> None:
    keygen.issue_certificate_file(d, PEER_NEW, "node-b", d / store.NODE_CERT, WALL + 60,
                                  force=True)


def _trust_replace_peer(d: Path) -> None:
    TrustStore.load(d).add("peer", PEER_NEW, replace=True)


def _trust_replace_org(d: Path) -> None:
    TrustStore.load(d).add("corp", ORG_NEW, org=True, replace=True)


def _trust_new_peer(d: Path) -> None:
    TrustStore.load(d).add("other", PEER_NEW)


def _revoke(d: Path) -> None:
    TrustStore.load(d).revoke(Revocation("key", PEER_OLD, None, "peer"))


def _lift(d: Path) -> None:
    TrustStore.load(d).lift(REVOKED)


def _gossip_marks(n: int) -> dict[bytes, int]:
    return {bytes([i]) * 32: 1_700_000_000_000 + n * 1000 + i for i in range(1, 40)}


def _save_gossip_state(d: Path) -> None:
    gossip_state.save_high_water(d, _gossip_marks(2), 0)


def _vouch_repair(d: Path) -> None:
    keygen.load_node_keys(d, WALL + 120)


OPERATIONS: dict[str, Callable[[Path], None]] = {
    "keygen --force": _keygen_force,
    "rotate-wg-key": _rotate,
    "org-keygen --force": _org_keygen_force,
    "org-sign --force": _org_sign_force,
    "trust --force (peer)": _trust_replace_peer,
    "trust --force (org)": _trust_replace_org,
    "trust (new peer)": _trust_new_peer,
    "revoke": _revoke,
    "lift revocation": _lift,
    "vouch repair at start": _vouch_repair,
    "gossip.state high-water marks": _save_gossip_state,
}
SETUP_EXTRA: dict[str, Callable[[Path], None]] = {"vouch repair at start": _stale_vouch}


def _snapshot(d: Path) -> dict[str, bytes]:
    """Every visible file (hidden temporaries and the lock file are not part of the state)."""
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


def _temps(d: Path) -> list[str]:
    return [str(p.relative_to(d)) for p in d.rglob(".*.tmp*")]


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict[str, bytes],
                                                                          dict[str, bytes], int]]:
    """Per operation: (old config dir, old snapshot, new snapshot, system calls it makes)."""
    out = {}
    root = tmp_path_factory.mktemp("atomic")
    for name, op in OPERATIONS.items():
        old = root / f"old-{len(out)}"
        old.mkdir(mode=0o700)
        _old_state(old)
        SETUP_EXTRA.get(name, lambda d: None)(old)
        new = root / f"new-{len(out)}"
        shutil.copytree(old, new, symlinks=True)
        status, calls = _in_child(functools.partial(op, new), _Killer(None, False))
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, name
        old_snap, new_snap = _snapshot(old), _snapshot(new)
        assert old_snap != new_snap, f"{name} changed nothing"
        assert calls > 0
        out[name] = (old, old_snap, new_snap, calls)
    return out


def _check_state(name: str, d: Path, old: dict[str, bytes], new: dict[str, bytes]) -> None:
    now = _snapshot(d)
    for path in sorted(set(old) | set(new) | set(now)):
        got = now.get(path)
        assert got in (old.get(path), new.get(path)), (
            f"{name}: {path} is neither its old nor its new content: {got!r}")
    # everything still parses (and a stale vouch is repaired at load)
    trust = TrustStore.load(d)
    assert trust.problems == []
    assert trust.is_key_revoked(REVOKED) or "lift" in name
    if trust.is_key_revoked(PEER_OLD):  # revoke: refused from the moment the line is there
        assert not trust.admit(PEER_OLD, None, WALL)
    marks, bad = gossip_state.load_high_water(d)
    assert bad == 0 and marks in (_gossip_marks(1), _gossip_marks(2))
    store.load_org_key(d)
    store.read_certificate(d / store.NODE_CERT)
    keys = keygen.load_node_keys(d, WALL + 1000)
    assert keys.vouch.wg_key == keys.wireguard.public_key.raw and keys.vouch.verify()
    # files written together may be caught half renamed (identity.key new, identity.pub old);
    # loading the secret puts the public file beside it right again
    pairs = [(store.IDENTITY_PUB, keys.identity.public_key.raw),
             (store.WIREGUARD_PUB, keys.wireguard.public_key.raw),
             (f"{store.ORG_DIR}/{store.ORG_PUB}", store.load_org_key(d).public_key.raw)]
    for pub, raw in pairs:
        assert (d / pub).read_bytes() == store.public_key_file(raw), f"{name}: stale {pub}"


def _kill_points(calls: int) -> list[tuple[int, bool]]:
    return [(i, False) for i in range(calls)] + [(i, True) for i in range(calls)]


@pytest.mark.parametrize("name", list(OPERATIONS))
def test_kill_at_every_system_call_of_the_write(
        name: str, templates: dict[str, tuple[Path, dict[str, bytes], dict[str, bytes], int]],
        tmp_path: Path) -> None:
    old_dir, old, new, calls = templates[name]
    op = OPERATIONS[name]
    killed = left_temps = 0
    for i, (at, partial) in enumerate(_kill_points(calls)):
        d = tmp_path / f"run-{i}"
        shutil.copytree(old_dir, d, symlinks=True)
        status, _ = _in_child(functools.partial(op, d), _Killer(at, partial))
        if partial and os.WIFEXITED(status):
            continue  # call `at` is not a write(): nothing was cut short
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (name, at)
        killed += 1
        left_temps += bool(_temps(d))
        _check_state(f"{name}, killed before call {at}{' (half written)' if partial else ''}",
                     d, old, new)
        # the operation, run again, succeeds and removes what the killed writer left behind
        op(d)
        assert _temps(d) == [], f"{name}: temporary files stay after a new write"
        shutil.rmtree(d)
    assert killed >= calls
    assert left_temps > 0  # some kills did land between staging and renaming


def test_random_sigkill_while_rewriting(tmp_path: Path) -> None:
    """A writer that keeps replacing several files (one write_files call each time, plus a
    trust change) is killed after a random delay, 200 times."""
    d = tmp_path / "cfg"
    d.mkdir(mode=0o700)
    (d / store.AUTHORIZED_KEYS).mkdir(mode=0o755)
    versions = [
        {"a": b"A" * 3000, "b": b"first b\n", "revocations": b"# none\n"},
        {"a": b"B" * 70000, "b": b"second b, longer than the first\n",
         "revocations": b"# meshguard revocations\n"},
    ]
    peer_files = [store.public_key_file(PEER_OLD), store.public_key_file(PEER_NEW)]
    for k, v in versions[0].items():
        store.write_file(d / k, v)
    store.write_file(d / store.AUTHORIZED_KEYS / "peer.pub", peer_files[0])
    allowed = {k: {versions[0][k], versions[1][k]} for k in versions[0]}
    allowed[f"{store.AUTHORIZED_KEYS}/peer.pub"] = set(peer_files)
    rng = random.Random(20261201)
    seen: set[bytes] = set()
    for _ in range(200):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(r)
                n = 0
                while True:
                    v = versions[n % 2]
                    store.write_files([store.FileWrite(d / k, v[k]) for k in v])
                    store.write_file(d / store.AUTHORIZED_KEYS / "peer.pub", peer_files[n % 2])
                    if n == 0:
                        os.write(w, b"1")  # one full round done: kill me whenever
                    n += 1
            finally:
                os._exit(3)
        os.close(w)
        assert os.read(r, 1) == b"1"
        os.close(r)
        time.sleep(rng.uniform(0, 0.004))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status)
        snap = _snapshot(d)
        assert set(snap) == set(allowed)
        for path, data in snap.items():
            assert data in allowed[path], f"{path} is torn: {len(data)} bytes"
            seen.add(data)
        TrustStore.load(d)
    store.write_files([store.FileWrite(d / k, versions[0][k]) for k in versions[0]])
    store.write_file(d / store.AUTHORIZED_KEYS / "peer.pub", peer_files[0])
    assert _temps(d) == []
    assert versions[1]["a"] in seen  # the writer did get to rewrite the files
