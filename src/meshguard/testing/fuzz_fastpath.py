"""Fuzz targets for the data plane's C fast path (testing/fuzz.py): coalesce, open_batch and the
handshake guard, each against its pure Python twin."""

from __future__ import annotations

import functools
import inspect
import struct
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from meshguard.crypto.hashes import mac
from meshguard.dataplane import fastpath, offload
from meshguard.testing.fuzz_engine import RoundTripError, Target, dedupe
from meshguard.testing.fuzz_mesh import mesh_capture
from meshguard.testing.rng import SeededRng
from meshguard.wire import wireguard
from meshguard.wireguard.cookie import HandshakeGuard, cookie_key, mac1_key

# -- the data plane's fast path (C extension against its pure Python twin) ------------------

_V4 = (bytes([10, 99, 0, 1]), bytes([10, 99, 0, 2]))
_V6 = (bytes.fromhex("fd996d67000000000000000000000001"),
       bytes.fromhex("fd996d67000000000000000000000002"))


def _tcp_packet(v6: bool, seq: int, payload: bytes, flags: int = 0x10, ip_id: int = 0) -> bytes:
    """A TCP segment with correct checksums (what a peer's TUN would have produced)."""
    src, dst = _V6 if v6 else _V4
    tcp = bytearray(struct.pack("!HHIIBBHHH", 40000, 443, seq, 1, 5 << 4, flags, 65535, 0, 0)
                    + payload)
    struct.pack_into("!H", tcp, 16, offload.checksum(tcp, offload.pseudo_sum(src, dst, 6,
                                                                             len(tcp))))
    if v6:
        return struct.pack("!IHBB", 6 << 28, len(tcp), 6, 64) + src + dst + bytes(tcp)
    ip = bytearray(struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(tcp), ip_id, 0x4000, 64, 6, 0)
                   + src + dst)
    struct.pack_into("!H", ip, 10, offload.checksum(ip))
    return bytes(ip) + bytes(tcp)


def _udp_packet(payload: bytes) -> bytes:
    src, dst = _V4
    udp = struct.pack("!HHHH", 5353, 53, 8 + len(payload), 0) + payload
    ip = bytearray(struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0)
                   + src + dst)
    struct.pack_into("!H", ip, 10, offload.checksum(ip))
    return bytes(ip) + udp


def _packet_list(data: bytes) -> list[bytes]:
    """Inputs of the packet-list targets: (u16 length, bytes) records."""
    out: list[bytes] = []
    off = 0
    while off + 2 <= len(data) and len(out) < 64:
        n = int.from_bytes(data[off : off + 2], "big")
        out.append(data[off + 2 : off + 2 + n])
        off += 2 + n
    return out


def _pack_list(pkts: Iterable[bytes]) -> bytes:
    return b"".join(len(p).to_bytes(2, "big") + p for p in pkts)


def _fastpath_seeds() -> list[bytes]:
    flow4 = [_tcp_packet(False, 1000 + 100 * i, bytes([i]) * 100, ip_id=i) for i in range(4)]
    flow6 = [_tcp_packet(True, 7 + 50 * i, bytes([i]) * 50) for i in range(3)]
    psh = _tcp_packet(False, 1400, b"p" * 10, flags=0x18, ip_id=9)
    return [_pack_list(flow4), _pack_list(flow6), _pack_list(flow4[:2] + flow6[:1] + [psh]),
            _pack_list([_udp_packet(b"dns"), flow4[0], b"\x45" + bytes(10)])]


def _same_outcome(what: str, run_c: Callable[[], object], run_py: Callable[[], object]) -> None:
    """The C and Python implementations agree: the same result or both a ValueError."""
    try:
        got: object = run_c()
    except ValueError:
        got = ValueError
    try:
        expect: object = run_py()
    except ValueError:
        expect = ValueError
    if got != expect:
        raise RoundTripError(f"{what}: C gave {got!r:.300}, Python {expect!r:.300}")


