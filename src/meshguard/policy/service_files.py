"""The config dir's `services/`, read as the original meshguard reads it (docs/policy.md).

    services/default              trimmed content "deny" -> deny, anything else -> allow
    services/global.policy        rules for every peer
    services/peer/<name>.policy   rules for one peer: <name> is a base64 identity key (44
                                  characters), an `authorized_keys/<name>.pub` name, or a
                                  member's certificate name (matched when the table is compiled)
    services/org/<name>.policy    rules for the members of one org: a base64 org key or a
                                  `trusted_orgs/<name>.org` name

No `services/` at all means allow everything. A malformed file raises PolicyError with its file
and line (the original skips such a file silently). Hidden files and names that do not end in
`.policy` are ignored, as the original ignores them.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from pathlib import Path

from meshguard.crypto.keys import KEY_LEN
from meshguard.identity.trust import TrustStore
from meshguard.policy.rules import MAX_FILE, TRIM, PolicyError, Rule, decode_text, parse_rules

SERVICES = "services"
DEFAULT = "default"
GLOBAL = "global.policy"
PEER_DIR = "peer"
ORG_DIR = "org"
SUFFIX = ".policy"
B64_KEY_LEN = 44


@dataclass(frozen=True, slots=True)
class ScopedRules:
    """The rules of one peer or org file; `key` is None for a name nothing resolved yet."""

    name: str  # the file's stem
    key: bytes | None
    rules: tuple[Rule, ...]
    source: str  # e.g. "services/peer/db-1.policy"


@dataclass(frozen=True, slots=True)
class LocalPolicies:
    """Everything `services/` says; `configured` False when there is no `services/`."""

    configured: bool = False
    default_allow: bool | None = None  # None: no services/default file
    global_rules: tuple[Rule, ...] = ()
    peers: tuple[ScopedRules, ...] = ()
    orgs: tuple[ScopedRules, ...] = ()
    problems: tuple[str, ...] = field(default=())  # names that resolve to nothing

    @property
    def rule_count(self) -> int:
        return len(self.global_rules) + sum(len(s.rules) for s in (*self.peers, *self.orgs))


NO_SERVICES = LocalPolicies()


def key_from_name(name: str) -> bytes | None:
    """A 44-character base64 name decoding to 32 bytes is a key, as in the original."""
    if len(name) != B64_KEY_LEN:
        return None
    try:
        raw = base64.b64decode(name, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == KEY_LEN else None


def _read(path: Path, source: str) -> str:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_FILE + 1)
    except OSError as exc:
        problem = exc.strerror or type(exc).__name__
        raise PolicyError(source, 1, f"cannot read ({problem}); fix its permissions") from None
    return decode_text(data, source)


def _scoped(directory: Path, sub: str, known: dict[str, bytes]) -> list[ScopedRules]:
    try:
        entries = sorted(p for p in directory.iterdir() if p.is_file())
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise PolicyError(
            f"{SERVICES}/{sub}", 0, f"cannot list ({exc.strerror}); fix its permissions"
        ) from None
    out: list[ScopedRules] = []
    for path in entries:
        if path.name.startswith(".") or not path.name.endswith(SUFFIX):
            continue
        name = path.name[: -len(SUFFIX)]
        source = f"{SERVICES}/{sub}/{path.name}"
        rules = tuple(parse_rules(_read(path, source), source))
        out.append(ScopedRules(name, key_from_name(name) or known.get(name), rules, source))
    return out


def load_services(config_dir: Path, trust: TrustStore) -> LocalPolicies:
    """Read `config_dir/services/`; PolicyError names the first malformed file and line."""
    base = config_dir / SERVICES
    if not base.is_dir():
        return NO_SERVICES
    default_allow: bool | None = None
    default_path = base / DEFAULT
    if default_path.is_file():
        try:
            with default_path.open("rb") as f:
                default_allow = f.read(MAX_FILE).strip(TRIM.encode()) != b"deny"
        except OSError as exc:
            problem = exc.strerror or type(exc).__name__
            raise PolicyError(f"{SERVICES}/{DEFAULT}", 1,
                              f"cannot read ({problem}); fix its permissions") from None
    global_rules: tuple[Rule, ...] = ()
    global_path = base / GLOBAL
    if global_path.is_file():
        source = f"{SERVICES}/{GLOBAL}"
        global_rules = tuple(parse_rules(_read(global_path, source), source))
    peers = _scoped(base / PEER_DIR, PEER_DIR, trust.peers)
    orgs = _scoped(base / ORG_DIR, ORG_DIR, trust.orgs)
    problems = tuple(
        f"{s.source}: no trusted org named {s.name!r}; its rules apply to nobody"
        for s in orgs if s.key is None
    )
    return LocalPolicies(True, default_allow, global_rules, tuple(peers), tuple(orgs), problems)
