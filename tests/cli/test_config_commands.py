"""`meshguard config show`: the original's identity lines, then every setting with its source;
and the backgrounding `up`, which hands its config file and only the flags given to `up -f`."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from meshguard.cli import up_command
from meshguard.cli.main import main
from meshguard.settings.config_file import parse_config_text
from meshguard.settings.schema import BY_KEY

from .helpers import Env


def _with_file(env: Env, text: str) -> Path:
    env.ok("keygen")
    path = env.cfg / "meshguard.toml"
    path.write_text(text)
    return path


def test_config_show_prints_the_identity_then_each_value_with_its_source(env: Env) -> None:
    path = _with_file(env, '# fleet\nlog_level = "debug"\nport = 5000\n')
    show = json.loads(env.ok("show", "--json"))
    out = env.ok("config", "show", "--port", "6000", "--stun", "stun.example.org")
    lines = out.splitlines()
    # the original's `config show` lines first, with the keys `meshguard show` reports
    assert lines[:3] == [
        f"public key (Ed25519):   {show['identity']['public_key']}",
        f"public key (WG X25519): {show['wireguard']['public_key']}",
        f"mesh IP:                {show['identity']['mesh_ipv4']}",
    ]
    rows = {ln.split(" ")[0] if not ln.startswith("# ") else ln.split(" ")[1]: ln
            for ln in lines[4:]}
    assert rows["port"].split("#")[0].strip() == "port = 6000"
    assert rows["port"].endswith("# flag --port")
    assert rows["stun"].startswith('stun = ["stun.example.org"]')
    assert rows["log_level"].endswith(f"# file {path}:2")
    assert rows["interface"].endswith("# default")
    assert rows["metrics"].startswith("# metrics (not set)")
    assert lines[3] == "" and lines[4] == f"# config file: {path} (env MESHGUARD_CONFIG_DIR)"
    assert set(rows) - {"config"} == set(BY_KEY)
    # what it prints is a config file that gives the same values
    printed = parse_config_text(Path("shown.toml"), "\n".join(lines[4:]))
    assert printed.values["port"] == 6000 and printed.values["log_level"] == "debug"
    assert "metrics" not in printed.values


def test_config_show_json(env: Env) -> None:
    path = _with_file(env, 'seed = ["192.0.2.1:51821"]\n')
    doc = json.loads(env.ok("config", "show", "--json", "--mdns"))
    assert doc["config_file"] == {"path": str(path), "found": "env MESHGUARD_CONFIG_DIR"}
    assert doc["identity"]["mesh_ipv4"].startswith("10.99.")
    assert doc["settings"]["seed"] == {"value": ["192.0.2.1:51821"], "source": "file",
                                       "where": f"{path}:1"}
    assert doc["settings"]["mdns"] == {"value": True, "source": "flag", "where": "--mdns"}
    assert doc["settings"]["port"] == {"value": 51821, "source": "default", "where": None}


def test_config_show_without_identity_or_file(env: Env) -> None:
    out = env.ok("config", "show")
    assert out.startswith("public key (Ed25519):   (none; run `meshguard keygen`)\n")
    assert "# config file: none (defaults and flags only)" in out


def test_config_show_checks_the_file_as_up_does(env: Env) -> None:
    path = _with_file(env, 'port = 5000\nannounce = "nope"\n')
    rc, out, err = env.run("config", "show")
    assert rc == 1 and out == ""
    assert err == (f"meshguard: error: {path}:2: key 'announce': announce needs an IP "
                   "address, got 'nope'\n")


class _Exited:
    """A child that exits at once (what `up` sees of a daemon that failed to start)."""

    pid = 4242

    def poll(self) -> int:
        return 1


def test_the_background_up_passes_the_config_file_and_only_the_flags_given(
        env: Env, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = _with_file(env, "port = 5000\n")
    seen: list[list[str]] = []

    def popen(argv: list[str], **kw: object) -> _Exited:
        seen.append(argv)
        return _Exited()

    monkeypatch.setattr(subprocess, "Popen", popen)
    monkeypatch.setattr(up_command, "READY_TIMEOUT", 2.0)
    rc, _, err = env.run("up", "--config", str(path), "--seed", "192.0.2.1:1", "--open",
                         "--run-dir", str(tmp_path / "run"))
    assert rc == 1 and "exited with status 1" in err
    argv = seen[0]
    i = argv.index("up")
    assert argv[i:] == ["up", "-f", "--run-dir", str(tmp_path / "run"), "--config", str(path),
                        "--seed=192.0.2.1:1", "--open"]


ZIG = Path(__file__).resolve().parents[1] / "vectors" / "zig"


def _originals_config_show(node: str) -> list[str]:
    """The three lines the original's `meshguard config show` printed for `node`."""
    lines = (ZIG / "expected.md").read_text().splitlines()
    start = lines.index(f"## {node} (meshguard config show)") + 1
    return lines[start:start + 3]


@pytest.mark.parametrize("node", ["node-a", "node-b", "node-c"])
def test_config_show_on_a_dir_from_the_original_prints_what_it_printed(
        node: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / node
    shutil.copytree(ZIG / node, cfg)
    monkeypatch.setenv("MESHGUARD_CONFIG_DIR", str(cfg))
    before = {p.name: p.read_bytes() for p in cfg.iterdir()}
    assert main(["config", "show"]) == 0
    assert capsys.readouterr().out.splitlines()[:3] == _originals_config_show(node)
    assert {p.name: p.read_bytes() for p in cfg.iterdir()} == before  # it writes nothing
