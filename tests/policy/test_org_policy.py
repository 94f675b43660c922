"""The org policy syntax of docs/policy.md: what it holds, and every malformed line refused
with its line number."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshguard.crypto.keys import b64encode
from meshguard.policy.org_policy import EXIT_PREFIXES, parse_org_policy
from meshguard.policy.rules import PolicyError
from meshguard.policy.table import PROTO_ANY, PROTO_TCP

from .helpers import new_key

DOCS = Path(__file__).resolve().parents[2] / "docs" / "policy.md"


def docs_example() -> str:
    text = DOCS.read_text()
    m = re.search(r"```\n(# example\.policy\n.*?)```", text, re.DOTALL)
    assert m is not None, "docs/policy.md lost its example policy"
    return m.group(1)


def test_the_example_in_the_docs_parses() -> None:
    p = parse_org_policy(docs_example(), "example.policy")
    assert p.default_allow is False
    assert set(p.groups) >= {"validators", "monitoring"}
    assert p.groups["validators"].names >= {"val-1", "val-2"}
    assert len(p.groups["validators"].keys) == 1
    assert [r.text for r in p.rules][:2] == [
        "to validators: allow tcp 9100 from monitoring", "to validators: deny all"]
    assert [(r.via, r.prefixes) for r in p.routes] == [
        ("gw-1", (ipaddress.ip_network("10.20.0.0/24"),)), ("exit-1", EXIT_PREFIXES)]


def test_sections_groups_and_senders() -> None:
    key = new_key().public_key.raw
    p = parse_org_policy(
        "allow tcp 1\n"  # before any `to`: every member
        "to ops\n"
        "allow tcp 2 from db\n"
        "deny all from db  # a comment\n"
        "to *\n"
        "allow all 3\n"
        "group ops o-1\n"  # defined after its first use
        f"group db d-1 {b64encode(key)}\n"
        "group ops o-2\n",  # extends ops
        "p")
    assert [(r.to, r.sender, r.rule.line) for r in p.rules] == [
        ("*", "*", 1), ("ops", "db", 3), ("ops", "db", 4), ("*", "*", 6)]
    assert p.rules[2].rule.proto == PROTO_ANY and p.rules[1].rule.proto == PROTO_TCP
    assert p.groups["ops"].names == {"o-1", "o-2"} and p.groups["ops"].line == 7
    assert p.groups["db"].keys == {key} and p.groups["db"].names == {"d-1"}
    assert p.default_allow is None


def test_route_lines() -> None:
    key = new_key().public_key.raw
    p = parse_org_policy(
        f"group gws gw-1\nroute 10.0.0.0/8 via gws\nroute fd00::/8 via {b64encode(key)}\n"
        "route 192.168.1.0/24 via lan-gw\nexit via *\n", "p")
    assert [(r.via_group, r.via_key, r.line) for r in p.routes] == [
        (True, None, 2), (False, key, 3), (False, None, 4), (True, None, 5)]
    assert p.routes[3].prefixes == EXIT_PREFIXES


@pytest.mark.parametrize(("line", "problem"), [
    ("frobnicate", "unknown keyword 'frobnicate'"),
    ("default", "bad default line"),
    ("default maybe", "bad default line"),
    ("default deny deny", "bad default line"),
    ("group", "a group needs a name and members"),
    ("group empty", "a group needs a name and members"),
    ("group bad_name x", "group name 'bad_name' is not a DNS label"),
    ("group g not/a/name", "member 'not/a/name' is neither"),
    ("group g " + "a" * 33, "is neither a base64 identity key nor a certificate name"),
    ("to", "bad to line"),
    ("to a b", "bad to line"),
    ("to nobody", "to names an unknown group 'nobody'"),
    ("to bad_name", "to 'bad_name' is not a group name"),
    ("allow tcp 22 from nobody", "from names an unknown group 'nobody'"),
    ("allow tcp 22 from", "`from` takes one group"),
    ("allow tcp from g 22", "`from` takes one group"),
    ("allow tcp 22 from g h", "`from` takes one group"),
    ("allow tcp 70000 from g", "bad port '70000'"),
    ("allow tcp 22 23", "unexpected '23'"),
    ("deny smtp 25", "unknown protocol 'smtp'"),
    ("route 10.0.0.0/24", "bad route line"),
    ("route 10.0.0.0/24 through gw", "bad route line"),
    ("route 10.0.0.1/24 via gw", "bad prefix '10.0.0.1/24'"),
    ("route 300.0.0.0/8 via gw", "bad prefix"),
    ("route 10.0.0.0/24 via bad_name", "via 'bad_name' is neither"),
    ("exit", "bad exit line"),
    ("exit gw", "bad exit line"),
    ("exit via gw extra", "bad exit line"),
])
def test_every_malformed_line_names_its_line(line: str, problem: str) -> None:
    text = f"group g g-1\n# fine so far\n\nallow tcp 22 from g\n{line}\nallow tcp 23\n"
    with pytest.raises(PolicyError) as info:
        parse_org_policy(text, "acme.policy")
    msg = str(info.value)
    assert msg.startswith("acme.policy:5: ") and problem in msg and "; " in msg, msg


def test_a_second_default_names_both_lines() -> None:
    with pytest.raises(PolicyError, match=r"^p:3: a second default \(the first is on line 1\)"):
        parse_org_policy("default deny\n\ndefault allow\n", "p")


names = st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True)


@st.composite
def policies(draw: st.DrawFn) -> tuple[str, dict[str, set[str]], list[tuple[str, str, str]]]:
    groups = draw(st.dictionaries(names, st.sets(names, min_size=1, max_size=4), max_size=4))
    targets = ["*", *groups]
    rules = draw(st.lists(st.tuples(st.sampled_from(targets), st.sampled_from(targets),
                                    st.sampled_from(["allow tcp 22", "deny all", "allow udp 1-9",
                                                     "deny all 443"])), max_size=12))
    lines = [f"group {g} {' '.join(sorted(m))}" for g, m in groups.items()]
    section = "*"
    for to, sender, rule in rules:
        if to != section:
            lines.append(f"to {to}")
            section = to
        lines.append(rule if sender == "*" else f"{rule} from {sender}")
    return "\n".join(lines), groups, rules


@given(policies())
def test_round_trip(case: tuple[str, dict[str, set[str]], list[tuple[str, str, str]]]) -> None:
    text, groups, rules = case
    p = parse_org_policy(text, "p")
    assert {g: set(v.names) for g, v in p.groups.items()} == groups
    assert [(r.to, r.sender, r.rule.text) for r in p.rules] == rules
    assert all(text.split("\n")[r.rule.line - 1].startswith(r.rule.text) for r in p.rules)


@given(st.text(max_size=200))
def test_any_text_parses_or_raises_a_policy_error(text: str) -> None:
    try:
        parse_org_policy(text, "p")
    except PolicyError as exc:
        assert re.match(r"p:\d+: ", str(exc))
