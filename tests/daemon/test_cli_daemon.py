from __future__ import annotations

import pytest

from meshguard.cli.daemon_commands import (
    UsageError,
    format_status,
    human_ago,
    human_bytes,
    parse_seed,
)
from meshguard.cli.main import build_parser
from meshguard.settings.sources import settings_from_args
from meshguard.wire.control import MemberStatus, SelfStatus, StatusReport


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("1.2.3.4:5", ("1.2.3.4", 5)),
        ("seed.example.org:51821", ("seed.example.org", 51821)),
        ("seed.example.org", ("seed.example.org", 51821)),
        ("[2001:db8::1]:7", ("2001:db8::1", 7)),
        ("[2001:db8::1]", ("2001:db8::1", 51821)),
        ("2001:db8::1", ("2001:db8::1", 51821)),
    ],
)
def test_parse_seed(text: str, want: tuple[str, int]) -> None:
    assert parse_seed(text) == want


@pytest.mark.parametrize("text", ["", ":5", "h:x", "h:0", "h:70000", "[::1"])
def test_parse_seed_rejects(text: str) -> None:
    with pytest.raises(UsageError):
        parse_seed(text)


def test_human() -> None:
    assert human_ago(None, 100) == "never" and human_ago(0.0, 100) == "never"
    assert human_ago(88.0, 100.0) == "12s ago"
    assert human_ago(100.0 - 125, 100.0) == "2m05s ago"
    assert human_ago(100.0 - 7300, 100.0) == "2h01m ago"
    assert human_bytes(5) == "5 B" and human_bytes(2048) == "2.0 KiB"
    assert human_bytes(3 * 1024**3) == "3.0 GiB"


def test_format_status_table() -> None:
    me = SelfStatus("a", "QUFBQUFBQUFBQUFBQUFB", "V0c=", "10.99.1.2", "fd99:6d67::1", 51821,
                    51822)
    m1 = MemberStatus("bee", "QkJCQkJCQkJCQkJC", "V0cy", "10.99.3.4", "fd99:6d67::2",
                      "192.0.2.1:51821", "alive", True, True, 988.0, 2048, 10, "direct",
                      rtt_ms=0.42, mtu=1280, why="direct to 192.0.2.1:51821: hole punch succeeded",
                      routes_offered=("10.20.0.0/24", "0.0.0.0/0"), routes_in_use=("10.20.0.0/24",))
    m2 = MemberStatus(None, "WFhYWFhYWFhYWFhY", None, "10.99.5.6", "fd99:6d67::3", None,
                      "alive", False, False, None, 0, 0, "direct")
    rep = StatusReport("mg0", "kernel", 7, 900.0, me, (m1, m2), {"garbage_dropped": 4})
    text = format_status(rep, 1000.0)
    assert "interface mg0 (kernel)" in text and "gossip 51822" in text
    lines = text.splitlines()
    header = next(i for i, ln in enumerate(lines) if ln.startswith("NAME"))
    assert lines[header].split() == ["NAME", "KEY", "MESH", "IP", "ENDPOINT", "STATE",
                                     "HANDSHAKE", "IN", "OUT", "PATH", "RTT", "MTU", "DNS",
                                     "NAME", "ROUTES", "WHY"]
    bee = lines[header + 1]
    assert bee.endswith("direct to 192.0.2.1:51821: hole punch succeeded")
    assert bee.startswith("bee") and "12s ago" in bee and "2.0 KiB" in bee and "direct" in bee
    assert "192.0.2.1:51821" in bee and "QkJCQkJC" in bee and "0.4ms" in bee and "1280" in bee
    assert "10.20.0.0/24,(0.0.0.0/0)" in bee  # routed through bee; offered, not used
    back = StatusReport.from_json(rep.to_json()).members[0]
    assert back.mtu == 1280 and back.routes_in_use == ("10.20.0.0/24",)
    assert back.routes_offered == ("10.20.0.0/24", "0.0.0.0/0")
    other = lines[header + 2]
    assert "alive,untrusted" in other and "no tunnel" in other
    assert "4 malformed datagrams dropped" in text


def test_parser_has_daemon_commands() -> None:
    p = build_parser()
    a = p.parse_args(["up", "--seed", "h:1", "--seed", "k", "-f", "--kernel", "--open"])
    assert a.seed == ["h:1", "k"] and a.foreground and a.kernel and a.open
    eff = settings_from_args(a, {"MESHGUARD_CONFIG_DIR": "/nonexistent"}).value
    assert eff("port") == 51821 and eff("interface") == "mg0" and eff("log_level") == "info"
    assert p.parse_args(["status", "--json"]).json
    assert p.parse_args(["down", "-i", "mg3"]).interface == "mg3"
