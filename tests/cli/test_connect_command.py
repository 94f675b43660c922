"""`meshguard connect` without a network: every bad token, reply or option gets one error line
and exit 1 and changes nothing; two nodes on this host pair over loopback-routed addresses.
The NAT case runs in tests/daemon/test_pairing_netns.py."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meshguard.cli.main import main
from meshguard.crypto.hashes import blake3
from meshguard.crypto.keys import Ed25519PrivateKey, X25519PrivateKey
from meshguard.identity import keygen, pairing_token, saved_seeds, store
from meshguard.identity.addressing import mesh_ipv4
from meshguard.identity.trust import TrustStore
from meshguard.rng import SystemRng


def _node(path: Path) -> keygen.NodeKeys:
    return keygen.generate_node_keys(path, SystemRng(), time.time(), force=False)


def _snapshot(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None
            for p in sorted(root.rglob("*"))}


Keys = keygen.NodeKeys | tuple[Ed25519PrivateKey, X25519PrivateKey]


def _token(keys: Keys, *, role: int = pairing_token.ROLE_OFFER,
           expires: float | None = None, punch_in: float = 30.0,
           reply_to: bytes = bytes(16)) -> str:
    now = int(time.time())
    ident, wg = keys if isinstance(keys, tuple) else (keys.identity, keys.wireguard)
    pub = ident.public_key.raw
    t = pairing_token.PairingToken(
        identity_key=pub, wg_key=wg.public_key.raw,
        reflexive=("203.0.113.21", 51821), mesh_ipv4=str(mesh_ipv4(pub)),
        punch_time=now + int(punch_in), punch_window=60, nonce=os.urandom(8),
        stun_server=None, nat_type=pairing_token.NAT_CONE, role=role,
        expires=int(expires if expires is not None else now + punch_in + 60),
        reply_to=reply_to, endpoints=())
    return pairing_token.to_uri(pairing_token.sign(t, ident))


@pytest.fixture
def me(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cfg = tmp_path / "me"
    _node(cfg)
    monkeypatch.setenv("MESHGUARD_CONFIG_DIR", str(cfg))
    return cfg


def _fails(capsys: pytest.CaptureFixture[str], cfg: Path, *argv: str, match: str) -> None:
    before = _snapshot(cfg)
    rc = main(list(argv))
    _, err = capsys.readouterr()
    assert rc == 1, err
    assert err.startswith("meshguard: error: ") and err.count("\n") == 1, err
    assert match in err, err
    assert _snapshot(cfg) == before


def test_bad_tokens_get_one_line(me: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    peer = _node(tmp_path / "peer")
    good = _token(peer)
    flipped = bytearray(pairing_token.uri_binary(good))
    flipped[-5] ^= 0x10
    body = bytes([1]) + bytes(99)
    original = "mg://" + base64.urlsafe_b64encode(body + blake3(body, 6)).decode().rstrip("=")
    cases = [
        ("garbage", "must start with mg://"),
        ("mg://not*base64", "base64url"),
        (good[:60], "truncated"),
        (pairing_token.to_uri(bytes(flipped)), "signature does not verify"),
        (_token(peer, expires=time.time() - 90, punch_in=-120), "expired 1 min"),
        (original, "original Zig meshguard"),
        (_token(peer, role=pairing_token.ROLE_REPLY), "that is a response token"),
        (_token(_own(me)), "this node's own"),
    ]
    for text, match in cases:
        _fails(capsys, me, "connect", "--join", text, match=match)


def _own(cfg: Path) -> tuple[Ed25519PrivateKey, X25519PrivateKey]:
    return store.load_identity(cfg), store.load_wireguard_key(cfg)


def test_a_revoked_peer_is_refused_before_punching(me: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    peer = _node(tmp_path / "peer")
    trust = TrustStore.load(me)
    trust.add("old", peer.identity.public_key.raw)
    assert main(["revoke", "old"]) == 0
    capsys.readouterr()
    _fails(capsys, me, "connect", "--join", _token(peer), match="is revoked here")


def test_a_trust_name_taken_by_another_key_is_refused_before_punching(
        me: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    TrustStore.load(me).add("bee", _node(tmp_path / "other").identity.public_key.raw)
    _fails(capsys, me, "connect", "--join", _token(_node(tmp_path / "peer")), "--name", "bee",
           match="'bee' is already used")


def test_bad_options(me: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fails(capsys, me, "connect", "--generate", "--in", "0", match="--in takes minutes")
    _fails(capsys, me, "connect", "--generate", "--in", "2000", match="--in takes minutes")
    _fails(capsys, me, "connect", "--generate", "--name", "no way", match="--name")
    _fails(capsys, me, "connect", "--generate", "--port", "0", match="--port")
    with pytest.raises(SystemExit) as exc:
        main(["connect", "--generate", "--in", "soon"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        main(["connect"])  # one of --generate / --join


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


def _connect(cfg: Path, *args: str, stdin: int | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "meshguard", "connect", *args],
                            env={**os.environ, "MESHGUARD_CONFIG_DIR": str(cfg)},
                            stdin=stdin if stdin is not None else subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _read_token(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    for line in proc.stdout:
        if "mg://" in line:
            return line.split()[-1]
    raise AssertionError(proc.stderr.read() if proc.stderr else "no token")


def test_the_port_of_a_running_daemon_is_refused(me: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as held:
        held.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        held.bind(("::", 0))
        port = held.getsockname()[1]
        _fails(capsys, me, "connect", "--generate", "--port", str(port),
               match=f"UDP port {port} is in use")


@pytest.mark.parametrize("reply", ["garbage", "offer", "other-offer", "eof"])
def test_a_bad_reply_on_stdin_gets_one_line(tmp_path: Path, reply: str) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    _node(a)
    pk = _node(b)
    proc = _connect(a, "--generate", "--in", "0.5", "--port", str(_free_port()))
    offer = _read_token(proc)
    assert offer.startswith("mg://")
    before = _snapshot(a)
    text = {"garbage": "mg://AAAA", "offer": offer,
            "other-offer": _token(pk, role=pairing_token.ROLE_REPLY, reply_to=b"x" * 16),
            "eof": ""}[reply]
    _, err = proc.communicate(text + "\n" if text else "", timeout=30)
    assert proc.returncode == 1, err
    assert err.count("\n") == 1 and err.startswith("meshguard: error: "), err
    match = {"garbage": "truncated", "offer": "not a response",
             "other-offer": "answers another offer", "eof": "stdin closed"}[reply]
    assert match in err, err
    assert _snapshot(a) == before


def test_two_nodes_on_this_host_pair_and_save_each_other(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    ka, kb = _node(a), _node(b)
    pa, pb = _free_port(), _free_port()
    gen = _connect(a, "--generate", "--in", "0.05", "--port", str(pa), "--name", "bee")
    offer = _read_token(gen)
    join = _connect(b, "--join", offer, "--port", str(pb), stdin=subprocess.DEVNULL)
    reply = _read_token(join)
    assert gen.stdin is not None
    gen.stdin.write(f"\n  response: {reply}  \n")  # a blank line, and words around it
    gen.stdin.flush()
    out_a, err_a = gen.communicate(timeout=60)
    out_b, err_b = join.communicate(timeout=60)
    assert gen.returncode == 0 and join.returncode == 0, (err_a, err_b)
    assert "path proven" in out_a and "path proven" in out_b
    # each trusts the other and has it as a seed at the port it punched from
    assert TrustStore.load(a).peers == {"bee": kb.identity.public_key.raw}
    assert list(TrustStore.load(b).peers.values()) == [ka.identity.public_key.raw]
    seeds_a, seeds_b = saved_seeds.load(a), saved_seeds.load(b)
    assert len(seeds_a) == len(seeds_b) == 1
    assert seeds_a[0][1] == pb and seeds_b[0][1] == pa