def fastpath_targets() -> list[Target]:
    c = fastpath.c_impl()
    if c is None:
        return []
    py = fastpath.python_impl()
    key = bytes(range(32))
    c_cipher, py_cipher = c.Cipher(key), py.Cipher(key)

    def coalesce(data: bytes) -> None:
        pkts = _packet_list(data)
        for verify in (True, False):
            _same_outcome("coalesce", functools.partial(c.coalesce, pkts, verify=verify),
                          functools.partial(py.coalesce, pkts, verify=verify))

    def open_batch(data: bytes) -> None:
        """The packets, sealed as transport messages for receiver 7 (counter = index), one GRO
        buffer cut every `seg` bytes (the largest message), opened by both implementations;
        the last byte of the input picks a corruption of the buffer."""
        pkts = _packet_list(data)
        msgs = [wireguard.transport_header(7, i) + c_cipher.seal(i, p + bytes(-len(p) % 16))
                for i, p in enumerate(pkts)]
        seg = max((len(m) for m in msgs), default=0)
        buf = bytearray(b"".join(msgs))
        if buf and data[-1] & 1:
            buf[data[-1] % len(buf)] ^= 0x80
        _same_outcome("open_batch", lambda: c.open_batch(c_cipher, bytes(buf), seg, 7),
                      lambda: py.open_batch(py_cipher, bytes(buf), seg, 7))

    seeds = _fastpath_seeds()
    out = [Target("fastpath_coalesce", seeds, coalesce, max_len=8192),
           Target("fastpath_open", seeds, open_batch, max_len=8192)]
    guard = _guard_target(getattr(c, "HandshakeGuard", None))
    if guard is not None:
        out.append(guard)
    return out


class _Guard(Protocol):
    """What the fuzz target drives of a handshake guard (C or wireguard/cookie.py)."""

    def set_keys(self, mac1: bytes, cookie: bytes) -> None: ...

    def precheck(self, now: float, msg: bytes, source_key: bytes, binding: bytes
                 ) -> tuple[int, bytes | None]: ...


@dataclass
class _GuardTwins:
    py: HandshakeGuard
    c: _Guard
    now: float = 1000.0
    history: deque[bytes] = field(default_factory=lambda: deque(maxlen=16))


def _guard_target(c_guard: Callable[..., _Guard] | None) -> Target | None:
    """The C HandshakeGuard (run on handshake messages straight from the socket) against its
    Python twin (wireguard/cookie.py), fed the same messages at the same times: the verdicts
    must be the same. Small limits, so load, buckets and budgets all come into play. Input:
    time step (4 ms units), source, then the message; mac1 is fixed up unless the source
    byte's top bit is set."""
    if c_guard is None:
        return None
    params: dict[str, float] = {
        "threshold": 10, "hold": 0.25, "source_rate": 40.0, "source_burst": 4.0,
        "net_rate": 60.0, "net_burst": 6.0, "dh_rate": 20.0, "dh_burst": 2.0,
        "cookie_rate": 30.0, "cookie_burst": 5.0, "max_sources": 6}
    known = inspect.signature(HandshakeGuard).parameters
    params = {k: v for k, v in params.items() if k in known}
    pub = mesh_capture().victim.wg.public_key.raw
    k1, k2 = mac1_key(pub), cookie_key(pub)

    def twins() -> _GuardTwins:
        py = HandshakeGuard(SeededRng(3), **params)  # type: ignore[arg-type]
        t = _GuardTwins(py, c_guard(**py.params()))  # the twin, as the engine does
        t.py.set_keys(k1, k2)
        t.c.set_keys(k1, k2)
        return t

    state = [twins()]

    def reset() -> None:
        state[0] = twins()

    def run(data: bytes) -> None:
        msg = data[2:]
        if len(data) < 2 or len(msg) not in (wireguard.INITIATION_SIZE,
                                              wireguard.RESPONSE_SIZE):
            return
        t = state[0]
        t.now += data[0] * 4e-3
        src = bytes([data[1] & 0x7F]) * 8
        binding = src + b"\x00\x01"
        t.history.append(data)
        now = t.now
        vp, rp = t.py.precheck(now, msg, src, binding)
        vc, rc = t.c.precheck(now, msg, src, binding)
        if (vp, rp is None) != (vc, rc is None) or (rc is not None and len(rc) != 64):
            history = " ".join(h.hex() for h in t.history)
            raise RoundTripError(f"guard: C {vc} {rc is None}, Python {vp} {rp is None} "
                                 f"at {now}; inputs {history}")

    def fix(data: bytes) -> bytes:
        msg = data[2:]
        if len(data) < 2 or data[1] & 0x80 or len(msg) not in (wireguard.INITIATION_SIZE,
                                                                wireguard.RESPONSE_SIZE):
            return data
        off = len(msg) - 32
        return data[:2] + msg[:off] + mac(k1, msg[:off]) + msg[off + 16:]

    seeds = [bytes([t, s]) + d for t, s in ((0, 1), (3, 2), (60, 0x83))
             for d in mesh_capture().datagrams if len(d) in (wireguard.INITIATION_SIZE,
                                                             wireguard.RESPONSE_SIZE)]
    return Target("fastpath_guard", dedupe(seeds)[:32], run, fixup=fix, reset=reset,
                  reset_every=100_000)
