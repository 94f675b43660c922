"""README promises about `meshguard up` that no other test checked (marked netns).

- "Every refusal (... no TUN device, no privileges ...) is one line and exit 1, and leaves no
  interface or socket behind."
- "Trust files are re-read when they change (and on SIGHUP), without a restart", for
  `trusted_orgs/`: an org trusted while the daemon runs admits its certificates, and an org
  no longer trusted stops admitting them (its members stop being WireGuard peers).
- "Key files and certificates are byte-compatible with the original Zig meshguard, so an
  identity or an org's certificates move between the two": a node running on the original's
  identity and certificate joins a mesh that trusts the original's org key file.
- contrib/meshguard.service is Type=notify, "ready once the node has joined": READY=1 reaches
  $NOTIFY_SOCKET only after the node has joined its seed, not while the seed is down.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshguard.identity import keygen, store
from meshguard.rng import SystemRng
from meshguard.testing.netns import netns_skip_reason

from .meshnet import PY, MeshLan, Node, status_json

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(netns_skip_reason() is not None, reason=str(netns_skip_reason())),
]


@pytest.fixture
def lan(tmp_path: Path) -> Iterator[MeshLan]:
    with MeshLan(tmp_path) as lan:
        yield lan


def _up_argv(node: Node) -> list[str]:
    return [PY, "-m", "meshguard", "up", "-f", "--open", "--interface", node.iface,
            "--port", str(node.port)]  # fmt: skip


def _run(node: Node, prefix: list[str], argv: list[str]) -> subprocess.CompletedProcess[str]:
    """`argv` in the node's namespace, behind `prefix` (setpriv, unshare, ...)."""
    env = {**os.environ, **node.env}
    return subprocess.run(
        node.ns.argv([*prefix, "env", *(f"{k}={v}" for k, v in env.items()), *argv]),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def _assert_clean_refusal(node: Node, res: subprocess.CompletedProcess[str], text: str) -> None:
    assert res.returncode == 1, (res.stdout, res.stderr)
    assert res.stderr.startswith("meshguard: error: ") and res.stderr.count("\n") == 1, res.stderr
    assert text in res.stderr, res.stderr
    assert node.ns.run(["ip", "link", "show", node.iface], check=False).returncode != 0
    assert not node.sock.exists()


def test_up_refuses_without_privileges(lan: MeshLan) -> None:
    a = lan.add_node("a")
    # an ordinary user (nobody) that may read any file (CAP_DAC_READ_SEARCH: the interpreter
    # and the config dir may live under /root), so what it lacks is CAP_NET_ADMIN
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
              "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]  # fmt: skip
    res = _run(a, nobody, _up_argv(a))
    _assert_clean_refusal(a, res, "must run as root or with CAP_NET_ADMIN")
    # root, but without CAP_NET_ADMIN (a unit without AmbientCapabilities=CAP_NET_ADMIN)
    no_cap = ["setpriv", "--bounding-set=-net_admin", "--inh-caps=-net_admin"]
    res = _run(a, no_cap, _up_argv(a))
    _assert_clean_refusal(a, res, "must run as root or with CAP_NET_ADMIN")


def test_up_refuses_without_a_tun_device(lan: MeshLan) -> None:
    a = lan.add_node("a")
    # a private mount namespace whose /dev/net is empty: no /dev/net/tun
    no_tun = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
              'mount -t tmpfs tmpfs /dev/net && exec "$@"', "sh"]  # fmt: skip
    res = _run(a, no_tun, _up_argv(a))
    _assert_clean_refusal(a, res, "/dev/net/tun does not exist")
    assert os.path.exists("/dev/net/tun")  # only that namespace lost it
    # /dev/net/tun present but not the TUN driver (/dev/null mounted over it)
    not_tun = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
               'mount --bind /dev/null /dev/net/tun && exec "$@"', "sh"]  # fmt: skip
    res = _run(a, not_tun, _up_argv(a))
    _assert_clean_refusal(a, res, f"cannot create TUN {a.iface}")


def _counters(node: Node) -> dict[str, int]:
    return dict(status_json(node)["counters"])


def _org_file(node: Node) -> Path:
    return node.cfg / store.TRUSTED_ORGS / "fleet.org"


