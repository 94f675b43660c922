"""`meshguard reload` on real daemons (marked netns): two nodes, the second started from its
config file alone with no seed. A reload that adds a seed makes it join; a reload that changes
log_level applies it without touching the tunnel (ping answers, same handshake, same session)
and reports metrics as needing a restart; a bad file is one line and changes nothing."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from meshguard.testing.netns import netns_skip_reason

from .meshnet import MeshLan, Node, trust_all

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(netns_skip_reason() is not None, reason=str(netns_skip_reason())),
]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MeshLan, Node, Node]]:
    with MeshLan(tmp_path_factory.mktemp("reload")) as lan:
        a, b = lan.add_node("a"), lan.add_node("b")
        trust_all([a, b])
        a.up()
        b.write_config('log_level = "info"\nno_portmap = true\n')
        b.up(log_level=None)
        yield lan, a, b


def _reload(node: Node) -> dict[str, list[str]]:
    res = node.cli("reload", "--interface", node.iface, timeout=20)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert [ln.split(":")[0] for ln in lines[:3]] == ["applied", "needs restart", "unchanged"]
    return {ln.split(": ")[0]: ln.split(": ", 1)[1].split(", ") for ln in lines}


def test_a_seed_added_by_reload_is_joined(mesh: tuple[MeshLan, Node, Node]) -> None:
    lan, a, b = mesh
    assert b.member(a) is None  # no seed yet: b is alone
    b.write_config(f'log_level = "info"\nno_portmap = true\nseed = ["{a.ip}:{a.port}"]\n')
    out = _reload(b)
    assert out["applied"] == ["seed"] and out["needs restart"] == ["-"]
    lan.wait(lambda: b.tunnel_to(a) and a.tunnel_to(b), "b joins a through the new seed", 15)
    lan.wait(lambda: b.ping(a), "ping a over the tunnel", 10)


def test_a_live_key_changes_without_dropping_the_tunnel(
        mesh: tuple[MeshLan, Node, Node]) -> None:
    lan, a, b = mesh
    lan.wait(lambda: b.tunnel_to(a) and b.ping(a), "the tunnel", 15)
    before = b.member(a)
    assert before is not None and before["last_handshake"]
    log = b.log
    assert log is not None
    debug_before = log.read_text().count(" DEBUG ")
    b.write_config(f'log_level = "debug"\nno_portmap = true\nseed = ["{a.ip}:{a.port}"]\n'
                   'metrics = "127.0.0.1:9586"\n')
    out = _reload(b)
    assert out["applied"] == ["log_level"] and out["needs restart"] == ["metrics"]
    assert "port" in out["unchanged"] and "seed" in out["unchanged"]
    assert b.ping(a, count=3) and a.ping(b)
    after = b.member(a)
    assert after is not None and after["tunnel"]
    assert after["last_handshake"] == before["last_handshake"]  # the same session
    assert after["rx_bytes"] > before["rx_bytes"]
    # debug lines now reach the log (a reload re-reads the trust store, at debug level)
    _reload(b)
    lan.wait(lambda: log.read_text().count(" DEBUG ") > debug_before, "debug log lines", 10)
    assert debug_before == 0


def test_a_bad_file_on_reload_is_one_line_and_changes_nothing(
        mesh: tuple[MeshLan, Node, Node]) -> None:
    _, a, b = mesh
    path = b.write_config('log_level = "loud"\n')
    res = b.cli("reload", "--interface", b.iface, timeout=20)
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr == (f"meshguard: error: {path}:1: key 'log_level': must be one of "
                          "debug, info, warning, error, got 'loud'\n")
    time.sleep(0.2)
    assert b.alive_and_answering() and b.tunnel_to(a) and b.ping(a)
    shown = b.cli("config", "show", "--json")
    assert shown.returncode == 1  # the file on disk is still bad; the daemon runs on
