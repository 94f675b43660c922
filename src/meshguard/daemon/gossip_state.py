"""The gossip high-water marks a node keeps across restarts (`<config dir>/gossip.state`).

Each line is `<base64 identity key> <incarnation>`: the highest incarnation this node has seen
from that member. On start the membership core refuses records at or below it, so a record
captured before a restart (one carrying a WireGuard key rotated away since, say) cannot be
replayed to the restarted node. Records older than the gossip's maximum age are refused anyway,
so the file only needs marks younger than that; it is rewritten atomically.

The file is the node's own cache, not something a user writes: a line that does not parse is
skipped (and counted in the returned number), never fatal.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

from meshguard.identity.store import write_file

STATE_FILE = "gossip.state"
MAX_ENTRIES = 65536


def load_high_water(config_dir: Path) -> tuple[dict[bytes, int], int]:
    """The marks in the file (empty if there is none), and how many lines were skipped."""
    try:
        text = (config_dir / STATE_FILE).read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        return {}, 0
    marks: dict[bytes, int] = {}
    bad = 0
    for line in text.splitlines()[:MAX_ENTRIES]:
        parts = line.split()
        if not parts:
            continue
        try:
            if len(parts) != 2:
                raise ValueError(line)
            key = base64.b64decode(parts[0], validate=True)
            inc = int(parts[1])
        except (ValueError, binascii.Error):
            bad += 1
            continue
        if len(key) != 32 or not 0 <= inc < 2**64:
            bad += 1
            continue
        marks[key] = max(inc, marks.get(key, 0))
    return marks, bad


def save_high_water(config_dir: Path, marks: dict[bytes, int], min_incarnation: int) -> None:
    """Write the marks at or above `min_incarnation` (younger than the maximum record age)."""
    keep = sorted(((k, v) for k, v in marks.items() if v >= min_incarnation),
                  key=lambda kv: -kv[1])[:MAX_ENTRIES]
    body = "".join(f"{base64.b64encode(k).decode()} {v}\n" for k, v in keep)
    write_file(config_dir / STATE_FILE, body.encode("ascii"))
