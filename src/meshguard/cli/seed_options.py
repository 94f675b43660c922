"""`up --dns DOMAIN`: the domain whose `_meshguard._udp` TXT records list seeds
(docs/seeds.md)."""

from __future__ import annotations

import re

from meshguard.cli.daemon_commands import UsageError

_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")


def parse_seed_domain(text: str) -> str:
    """A DNS name (labels of letters, digits, `-` and `_`), without its trailing dot."""
    name = text.strip().rstrip(".")
    labels = name.split(".")
    if not name or len(name) > 230 or not all(_LABEL.match(label) for label in labels):
        raise UsageError(f"bad --dns domain {text!r}: expected a DNS name such as example.org")
    return name.lower()
