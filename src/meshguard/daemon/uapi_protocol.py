"""The WireGuard cross-platform userspace API (UAPI) wire format, sans-IO.

Protocol (https://www.wireguard.com/xplatform/), as spoken by `wg` and wireguard-go:

* a request is an operation line, `get=1` or `set=1`, then `key=value` lines, then an empty line;
* `get=1` is answered with the device's `key=value` lines, `errno=0` and an empty line;
* `set=1` is answered with `errno=0` or `errno=-N` (a negated errno, e.g. -22 for EINVAL, which
  `wg` turns back into a message); several requests may follow on one connection.

`UapiParser` turns a byte stream into `GetRequest` / `SetRequest` / `BadRequest` objects; a set
transaction is validated as a whole (syntax, ranges, key order) before anything is handed to the
backend, so a malformed request changes nothing. `serialize_get(DeviceState)` produces the get
reply. Keys on the wire are lowercase hex (this module deals in raw 32-byte strings).
"""

from __future__ import annotations

import errno as _errno
import ipaddress
from dataclasses import dataclass, field

Endpoint = tuple[str, int]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

EINVAL = _errno.EINVAL
EPROTO = _errno.EPROTO
EADDRINUSE = _errno.EADDRINUSE
EIO = _errno.EIO
ENOPROTOOPT = _errno.ENOPROTOOPT

MAX_LINE = 4096  # longest legal line is ~110 bytes; anything longer is garbage
MAX_REQUEST = 16 * 1024 * 1024  # one set transaction (a `wg setconf` with thousands of peers)
ZERO_KEY = bytes(32)


class UapiError(Exception):
    """A request failed; `errno` is the positive errno value (sent back negated)."""

    def __init__(self, errno: int, message: str) -> None:
        super().__init__(message)
        self.errno = errno


@dataclass(frozen=True)
class PeerUpdate:
    """One `public_key=` section of a set request. None means "not mentioned"."""

    public_key: bytes
    remove: bool = False
    update_only: bool = False
    preshared_key: bytes | None = None
    endpoint: Endpoint | None = None
    persistent_keepalive: int | None = None
    replace_allowed_ips: bool = False
    allowed_ips: tuple[IPNetwork, ...] = ()


@dataclass(frozen=True)
class SetRequest:
    """A validated set transaction. `private_key_given` with `private_key=None` removes the key."""

    private_key_given: bool = False
    private_key: bytes | None = None
    listen_port: int | None = None
    fwmark: int | None = None
    replace_peers: bool = False
    peers: tuple[PeerUpdate, ...] = ()


@dataclass(frozen=True)
class GetRequest:
    pass


@dataclass(frozen=True)
class BadRequest:
    """A request that failed validation: answer `errno=-<errno>`, apply nothing."""

    errno: int
    reason: str


@dataclass(frozen=True)
class ProtocolViolation:
    """Not a UAPI request at all (unknown operation, oversized): close the connection."""

    reason: str


Request = GetRequest | SetRequest | BadRequest | ProtocolViolation


@dataclass
class PeerState:
    public_key: bytes
    preshared_key: bytes = ZERO_KEY
    endpoint: Endpoint | None = None
    last_handshake_ns: int = 0  # Unix time in nanoseconds, 0 = never
    tx_bytes: int = 0
    rx_bytes: int = 0
    persistent_keepalive: int = 0
    allowed_ips: list[IPNetwork] = field(default_factory=list)


@dataclass
class DeviceState:
    private_key: bytes | None = None
    listen_port: int = 0
    fwmark: int = 0
    peers: list[PeerState] = field(default_factory=list)


# --- serialization ---------------------------------------------------------------------------


def format_endpoint(ep: Endpoint) -> str:
    host, port = ep
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def format_errno(errno: int) -> bytes:
    """The status trailer: `errno=0` or the negated errno, as wireguard-go sends it."""
    return f"errno={-abs(errno)}\n\n".encode()


