"""`up --dns DOMAIN` and `--mdns` on the command line: a bad domain is one error line and exit
1, before anything starts."""

from __future__ import annotations

import pytest

from meshguard.cli.daemon_commands import UsageError
from meshguard.cli.main import build_parser, main
from meshguard.cli.seed_options import parse_seed_domain
from meshguard.settings.sources import settings_from_args


@pytest.mark.parametrize(("text", "want"), [
    ("example.org", "example.org"), ("Example.ORG.", "example.org"),
    ("a-b.c_d.test", "a-b.c_d.test"), ("localdomain", "localdomain"),
])
def test_domains(text: str, want: str) -> None:
    assert parse_seed_domain(text) == want


@pytest.mark.parametrize("text", ["", ".", "a..b", "-a.org", "a-.org", "a b.org", "a/b",
                                  "x" * 64 + ".org", "é.org", ".".join(["abc"] * 60)])
def test_bad_domains(text: str) -> None:
    with pytest.raises(UsageError):
        parse_seed_domain(text)


def test_parser_takes_the_originals_flags() -> None:
    args = build_parser().parse_args(["up", "--dns", "a.org", "--dns", "b.org", "--mdns",
                                      "--dns-port", "5353"])
    assert args.dns == ["a.org", "b.org"] and args.mdns and args.dns_port == 5353
    plain = settings_from_args(build_parser().parse_args(["up"]),
                               {"MESHGUARD_CONFIG_DIR": "/nonexistent"})
    assert plain.value("dns") == [] and not plain.value("mdns")


def test_bad_domain_is_one_line_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["up", "-f", "--interface", "mgx0", "--dns", "not a domain"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("meshguard: error: bad --dns domain") and err.count("\n") == 1
