"""When to look seeds up again, and which addresses to join (sans-IO; docs/seeds.md).

A seed source is a literal address (`--seed 192.0.2.1:51821`), a host name
(`--seed seed.example.org:51821`), a domain whose TXT records list seeds (`--dns DOMAIN`), or
the LAN (`--mdns`, whose answers the daemon pushes in). The daemon asks `due(now)` which
sources to look up, hands back each answer (`resolved`, `failed`, `discovered`) and joins
whenever `addresses()` changes.

- A name is looked up again every REFRESH seconds, sooner when its answer's TTL is lower
  (never sooner than MIN_REFRESH). A lookup that fails is retried after RETRY_FIRST seconds,
  doubling up to RETRY_MAX, forever.
- "Every seed has failed": while the node has no live member (`note_connected(now, False)`),
  every name is looked up again after RETRY_FIRST seconds, then after twice that, up to
  RETRY_MAX; the daemon joins again each time. Being connected resets that backoff.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from meshguard.sansio import Endpoint
from meshguard.wire.seed_status import SeedSourceStatus, SeedsStatus

REFRESH = 300.0  # seconds between two lookups of a name that answered
MIN_REFRESH = 5.0  # a TTL below this is read as this
RETRY_FIRST = 2.0  # seconds before the first retry of a failed lookup or of a stalled join
RETRY_MAX = 60.0  # the retry backoff's cap
MAX_ADDRESSES = 16  # addresses kept per name or domain (the rest of a large answer is dropped)

ADDRESS, HOST, DNS, MDNS = "address", "host", "dns", "mdns"
_LOOKED_UP = (HOST, DNS)


@dataclass(frozen=True)
class SeedSource:
    kind: str  # ADDRESS | HOST | DNS | MDNS
    name: str  # as the user wrote it: "192.0.2.1:51821", "seed.example:51821", "example.org"
    host: str = ""  # ADDRESS, HOST: the host part
    port: int = 0  # ADDRESS, HOST: the gossip port


@dataclass
class SourceState:
    source: SeedSource
    addresses: tuple[Endpoint, ...] = ()
    last_success: float | None = None  # wall clock
    last_failure: float | None = None  # wall clock
    error: str | None = None  # the last failure's reason (cleared by a success)
    next_at: float = float("inf")  # monotonic: the next lookup
    failures: int = 0  # lookups failed in a row
    in_flight: bool = False
    warnings: list[str] = field(default_factory=list)  # of the last answer (malformed records)


def _backoff(failures: int) -> float:
    return min(RETRY_FIRST * 2.0 ** max(failures - 1, 0), RETRY_MAX)


def _to_wall(at: float, now: float, wall: float) -> float | None:
    return None if at == float("inf") else wall + max(at - now, 0.0)


class SeedSchedule:
    def __init__(self, sources: list[SeedSource], now: float, wall: float) -> None:
        self._states: dict[SeedSource, SourceState] = {}
        self.set_sources(sources, now, wall)
        self._connected = False
        self._stalls = 0  # rescues since the node was last connected
        self._rescue_at = float("inf")

    def set_sources(self, sources: list[SeedSource], now: float, wall: float) -> bool:
        """These sources from now on (start-up, and a reload of the config file): the ones
        kept keep their state, new ones are looked up at once. True if any is new."""
        old = self._states
        self._states = {}
        for s in sources:
            if s in self._states:
                continue
            st = old.get(s)
            if st is None:
                st = SourceState(s)
                if s.kind == ADDRESS:
                    st.addresses = ((s.host, s.port),)
                    st.last_success = wall
                elif s.kind in _LOOKED_UP:
                    st.next_at = now
            self._states[s] = st
        return any(s not in old for s in self._states)

    @property
    def sources(self) -> list[SeedSource]:
        return list(self._states)

    def state(self, source: SeedSource) -> SourceState:
        return self._states[source]

    def has_lookups(self) -> bool:
        return any(s.kind in _LOOKED_UP for s in self._states)

    def addresses(self) -> list[Endpoint]:
        """Every address of every source, in the order of the sources, each once."""
        out: list[Endpoint] = []
        for st in self._states.values():
            out.extend(a for a in st.addresses if a not in out)
        return out

    def next_deadline(self) -> float:
        due = [st.next_at for st in self._states.values() if not st.in_flight]
        return min([*due, self._rescue_at])

    def due(self, now: float) -> list[SeedSource]:
        """The sources to look up now; each is in flight until its answer comes back."""
        if now >= self._rescue_at:
            self._stalls += 1
            self._rescue_at = now + _backoff(self._stalls + 1)
            for st in self._states.values():
                if st.source.kind in _LOOKED_UP:
                    st.next_at = min(st.next_at, now)
        out = []
        for st in self._states.values():
            if not st.in_flight and st.next_at <= now:
                st.in_flight = True
                st.next_at = float("inf")
                out.append(st.source)
        return out

    def resolved(self, now: float, wall: float, source: SeedSource, addresses: list[Endpoint],
                 ttl: float | None = None, warnings: list[str] | None = None) -> bool:
        """A lookup answered; True if the source's addresses changed."""
        st = self._states.get(source)
        if st is None:  # dropped by a reload while it was looked up
            return False
        st.in_flight = False
        new = tuple(dict.fromkeys(addresses))[:MAX_ADDRESSES]
        changed = new != st.addresses
        st.addresses = new
        st.last_success = wall
        st.error = None
        st.failures = 0
        st.warnings = list(warnings or [])
        wait = REFRESH if ttl is None else min(max(ttl, MIN_REFRESH), REFRESH)
        st.next_at = now + wait
        return changed

    def failed(self, now: float, wall: float, source: SeedSource, error: str) -> None:
        """A lookup failed (no such name, no answer, only malformed records, a timeout). The
        addresses it gave before are kept: a resolver's hiccup must not drop a working seed."""
        st = self._states.get(source)
        if st is None:  # dropped by a reload while it was looked up
            return
        st.in_flight = False
        st.failures += 1
        st.last_failure = wall
        st.error = error
        st.next_at = now + _backoff(st.failures)

    def discovered(self, wall: float, source: SeedSource, addresses: list[Endpoint]) -> bool:
        """A pushed source (mDNS) now offers these addresses; True if they changed."""
        st = self._states.get(source)
        if st is None:
            return False
        new = tuple(dict.fromkeys(addresses))[:MAX_ADDRESSES]
        changed = new != st.addresses
        st.addresses = new
        if new:
            st.last_success = wall
        return changed

    def note_connected(self, now: float, connected: bool) -> None:
        """Whether the node has a live member now. While it has none, every name is looked
        up again with backoff (`due`), so a seed that moved is found at its new address."""
        if connected:
            self._connected = True
            self._stalls = 0
            self._rescue_at = float("inf")
            return
        if self._connected or self._rescue_at == float("inf"):
            self._connected = False
            self._rescue_at = now + _backoff(self._stalls + 1)

    @property
    def connected(self) -> bool:
        return self._connected

    def status(self, now: float, wall: float) -> SeedsStatus:
        """The `seeds` section of `meshguard status` (wire/seed_status.py)."""
        rescue = None if self._connected else _to_wall(self._rescue_at, now, wall)
        sources = []
        for st in self._states.values():
            nxt = st.next_at
            if st.source.kind in _LOOKED_UP and not self._connected:
                nxt = min(nxt, self._rescue_at)
            sources.append(SeedSourceStatus(
                source=st.source.kind,
                name=st.source.name,
                addresses=tuple(f"[{h}]:{p}" if ":" in h else f"{h}:{p}"
                                for h, p in st.addresses),
                last_success=st.last_success,
                last_failure=st.last_failure,
                error=st.error,
                warnings=tuple(st.warnings),
                next_lookup=_to_wall(nxt, now, wall),
            ))
        return SeedsStatus(self._connected, rescue, tuple(sources))
