"""Sans-IO port mapping client: ask the home router (the default gateway) to forward the
node's UDP port, by PCP (RFC 6887), then NAT-PMP (RFC 6886), then UPnP-IGD.

    pm = PortMapper(rng, gateway="192.168.1.1", client_ip="192.168.1.20", internal_port=51821)
    acts = pm.start(now)                       # SendDatagram to gateway:5351, or UpnpCall
    acts = pm.receive(now, wall, data, src)    # a datagram on the shell's mapping socket
    acts = pm.upnp_done(now, UpnpResult(...))  # the shell ran an UpnpCall (blocking library)
    acts = pm.unreachable(now)                 # ICMP port unreachable from the gateway
    acts = pm.tick(now, wall)                  # at pm.next_deadline()
    acts = pm.stop(now)                        # clean shutdown: delete the mapping
    pm.mapping                                 # the PortMapping in force, or None

Actions: `SendDatagram` (to the gateway's port 5351, from the shell's own socket, never the
node's port: the mapping is for the internal port named in the request), `UpnpCall` (the shell
runs miniupnpc in a thread and answers with `upnp_done`), and the events `MappingGranted`
(new, moved or renewed), `MappingLost`, `MethodRefused` (one method did not work: a warning)
and `NoMapping` (none did: traversal goes on without; all are tried again after
`retry_after`, doubling up to `max_retry` while none answers).

Timing: a UDP request is sent `tries` times, `rto` seconds apart and doubling (0.25 + 0.5 + 1 s:
a router without PCP or NAT-PMP costs under 2 s, an ICMP port unreachable ends the wait at
once); UPnP's call is given `upnp_timeout`. A granted mapping is renewed at half its lifetime
(at least `min_renew` seconds); a renewal that fails is retried until the mapping expires,
then it is lost and the methods are tried again from the first.

Hostile input: replies are taken only while a request is out, only from the gateway's port
5351, and must match what was asked (PCP: opcode, nonce, protocol, internal port; NAT-PMP:
opcode and internal port); an assigned address that cannot be a public one (unspecified,
loopback, multicast, link-local, reserved) is refused. Everything else is counted in
`counters` and dropped. A replayed or forged reply therefore needs the gateway's address, the
pending request and, for PCP, its 96-bit nonce. The server's epoch (seconds since its state
began) is checked as RFC 6887 section 8.5 says; a reset is counted (`portmap_epoch_reset`):
the reply that reveals it carries the new mapping, which replaces the old one.
"""

from __future__ import annotations

import enum
import ipaddress
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from meshguard.errors import WireFormatError
from meshguard.rng import Rng
from meshguard.sansio import Endpoint, SendDatagram, unmap_host
from meshguard.wire import natpmp, pcp

SERVER_PORT = 5351  # PCP and NAT-PMP
LIFETIME = 7200  # seconds asked for
RTO = 0.25
TRIES = 3
UPNP_TIMEOUT = 8.0
RETRY_AFTER = 300.0
MAX_RETRY = 3600.0
MIN_RENEW = 30.0
NAT_PUBLIC = 1  # nat.stun_client.NatType.PUBLIC

