"""The text of an org-signed policy: groups, sections of rules, route grants (docs/policy.md).

    default allow|deny                      the org's default (at most once)
    group NAME MEMBER...                    members by certificate name or base64 identity key;
                                            repeating a group line extends the group
    to GROUP|*                              rules below apply to traffic arriving at GROUP
    allow|deny PROTO PORT [from GROUP|*]    a service rule (rules.py), from GROUP only
    route PREFIX via MEMBER|GROUP           MEMBER may carry PREFIX for the mesh
    exit via MEMBER|GROUP                   MEMBER may carry 0.0.0.0/0 and ::/0

`#` starts a comment (a whole line or the rest of one). A group may be named before or after
the line that defines it; a `to` or `from` naming no group, a `via` that is neither a group, a
key nor a certificate name, and every other malformed line are PolicyErrors with the line.
This module only parses: which members a group holds is decided by the compiler, against the
members a node knows (a certificate name counts only on a certificate this org issued).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NoReturn

from meshguard.identity.names import CERT_NAME_LEN, is_dns_label
from meshguard.policy.rules import (
    Rule,
    decode_text,
    error,
    numbered_lines,
    rule_from_tokens,
    tokens,
)
from meshguard.policy.service_files import key_from_name
from meshguard.policy.table import IPNetwork

EVERY = "*"
MAX_GROUPS = 1024
MAX_MEMBERS = 65536  # group entries in one policy
MAX_RULES = 4096
MAX_ROUTES = 1024
EXIT_PREFIXES: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("0.0.0.0/0"),
    ipaddress.ip_network("::/0"),
)


@dataclass(frozen=True, slots=True)
class Group:
    names: frozenset[str]  # certificate names (of certificates this org issued)
    keys: frozenset[bytes]  # identity keys
    line: int  # where it is first defined


@dataclass(frozen=True, slots=True)
class OrgRule:
    rule: Rule  # rule.line is its line in the policy text
    to: str  # a group name or EVERY
    sender: str  # the `from` group, or EVERY
    text: str  # the line as a canonical rule, e.g. "allow tcp 9100 from monitoring"


@dataclass(frozen=True, slots=True)
class RouteLine:
    prefixes: tuple[IPNetwork, ...]
    via: str  # a group name, a certificate name or a base64 key (see via_key / via_group)
    via_group: bool
    via_key: bytes | None
    line: int
    text: str


@dataclass(frozen=True, slots=True)
class OrgPolicy:
    source: str
    default_allow: bool | None  # None: the policy says nothing
    default_line: int
    groups: Mapping[str, Group]
    rules: tuple[OrgRule, ...]
    routes: tuple[RouteLine, ...]


_GROUP_FIX = "define it with `group NAME MEMBER...` or use *"


def _member_ok(token: str) -> bool:
    return key_from_name(token) is not None or is_dns_label(token, CERT_NAME_LEN)


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source
        self.default_allow: bool | None = None
        self.default_line = 0
        self.names: dict[str, set[str]] = {}
        self.keys: dict[str, set[bytes]] = {}
        self.group_line: dict[str, int] = {}
        self.members = 0
        self.uses: list[tuple[str, int, str]] = []  # (group, line, keyword)
        self.section = EVERY
        self.rules: list[OrgRule] = []
        self.routes: list[tuple[tuple[IPNetwork, ...], str, int, str]] = []

    def fail(self, line: int, problem: str, fix: str) -> NoReturn:
        raise error(self.source, line, problem, fix)

    def group_ref(self, name: str, line: int, keyword: str) -> str:
        if name != EVERY:
            if not is_dns_label(name):
                self.fail(line, f"{keyword} {name!r} is not a group name", _GROUP_FIX)
            self.uses.append((name, line, keyword))
        return name

    def line(self, n: int, toks: list[str]) -> None:
        word = toks[0]
        if word in ("allow", "deny"):
            self.rule(n, toks)
        elif word == "default":
            if len(toks) != 2 or toks[1] not in ("allow", "deny"):
                self.fail(n, "bad default line", "write `default allow` or `default deny`")
            if self.default_allow is not None:
                self.fail(n, f"a second default (the first is on line {self.default_line})",
                          "keep one `default` line")
            self.default_allow, self.default_line = toks[1] == "allow", n
        elif word == "group":
            self.group(n, toks)
        elif word == "to":
            if len(toks) != 2:
                self.fail(n, "bad to line", "write `to GROUP` or `to *`")
            self.section = self.group_ref(toks[1], n, "to")
        elif word in ("route", "exit"):
            self.route(n, toks)
        else:
            self.fail(n, f"unknown keyword {word!r}",
                      "lines start with default, group, to, allow, deny, route or exit")

    def group(self, n: int, toks: list[str]) -> None:
        if len(toks) < 3:
            self.fail(n, "a group needs a name and members", "write `group NAME MEMBER...`")
        name = toks[1]
        if not is_dns_label(name):
            self.fail(n, f"group name {name!r} is not a DNS label",
                      "use letters, digits and '-', e.g. validators")
        if name not in self.group_line:
            if len(self.group_line) == MAX_GROUPS:
                self.fail(n, f"more than {MAX_GROUPS} groups", "merge some groups")
            self.group_line[name] = n
        names = self.names.setdefault(name, set())
        keys = self.keys.setdefault(name, set())
        for member in toks[2:]:
            key = key_from_name(member)
            if key is not None:
                keys.add(key)
            elif is_dns_label(member, CERT_NAME_LEN):
                names.add(member)
            else:
                self.fail(n, f"member {member!r} is neither a base64 identity key nor a "
                          "certificate name", f"use a key or a name of at most {CERT_NAME_LEN} "
                          "letters, digits and '-'")
            self.members += 1
            if self.members > MAX_MEMBERS:
                self.fail(n, f"more than {MAX_MEMBERS} group members", "use fewer groups")

    def rule(self, n: int, toks: list[str]) -> None:
        sender = EVERY
        if "from" in toks:
            at = toks.index("from")
            if at != len(toks) - 2:
                self.fail(n, "`from` takes one group at the end of the rule",
                          "write `allow tcp 9100 from GROUP`")
            sender = self.group_ref(toks[-1], n, "from")
            toks = toks[:at]
        rule = rule_from_tokens(toks, self.source, n)
        if len(self.rules) == MAX_RULES:
            self.fail(n, f"more than {MAX_RULES} rules", "shorten the policy")
        text = rule.text if sender == EVERY else f"{rule.text} from {sender}"
        if self.section != EVERY:
            text = f"to {self.section}: {text}"
        self.rules.append(OrgRule(rule, self.section, sender, text))

    def route(self, n: int, toks: list[str]) -> None:
        if toks[0] == "exit":
            if len(toks) != 3 or toks[1] != "via":
                self.fail(n, "bad exit line", "write `exit via MEMBER|GROUP`")
            prefixes = EXIT_PREFIXES
        else:
            if len(toks) != 4 or toks[2] != "via":
                self.fail(n, "bad route line", "write `route PREFIX via MEMBER|GROUP`")
            try:
                prefixes = (ipaddress.ip_network(toks[1], strict=True),)
            except ValueError:
                self.fail(n, f"bad prefix {toks[1]!r}",
                          "write an address/length with no host bits, e.g. 10.20.0.0/24")
        via = toks[-1]
        if not _member_ok(via) and via != EVERY:
            self.fail(n, f"via {via!r} is neither a group, a key nor a certificate name",
                      "name a group, a member's certificate name or its base64 key")
        if len(self.routes) == MAX_ROUTES:
            self.fail(n, f"more than {MAX_ROUTES} route lines", "shorten the policy")
        self.routes.append((prefixes, via, n, " ".join(toks)))

    def finish(self) -> OrgPolicy:
        for name, n, keyword in self.uses:
            if name not in self.group_line:
                self.fail(n, f"{keyword} names an unknown group {name!r}", _GROUP_FIX)
        groups = {
            name: Group(frozenset(self.names[name]), frozenset(self.keys[name]), line)
            for name, line in self.group_line.items()
        }
        routes = tuple(
            RouteLine(prefixes, via, via in groups or via == EVERY,
                      None if via in groups else key_from_name(via), n, text)
            for prefixes, via, n, text in self.routes
        )
        return OrgPolicy(self.source, self.default_allow, self.default_line, groups,
                         tuple(self.rules), routes)


def parse_org_policy(text: str, source: str) -> OrgPolicy:
    """Parse a policy's text; PolicyError `SOURCE:LINE: problem; fix` on the first bad line."""
    parser = _Parser(source)
    for n, line in numbered_lines(text):
        toks = tokens(line)
        if toks:
            parser.line(n, toks)
    return parser.finish()


def parse_org_policy_file(data: bytes, source: str) -> OrgPolicy:
    """The same, from a file's bytes (size and UTF-8 checked first)."""
    return parse_org_policy(decode_text(data, source), source)
