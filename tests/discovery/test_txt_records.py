"""The seed TXT record `meshguard=IP:PORT` (discovery/txt_records.py): the original Zig
meshguard's format, IPv6 in brackets, and every malformed string a warning, never a crash."""

from __future__ import annotations

import pytest

from meshguard.discovery.txt_records import (
    format_meshguard_txt,
    parse_meshguard_txt,
    parse_txt_answer,
    txt_name,
)


def test_ipv4_record_as_the_original_writes_it() -> None:
    assert parse_meshguard_txt("meshguard=1.2.3.4:51821").endpoint == ("1.2.3.4", 51821)
    assert parse_meshguard_txt(b"meshguard=10.0.0.1:1").endpoint == ("10.0.0.1", 1)


def test_ipv6_record_in_brackets() -> None:
    got = parse_meshguard_txt("meshguard=[fd99:6d67::1]:51821")
    assert got.endpoint == ("fd99:6d67::1", 51821)
    assert parse_meshguard_txt("meshguard=[::ffff:1.2.3.4]:7").endpoint is not None


def test_format_round_trips() -> None:
    for ep in [("192.0.2.1", 51821), ("2001:db8::7", 4000)]:
        assert parse_meshguard_txt(format_meshguard_txt(ep)).endpoint == ep
    assert format_meshguard_txt(("192.0.2.1", 51821)) == "meshguard=192.0.2.1:51821"


@pytest.mark.parametrize("text", [
    "meshguard=", "meshguard=1.2.3.4", "meshguard=1.2.3.4:", "meshguard=1.2.3.4:0",
    "meshguard=1.2.3.4:65536", "meshguard=1.2.3.4:-1", "meshguard=1.2.3:51821",
    "meshguard=host.example:51821", "meshguard=fd00::1:51821", "meshguard=[fd00::1]51821",
    "meshguard=[fd00::1", "meshguard=[1.2.3.4]:51821", "meshguard=224.0.0.1:51821",
    "meshguard=0.0.0.0:51821", "meshguard=1.2.3.4:5x", "meshguard=1.2.3.4:51821 extra",
])
def test_malformed_records_are_errors(text: str) -> None:
    got = parse_meshguard_txt(text)
    assert got.endpoint is None
    assert got.error


def test_other_applications_records_are_ignored_quietly() -> None:
    got = parse_meshguard_txt("v=spf1 include:example.org ~all")
    assert got.endpoint is None and got.error is None
    assert parse_meshguard_txt("").error is None


def test_over_long_and_binary_strings() -> None:
    assert parse_meshguard_txt(b"meshguard=" + b"1" * 300).error
    assert parse_meshguard_txt(b"meshguard=\xff\xfe:1").error


def test_an_answer_keeps_good_records_and_names_the_bad() -> None:
    seeds, problems = parse_txt_answer([
        [b"meshguard=192.0.2.1:51821"],
        [b"meshguard=", b"[2001:db8::1]:51821"],  # character-strings are joined
        [b"meshguard=nonsense"],
        [b"v=spf1 -all"],
        [b"meshguard=192.0.2.1:51821"],  # a duplicate is kept once
    ])
    assert seeds == [("192.0.2.1", 51821), ("2001:db8::1", 51821)]
    assert len(problems) == 1 and "meshguard=nonsense" in problems[0]


def test_empty_answer() -> None:
    assert parse_txt_answer([]) == ([], [])


def test_txt_name() -> None:
    assert txt_name("example.org") == "_meshguard._udp.example.org"
    assert txt_name("example.org.") == "_meshguard._udp.example.org"
