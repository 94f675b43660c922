"""Org aliases: what makes one valid, their text form, and the ones this node keeps.

An alias (`OrgAliasAnnounce`, wire/org.py) is an org's signed claim "my nodes are also
`<node>.<alias>.mesh`" (docs/mesh-dns-and-org-revocation.md).
Its text form is one line, `alias <org b64> <alias> <issued_at> <signature b64>`: the org
admin's `org/alias` file (`meshguard org-alias`) holds one, and `org_aliases` in the config dir
holds the aliases this node received from the mesh, one line per org, so that they survive a
restart:

- written atomically (identity/store.py) when the daemon learns a newer alias, at most once
  per SAVE_INTERVAL, sorted by org key, at most MAX_ALIASES lines (an org has one alias: its
  newest);
- read back at start-up with every line checked again: a line that does not parse, names an
  alias that is not valid, or whose org signature does not verify is refused and counted
  (`KeptAliases.refused`), never trusted; so is every line beyond MAX_ALIASES or MAX_FILE
  bytes. Whether the org is still trusted, and whether the alias is newer than what the node
  has, the org core decides as for one from the network (mesh/org_gossip.py `add_alias`).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from meshguard.crypto.keys import b64encode, ed25519_verify
from meshguard.errors import WireFormatError
from meshguard.identity import store
from meshguard.identity.names import is_dns_label
from meshguard.wire import org as wire
from meshguard.wire.org import AliasAnnouncement

ORG_ALIASES = "org_aliases"
MAX_ALIASES = 256  # orgs whose alias is kept
MAX_LINE = 200  # an alias line is at most ~170 bytes (63-byte alias, 20-digit time)
MAX_FILE = MAX_ALIASES * MAX_LINE
# seconds between two writes of the file: a trusted org that renames itself many times a
# second costs every node one write per interval, not one per rename (the last one is written
# when the interval ends, or when the daemon leaves)
SAVE_INTERVAL = 10.0


def alias_problem(alias: str) -> str | None:
    if not is_dns_label(alias) or alias != alias.lower():
        return "an alias must be a lowercase DNS label"
    if len(alias) == 6 and all(c in "0123456789abcdef" for c in alias):
        return "an alias must not look like an org domain (six hex digits)"
    if alias == "mesh":
        return "'mesh' is the top-level domain"
    return None


def alias_valid(a: AliasAnnouncement) -> bool:
    if alias_problem(a.alias) is not None:
        return False
    try:
        msg = wire.alias_message(a.org_key, a.alias, a.issued_at)
    except WireFormatError:
        return False
    return ed25519_verify(a.org_key, a.signature, msg)


# -- text form -----------------------------------------------------------------------------


def format_alias_line(a: AliasAnnouncement) -> str:
    return f"alias {b64encode(a.org_key)} {a.alias} {a.issued_at} {b64encode(a.signature)}\n"


def _parse_fields(fields: list[str]) -> AliasAnnouncement | None:
    try:
        org = base64.b64decode(fields[1], validate=True)
        issued = int(fields[3])
        sig = base64.b64decode(fields[4], validate=True)
    except (ValueError, binascii.Error):
        return None
    if len(org) != wire.KEY_LEN or len(sig) != wire.SIG_LEN:
        return None
    return AliasAnnouncement(org, fields[2], issued, sig)


def parse_alias_line(text: str) -> AliasAnnouncement | None:
    """Parse the first `alias <org> <alias> <issued_at> <sig>` line of `text`, or None."""
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) != 5 or fields[0] != "alias":
            continue
        return _parse_fields(fields)
    return None


# -- the aliases this node keeps -----------------------------------------------------------


@dataclass(frozen=True)
class KeptAliases:
    aliases: tuple[AliasAnnouncement, ...] = ()  # verified, the newest per org
    refused: int = 0  # lines refused (malformed, invalid, forged, beyond the bounds)
    problem: str | None = None  # the file could not be read


def _newest(aliases: Iterable[AliasAnnouncement]) -> list[AliasAnnouncement]:
    best: dict[bytes, AliasAnnouncement] = {}
    for a in aliases:
        cur = best.get(a.org_key)
        if cur is None or (a.issued_at, a.alias) > (cur.issued_at, cur.alias):
            best[a.org_key] = a
    return [best[k] for k in sorted(best)]


def load_aliases(config_dir: Path) -> KeptAliases:
    """The aliases in `org_aliases`, each verified again (none: the file is missing)."""
    path = config_dir / ORG_ALIASES
    try:
        with path.open("rb") as f:
            data = f.read(MAX_FILE + 1)
    except FileNotFoundError:
        return KeptAliases()
    except OSError as exc:
        return KeptAliases(problem=f"cannot read {path} ({exc.strerror or type(exc).__name__})")
    refused = 0
    if len(data) > MAX_FILE:
        data = data[: data.rfind(b"\n", 0, MAX_FILE) + 1]
        refused += 1  # what lies beyond the bound is not read
    good: list[AliasAnnouncement] = []
    for raw in data.splitlines():
        try:
            line = raw.decode("ascii")
        except UnicodeDecodeError:
            refused += 1
            continue
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        a = _parse_fields(fields) if len(fields) == 5 and fields[0] == "alias" else None
        if a is None or len(good) >= MAX_ALIASES or not alias_valid(a):
            refused += 1
            continue
        good.append(a)
    return KeptAliases(tuple(_newest(good)), refused)


def save_aliases(config_dir: Path, aliases: Iterable[AliasAnnouncement]) -> None:
    """Replace `org_aliases` atomically with the newest alias per org (at most MAX_ALIASES)."""
    lines = [format_alias_line(a) for a in _newest(aliases)[:MAX_ALIASES]]
    store.write_file(config_dir / ORG_ALIASES, "".join(lines).encode("ascii"))


__all__ = [
    "MAX_ALIASES",
    "ORG_ALIASES",
    "SAVE_INTERVAL",
    "KeptAliases",
    "alias_problem",
    "alias_valid",
    "format_alias_line",
    "load_aliases",
    "parse_alias_line",
    "save_aliases",
]
