"""Service rules: one `allow|deny tcp|udp|all PORT|LOW-HIGH|all` a line (docs/policy.md).

A line is read as the original meshguard reads its `services/` files, so a config dir moves
between the two: the line is trimmed of spaces, tabs, CR and LF; an empty line or one that
starts with `#` holds no rule; tokens are split on spaces and tabs; `allow|deny all` (nothing
after `all`) is `all all`; a port is `all`, `LOW-HIGH` (LOW <= HIGH) or one port, each 0-65535;
ports 0 (or 0-0) mean every port, as in the original. Where the original skips a whole file
silently, we report `FILE:LINE: what is wrong`; and where it ignores trailing tokens, we refuse
them, except a trailing `# comment`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from meshguard.errors import ConfigError
from meshguard.policy.table import ALL_PORTS, PROTO_ANY, PROTO_TCP, PROTO_UDP

MAX_RULES = 1024  # per file; the original allows 64, so every file it reads fits
MAX_FILE = 64 * 1024  # bytes of one rule file
SEPARATORS = " \t"
TRIM = " \t\r\n"

PROTO_NAMES = {"tcp": PROTO_TCP, "udp": PROTO_UDP, "all": PROTO_ANY}
_NAME_OF = {v: k for k, v in PROTO_NAMES.items()}
RULE_SYNTAX = "allow|deny tcp|udp|all PORT|LOW-HIGH|all"


class PolicyError(ConfigError):
    """A malformed rule or policy file; the message reads `FILE:LINE: what is wrong; fix`."""

    def __init__(self, source: str, line: int, detail: str) -> None:
        super().__init__(f"{source}:{line}: {detail}")
        self.source = source
        self.line = line
        self.detail = detail  # `what is wrong; fix`, without the place


@dataclass(frozen=True, slots=True)
class Rule:
    """One service rule; `line` is its 1-based line in `source` (0 when it has none)."""

    allow: bool
    proto: int  # PROTO_TCP, PROTO_UDP or PROTO_ANY
    port_lo: int
    port_hi: int
    source: str = ""
    line: int = 0

    @property
    def text(self) -> str:
        """The rule in its canonical form, e.g. `allow tcp 22`, `deny all`."""
        action = "allow" if self.allow else "deny"
        if (self.port_lo, self.port_hi) == ALL_PORTS:
            ports = "all"
        elif self.port_lo == self.port_hi:
            ports = str(self.port_lo)
        else:
            ports = f"{self.port_lo}-{self.port_hi}"
        if self.proto == PROTO_ANY and ports == "all":
            return f"{action} all"
        return f"{action} {_NAME_OF[self.proto]} {ports}"


def error(source: str, line: int, problem: str, fix: str) -> PolicyError:
    return PolicyError(source, line, f"{problem}; {fix}")


def tokens(line: str) -> list[str]:
    """The tokens of one line, without a trailing `# comment`; [] for no rule."""
    out: list[str] = []
    for tok in line.strip(TRIM).replace("\t", " ").split(" "):
        if not tok:
            continue
        if tok.startswith("#"):
            break
        out.append(tok)
    return out


def _port(text: str, source: str, line: int) -> int:
    # the length first (leading zeros aside): int() of more than 4300 digits raises ValueError
    digits = text.lstrip("0") or "0"
    if len(digits) > 5 or not text.isascii() or not text.isdigit() or int(digits) > 65535:
        shown = text if len(text) <= 24 else text[:24] + "..."
        raise error(source, line, f"bad port {shown!r}", "use 0-65535, LOW-HIGH or all")
    return int(digits)


def rule_from_tokens(toks: Sequence[str], source: str, line: int) -> Rule:
    """A rule from the tokens of one line (at least one), refusing anything after it."""
    action = toks[0]
    if action not in ("allow", "deny"):
        raise error(source, line, f"unknown action {action!r}", f"a rule is `{RULE_SYNTAX}`")
    if len(toks) < 2:
        raise error(source, line, "missing protocol", f"a rule is `{RULE_SYNTAX}`")
    proto_name = toks[1]
    if proto_name not in PROTO_NAMES:
        raise error(source, line, f"unknown protocol {proto_name!r}", "use tcp, udp or all")
    allow = action == "allow"
    if proto_name == "all" and len(toks) == 2:
        return Rule(allow, PROTO_ANY, *ALL_PORTS, source, line)
    if len(toks) < 3:
        raise error(source, line, "missing port", "give a port, LOW-HIGH or all")
    if len(toks) > 3:
        raise error(source, line, f"unexpected {toks[3]!r} after the rule",
                    f"a rule is `{RULE_SYNTAX}`")
    spec = toks[2]
    if spec == "all":
        lo, hi = ALL_PORTS
    elif "-" in spec:
        lo_text, _, hi_text = spec.partition("-")
        lo, hi = _port(lo_text, source, line), _port(hi_text, source, line)
        if lo > hi:
            raise error(source, line, f"port range {spec} runs backwards", "write LOW-HIGH")
    else:
        lo = hi = _port(spec, source, line)
    if (lo, hi) == (0, 0):  # the original's "all ports"
        lo, hi = ALL_PORTS
    return Rule(allow, PROTO_NAMES[proto_name], lo, hi, source, line)


def parse_rule(text: str, source: str = "<rule>", line: int = 1) -> Rule | None:
    """One line: a Rule, or None for a blank or comment line."""
    toks = tokens(text)
    return rule_from_tokens(toks, source, line) if toks else None


def numbered_lines(text: str) -> list[tuple[int, str]]:
    """(1-based number, line) for every line, split on LF as the original does."""
    return list(enumerate(text.split("\n"), 1))


def decode_text(data: bytes, source: str) -> str:
    """A file's bytes as text: UTF-8, else an error naming the line that is not."""
    if len(data) > MAX_FILE:
        raise error(source, 1, f"file is larger than {MAX_FILE} bytes", "split it or shorten it")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise error(source, line, "not UTF-8 text", "rewrite that line in plain text") from None


def parse_rules(text: str, source: str) -> list[Rule]:
    """Every rule of a service file, in order; PolicyError on the first bad line."""
    out: list[Rule] = []
    for lineno, line in numbered_lines(text):
        rule = parse_rule(line, source, lineno)
        if rule is None:
            continue
        if len(out) == MAX_RULES:
            raise error(source, lineno, f"more than {MAX_RULES} rules", "split the file")
        out.append(rule)
    return out