# inside addresses: a mapping there is an upstream NAT's inside (double NAT), not public
_INSIDE = [ipaddress.IPv4Network(n) for n in
           ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10")]


class Method(enum.Enum):
    PCP = "pcp"
    NATPMP = "nat-pmp"
    UPNP = "upnp"


ALL_METHODS = (Method.PCP, Method.NATPMP, Method.UPNP)


@dataclass(frozen=True, slots=True)
class PortMapping:
    method: Method
    external: Endpoint
    internal_port: int
    lifetime: int  # seconds granted
    expires: float  # monotonic


@dataclass(frozen=True, slots=True)
class UpnpCall:
    """Run UPnP-IGD `op` ("map" or "unmap") for UDP `internal_port` in a thread."""

    op: str
    internal_port: int
    external_port: int
    lease: int


@dataclass(frozen=True, slots=True)
class UpnpResult:
    ok: bool
    external: Endpoint | None = None
    lease: int = 0
    error: str = ""
    refused: bool = False  # the IGD answered and said no (not: no IGD found)


@dataclass(frozen=True, slots=True)
class MappingGranted:
    mapping: PortMapping
    changed: bool  # a new external endpoint (False: the same one renewed)


@dataclass(frozen=True, slots=True)
class MappingLost:
    method: Method
    reason: str


@dataclass(frozen=True, slots=True)
class MethodRefused:
    """`method` gave no mapping: the router `refused` it (a warning), or did not answer or
    does not speak it."""

    method: Method
    reason: str
    refused: bool = False


@dataclass(frozen=True, slots=True)
class NoMapping:
    """No method gave a mapping; `refused` if a router said no (else none answered)."""

    reasons: tuple[str, ...]
    refused: bool = False


PortmapAction = (SendDatagram | UpnpCall | MappingGranted | MappingLost | MethodRefused
                 | NoMapping)


class _Phase(enum.Enum):
    IDLE = 0
    ASKING = 1
    MAPPED = 2
    RENEWING = 3
    REMOVING = 4
    STOPPED = 5


def usable_external(host: str) -> bool:
    """Whether a router's external address can be advertised at all."""
    try:
        a = ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return not (a.is_unspecified or a.is_loopback or a.is_multicast or a.is_link_local
                or a.is_reserved or int(a) >> 24 == 0)


def claims_public(mapping: PortMapping | None, stun_ip: str | None) -> bool:
    """Whether a node with `mapping` is reachable from anywhere: the mapped address is not
    an inside address and, when STUN answered, it is the address STUN saw (else there is
    another NAT in front of the router)."""
    if mapping is None:
        return False
    ip = ipaddress.IPv4Address(mapping.external[0])
    if any(ip in n for n in _INSIDE):
        return False
    return stun_ip is None or unmap_host(stun_ip) == mapping.external[0]


def advertisement(mapping: PortMapping | None, public: Endpoint | None, nat_type: int
                  ) -> tuple[list[Endpoint], int]:
    """The endpoints to put first in the node's record, and its NAT type: the mapping
    first (PUBLIC when `claims_public`), then the STUN/relay-observed `public` endpoint."""
    first = [mapping.external] if mapping is not None else []
    if public is not None and public not in first:
        first.append(public)
    if claims_public(mapping, public[0] if public is not None else None):
        return first, NAT_PUBLIC
    return first, nat_type


@dataclass
class PortMapper:
    rng: Rng
    gateway: str
    client_ip: str
    internal_port: int
    methods: Sequence[Method] = ALL_METHODS
    lifetime: int = LIFETIME
    rto: float = RTO
    tries: int = TRIES
    upnp_timeout: float = UPNP_TIMEOUT
    retry_after: float = RETRY_AFTER  # after every method failed; doubling up to max_retry
    max_retry: float = MAX_RETRY
    min_renew: float = MIN_RENEW
    counters: Counter[str] = field(default_factory=Counter)
    mapping: PortMapping | None = None
    removed: bool = False  # stop() finished: the router confirmed, or nothing was mapped
    _phase: _Phase = _Phase.IDLE
    _idx: int = 0
    _deadline: float | None = None
    _sent: int = 0
    _wait: float = 0.0
    _nonce: bytes = b""
    _ext_ip: str | None = None  # NAT-PMP: the external address answer
    _ext_port: tuple[int, int] | None = None  # NAT-PMP: (port, lifetime) answer
    _epoch: tuple[float, int] | None = None  # (our time, server epoch) at the last answer
    _reasons: list[str] = field(default_factory=list)
    _refused: bool = False
    _retry: float = 0.0  # the current wait after every method failed

    # ---- entry points ---------------------------------------------------------------

    @property
    def method(self) -> Method | None:
        return self.methods[self._idx] if self._idx < len(self.methods) else None

    def start(self, now: float) -> list[PortmapAction]:
        if self._phase is not _Phase.IDLE or not self.methods:
            return []
        self._idx, self._reasons, self._refused = 0, [], False
        return self._ask(now, _Phase.ASKING)

    def next_deadline(self) -> float | None:
        return self._deadline

    def tick(self, now: float, wall: float) -> list[PortmapAction]:
        if self._deadline is None or now < self._deadline:
            return []
        ph = self._phase
        if ph is _Phase.IDLE:
            return self.start(now)
        if ph is _Phase.MAPPED:
            return self._ask(now, _Phase.RENEWING)
        if ph is _Phase.REMOVING:
            if self.method is not Method.UPNP and self._sent < self.tries:
                return self._send(now)
            self._deadline, self._phase, self.removed = None, _Phase.STOPPED, True
            self.counters["portmap_remove_timeouts"] += 1
            return []
        if ph in (_Phase.ASKING, _Phase.RENEWING):
            if self.method is not Method.UPNP and self._sent < self.tries:
                return self._send(now)
            self.counters["portmap_timeouts"] += 1
            return self._failed(now, "no answer")
        return []

    def unreachable(self, now: float) -> list[PortmapAction]:
        """The gateway answered a PCP/NAT-PMP request with ICMP port unreachable."""
        if self._phase in (_Phase.ASKING, _Phase.RENEWING) and self.method is not Method.UPNP:
            self.counters["portmap_unreachable"] += 1
            return self._failed(now, "port 5351 unreachable")
        return []

    def receive(self, now: float, wall: float, data: bytes, src: Endpoint
                ) -> list[PortmapAction]:
        if (unmap_host(src[0]), src[1]) != (self.gateway, SERVER_PORT):
            self.counters["portmap_wrong_source"] += 1
            return []
        if len(data) > pcp.MAX_LEN:
            self.counters["portmap_garbage"] += 1
            return []
        waiting = self._phase in (_Phase.ASKING, _Phase.RENEWING, _Phase.REMOVING)
        m = self.method
        if not waiting or m is Method.UPNP or m is None:
            self.counters["portmap_unsolicited"] += 1
            return []
        try:
            if m is Method.PCP:
                return self._on_pcp(now, pcp.decode_map_response(data))
            return self._on_natpmp(now, natpmp.decode_response(data))
        except WireFormatError:
            self.counters["portmap_garbage"] += 1
            return []

    def upnp_done(self, now: float, res: UpnpResult) -> list[PortmapAction]:
        if self.method is not Method.UPNP or self._phase not in (
                _Phase.ASKING, _Phase.RENEWING, _Phase.REMOVING):
            self.counters["portmap_unsolicited"] += 1
            return []
        if self._phase is _Phase.REMOVING:
            return self._removed()
        if not res.ok or res.external is None:
            return self._failed(now, res.error or "refused", refused=res.refused)
        host, port = res.external
        # a lease of 0 is a permanent mapping: renewed like one of our own lifetime
        return self._grant(now, host, port, res.lease or self.lifetime)

    def stop(self, now: float) -> list[PortmapAction]:
        """Delete the mapping (clean shutdown); `removed` once the router confirmed it or
        after the retries. Anything else in flight is abandoned."""
        if self.mapping is None or self._phase in (_Phase.REMOVING, _Phase.STOPPED):
            if self._phase is not _Phase.REMOVING:
                self._phase, self._deadline, self.removed = _Phase.STOPPED, None, True
            return []
        self._idx = list(self.methods).index(self.mapping.method)
        self._phase, self._sent, self._wait = _Phase.REMOVING, 0, self.rto
        if self.mapping.method is Method.UPNP:
            self._deadline = now + self.upnp_timeout
            return [UpnpCall("unmap", self.internal_port, self.mapping.external[1], 0)]
        return self._send(now)

    # ---- requests -------------------------------------------------------------------

    def _ask(self, now: float, phase: _Phase) -> list[PortmapAction]:
        self._phase, self._sent, self._wait = phase, 0, self.rto
        self._ext_ip = self._ext_port = None
        m = self.method
        assert m is not None
        if m is Method.PCP and (phase is _Phase.ASKING or not self._nonce):
            self._nonce = self.rng.bytes(pcp.NONCE_LEN)
        if m is Method.UPNP:
            self._deadline = now + self.upnp_timeout
            ext = self.mapping.external[1] if self.mapping is not None else self.internal_port
            return [UpnpCall("map", self.internal_port, ext, self.lifetime)]
        return self._send(now)

    def _send(self, now: float) -> list[PortmapAction]:
        m = self.method
        removing = self._phase is _Phase.REMOVING
        life = 0 if removing else self.lifetime
        suggest = self.mapping.external[1] if self.mapping is not None else self.internal_port
        dst = (self.gateway, SERVER_PORT)
        out: list[PortmapAction] = []
        if m is Method.PCP:
            out.append(SendDatagram(pcp.encode_map_request(
                self._nonce, self.client_ip, self.internal_port, life,
                0 if removing else suggest), dst))
        else:
            if not removing and self._ext_ip is None:
                out.append(SendDatagram(natpmp.encode_external_request(), dst))
            if removing or self._ext_port is None:
                out.append(SendDatagram(natpmp.encode_map_request(
                    self.internal_port, life, 0 if removing else suggest), dst))
        self._sent += 1
        self._deadline = now + self._wait
        self._wait *= 2
        self.counters["portmap_requests_sent"] += len(out)
        return out

    # ---- answers --------------------------------------------------------------------

    def _on_pcp(self, now: float, r: pcp.MapResponse | pcp.UnsupportedVersion
                ) -> list[PortmapAction]:
        if isinstance(r, pcp.UnsupportedVersion):
            if self._phase is _Phase.REMOVING:
                return self._removed()
            return self._failed(now, "the router speaks NAT-PMP only")
        if (r.nonce != self._nonce or r.protocol != pcp.PROTO_UDP
                or r.internal_port != self.internal_port):
            self.counters["portmap_mismatch"] += 1
            return []
        self._check_epoch(now, r.epoch)
        if self._phase is _Phase.REMOVING:
            return self._removed()
        if r.result != pcp.SUCCESS:
            return self._failed(now, pcp.RESULTS.get(r.result, f"result {r.result}"), True)
        return self._grant(now, r.external_ip, r.external_port, r.lifetime)

    def _on_natpmp(self, now: float, r: natpmp.ExternalResponse | natpmp.MapResponse
                   ) -> list[PortmapAction]:
        removing = self._phase is _Phase.REMOVING
        if isinstance(r, natpmp.MapResponse) and r.result == natpmp.SUCCESS \
                and r.internal_port != self.internal_port:
            self.counters["portmap_mismatch"] += 1
            return []
        if removing and isinstance(r, natpmp.ExternalResponse):
            self.counters["portmap_unsolicited"] += 1
            return []
        self._check_epoch(now, r.epoch)
        if removing:
            return self._removed()
        if r.result != natpmp.SUCCESS:
            return self._failed(now, natpmp.RESULTS.get(r.result, f"result {r.result}"), True)
        if isinstance(r, natpmp.ExternalResponse):
            self._ext_ip = r.external_ip
        else:
            self._ext_port = (r.external_port, r.lifetime)
        if self._ext_ip is None or self._ext_port is None:
            return []
        return self._grant(now, self._ext_ip, *self._ext_port)

    def _check_epoch(self, now: float, epoch: int) -> None:
        prev = self._epoch
        self._epoch = (now, epoch)
        if prev is None:
            return
        client = now - prev[0]
        server = epoch - prev[1]
        if (epoch < prev[1] - 1 or client + 2 < server - server / 16
                or server + 2 < client - client / 16):
            self.counters["portmap_epoch_reset"] += 1

    # ---- outcomes -------------------------------------------------------------------

    def _grant(self, now: float, host: str, port: int, lifetime: int) -> list[PortmapAction]:
        m = self.method
        assert m is not None
        if not usable_external(host) or not 0 < port < 65536 or lifetime <= 0:
            self.counters["portmap_bad_grant"] += 1
            return self._failed(now, f"unusable grant {host}:{port} for {lifetime} s", True)
        lifetime = min(lifetime, self.lifetime)
        old = self.mapping
        new = PortMapping(m, (host, port), self.internal_port, lifetime, now + lifetime)
        self.mapping = new
        self._phase, self._retry = _Phase.MAPPED, 0.0
        self._deadline = now + max(lifetime / 2, min(self.min_renew, lifetime * 0.9))
        self.counters["portmap_granted" if old is None else "portmap_renewed"] += 1
        return [MappingGranted(new, old is None or old.external != new.external)]

    def _failed(self, now: float, reason: str, refused: bool = False) -> list[PortmapAction]:
        m = self.method
        assert m is not None
        if self._phase is _Phase.RENEWING and self.mapping is not None:
            left = self.mapping.expires - now
            if left > 1.0:  # keep the mapping, ask again before it runs out
                self.counters["portmap_renew_failed"] += 1
                self._phase = _Phase.MAPPED
                self._deadline = now + min(self.min_renew, left / 2)
                return []
            lost = self.mapping
            self.mapping = None
            self.counters["portmap_lost"] += 1
            self._idx, self._reasons, self._refused = 0, [], False
            return [MappingLost(lost.method, reason), *self._ask(now, _Phase.ASKING)]
        self.counters["portmap_refused"] += 1
        self._reasons.append(f"{m.value}: {reason}")
        self._refused = self._refused or refused
        out: list[PortmapAction] = [MethodRefused(m, reason, refused)]
        self._idx += 1
        if self._idx < len(self.methods):
            return out + self._ask(now, _Phase.ASKING)
        self._phase, self._idx = _Phase.IDLE, 0
        self._retry = min(self._retry * 2, self.max_retry) if self._retry else self.retry_after
        self._deadline = now + self._retry
        return [*out, NoMapping(tuple(self._reasons), self._refused)]

    def _removed(self) -> list[PortmapAction]:
        self.mapping = None
        self._phase, self._deadline, self.removed = _Phase.STOPPED, None, True
        self.counters["portmap_removed"] += 1
        return []


def describe(a: PortmapAction) -> tuple[str, bool]:
    """A log line for an event, and whether it is a warning."""
    if isinstance(a, MappingGranted):
        m = a.mapping
        verb = "granted" if a.changed else "renewed"
        return (f"{m.method.value} {verb} {m.external[0]}:{m.external[1]} -> "
                f"{m.internal_port} for {m.lifetime} s", False)
    if isinstance(a, MappingLost):
        return f"{a.method.value} mapping lost ({a.reason}); asking again", True
    if isinstance(a, MethodRefused):
        if a.refused:
            return f"the router refused {a.method.value}: {a.reason}", True
        return f"{a.method.value}: {a.reason}", False
    if isinstance(a, NoMapping):
        what = "the router offers no mapping" if a.refused else "no router answered"
        return f"{what} ({'; '.join(a.reasons)}); traversal goes on without", a.refused
    return str(a), False