def serialize_get(state: DeviceState) -> bytes:
    lines: list[str] = []
    if state.private_key is not None and state.private_key != ZERO_KEY:
        lines.append(f"private_key={state.private_key.hex()}")
    if state.listen_port:
        lines.append(f"listen_port={state.listen_port}")
    if state.fwmark:
        lines.append(f"fwmark={state.fwmark}")
    for p in state.peers:
        lines.append(f"public_key={p.public_key.hex()}")
        lines.append(f"preshared_key={p.preshared_key.hex()}")
        lines.append("protocol_version=1")
        if p.endpoint is not None:
            lines.append(f"endpoint={format_endpoint(p.endpoint)}")
        sec, nsec = divmod(p.last_handshake_ns, 1_000_000_000)
        lines.append(f"last_handshake_time_sec={sec}")
        lines.append(f"last_handshake_time_nsec={nsec}")
        lines.append(f"tx_bytes={p.tx_bytes}")
        lines.append(f"rx_bytes={p.rx_bytes}")
        lines.append(f"persistent_keepalive_interval={p.persistent_keepalive}")
        lines.extend(f"allowed_ip={net}" for net in p.allowed_ips)
    lines.append("errno=0")
    return ("\n".join(lines) + "\n\n").encode()


# --- parsing ---------------------------------------------------------------------------------


def _invalid(msg: str) -> UapiError:
    return UapiError(EINVAL, msg)


def parse_key(value: str, what: str) -> bytes:
    if len(value) != 64:
        raise _invalid(f"{what}: expected 64 hex characters")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise _invalid(f"{what}: not hex") from None


def _uint(value: str, bits: int, what: str) -> int:
    if not value.isascii() or not value.isdigit() or len(value) > 20:
        raise _invalid(f"{what}: not an unsigned integer")
    n = int(value)
    if n >= 1 << bits:
        raise _invalid(f"{what}: out of range")
    return n


def _true(value: str, what: str) -> bool:
    if value != "true":
        raise _invalid(f"{what}: only `true` is accepted")
    return True


def parse_endpoint(value: str) -> Endpoint:
    """`1.2.3.4:51820` or `[fd00::1]:51820` (an IPv6 zone `%eth0` is kept in the host)."""
    if value.startswith("["):
        close = value.find("]")
        if close < 0 or value[close + 1 : close + 2] != ":":
            raise _invalid("endpoint: malformed [IPv6]:port")
        host, port_s = value[1:close], value[close + 2 :]
        addr, _, zone = host.partition("%")
        try:
            ipaddress.IPv6Address(addr)
        except ValueError:
            raise _invalid("endpoint: bad IPv6 address") from None
        if "%" in host and not zone:
            raise _invalid("endpoint: empty zone")
    else:
        host, sep, port_s = value.rpartition(":")
        if not sep:
            raise _invalid("endpoint: missing port")
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise _invalid("endpoint: bad IPv4 address") from None
    port = _uint(port_s, 16, "endpoint port")
    if port == 0:
        raise _invalid("endpoint: port 0")
    return host, port


def parse_allowed_ip(value: str) -> IPNetwork:
    if "/" not in value:
        raise _invalid("allowed_ip: missing /prefix")
    addr, _, plen = value.partition("/")
    if not plen.isascii() or not plen.isdigit():
        raise _invalid("allowed_ip: bad prefix length")
    try:
        return ipaddress.ip_network(f"{addr}/{int(plen)}", strict=False)
    except ValueError:
        raise _invalid(f"allowed_ip: bad prefix {value!r}") from None


class _PeerBuilder:
    def __init__(self, public_key: bytes) -> None:
        self.public_key = public_key
        self.remove = False
        self.update_only = False
        self.preshared_key: bytes | None = None
        self.endpoint: Endpoint | None = None
        self.keepalive: int | None = None
        self.replace_allowed_ips = False
        self.allowed_ips: list[IPNetwork] = []

    def line(self, key: str, value: str) -> None:
        if key == "remove":
            self.remove = _true(value, key)
        elif key == "update_only":
            self.update_only = _true(value, key)
        elif key == "preshared_key":
            self.preshared_key = parse_key(value, key)
        elif key == "endpoint":
            self.endpoint = parse_endpoint(value)
        elif key == "persistent_keepalive_interval":
            self.keepalive = _uint(value, 16, key)
        elif key == "replace_allowed_ips":
            self.replace_allowed_ips = _true(value, key)
            # a replace after some allowed_ip lines drops those earlier lines as well
            self.allowed_ips.clear()
        elif key == "allowed_ip":
            self.allowed_ips.append(parse_allowed_ip(value))
        elif key == "protocol_version":
            if value != "1":
                raise _invalid(f"protocol_version {value!r} not supported")
        else:
            raise _invalid(f"unknown peer key {key!r}")

    def build(self) -> PeerUpdate:
        return PeerUpdate(
            public_key=self.public_key,
            remove=self.remove,
            update_only=self.update_only,
            preshared_key=self.preshared_key,
            endpoint=self.endpoint,
            persistent_keepalive=self.keepalive,
            replace_allowed_ips=self.replace_allowed_ips,
            allowed_ips=tuple(self.allowed_ips),
        )


