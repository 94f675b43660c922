"""The `seeds` section of the status document (wire/control.py): where the node's seeds come
from, what they resolved to, and when they are looked up next (docs/seeds.md)::

    "seeds": {
      "connected": true,                # the node has a live member
      "next_retry": 1700000060.0 | null,  # unix seconds: the next rejoin of a node alone
      "sources": [
        {
          "source": "address" | "host" | "dns" | "mdns",
          "name": "seed.example.org:51821" | "example.org" | "_meshguard._udp.local",
          "addresses": ["192.0.2.7:51821", "[2001:db8::7]:51821"],
          "last_success": 1700000000.0 | null,   # unix seconds of the last answer
          "last_failure": 1700000000.0 | null,   # unix seconds of the last failed lookup
          "error": "cannot resolve seed ...: no such name (NXDOMAIN)" | null,
          "warnings": ["--dns example.org: malformed record ..."],
          "next_lookup": 1700000300.0 | null     # unix seconds
        }
      ]
    }

A daemon without seed sources leaves the section out. Pure encoding: no sockets, no clocks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class SeedSourceStatus:
    source: str
    name: str
    addresses: tuple[str, ...]
    last_success: float | None
    last_failure: float | None
    error: str | None
    warnings: tuple[str, ...]
    next_lookup: float | None


@dataclass(frozen=True)
class SeedsStatus:
    connected: bool
    next_retry: float | None
    sources: tuple[SeedSourceStatus, ...]

    def to_json(self) -> dict[str, object]:
        return {"connected": self.connected, "next_retry": self.next_retry,
                "sources": [asdict(s) for s in self.sources]}

    @classmethod
    def from_json(cls, obj: object) -> SeedsStatus | None:
        """Raises TypeError or KeyError on a malformed section (the caller's error)."""
        if obj is None:
            return None
        d = _obj(obj)
        return cls(connected=bool(_typed(d["connected"], bool)),
                   next_retry=_opt_num(d["next_retry"]),
                   sources=tuple(_source(_obj(s)) for s in _items(d["sources"])))


def _source(d: Mapping[str, object]) -> SeedSourceStatus:
    return SeedSourceStatus(
        source=str(_typed(d["source"], str)), name=str(_typed(d["name"], str)),
        addresses=tuple(str(_typed(a, str)) for a in _items(d["addresses"])),
        last_success=_opt_num(d["last_success"]), last_failure=_opt_num(d["last_failure"]),
        error=None if d["error"] is None else str(_typed(d["error"], str)),
        warnings=tuple(str(_typed(w, str)) for w in _items(d.get("warnings", []))),
        next_lookup=_opt_num(d["next_lookup"]))


def _obj(v: object) -> Mapping[str, object]:
    if not isinstance(v, dict):
        raise TypeError("expected an object")
    return v


def _typed(v: object, t: type) -> object:
    if not isinstance(v, t) or (t is not bool and isinstance(v, bool)):
        raise TypeError(f"expected {t.__name__}")
    return v


def _items(v: object) -> list[object]:
    if not isinstance(v, list):
        raise TypeError("expected a list")
    return list(v)


def _opt_num(v: object) -> float | None:
    if v is None:
        return None
    if not isinstance(v, int | float) or isinstance(v, bool):
        raise TypeError("expected a number")
    return float(v)