def test_trusted_orgs_change_is_picked_up_by_a_running_daemon(lan: MeshLan) -> None:
    seed, d = lan.add_node("seed"), lan.add_node("d")
    org_dir = lan.tmp / "orgadmin"
    org = keygen.generate_org_key(org_dir, SystemRng(), force=False)
    keygen.issue_certificate_file(org_dir, d.identity, "dnode", d.cfg / store.NODE_CERT,
                                  time.time())  # fmt: skip
    d.trust(seed)
    seed.up([], "--open")  # trusts nobody yet
    d.up([seed])
    # d's joins reach the seed, which does not admit it
    lan.wait(lambda: _counters(seed).get("swim_not_admitted", 0) > 0, "d's joins refused", 10)
    assert seed.member(d) is None
    # the org becomes trusted while the seed runs: no restart, no SIGHUP
    _org_file(seed).parent.mkdir(mode=0o700, exist_ok=True)
    _org_file(seed).write_text(store.public_key_file(org.public_key.raw).decode())
    lan.wait(lambda: seed.tunnel_to(d) and d.tunnel_to(seed), "org certificate admitted", 30)
    member = seed.member(d)
    assert member is not None
    lan.wait(lambda: seed.ping(d), "seed pings d over the mesh", 10)
    # and stops being trusted: d is no longer admitted, its tunnel goes away
    _org_file(seed).unlink()
    lan.wait(lambda: not seed.tunnel_to(d), "seed drops d once the org is untrusted", 15)
    assert not seed.ping(d)
    assert seed.log is not None and "trust store reloaded (files changed)" in seed.log.read_text()


ZIG = Path(__file__).resolve().parents[1] / "vectors" / "zig"


def test_identity_and_certificate_from_the_original_join_a_mesh(lan: MeshLan) -> None:
    seed, z = lan.add_node("seed"), lan.add_node("z")
    # z migrates from the original: its identity and node.cert are the original's files; the
    # WireGuard key made by add_node stays (the original derived one), its vouch is re-signed
    for name in (store.IDENTITY_KEY, store.IDENTITY_PUB, store.NODE_CERT):
        shutil.copyfile(ZIG / "node-a" / name, z.cfg / name)
    (z.cfg / store.IDENTITY_KEY).chmod(0o600)
    z.identity = store.load_identity(z.cfg).public_key.raw
    # the seed trusts the original's org.pub, copied as it is
    _org_file(seed).parent.mkdir(mode=0o700, exist_ok=True)
    shutil.copyfile(ZIG / "org" / "org.pub", _org_file(seed))
    z.trust(seed)
    seed.up()
    z.up([seed])
    lan.wait(lambda: seed.tunnel_to(z) and z.tunnel_to(seed), "original identity admitted", 30)
    lan.wait(lambda: z.ping(seed) and seed.ping(z, v6=True), "mesh ping both ways", 10)
    assert z.mesh_v4 == "10.99.239.67"  # what the original printed for node-a
    member = seed.member(z)
    assert member is not None and member.get("name") == "node-a", member


def _notify_socket(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(path))
    s.setblocking(False)
    return s


def _messages(s: socket.socket) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    while True:
        try:
            data = s.recv(4096)
        except BlockingIOError:
            return out
        fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
        out.append(fields)


def test_ready_only_after_joining_the_seed(lan: MeshLan) -> None:
    seed, b = lan.add_node("seed"), lan.add_node("b")
    seed.trust(b)
    b.trust(seed)
    notify = _notify_socket(lan.tmp / "notify")
    try:
        b.extra_env["NOTIFY_SOCKET"] = str(lan.tmp / "notify")
        b.up([seed])  # the seed is not running yet
        # b sends its join and retries it (the seed's port is closed)
        lan.wait(lambda: _counters(b).get("engine_udp_tx", 0) >= 2, "b retries its join", 20)
        # b is up and answering its control socket, but has joined nobody: not ready
        assert b.alive_and_answering()
        assert b.member(seed) is None
        assert not any(m.get("READY") == "1" for m in _messages(notify))
        seed.up()
        got: list[dict[str, str]] = []

        def ready() -> bool:
            got.extend(_messages(notify))
            return any(m.get("READY") == "1" for m in got)

        lan.wait(ready, "READY=1 after the seed came up", 30)
        # at READY the seed is already a member of b's view
        assert b.member(seed) is not None
        assert sum(m.get("READY") == "1" for m in got) == 1
    finally:
        notify.close()


def test_ready_at_once_without_seeds(lan: MeshLan) -> None:
    """The unit's other promise: with no seeds there is nothing to join, READY comes at once."""
    a = lan.add_node("a")
    notify = _notify_socket(lan.tmp / "notify")
    try:
        a.extra_env["NOTIFY_SOCKET"] = str(lan.tmp / "notify")
        a.up([], "--open")
        got: list[dict[str, str]] = []

        def ready() -> bool:
            got.extend(_messages(notify))
            return any(m.get("READY") == "1" for m in got)

        lan.wait(ready, "READY=1 without seeds", 20)
    finally:
        notify.close()