def parse_set(lines: list[str]) -> SetRequest:
    """Validate the body of a set transaction (lines without the op line or blank terminator).

    Raises UapiError (EINVAL) on the first problem; nothing is applied in that case.
    """
    priv_given = False
    priv: bytes | None = None
    listen_port: int | None = None
    fwmark: int | None = None
    replace_peers = False
    peers: list[_PeerBuilder] = []
    for line in lines:
        key, sep, value = line.partition("=")
        if not sep:
            raise _invalid(f"line without '=': {line[:40]!r}")
        if key == "public_key":
            peers.append(_PeerBuilder(parse_key(value, key)))
            continue
        if peers:
            peers[-1].line(key, value)
            continue
        if key == "private_key":
            k = parse_key(value, key)
            priv_given, priv = True, (None if k == ZERO_KEY else k)
        elif key == "listen_port":
            listen_port = _uint(value, 16, key)
        elif key == "fwmark":
            fwmark = 0 if value == "" else _uint(value, 32, key)
        elif key == "replace_peers":
            replace_peers = _true(value, key)
        else:
            raise _invalid(f"unknown device key {key!r}")
    return SetRequest(
        private_key_given=priv_given,
        private_key=priv,
        listen_port=listen_port,
        fwmark=fwmark,
        replace_peers=replace_peers,
        peers=tuple(p.build() for p in peers),
    )


class UapiParser:
    """Incremental request framing for one connection: `feed(bytes)` -> complete requests.

    After a ProtocolViolation the connection must be closed (further input is ignored).
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._op: str | None = None
        self._lines: list[str] = []
        self._size = 0
        self._dead = False

    @property
    def dead(self) -> bool:
        return self._dead

    def feed(self, data: bytes) -> list[Request]:
        out: list[Request] = []
        if self._dead:
            return out
        self._buf += data
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                if len(self._buf) > MAX_LINE:
                    out.append(self._violation("line too long"))
                return out
            raw = bytes(self._buf[:nl])
            del self._buf[: nl + 1]
            if len(raw) > MAX_LINE:
                out.append(self._violation("line too long"))
                return out
            try:
                line = raw.decode("ascii")
            except UnicodeDecodeError:
                line = "\x00"  # never valid: becomes EINVAL (or a violation as an op line)
            req = self._line(line)
            if req is not None:
                out.append(req)
                if isinstance(req, ProtocolViolation):
                    return out

    def _violation(self, reason: str) -> ProtocolViolation:
        self._dead = True
        self._buf.clear()
        return ProtocolViolation(reason)

    def _line(self, line: str) -> Request | None:
        if self._op is None:
            if line in ("get=1", "set=1"):
                self._op = line
                self._lines = []
                self._size = 0
                return None
            return self._violation(f"invalid operation {line[:40]!r}")
        if line == "":
            op, lines = self._op, self._lines
            self._op, self._lines = None, []
            if op == "get=1":
                if lines:
                    return BadRequest(EINVAL, "get takes no keys")
                return GetRequest()
            try:
                return parse_set(lines)
            except UapiError as exc:
                return BadRequest(exc.errno, str(exc))
        self._size += len(line) + 1
        if self._size > MAX_REQUEST:
            return self._violation("request too large")
        self._lines.append(line)
        return None


__all__ = [
    "EADDRINUSE",
    "EINVAL",
    "BadRequest",
    "DeviceState",
    "Endpoint",
    "GetRequest",
    "PeerState",
    "PeerUpdate",
    "ProtocolViolation",
    "Request",
    "SetRequest",
    "UapiError",
    "UapiParser",
    "format_endpoint",
    "format_errno",
    "parse_allowed_ip",
    "parse_endpoint",
    "parse_key",
    "parse_set",
    "serialize_get",
]
