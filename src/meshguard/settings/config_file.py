"""Reading `meshguard.toml` (docs/config.md): TOML through the stdlib `tomllib`, flat keys only,
each checked against the schema (settings/schema.py).

Every problem is one ConfigFileError line, "FILE:LINE: key 'x': what is wrong" (a TOML syntax
error: "FILE:LINE: what tomllib says"). tomllib keeps no line numbers, so a key's line is the
first line of the text that assigns it.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from meshguard.errors import MeshguardError
from meshguard.settings.schema import BOOLEAN, BY_KEY, INTEGER, STRING, STRINGS, Setting, Value

MAX_FILE = 1 << 20  # bytes: a config file is a few hundred


class ConfigFileError(MeshguardError):
    """The config file is unusable: "FILE:LINE: key 'x': what is wrong"."""


@dataclass(frozen=True)
class ConfigFile:
    path: Path
    values: dict[str, Value] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)  # key -> the line that sets it

    def where(self, key: str) -> str:
        return f"{self.path}:{self.lines.get(key, 1)}"


_TOML_AT = re.compile(r"\s*\(at line (\d+), column \d+\)$")
_TOML_END = re.compile(r"\s*\(at end of document\)$")


def _syntax_error(path: Path, text: str, exc: tomllib.TOMLDecodeError) -> ConfigFileError:
    msg = str(exc)
    m = _TOML_AT.search(msg)
    if m is not None:
        line, msg = int(m.group(1)), msg[:m.start()]
    else:
        line = max(text.count("\n") + (0 if text.endswith("\n") else 1), 1)
        msg = _TOML_END.sub("", msg)
    return ConfigFileError(f"{path}:{line}: not valid TOML: {msg[:1].lower()}{msg[1:]}")


def line_of(text: str, key: str) -> int:
    """The first line assigning `key` (bare or quoted) or opening the table `[key]`."""
    k = re.escape(key)
    pat = re.compile(rf"^[ \t]*(?:\[[ \t]*)?(?:{k}|\"{k}\"|'{k}')[ \t]*[=.\]]", re.MULTILINE)
    m = pat.search(text)
    return text.count("\n", 0, m.start()) + 1 if m is not None else 1


def _kind_problem(s: Setting, value: object) -> str | None:
    if s.kind == BOOLEAN:
        ok = isinstance(value, bool)
        example = "true or false"
    elif s.kind == INTEGER:
        ok = isinstance(value, int) and not isinstance(value, bool)
        example = f"a number such as {s.default}"
    elif s.kind == STRING:
        ok = isinstance(value, str)
        example = f'a string such as "{s.default or _EXAMPLES.get(s.key, "...")}"'
    else:
        assert s.kind == STRINGS
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        example = f'an array of strings such as ["{_EXAMPLES.get(s.key, "...")}"]'
    if ok:
        if s.choices and value not in s.choices:
            return f"must be one of {', '.join(s.choices)}, got {value!r}"
        return None
    return f"must be {example}, got {_toml_type(value)}"


_EXAMPLES = {"seed": "203.0.113.7:51821", "dns": "example.org", "stun": "stun.example.org:3478",
             "announce": "203.0.113.7", "advertise_routes": "10.20.0.0/24",
             "exit_node": "gw-1", "metrics": "127.0.0.1:9586"}


def _toml_type(value: object) -> str:
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int | float):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string ({value!r})"
    if isinstance(value, list):
        return "an array" + ("" if all(isinstance(v, str) for v in value)
                             else " with a non-string item")
    if isinstance(value, dict):
        return "a table"
    return f"a {type(value).__name__}"


def _unknown(key: str) -> str:
    close = difflib.get_close_matches(key, list(BY_KEY), n=1)
    hint = f"did you mean '{close[0]}'?" if close else "docs/config.md lists the keys"
    return f"unknown key; {hint}"


def parse_config_text(path: Path, text: str) -> ConfigFile:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _syntax_error(path, text, exc) from None
    values: dict[str, Value] = {}
    lines: dict[str, int] = {}
    for key, value in doc.items():
        line = line_of(text, key)
        setting = BY_KEY.get(key)
        problem = _unknown(key) if setting is None else _kind_problem(setting, value)
        if problem is not None:
            raise ConfigFileError(f"{path}:{line}: key '{key}': {problem}")
        values[key] = list(value) if isinstance(value, list) else value
        lines[key] = line
    return ConfigFile(path, values, lines)


def load_config_file(path: Path) -> ConfigFile:
    """Read and check one config file (ConfigFileError on any problem)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE + 1)
    except OSError as exc:
        raise ConfigFileError(f"{path}: cannot read the config file: "
                              f"{exc.strerror or exc}") from None
    if len(data) > MAX_FILE:
        raise ConfigFileError(f"{path}: the config file is larger than {MAX_FILE} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigFileError(f"{path}:{line}: not UTF-8 text") from None
    return parse_config_text(path, text)
