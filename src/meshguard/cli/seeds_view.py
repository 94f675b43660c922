"""The seeds part of `meshguard status`: each seed source, what it resolved to, its last
success or failure and when it is looked up next (wire/seed_status.py)."""

from __future__ import annotations

from meshguard.cli.daemon_commands import human_ago
from meshguard.wire.seed_status import SeedsStatus


def _in(then: float | None, now: float) -> str:
    if then is None:
        return "-"
    d = max(0.0, then - now)
    return f"in {int(d)}s" if d < 120 else f"in {int(d // 60)}m"


def format_seeds(seeds: SeedsStatus | None, now: float) -> list[str]:
    if seeds is None:
        return []
    if seeds.connected:
        head = "seeds:"
    else:
        head = f"seeds: no member reachable yet; retrying {_in(seeds.next_retry, now)}"
    lines = ["", head]
    for s in seeds.sources:
        addrs = ", ".join(s.addresses) or "no address"
        state = f"ok {human_ago(s.last_success, now)}" if s.last_success else "never resolved"
        if s.error and (s.last_failure or 0) >= (s.last_success or 0):
            state = f"failed {human_ago(s.last_failure, now)}: {s.error}"
        nxt = f", next lookup {_in(s.next_lookup, now)}" if s.next_lookup is not None else ""
        lines.append(f"  {s.source} {s.name}: {addrs} ({state}{nxt})")
        lines.extend(f"    warning: {w}" for w in s.warnings)
    return lines
