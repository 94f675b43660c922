"""No secret key reaches a log line or the output of a command (marked netns).

Two members on one LAN. `a` is made with the CLI: keygen, rotate-wg-key, org-keygen, org-sign
(for both), trust of the org; it runs `up` in the background (its log is the run dir's
<iface>.log) at debug level in JSON, and `b` runs `up -f` at debug level in text. They join
through the org certificates, carry pings both ways, `a` exports a plain WireGuard device
(its preshared key is then held by the running daemon), `b` reloads its trust (SIGHUP), and
both go `down`. Every line any of this printed, and both daemons' whole logs, must hold no
private key in any encoding: both identity seeds, every WireGuard private key (the one
rotated away too), the org's private key, the device's private and preshared keys. The JSON
log must be one well-formed object per line. The session keys are checked along every
handshake path in tests/mesh/test_log_secrets.py, the redaction filter in
tests/daemon/test_log_format.py.
"""

from __future__ import annotations

import base64
import json
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from meshguard.crypto.keys import b64decode_key
from meshguard.identity import store
from meshguard.testing.netns import netns_skip_reason

from .meshnet import MeshLan, Node, run_cli, wg_quick_values

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(netns_skip_reason() is not None, reason=str(netns_skip_reason())),
]


@dataclass
class Run:
    """What the module's one mesh printed and logged, and every secret it held."""

    lan: MeshLan
    a: Node
    b: Node
    outputs: list[str] = field(default_factory=list)
    secrets: dict[bytes, str] = field(default_factory=dict)

    def cli(self, node: Node, *args: str, ns: bool = False) -> subprocess.CompletedProcess[str]:
        res = node.cli(*args) if ns else run_cli(list(args), node.env)
        self.outputs += [f"$ {' '.join(args)}", res.stdout, res.stderr]
        assert res.returncode == 0, (args, res.stdout, res.stderr)
        return res

    def keep_keys(self, node: Node) -> None:
        self.secrets[store.load_identity(node.cfg).seed] = f"{node.name} identity seed"
        self.secrets[store.load_wireguard_key(node.cfg).raw] = f"{node.name} WireGuard key"


def encodings(secret: bytes) -> list[str]:
    std = base64.b64encode(secret).decode()
    url = base64.urlsafe_b64encode(secret).decode()
    return [std[:40], url[:40], secret.hex(), secret.hex().upper(), repr(secret)[2:-1]]


def daemon_log(run: Run, node: Node) -> str:
    path = node.log if node.log is not None else run.lan.run / f"{node.iface}.log"
    return path.read_text(errors="replace")


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    tmp = tmp_path_factory.mktemp("logsecrets")
    with MeshLan(tmp) as lan:
        a, b = lan.add_node("a", keys=False), lan.add_node("b")
        run = Run(lan, a, b)
        run.cli(a, "keygen")
        run.keep_keys(a)  # the WireGuard key rotated away next is a secret too
        run.cli(a, "rotate-wg-key")
        for n in (a, b):
            run.keep_keys(n)
            ident = store.load_identity(n.cfg)
            n.identity, n.wg_pub = ident.public_key.raw, store.load_wireguard_key(
                n.cfg).public_key.raw
        run.cli(a, "org-keygen")
        run.secrets[store.load_org_key(a.cfg).seed] = "the org's private key"
        for n in (a, b):
            cert = tmp / f"{n.name}.cert"
            run.cli(a, "org-sign", str(n.cfg / "identity.pub"), "--name", n.name,
                    "--out", str(cert))
            (n.cfg / "node.cert").write_bytes(cert.read_bytes())
            run.cli(n, "trust", str(a.cfg / "org" / "org.pub"), "--org", "--name", "acme")
        run.cli(a, "up", "--interface", a.iface, "--port", str(a.port), "--announce", a.ip,
                "--log-level", "debug", "--log-format", "json", ns=True)
        b.up([a], "--log-format", "text")
        lan.wait(lambda: a.tunnel_to(b) and b.tunnel_to(a), "the tunnels")
        assert a.ping(b) and b.ping(a, v6=True)
        conf = tmp / "phone.conf"
        run.cli(a, "export-wg", "phone", "--out", str(conf), "--no-qr",
                "--endpoint", f"{a.ip}:{a.port}")
        values = wg_quick_values(conf.read_text())
        run.secrets[b64decode_key(values["PrivateKey"][0])] = "the device's private key"
        run.secrets[b64decode_key(values["PresharedKey"][0])] = "the device's preshared key"
        lan.wait(lambda: "device phone" in daemon_log(run, a), "a to take the device")
        assert b.proc is not None
        b.proc.send_signal(signal.SIGHUP)
        lan.wait(lambda: "reload" in daemon_log(run, b), "b's trust reload")
        run.cli(a, "status", "--interface", a.iface, ns=True)
        for n in (a, b):
            run.cli(n, "down", "--interface", n.iface, ns=True)
        yield run


def test_no_secret_in_any_output_or_log_line(mesh: Run) -> None:
    json_log, text_log = daemon_log(mesh, mesh.a), daemon_log(mesh, mesh.b)
    texts = [*mesh.outputs, json_log, text_log]
    for line in json_log.splitlines():  # JSON strings decoded too: escapes undone
        texts.extend(str(v) for v in json.loads(line).values())
    blob = "\n".join(texts)
    assert len(mesh.secrets) == 8
    for secret, what in mesh.secrets.items():
        for enc in encodings(secret):
            assert enc not in blob, f"{what} is in the output: {enc}"
    # what was searched is what was meant: the public halves are there
    assert base64.b64encode(mesh.a.identity).decode()[:12] in blob
    assert "device phone: WireGuard peer" in json_log


def test_the_json_log_is_one_object_per_line_and_the_text_log_is_classic(mesh: Run) -> None:
    lines = daemon_log(mesh, mesh.a).splitlines()
    docs = [json.loads(line) for line in lines]
    assert len(docs) > 5 and all({"ts", "level", "logger", "msg"} <= d.keys() for d in docs)
    assert {"debug", "info"} <= {d["level"] for d in docs}
    assert any(d["msg"].startswith("meshguard ") and d["logger"] == "meshguard.daemon"
               for d in docs)
    text = daemon_log(mesh, mesh.b).splitlines()
    assert any(" INFO meshguard.daemon: meshguard " in line for line in text)
    assert any(" DEBUG " in line for line in text)
    assert not any(line.startswith("{") for line in text)
