"""Control-socket protocol: line-delimited JSON between the CLI and a running daemon.

Transport: a Unix stream socket (mode 0600), one per running daemon, at
``<run dir>/<interface>.sock`` (run dir ``/run/meshguard``, overridable with
``$MESHGUARD_RUN_DIR``). Each request is one JSON object on one line (UTF-8, ``\\n``
terminated); the daemon answers with exactly one JSON line and keeps the connection open for
further requests.

Requests::

    {"op": "hello"}     -> {"ok": true, "result": {"interface": "mg0", "pid": 123}}
    {"op": "status"}    -> {"ok": true, "result": <status document, below>}
    {"op": "down"}      -> {"ok": true, "result": {"leaving": true}}  (the daemon then leaves the
                           mesh gracefully, removes its interface and exits 0)
    {"op": "ping", "args": {"target": "node-2", "timeout": 2.0}}
                        -> {"ok": true, "result": {"path": "direct" | "relayed",
                           "endpoint": "ip:port" (relayed: the relay's), "via": relay name | null,
                           "rtt_ms": 0.4 | null (no answer), "rtt_to": "member" |
                           "relay" (a relayed member's probe times the relay hop),
                           "end_to_end_rtt_ms": 3.1 | null, "end_to_end_source":
                           "probe" | "handshake" | null (as status rtt_ms), "mtu": 1280 | null,
                           "mtu_state": "done" | "search" | ..., "reason": why relayed | null}}
                           (one path probe, daemon/path_probes.py)
    {"op": "policy"}    -> {"ok": true, "result": {"enforced": bool, "sources": [...],
                           "rules": [{"source", "line", "text", "packets"}], "reasons": {...},
                           "refused": {...}, "gossip": {...}, "transfers": [...], ...}}
                           (what is in force, daemon/policy_runner.py `report`)
    {"op": "reload"}    -> {"ok": true, "result": {"applied": [key...], "restart": [key...],
                           "unchanged": [key...], "trust": "reloaded, ..."}}  (config file
                           and trust store read again, daemon/config_reload.py; a bad config
                           file: {"ok": false, "error": "FILE:LINE: key 'x': ..."})

Errors: ``{"ok": false, "error": "<one line>"}``.

Status document (``meshguard status --json`` prints it verbatim), schema_version 1. Fields are
only ever added in a compatible way; a removal or change of meaning bumps schema_version::

    {
      "schema_version": 1,
      "interface": "mg0",               # TUN / WireGuard interface name
      "mode": "userspace" | "kernel",
      "pid": 1234,
      "started_at": 1700000000.0,       # unix seconds
      "self": {
        "name": "node-1" | null,
        "identity_key": "<base64 Ed25519 public key>",
        "wireguard_key": "<base64 X25519 public key>",
        "mesh_ipv4": "10.99.x.y",
        "mesh_ipv6": "fd99:6d67::...",
        "wg_port": 51821,               # UDP port WireGuard listens on
        "gossip_port": 51821            # UDP port gossip listens on (wg_port + 1 in kernel mode)
      },
      "members": [                      # every member known to the membership layer, sorted by name
        {
          "name": "node-2" | null,
          "identity_key": "<base64>",
          "wireguard_key": "<base64>" | null,
          "mesh_ipv4": "10.99.a.b",
          "mesh_ipv6": "fd99:6d67::...",
          "endpoint": "203.0.113.7:51821" | "[2001:db8::1]:51821" | null,
          "state": "alive" | "suspect" | "dead" | "left",
          "trusted": true,              # admitted by the local trust store
          "admission": "org certificate" | "authorized key" | "org vouch" | "unknown key" | ...,
          "tunnel": true,               # a WireGuard peer is configured for it
          "last_handshake": 1700000000.0 | null,   # unix seconds of the last completed handshake
          "rx_bytes": 0,
          "tx_bytes": 0,
          "path": "direct" | "relayed",
          "rtt_ms": 0.4 | null,         # smoothed end-to-end RTT (relayed too), from rtt_source:
          "rtt_source": "probe" | "handshake" | null,  # the path probes (direct paths only,
                                        # mesh/path_probe.py) or the WireGuard handshakes
                                        # (userspace mode, wireguard/handshake_rtt.py)
          "relay_rtt_ms": 2.1 | null,   # relayed: smoothed RTT to the relay hop (nat/relay.py)
          "mtu": 1280 | null,           # path MTU found (IP bytes), null: unknown or relayed
          "dns_names": ["node-2.a1b2c3.mesh", ...],  # names the mesh resolver answers for it
          "why": "relayed via 1a2b3c4d at 203.0.113.10:51821: the hole punch failed; ..." | null,
          "via": "<base64 identity key of the relay>" | null,
          "via_endpoint": "203.0.113.10:51821" | null,
          "own_nat": "cone", "peer_nat": "symmetric",   # unknown | public | cone | symmetric
          "last_punch": "succeeded" | "failed" | "no rendezvous" | null,
          "last_punch_age": 12.5 | null,  # seconds since that punch ended
          "next_punch_in": 20.0 | null    # seconds until the next punch may start
        }
      ],
      "counters": {"<name>": <int>, ...},  # e.g. "garbage_dropped", "gossip_rx", "wireguard_rx"
      "portmap": {                      # the home router's port mapping (docs/nat-testbed.md)
        "protocol": "pcp" | "nat-pmp" | "upnp", "external": "198.51.100.7:51821",
        "internal_port": 51821, "expires_in": 3599     # seconds
      } | null,
      "seeds": {...}                    # with seed sources only (wire/seed_status.py)
    }

`meshguard status --json` without --interface while several daemons run prints
``{"schema_version": 1, "daemons": [<status document>, ...]}`` instead.

This module is pure encoding: no sockets, no clocks.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace

from meshguard.errors import WireFormatError
from meshguard.wire.seed_status import SeedsStatus

SCHEMA_VERSION = 1
MAX_LINE = 1 << 20  # 1 MiB: a status of ~4000 members; requests are tiny
OPS = ("hello", "status", "down", "ping", "policy", "reload")
MEMBER_STATES = ("alive", "suspect", "dead", "left")


@dataclass(frozen=True)
class Request:
    op: str
    args: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Response:
    ok: bool
    result: dict[str, object] | None = None
    error: str | None = None


def _loads_line(line: bytes) -> dict[str, object]:
    if len(line) > MAX_LINE:
        raise WireFormatError("control line too long")
    try:
        obj = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise WireFormatError(f"control line is not JSON: {exc}") from None
    except RecursionError:  # nested deeper than the decoder's recursion limit
        raise WireFormatError("control line is nested too deeply") from None
    if not isinstance(obj, dict):
        raise WireFormatError("control line must be a JSON object")
    return obj


def _dumps_line(obj: dict[str, object]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode("utf-8") + b"\n"


def encode_request(req: Request) -> bytes:
    obj: dict[str, object] = {"op": req.op}
    if req.args:
        obj["args"] = req.args
    return _dumps_line(obj)


def decode_request(line: bytes) -> Request:
    obj = _loads_line(line)
    op = obj.get("op")
    if not isinstance(op, str) or op not in OPS:
        raise WireFormatError(f"unknown control op {op!r}")
    args = obj.get("args", {})
    if not isinstance(args, dict):
        raise WireFormatError("control args must be an object")
    return Request(op, args)


def encode_response(resp: Response) -> bytes:
    obj: dict[str, object] = {"ok": resp.ok}
    if resp.ok:
        obj["result"] = resp.result if resp.result is not None else {}
    else:
        obj["error"] = resp.error or "error"
    return _dumps_line(obj)


def decode_response(line: bytes) -> Response:
    obj = _loads_line(line)
    ok = obj.get("ok")
    if not isinstance(ok, bool):
        raise WireFormatError("control response lacks 'ok'")
    if ok:
        result = obj.get("result", {})
        if not isinstance(result, dict):
            raise WireFormatError("control result must be an object")
        return Response(True, result=result)
    error = obj.get("error")
    return Response(False, error=str(error) if error is not None else "error")


@dataclass(frozen=True)
class SelfStatus:
    name: str | None
    identity_key: str
    wireguard_key: str
    mesh_ipv4: str
    mesh_ipv6: str
    wg_port: int
    gossip_port: int
    # the WireGuard endpoints this node's record advertises, best first ("ip:port")
    endpoints: tuple[str, ...] = ()


@dataclass(frozen=True)
class MemberStatus:
    name: str | None
    identity_key: str
    wireguard_key: str | None
    mesh_ipv4: str
    mesh_ipv6: str
    endpoint: str | None
    state: str
    trusted: bool
    tunnel: bool
    last_handshake: float | None
    rx_bytes: int
    tx_bytes: int
    path: str
    dns_names: tuple[str, ...] = ()
    rtt_ms: float | None = None
    mtu: int | None = None
    rtt_source: str | None = None  # "probe" | "handshake" (mesh/member_rtt.py)
    relay_rtt_ms: float | None = None  # to the relay of a relayed member
    # why the path is what it is (nat/path_select.py's PathReport; null in kernel mode)
    why: str | None = None
    via: str | None = None
    via_endpoint: str | None = None
    own_nat: str | None = None
    peer_nat: str | None = None
    last_punch: str | None = None
    last_punch_age: float | None = None
    next_punch_in: float | None = None
    admission: str | None = None  # why the trust store admits it or not (identity/trust.py)
    # the prefixes it offers to carry, and those this node routes through it (docs/policy.md#routes)
    routes_offered: tuple[str, ...] = ()
    routes_in_use: tuple[str, ...] = ()


@dataclass(frozen=True)
class StatusReport:
    interface: str
    mode: str
    pid: int
    started_at: float
    self_: SelfStatus
    members: tuple[MemberStatus, ...]
    counters: dict[str, int]
    portmap: Mapping[str, object] | None = None
    seeds: SeedsStatus | None = None  # wire/seed_status.py

    def with_portmap(self, portmap: Mapping[str, object] | None) -> StatusReport:
        return replace(self, portmap=portmap)

    def to_json(self) -> dict[str, object]:
        return {
            "schema_version": SCHEMA_VERSION,
            "interface": self.interface,
            "mode": self.mode,
            "pid": self.pid,
            "started_at": self.started_at,
            "self": asdict(self.self_),
            "members": [asdict(m) for m in self.members],
            "counters": dict(self.counters),
            "portmap": dict(self.portmap) if self.portmap is not None else None,
            **({"seeds": self.seeds.to_json()} if self.seeds is not None else {}),
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, object]) -> StatusReport:
        try:
            if obj["schema_version"] != SCHEMA_VERSION:
                raise WireFormatError(f"unsupported status schema {obj['schema_version']!r}")
            me = _object(obj["self"])
            return cls(
                interface=str(obj["interface"]),
                mode=str(obj["mode"]),
                pid=_as_int(obj["pid"]),
                started_at=_as_float(obj["started_at"]),
                self_=SelfStatus(
                    name=_opt_str(me["name"]), identity_key=_str(me["identity_key"]),
                    wireguard_key=_str(me["wireguard_key"]), mesh_ipv4=_str(me["mesh_ipv4"]),
                    mesh_ipv6=_str(me["mesh_ipv6"]), wg_port=_int(me["wg_port"]),
                    gossip_port=_int(me["gossip_port"]),
                    endpoints=tuple(_str(e) for e in _list(me.get("endpoints", [])))),
                members=tuple(_member(_object(m)) for m in _list(obj["members"])),
                counters={str(k): _as_int(v)
                          for k, v in _object(obj.get("counters", {})).items()},
                portmap=_portmap(obj.get("portmap")),
                seeds=SeedsStatus.from_json(obj.get("seeds")),
            )
        except (KeyError, TypeError, ValueError, OverflowError) as exc:  # inf: OverflowError
            raise WireFormatError(f"malformed status document: {exc}") from None


def _portmap(v: object) -> Mapping[str, object] | None:
    if v is None:
        return None
    p = _object(v)
    return {"protocol": _str(p["protocol"]), "external": _str(p["external"]),
            "internal_port": _int(p["internal_port"]), "expires_in": _int(p["expires_in"])}


def _member(m: Mapping[str, object]) -> MemberStatus:
    last = m["last_handshake"]
    return MemberStatus(
        name=_opt_str(m["name"]), identity_key=_str(m["identity_key"]),
        wireguard_key=_opt_str(m["wireguard_key"]), mesh_ipv4=_str(m["mesh_ipv4"]),
        mesh_ipv6=_str(m["mesh_ipv6"]), endpoint=_opt_str(m["endpoint"]),
        state=_str(m["state"]), trusted=_bool(m["trusted"]), tunnel=_bool(m["tunnel"]),
        last_handshake=None if last is None else _number(last),
        rx_bytes=_int(m["rx_bytes"]), tx_bytes=_int(m["tx_bytes"]), path=_str(m["path"]),
        dns_names=tuple(str(n) for n in _list(m.get("dns_names", []))),
        rtt_ms=_opt_number(m.get("rtt_ms")),
        mtu=None if m.get("mtu") is None else _int(m.get("mtu")),
        rtt_source=_opt_str(m.get("rtt_source")),
        relay_rtt_ms=_opt_number(m.get("relay_rtt_ms")),
        why=_opt_str(m.get("why")), via=_opt_str(m.get("via")),
        via_endpoint=_opt_str(m.get("via_endpoint")), own_nat=_opt_str(m.get("own_nat")),
        peer_nat=_opt_str(m.get("peer_nat")), last_punch=_opt_str(m.get("last_punch")),
        last_punch_age=_opt_number(m.get("last_punch_age")),
        next_punch_in=_opt_number(m.get("next_punch_in")),
        admission=_opt_str(m.get("admission")),
        routes_offered=tuple(str(r) for r in _list(m.get("routes_offered", []))),
        routes_in_use=tuple(str(r) for r in _list(m.get("routes_in_use", []))))


# a status document's fields, checked as they are read (a TypeError: a malformed document)


def _object(v: object) -> Mapping[str, object]:
    if not isinstance(v, dict):
        raise TypeError("expected an object")
    return v


def _list(v: object) -> list[object]:
    if not isinstance(v, list | tuple):
        raise TypeError("expected a list")
    return list(v)


def _str(v: object) -> str:
    if not isinstance(v, str):
        raise TypeError("expected a string")
    return v


def _opt_str(v: object) -> str | None:
    return None if v is None else _str(v)


def _bool(v: object) -> bool:
    if not isinstance(v, bool):
        raise TypeError("expected true or false")
    return v


def _opt_number(v: object) -> int | float | None:
    return None if v is None else _number(v)


def _int(v: object) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise TypeError("expected an integer")
    return v


def _as_int(v: object) -> int:
    """int(v), for the values int() takes from a JSON document (numbers, numeric strings)."""
    if not isinstance(v, int | float | str):
        raise TypeError("expected a number")
    return int(v)


def _as_float(v: object) -> float:
    if not isinstance(v, int | float | str):
        raise TypeError("expected a number")
    return float(v)


def _number(v: object) -> int | float:
    if not isinstance(v, int | float) or isinstance(v, bool):
        raise TypeError("expected a number")
    return v


def format_endpoint(endpoint: tuple[str, int] | None) -> str | None:
    """'ip:port', with brackets around an IPv6 address."""
    if endpoint is None:
        return None
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
