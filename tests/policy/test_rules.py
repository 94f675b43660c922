"""Service rule lines, read as the original meshguard reads them (its policy.zig tests), and
every malformed form refused with its file and line."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshguard.errors import ConfigError
from meshguard.policy.rules import (
    MAX_RULES,
    PolicyError,
    Rule,
    decode_text,
    parse_rule,
    parse_rules,
)
from meshguard.policy.table import ALL_PORTS, PROTO_ANY, PROTO_TCP, PROTO_UDP, FlatRule
from meshguard.policy.verdict import rule_matches


def one(text: str) -> Rule:
    rule = parse_rule(text)
    assert rule is not None
    return rule


def test_basic_rules() -> None:
    r = one("allow tcp 22")
    assert (r.allow, r.proto, r.port_lo, r.port_hi) == (True, PROTO_TCP, 22, 22)
    r = one("deny udp 53")
    assert (r.allow, r.proto, r.port_lo, r.port_hi) == (False, PROTO_UDP, 53, 53)
    r = one("allow tcp 8080-8089")
    assert (r.port_lo, r.port_hi) == (8080, 8089)


def test_deny_all_shorthand() -> None:
    r = one("deny all")
    assert (r.allow, r.proto, (r.port_lo, r.port_hi)) == (False, PROTO_ANY, ALL_PORTS)
    assert one("deny all all") == r
    assert r.text == "deny all"


def test_comments_and_blanks_hold_no_rule() -> None:
    for line in ("# this is a comment", "   ", "", "\t\r", "  # indented comment"):
        assert parse_rule(line) is None


def test_all_proto_with_a_port() -> None:
    r = one("allow all 443")
    assert (r.proto, r.port_lo, r.port_hi) == (PROTO_ANY, 443, 443)


def test_whitespace_tabs_crlf_and_a_trailing_comment() -> None:
    assert one("\t allow\ttcp   22 \r") == one("allow tcp 22")
    assert one("allow tcp 22 # ssh from the office") == one("allow tcp 22")


def test_port_zero_means_every_port_as_in_the_original() -> None:
    for spec in ("0", "0-0", "all"):
        r = one(f"allow udp {spec}")
        assert (r.port_lo, r.port_hi) == ALL_PORTS
    assert (one("allow tcp 0-10").port_lo, one("allow tcp 0-10").port_hi) == (0, 10)
    assert (one("allow tcp 65535").port_lo, one("allow tcp 65535").port_hi) == (65535, 65535)


def test_matching_follows_the_original() -> None:
    def flat(text: str) -> FlatRule:
        r = one(text)
        return FlatRule(r.allow, r.proto, r.port_lo, r.port_hi, 0)

    tcp22 = flat("allow tcp 22")
    assert rule_matches(tcp22, PROTO_TCP, 22)
    assert not rule_matches(tcp22, PROTO_TCP, 80)
    assert not rule_matches(tcp22, PROTO_UDP, 22)
    rng = flat("allow tcp 8080-8089")
    assert [p for p in range(8070, 8100) if rule_matches(rng, PROTO_TCP, p)] == list(
        range(8080, 8090))
    deny_all = flat("deny all")
    assert rule_matches(deny_all, PROTO_TCP, 22) and rule_matches(deny_all, PROTO_UDP, 53)
    assert rule_matches(deny_all, 47, None)  # GRE: only `all all` matches
    assert not rule_matches(flat("deny all 443"), 47, None)
    assert not rule_matches(flat("deny tcp all"), 47, None)


def test_a_file_keeps_its_order_and_lines() -> None:
    text = "# web\nallow tcp 22\n\nallow tcp 443\ndeny all\n"
    rules = parse_rules(text, "services/global.policy")
    assert [(r.text, r.line) for r in rules] == [
        ("allow tcp 22", 2), ("allow tcp 443", 4), ("deny all", 5)]
    assert {r.source for r in rules} == {"services/global.policy"}


@pytest.mark.parametrize(("line", "problem"), [
    ("permit tcp 22", "unknown action 'permit'"),
    ("Allow tcp 22", "unknown action 'Allow'"),
    ("allow", "missing protocol"),
    ("allow icmp 1", "unknown protocol 'icmp'"),
    ("allow tcp", "missing port"),
    ("allow tcp 65536", "bad port '65536'"),
    ("allow tcp -1", "bad port ''"),
    ("allow tcp 22-", "bad port ''"),
    ("allow tcp 1-2-3", "bad port '2-3'"),
    ("allow tcp 90-80", "runs backwards"),
    ("allow tcp ssh", "bad port 'ssh'"),
    ("allow tcp \uff12\uff12", "bad port"),  # fullwidth digits
    ("allow tcp +22", "bad port '+22'"),
    ("allow tcp 22 23", "unexpected '23'"),
    ("deny all 443 extra", "unexpected 'extra'"),
    ("allow tcp " + "1" * 5000, "bad port '" + "1" * 24 + "...'"),  # int() would raise
    ("allow udp 1-" + "9" * 5000, "bad port '" + "9" * 24 + "...'"),
])
def test_every_malformed_rule_names_its_file_and_line(line: str, problem: str) -> None:
    text = f"allow tcp 1\n# ok\n\n{line}\nallow tcp 2\n"
    with pytest.raises(PolicyError) as info:
        parse_rules(text, "services/peer/db-1.policy")
    msg = str(info.value)
    assert msg.startswith("services/peer/db-1.policy:4: "), msg
    assert problem in msg and "; " in msg
    assert (info.value.source, info.value.line) == ("services/peer/db-1.policy", 4)
    assert isinstance(info.value, ConfigError)


def test_leading_zeros_are_still_a_port() -> None:
    assert parse_rules("allow tcp " + "0" * 5000 + "22\n", "f")[0].port_lo == 22


def test_more_rules_than_the_original_allows_but_not_unbounded() -> None:
    assert len(parse_rules("allow tcp 1\n" * 64, "f")) == 64  # the original's maximum
    assert len(parse_rules("allow tcp 1\n" * MAX_RULES, "f")) == MAX_RULES
    with pytest.raises(PolicyError, match=f"f:{MAX_RULES + 1}: more than"):
        parse_rules("allow tcp 1\n" * (MAX_RULES + 1), "f")


def test_text_that_is_not_utf8_names_its_line() -> None:
    with pytest.raises(PolicyError, match="f:3: not UTF-8"):
        decode_text(b"allow tcp 1\nallow tcp 2\nallow \xff\n", "f")


rules = st.builds(
    lambda allow, proto, a, b: Rule(allow, proto, min(a, b), max(a, b)),
    st.booleans(), st.sampled_from([PROTO_ANY, PROTO_TCP, PROTO_UDP]),
    st.integers(1, 65535), st.integers(1, 65535),
) | st.builds(lambda allow, proto: Rule(allow, proto, *ALL_PORTS),
              st.booleans(), st.sampled_from([PROTO_ANY, PROTO_TCP, PROTO_UDP]))


@given(st.lists(rules, max_size=30), st.lists(st.sampled_from(["", "# c", " \t"]), max_size=30))
def test_round_trip_of_files(rs: list[Rule], filler: list[str]) -> None:
    lines = [r.text for r in rs]
    for i, f in enumerate(filler):
        lines.insert(i % (len(lines) + 1), f)
    parsed = parse_rules("\n".join(lines), "f")
    assert [(r.allow, r.proto, r.port_lo, r.port_hi) for r in parsed] == [
        (r.allow, r.proto, r.port_lo, r.port_hi) for r in rs]
    assert [lines[r.line - 1] for r in parsed] == [r.text for r in rs]


@given(st.text(max_size=40))
def test_any_line_parses_or_raises_a_policy_error(line: str) -> None:
    try:
        rule = parse_rule(line, "f", 7)
    except PolicyError as exc:
        assert str(exc).startswith("f:7: ")
    else:
        assert rule is None or 0 <= rule.port_lo <= rule.port_hi <= 65535
