"""Fuzz targets for every codec and for the composed node's receive path, and a mutation engine.

A `Target` is a function of one byte string plus the exception types it may raise (the
documented error of its codec: `WireFormatError` for wire/, `CertificateError` for
certificates, `KeyFileError` / `ConfigError` for files; nothing at all for the demultiplexer,
the DNS resolver, the STUN client, the gossip.state reader, the UAPI request parser and
`MeshNode.receive_datagram`).
Anything else it raises is a failure, as is a decoded message that does not encode back to the
same bytes where the codec is canonical, and, for the C fast path (coalesce, open_batch, the
handshake guard), any difference from its pure Python twin.

Seeds are real encodings: `MeshFixture` runs a small mesh in virtual time (real SWIM cores,
WireGuard devices, org gossip, relay and hole-punch cores, a trust store with an org and an
authorized key) and records every datagram; the other codecs' seeds come from their encoders.
`Mutator` derives inputs from the seeds (bit flips, interesting integers, truncation,
extension, insertion, deletion, splicing of two seeds), deterministically from one seed.

For the node there are two targets. `node` feeds mutated datagrams as they are, so almost all
of them die at the first MAC or signature check. `node_auth` re-authenticates each mutated
datagram as the member it claims to come from would (gossip MAC, re-signed records and
accusations, relay hop MAC, hole-punch and org signatures, WireGuard mac1), so the code behind
those checks sees malformed-but-authentic input too (what a rogue member can send).

bench/fuzz.py runs these targets for a million inputs each (coverage-guided with atheris when
it is installed); tests/fuzz/ runs a few thousand per target.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import functools
import inspect
import ipaddress
import logging
import random
import struct
import tempfile
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from meshguard.crypto.hashes import blake2s, mac
from meshguard.crypto.keys import Ed25519PrivateKey, X25519PrivateKey
from meshguard.daemon import gossip_state
from meshguard.daemon.uapi_protocol import UapiParser
from meshguard.dataplane import fastpath, offload
from meshguard.dns.resolver import HostAddresses, Resolver, build_table
from meshguard.errors import ConfigError, WireFormatError
from meshguard.identity import store
from meshguard.identity.addressing import mesh_ipv4
from meshguard.identity.certificate import V1_LEN, V2_LEN, NodeCertificate, sign_certificate
from meshguard.identity.errors import CertificateError, KeyFileError
from meshguard.identity.trust import (
    REVOCATIONS_HEADER,
    Admission,
    Revocation,
    TrustStore,
    parse_revocations,
)
from meshguard.identity.wgkey import WgKeyVouch, vouch_wg_key
from meshguard.mesh import demux, org_gossip
from meshguard.mesh.node import MeshNode
from meshguard.mesh.org_gossip import OrgGossip
from meshguard.mesh.swim_port import SwimPort, build_membership
from meshguard.mesh.wg_backend import DeviceBackend
from meshguard.nat import relay as relay_core
from meshguard.nat.holepunch import HolePuncher
from meshguard.nat.relay import Relay
from meshguard.nat.stun_client import StunClient
from meshguard.sansio import Endpoint
from meshguard.swim import records as swim_records
from meshguard.testing.rng import SeededRng
from meshguard.wire import control, dns, gossip, holepunch, org, relay, stun, wireguard
from meshguard.wireguard.actions import SendDatagram
from meshguard.wireguard.cookie import HandshakeGuard, cookie_key, mac1_key
from meshguard.wireguard.device import Device

WALL0 = 1_700_000_000.0
MAX_DATAGRAM = 1400


# -- mutation ----------------------------------------------------------------------------------

_INTERESTING: tuple[tuple[int, tuple[int, ...]], ...] = (
    (1, (0, 1, 2, 3, 4, 5, 6, 0x1F, 0x20, 0x31, 0x33, 0x34, 0x3F, 0x40, 0x41, 0x42, 0x4D,
         0x7F, 0x80, 0xC0, 0xFE, 0xFF)),
    (2, (0, 1, 19, 63, 64, 185, 186, 187, 313, 314, 315, 512, 1200, 1280, 0x7FFF, 0x8000,
         0xFFFF)),
    (4, (0, 1, 4, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF)),
    (8, (0, 1, 2**31, 2**32, 2**63 - 1, 2**63, 2**64 - 2, 2**64 - 1)),
)


class Mutator:
    """Derives inputs from seeds; `mutate` is a pure function of the random state."""

    def __init__(self, rng: random.Random, seeds: Sequence[bytes], max_len: int = MAX_DATAGRAM
                 ) -> None:
        if not seeds:
            raise ValueError("a mutator needs at least one seed")
        self.rng = rng
        self.seeds = list(seeds)
        self.max_len = max_len

    def mutate(self) -> bytes:
        r = self.rng
        if r.random() < 0.02:
            return r.randbytes(r.randrange(min(self.max_len, 64) + 1))
        buf = bytearray(r.choice(self.seeds))
        for _ in range(r.choice((1, 1, 1, 1, 2, 2, 3, 4, 8))):
            self._one(buf)
        return bytes(buf[: self.max_len])

    def _one(self, buf: bytearray) -> None:
        r = self.rng
        op = r.randrange(13)
        n = len(buf)
        if n == 0 and op < 9:
            op = 9
        if op == 0:  # flip one bit
            i = r.randrange(n)
            buf[i] ^= 1 << r.randrange(8)
        elif op == 1:  # random byte
            buf[r.randrange(n)] = r.randrange(256)
        elif op == 2:  # +/- 1 (count and length fields)
            i = r.randrange(n)
            buf[i] = (buf[i] + r.choice((1, -1))) & 0xFF
        elif op in (3, 4):  # an interesting integer, little- or big-endian
            width, values = r.choice(_INTERESTING)
            if n >= width:
                i = r.randrange(n - width + 1)
                value = r.choice(values)
                buf[i : i + width] = (value.to_bytes(width, "little") if op == 3
                                      else value.to_bytes(width, "big"))
        elif op == 5:  # truncate anywhere
            del buf[r.randrange(n) :]
        elif op == 6:  # drop a few bytes at the end
            del buf[max(0, n - r.randrange(1, 17)) :]
        elif op == 7:  # delete a chunk
            i = r.randrange(n)
            del buf[i : i + r.randrange(1, 33)]
        elif op == 8:  # duplicate a chunk
            i = r.randrange(n)
            chunk = buf[i : i + r.randrange(1, 65)]
            buf[i:i] = chunk
        elif op == 9:  # extend
            tail = r.randbytes(r.randrange(1, 65)) if r.random() < 0.5 else bytes(
                r.randrange(1, 65))
            buf += tail
        elif op == 10:  # insert random bytes
            i = r.randrange(n + 1)
            buf[i:i] = r.randbytes(r.randrange(1, 17))
        elif op == 11:  # splice: our prefix, another seed's suffix
            other = r.choice(self.seeds)
            cut = r.randrange(n + 1)
            cut2 = r.randrange(len(other) + 1)
            buf[cut:] = other[cut2:]
        else:  # overwrite a chunk with the same place of another seed
            other = r.choice(self.seeds)
            if other:
                i = r.randrange(len(other))
                j = i + r.randrange(1, 65)
                buf[i:j] = other[i:j]


# -- targets -----------------------------------------------------------------------------------


class RoundTripError(AssertionError):
    """A decoded message did not encode back to the bytes it was decoded from."""


@dataclass
class Target:
    name: str
    seeds: list[bytes]
    run: Callable[[bytes], object]
    allowed: tuple[type[BaseException], ...] = ()
    fixup: Callable[[bytes], bytes] | None = None  # re-authenticate a mutated input
    max_len: int = MAX_DATAGRAM
    reset: Callable[[], None] | None = None  # fresh state (stateful targets)
    reset_every: int = 0


@dataclass
class Failure:
    target: str
    data: bytes
    error: str  # exception type and message
    where: str  # the innermost frame: file:line

    @property
    def signature(self) -> tuple[str, str]:
        return (self.error.split(":", 1)[0], self.where)


@dataclass
class FuzzStats:
    target: str
    inputs: int = 0
    accepted: int = 0  # ran without raising
    rejected: int = 0  # raised the documented error
    exceptions: int = 0  # raised anything else (a bug)
    log_records: int = 0  # log lines emitted while handling the inputs
    failures: list[Failure] = field(default_factory=list)  # first one per signature

    def unique(self) -> int:
        return len(self.failures)


_building = [0]  # > 0 while a seed mesh is built: its log lines are not the target's


class _LogCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if not _building[0]:
            self.count += 1


def _failure(target: str, data: bytes, exc: BaseException) -> Failure:
    tb = traceback.extract_tb(exc.__traceback__)
    where = f"{tb[-1].filename}:{tb[-1].lineno}" if tb else "?"
    return Failure(target, data, f"{type(exc).__name__}: {exc}", where)


def check_one(target: Target, data: bytes, stats: FuzzStats) -> Failure | None:
    """Run one (already fixed-up) input and account for it in `stats`."""
    stats.inputs += 1
    try:
        target.run(data)
    except target.allowed:
        stats.rejected += 1
        return None
    except Exception as exc:
        stats.exceptions += 1
        f = _failure(target.name, data, exc)
        if f.signature not in {x.signature for x in stats.failures}:
            stats.failures.append(f)
        return f
    stats.accepted += 1
    return None


def prepare(target: Target, data: bytes) -> bytes:
    """The input as the target sees it (after re-authentication)."""
    if target.fixup is None:
        return data
    try:
        return target.fixup(data)
    except Exception:  # a fix-up that cannot apply leaves the input as it is
        return data


@contextlib.contextmanager
def counted_logs() -> Iterator[_LogCounter]:
    """Count (and swallow) every meshguard log record while the block runs."""
    counter = _LogCounter()
    root = logging.getLogger("meshguard")
    old_level, old_propagate = root.level, root.propagate
    root.addHandler(counter)
    root.setLevel(logging.DEBUG)
    root.propagate = False
    try:
        yield counter
    finally:
        root.removeHandler(counter)
        root.setLevel(old_level)
        root.propagate = old_propagate


def fuzz(target: Target, n: int, seed: int = 0) -> FuzzStats:
    """`n` mutated inputs (after the seeds themselves) against `target`."""
    stats = FuzzStats(target.name)
    with counted_logs() as counter:
        for s in target.seeds:
            check_one(target, s, stats)
        mut = Mutator(random.Random(seed), target.seeds, target.max_len)
        for i in range(n):
            if target.reset is not None and target.reset_every and i and \
                    i % target.reset_every == 0:
                target.reset()
            check_one(target, prepare(target, mut.mutate()), stats)
    stats.log_records = counter.count
    return stats


# -- codec targets -----------------------------------------------------------------------------


def _roundtrip(what: str, original: bytes, again: bytes) -> None:
    if again != original:
        raise RoundTripError(f"{what}: {original.hex()} re-encodes as {again.hex()}")


def _gossip(data: bytes) -> None:
    p = gossip.decode_packet(data)
    records = [p.record] if p.record else []
    for tag, raw in p.entries:
        if tag == gossip.TAG_RECORD:
            records.append(raw)
        else:
            a = gossip.decode_accusation(tag, raw)
            _roundtrip("accusation", raw, gossip.encode_accusation(a)[1])
    for raw in records:
        rec = gossip.decode_record(raw)
        _roundtrip("record", raw, gossip.encode_record(rec))
    if p.type != gossip.JOIN:
        _roundtrip("gossip packet", data, gossip.encode_body(p) + p.mac)


def _record(data: bytes) -> None:
    _roundtrip("record", data, gossip.encode_record(gossip.decode_record(data)))


def _wireguard(data: bytes) -> None:
    msg = wireguard.parse(data)
    _roundtrip("WireGuard message", data, msg.encode())


def _relay(data: bytes) -> None:
    m = relay.decode(data)
    _roundtrip("RelayData", data, relay.authenticated_part(m) + m.mac)


def _holepunch(data: bytes) -> None:
    _roundtrip("hole-punch message", data, holepunch.encode(holepunch.decode(data)))


def _org(data: bytes) -> None:
    body, _sender_wg, _tag = org.split_link(data)
    if body[:1] == bytes([org.ORG_CERT_REVOKE]):
        revs = org.decode_revocations(body)
        _roundtrip("OrgCertRevoke", body, org.encode_revocations(revs))
        for r in revs:
            org_gossip.revocation_valid(r)
    else:
        aliases = org.decode_aliases(body)
        _roundtrip("OrgAliasAnnounce", body, org.encode_aliases(aliases))
        for a in aliases:
            org_gossip.alias_valid(a)
            org_gossip.alias_problem(a.alias)


def _stun(data: bytes) -> None:
    stun.is_stun(data)
    stun.decode(data)


def _dns(data: bytes) -> None:
    try:
        dns.parse_query(data)
    finally:
        dns.parse_response(data)


def _control(data: bytes) -> None:
    with contextlib.suppress(WireFormatError):
        control.decode_request(data)
    resp = control.decode_response(data)
    if resp.result is not None and "schema_version" in resp.result:
        control.StatusReport.from_json(resp.result)


def _demux(data: bytes) -> None:
    demux.classify(data)
    demux.classify(memoryview(data))
    gossip.peek_type(data)
    wireguard.is_wireguard(data)


def _certificate(data: bytes) -> None:
    cert = NodeCertificate.from_bytes(data)
    cert.problem(WALL0)
    if len(data) == V1_LEN or (cert.version == 2 and len(data) == V2_LEN):
        _roundtrip("certificate", data, cert.to_bytes())


_DUMMY_PATH = Path("/fuzz/file")


def _key_files(data: bytes) -> None:
    """The key file formats of identity/store.py (what `load_*` parse after reading)."""
    kind = data[:1]
    body = data[1:]
    if kind == b"s":
        store.parse_secret_key_file(body, _DUMMY_PATH, "identity key", "fix")
    elif kind == b"v":
        raw = store._decode_b64(body, _DUMMY_PATH, "vouch", 104, "fix")
        WgKeyVouch.from_bytes(bytes(32), raw).verify()
    else:
        store._decode_b64(body, _DUMMY_PATH, "WireGuard key", 32, "fix")


def _vouch(data: bytes) -> None:
    WgKeyVouch.from_bytes(b"\x11" * 32, data).verify()


def _text_files(data: bytes) -> None:
    """`revocations`, `.revoke` and `org/alias` files (UTF-8 text on disk)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return
    for line in text.splitlines():
        r = org_gossip.parse_line(line)
        if r is not None:
            org_gossip.revocation_valid(r)
    a = org_gossip.parse_alias_line(text)
    if a is not None:
        org_gossip.alias_valid(a)
        org_gossip.alias_problem(a.alias)
    parse_revocations(text, _DUMMY_PATH)


def _gossip_state_target() -> Callable[[bytes], object]:
    """daemon/gossip_state.py's parser of `gossip.state` (the node's own cache file)."""
    shm = Path("/dev/shm")
    d = Path(tempfile.mkdtemp(prefix="meshguard-fuzz-", dir=shm if shm.is_dir() else None))
    path = d / gossip_state.STATE_FILE

    def run(data: bytes) -> None:
        path.write_bytes(data)
        marks, _bad = gossip_state.load_high_water(d)
        assert all(len(k) == 32 and 0 <= v < 2**64 for k, v in marks.items())

    return run


def _gossip_state_seeds() -> list[bytes]:
    lines = [f"{base64.b64encode(bytes([i]) * 32).decode()} {v}\n"
             for i, v in ((1, 0), (2, 1_700_000_000_000), (3, 2**64 - 1))]
    return ["".join(lines).encode(), lines[1].encode(), b"\n# comment\n" + lines[0].encode()]


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


def _fastpath_targets() -> list[Target]:
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
    return Target("fastpath_guard", _dedupe(seeds)[:32], run, fixup=fix, reset=reset,
                  reset_every=100_000)


_STUN_SERVERS = [("192.0.2.200", 3478), ("2001:db8::200", 3478)]


def _stun_client(data: bytes) -> None:
    """A StunClient that has just asked two servers; `data` answers the first. Unless the
    first byte's low bit is set, its transaction id is that of the pending query."""
    client = StunClient(SeededRng(1), _STUN_SERVERS, local=[VICTIM_EP])
    sends = client.start(0.0)
    if len(data) >= stun.HEADER_LEN and not data[0] & 1:
        data = data[:8] + sends[0].data[8:20] + data[20:]
    client.receive(0.1, 1e9, data, _STUN_SERVERS[0])
    client.receive(0.2, 1e9, data, _STUN_SERVERS[1])
    client.tick(10.0, 1e9)
    _ = (client.done, client.mapped, client.nat_type)


def _uapi(data: bytes) -> None:
    """daemon/uapi_protocol.py's request parser (the `wg` tool's socket): never raises; a
    malformed request becomes BadRequest or ProtocolViolation."""
    parser = UapiParser()
    half = len(data) // 2
    parser.feed(data[:half])
    parser.feed(data[half:])


def _uapi_seeds() -> list[bytes]:
    k = "11" * 32
    return [b"get=1\n\n",
            (f"set=1\nprivate_key={k}\nlisten_port=51820\nfwmark=0\nreplace_peers=true\n"
             f"public_key={'22' * 32}\npreshared_key={'33' * 32}\nendpoint=192.0.2.1:51820\n"
             "persistent_keepalive_interval=25\nreplace_allowed_ips=true\n"
             "allowed_ip=10.99.0.0/16\nallowed_ip=fd99:6d67::/64\nprotocol_version=1\n"
             f"public_key={'44' * 32}\nendpoint=[2001:db8::1%eth0]:1\nremove=true\n\n"
             ).encode(),
            b"set=1\nlisten_port=99999\n\nget=1\n\n"]


def _resolver_target() -> Callable[[bytes], object]:
    table = build_table([
        ("node-1.a1b2c3.mesh", HostAddresses((ipaddress.IPv4Address("10.99.0.1"),),
                                             (ipaddress.IPv6Address("fd99:6d67::1"),))),
        ("web.mesh", HostAddresses((ipaddress.IPv4Address("10.99.0.2"),), ())),
    ])
    res = Resolver(table)

    def run(data: bytes) -> None:
        res.handle(data)
        res.handle(data, tcp=True)

    return run


def _keys(seed: int) -> tuple[Ed25519PrivateKey, X25519PrivateKey]:
    rng = SeededRng(seed)
    return Ed25519PrivateKey(rng.bytes(32)), X25519PrivateKey.generate(rng.bytes(32))


def _stun_seeds() -> list[bytes]:
    txid = bytes(range(12))
    out = [stun.encode_binding_request(txid),
           stun.encode_binding_success(txid, ("203.0.113.7", 51821)),
           stun.encode_binding_success(txid, ("2001:db8::7", 51821))]
    mapped = struct.pack("!BBH", 0, stun.FAMILY_IPV4, 3478) + bytes([198, 51, 100, 1])
    attrs = (struct.pack("!HH", stun.ATTR_MAPPED_ADDRESS, len(mapped)) + mapped
             + struct.pack("!HH", stun.ATTR_SOFTWARE, 5) + b"fuzz!\x00\x00\x00"
             + struct.pack("!HH", stun.ATTR_ERROR_CODE, 8) + b"\x00\x00\x04\x20oops")
    out.append(struct.pack("!HHI", stun.BINDING_ERROR, len(attrs), stun.MAGIC_COOKIE) + txid
               + attrs)
    return out


def _dns_seeds() -> list[bytes]:
    q = dns.build_query(0x1234, "node-1.a1b2c3.mesh", dns.TYPE_A)
    q6 = dns.build_query(7, "web.mesh", dns.TYPE_AAAA, edns_payload=1232)
    qany = dns.build_query(9, "example.org", dns.TYPE_ANY, rd=False)
    question = q[dns.HEADER_LEN:]
    answers = [dns.Answer(dns.TYPE_A, 60, bytes([10, 99, 0, 1])),
               dns.Answer(dns.TYPE_AAAA, 60, bytes(16))]
    resp = dns.build_response(0x1234, dns.RD | dns.AA, dns.RCODE_NOERROR, question, answers,
                              edns=True, max_size=1232)
    nx = dns.build_response(1, 0, dns.RCODE_NXDOMAIN, question)
    return [q, q6, qany, resp, nx, dns.build_response(2, 0, dns.RCODE_FORMERR, None)]


def _control_seeds() -> list[bytes]:
    me = control.SelfStatus("node-1", "aWQ=", "d2c=", "10.99.0.1", "fd99:6d67::1", 51821, 51821)
    mem = control.MemberStatus("node-2", "aWQy", None, "10.99.0.2", "fd99:6d67::2",
                               "203.0.113.7:51821", "alive", True, True, 1.5e9, 10, 20,
                               "direct", ("node-2.a1b2c3.mesh",))
    rep = control.StatusReport("mg0", "userspace", 123, 1.7e9, me, (mem,),
                               {"gossip_rx": 5, "garbage_dropped": 1})
    out = [control.encode_request(control.Request(op)) for op in control.OPS]
    out.append(control.encode_request(control.Request("status", {"verbose": True})))
    out.append(control.encode_response(control.Response(True, rep.to_json())))
    out.append(control.encode_response(control.Response(False, error="no such thing")))
    big = rep.to_json()
    big["pid"] = 1e308  # one digit away from infinity, which int() refuses
    out.append(control.encode_response(control.Response(True, big)))
    out.append(b"[" * 2000 + b"]" * 2000)  # deeper than the JSON decoder's recursion limit
    return out


def _certificate_seeds() -> list[bytes]:
    org_key, _ = _keys(901)
    node_key, wg = _keys(902)
    c1 = sign_certificate(org_key, node_key.public_key.raw, "node-1", 1_600_000_000)
    c2 = sign_certificate(org_key, node_key.public_key.raw, "db", 1_600_000_000, 2_000_000_000)
    v2 = dataclasses.replace(c1, version=2, wg_key=wg.public_key.raw,
                             issuer_key=org_key.public_key.raw, delegation_signature=bytes(64))
    v2 = dataclasses.replace(v2, signature=org_key.sign(v2.signed_bytes()))
    return [c1.to_bytes(), c2.to_bytes(), c1.to_bytes() + bytes(V2_LEN - V1_LEN),
            v2.to_bytes()]


def _key_file_seeds() -> list[bytes]:
    ident, wg = _keys(903)
    vouch = vouch_wg_key(ident, wg.public_key.raw, 1_700_000_000)
    return [b"s" + store.secret_key_file(ident),
            b"w" + (wg.b64() + "\n").encode(),
            b"v" + store.public_key_file(vouch.to_bytes()),
            b"w" + store.public_key_file(ident.public_key.raw)]


def _text_seeds() -> list[bytes]:
    org_key, _ = _keys(904)
    node_key, _ = _keys(905)
    rev = org_gossip.sign_revocation(org_key, node_key.public_key.raw, 1_700_000_000)
    alias = org_gossip.sign_alias(org_key, "corp", 1_700_000_000)
    lines = [
        Revocation("key", node_key.public_key.raw, None, "node-5").line(),
        Revocation("org", org_key.public_key.raw).line(),
        Revocation("cert", node_key.public_key.raw, org_key.public_key.raw,
                   org_gossip.format_label(rev)).line(),
    ]
    return [(REVOCATIONS_HEADER + "".join(lines)).encode(),
            org_gossip.format_line(rev).encode(),
            org_gossip.format_alias_line(alias).encode()]


def _synthetic_org_seeds() -> list[bytes]:
    org_key, _ = _keys(906)
    revs = [org_gossip.sign_revocation(org_key, bytes([i]) * 32, 1_700_000_000 + i)
            for i in range(3)]
    aliases = [org_gossip.sign_alias(org_key, "corp", 1_700_000_000),
               org_gossip.sign_alias(org_key, "a" * org.MAX_ALIAS_LEN, 5)]
    trailer = bytes(range(32)) + bytes(16)  # a sender's WireGuard key and a link MAC
    return [b + trailer for b in (org.encode_revocations(revs), org.encode_revocations(revs[:1]),
                                  org.encode_aliases(aliases), org.encode_aliases(aliases[:1]))]


def codec_targets() -> dict[str, Target]:
    """Every codec that reads bytes from the network or from a file."""
    mesh = mesh_capture()
    by_type: dict[str, list[bytes]] = {}
    for d in mesh.datagrams:
        kind = demux.classify(d)
        if kind is demux.Kind.WIREGUARD:
            by_type.setdefault("wireguard", []).append(d)
        elif d[0] == relay.RELAY_DATA:
            by_type.setdefault("relay", []).append(d)
        elif d[0] in holepunch.HOLEPUNCH_TYPES:
            by_type.setdefault("holepunch", []).append(d)
        elif d[0] in org.ORG_TYPES:
            by_type.setdefault("org", []).append(d)
        elif kind is demux.Kind.GOSSIP:
            by_type.setdefault("gossip", []).append(d)
    records = [r for r in mesh.records]
    wf = (WireFormatError,)
    targets = [
        Target("gossip", _dedupe(by_type["gossip"]), _gossip, wf),
        Target("gossip_record", _dedupe(records), _record, wf),
        Target("wireguard", _dedupe(by_type["wireguard"]), _wireguard, wf),
        Target("relay", _dedupe(by_type.get("relay", [])), _relay, wf),
        Target("holepunch", _dedupe(by_type.get("holepunch", []) + mesh.punch_seeds),
               _holepunch, wf),
        Target("org", _dedupe(by_type.get("org", []) + _synthetic_org_seeds()), _org, wf),
        Target("stun", _stun_seeds(), _stun, wf),
        Target("stun_client", _stun_seeds(), _stun_client, ()),
        Target("dns", _dns_seeds(), _dns, wf),
        Target("dns_resolver", _dns_seeds(), _resolver_target(), ()),
        Target("control", _control_seeds(), _control, wf, max_len=4096),
        Target("demux", _dedupe(mesh.datagrams + _stun_seeds())[:64], _demux, ()),
        Target("certificate", _certificate_seeds(), _certificate, (CertificateError,)),
        Target("wgkey_vouch", [s[1:] for s in _key_file_seeds() if s[:1] == b"v"]
               + [bytes(104)], _vouch, (KeyFileError,)),
        Target("key_files", _key_file_seeds(), _key_files, (KeyFileError,), max_len=512),
        Target("trust_files", _text_seeds(), _text_files, (ConfigError,), max_len=4096),
        Target("gossip_state", _gossip_state_seeds(), _gossip_state_target(), (),
               max_len=4096),
        Target("uapi", _uapi_seeds(), _uapi, (), max_len=4096),
    ]
    targets += _fastpath_targets()
    return {t.name: t for t in targets}


def _dedupe(items: Iterable[bytes]) -> list[bytes]:
    return list(dict.fromkeys(items))


# -- a small mesh in virtual time --------------------------------------------------------------


class FuzzTrust:
    """A real TrustStore (in memory) behind the node's Admitter and org-key interface."""

    def __init__(self, store_: TrustStore) -> None:
        self.store = store_

    def admit(self, node_key: bytes, certificate: bytes | None, now_wall: float
              ) -> Admission:
        return self.store.admit(node_key, certificate, now_wall)

    def trusted_org_keys(self) -> list[bytes]:
        return [k for k in self.store.orgs.values() if not self.store.is_org_revoked(k)]


@dataclass
class Member:
    name: str
    ep: Endpoint
    ident: Ed25519PrivateKey
    wg: X25519PrivateKey
    node: MeshNode
    cert: bytes | None

    @property
    def key(self) -> bytes:
        return self.ident.public_key.raw


@dataclass
class MeshCapture:
    """A victim node in a small joined mesh, and the datagrams seen while it formed."""

    victim: Member
    members: list[Member]
    org_key: Ed25519PrivateKey
    now: float
    datagrams: list[bytes]  # every datagram any node received
    to_victim: list[bytes]  # those the victim received
    records: list[bytes]  # every signed record seen in them
    relay_seeds: list[bytes]  # the RelayData hops of the run (A and B relay through V)
    punch_seeds: list[bytes]  # signed hole-punch messages built here
    problems: list[str]  # seed generators that failed (a codec or core API changed)


VICTIM_EP = ("198.51.100.1", 51821)


def _member_eps() -> list[Endpoint]:
    return [("198.51.100.2", 51821), ("203.0.113.3", 40000), ("2001:db8::4", 51821)]


def build_mesh(seed: int = 1, victim_under_load: int | None = None) -> MeshCapture:
    _building[0] += 1
    try:
        with counted_logs():
            return _build_mesh(seed, victim_under_load)
    finally:
        _building[0] -= 1


def _build_mesh(seed: int, victim_under_load: int | None) -> MeshCapture:
    """Victim V (public: relay and rendezvous) and members A, B (org certificates) and C
    (an authorized key), joined through V, with tunnels up, one revocation and one alias in
    the org gossip; every datagram is recorded. `victim_under_load` overrides the handshake
    rate at which V's device starts demanding cookies (mac2)."""
    rng = SeededRng(seed)
    org_key = Ed25519PrivateKey(rng.bytes(32))
    now, wall = 0.0, WALL0

    def make(name: str, ep: Endpoint, cert_name: str | None) -> Member:
        ident = Ed25519PrivateKey(rng.bytes(32))
        wg = X25519PrivateKey.generate(rng.bytes(32))
        cert = (sign_certificate(org_key, ident.public_key.raw, cert_name, int(wall) - 60)
                .to_bytes() if cert_name else None)
        trust = FuzzTrust(TrustStore(Path("/nonexistent"), orgs={"org": org_key.public_key.raw}))
        port = build_membership(identity=ident, wg_private=wg, certificate=cert, endpoints=[ep],
                                kernel=False, admitter=trust, rng=rng, now=now, wall=wall)
        if name == "V" and victim_under_load is not None:
            dev = Device(rng, wg, under_load_threshold=victim_under_load)
        else:
            dev = Device(rng, wg)
        node = MeshNode(ident.public_key.raw, wg.public_key.raw, port, trust, device=dev,
                        backend=DeviceBackend(dev), org=OrgGossip(rng, wg), certificate=cert)
        node.holepunch = HolePuncher(ident, rng)
        node.holepunch.set_self((ep,), behind_nat=name != "V")
        node.relay = Relay(ident.public_key.raw, wg, cookie_secret=b"\x05" * 32)
        return Member(name, ep, ident, wg, node, cert)

    eps = _member_eps()
    v = make("V", VICTIM_EP, "victim")
    a = make("A", eps[0], "node-a")
    b = make("B", eps[1], "node-b")
    c = make("C", eps[2], None)
    everyone = [v, a, b, c]
    for x in everyone:
        trust = x.node.trust
        assert isinstance(trust, FuzzTrust)
        if x is not c:
            trust.store.peers["c"] = c.key
    for x in (a, b):  # C trusts A and B by key (it has no certificate of its own)
        trust = c.node.trust
        assert isinstance(trust, FuzzTrust)
        trust.store.peers[x.name.lower()] = x.key
    by_ep = {x.ep: x for x in everyone}
    blocked = {a.ep, b.ep}  # A and B cannot reach each other directly: punch, then relay
    queue: deque[tuple[Endpoint, bytes, Endpoint]] = deque()
    datagrams: list[bytes] = []
    to_victim: list[bytes] = []

    def run(x: Member, actions: Iterable[object]) -> None:
        for act in actions:
            if isinstance(act, SendDatagram):
                queue.append((act.endpoint, act.data, x.ep))

    def deliver() -> None:
        while queue:
            dst, data, src = queue.popleft()
            target = by_ep.get(dst)
            if target is None or {src, dst} == blocked:
                continue
            datagrams.append(data)
            if target is v:
                to_victim.append(data)
            run(target, target.node.receive_datagram(now, wall, data, src))

    def join(x: Member, seeds: list[Member]) -> None:
        port = x.node.membership
        assert isinstance(port, SwimPort)
        run(x, port.join_actions([s.ep for s in seeds], now, wall))

    join(v, [])
    for x in (a, b, c):
        join(x, [v])
    stun_client = StunClient(rng, [("192.0.2.200", 3478)], local=[VICTIM_EP])
    run(v, v.node.start_stun(stun_client, now))
    vport = v.node.membership
    assert isinstance(vport, SwimPort)
    vport.set_public_endpoint(now, VICTIM_EP, relay_core.NAT_PUBLIC)  # V: relay, rendezvous
    for x in (a, b):
        assert x.node.relay is not None
        x.node.relay.behind_nat = True
    steps = 0
    while steps < 1200:  # 60 s of virtual time
        deliver()
        now += 0.05
        wall += 0.05
        steps += 1
        for x in everyone:
            d = x.node.next_deadline()
            if d is not None and d <= now:
                run(x, x.node.tick(now, wall))
        if steps % 100 == 60:  # tunnel traffic: an IP packet from every member to every other
            for s in everyone:
                for t in everyone:
                    if s is not t:
                        run(s, s.node.send_packet(now, wall, _ip_packet(s.key, t.key)))
        if steps == 80:  # org gossip: a revocation (of a non-member) and an alias
            rev = org_gossip.sign_revocation(org_key, b"\x77" * 32, int(wall))
            run(a, a.node.announce_revocations([rev], wall))
            a.node.announce_alias(org_gossip.sign_alias(org_key, "corp", int(wall)), wall)
    deliver()
    records = _records_in(datagrams)
    problems: list[str] = []
    relay_seeds = [d for d in datagrams if d[:1] == bytes([relay.RELAY_DATA])]
    if not relay_seeds:
        problems.append("relay seeds: A and B did not fall back to relaying through V")
    if not any(d[:1] in (b"\x41", b"\x42") for d in to_victim):
        problems.append("org seeds: V received no org gossip")
    punch_seeds = _safe("hole-punch", problems, lambda: _punch_seeds(v, a, b, c, wall))
    return MeshCapture(v, [a, b, c], org_key, now, datagrams, to_victim, records, relay_seeds,
                       punch_seeds, problems)


def _ip_packet(src_key: bytes, dst_key: bytes) -> bytes:
    s4, d4 = mesh_ipv4(src_key), mesh_ipv4(dst_key)
    payload = b"fuzz-seed-payload"
    total = 20 + len(payload)
    src = s4.packed if s4 is not None else bytes(4)
    dst = d4.packed if d4 is not None else bytes(4)
    return struct.pack("!BBHHHBBH", 0x45, 0, total, 0, 0, 64, 17, 0) + src + dst + payload


def _records_in(datagrams: Iterable[bytes]) -> list[bytes]:
    out: list[bytes] = []
    for d in datagrams:
        try:
            p = gossip.decode_packet(d)
        except WireFormatError:
            continue
        if p.record:
            out.append(p.record)
        out += [raw for tag, raw in p.entries if tag == gossip.TAG_RECORD]
    return _dedupe(out)


def pair_key(label: bytes, a_ident: bytes, a_wg: X25519PrivateKey, b_ident: bytes,
             b_wg: bytes) -> bytes:
    """BLAKE2s(label, X25519, sorted WireGuard keys, sorted identities): the key two members
    share for relay hops (nat/relay.py) and org packets (mesh/org_gossip.py)."""
    shared = a_wg.exchange(b_wg)
    w0, w1 = sorted((a_wg.public_key.raw, b_wg))
    i0, i1 = sorted((a_ident, b_ident))
    return blake2s(label, shared, w0, w1, i0, i1)


def _punch(frm: Member, t: int, stage: int, target: bytes, session: int, wall: float,
           eps: tuple[Endpoint, ...]) -> bytes:
    m = holepunch.PunchMessage(t, stage, frm.key, target, session, int(wall * 1000), eps)
    body = holepunch.signed_part(m)
    return body + frm.ident.sign(holepunch.SIGN_CONTEXT + body)


def _punch_seeds(v: Member, a: Member, b: Member, c: Member, wall: float) -> list[bytes]:
    hp = holepunch
    return [
        _punch(a, hp.HOLEPUNCH_REQUEST, hp.STAGE_RENDEZVOUS, b.key, 11, wall, (a.ep,)),
        _punch(b, hp.HOLEPUNCH_RESPONSE, hp.STAGE_RENDEZVOUS, a.key, 11, wall, (b.ep, c.ep)),
        _punch(a, hp.HOLEPUNCH_REQUEST, hp.STAGE_RENDEZVOUS, v.key, 12, wall, (a.ep,)),
        _punch(b, hp.HOLEPUNCH_REQUEST, hp.STAGE_PROBE, v.key, 13, wall, ()),
        _punch(c, hp.HOLEPUNCH_RESPONSE, hp.STAGE_PROBE, v.key, 14, wall, ()),
        _punch(c, hp.HOLEPUNCH_RESPONSE, hp.STAGE_RENDEZVOUS, v.key, 15, wall,
               (c.ep, a.ep, b.ep, v.ep)),
    ]


def _safe(what: str, problems: list[str], make: Callable[[], list[bytes]]) -> list[bytes]:
    """Seeds from `make`, or none (noted in `problems`) when its codec or core changed."""
    try:
        seeds = make()
    except Exception as exc:
        problems.append(f"{what} seeds: {type(exc).__name__}: {exc}")
        return []
    if not seeds:
        problems.append(f"{what} seeds: none")
    return seeds


@functools.cache
def mesh_capture(seed: int = 1) -> MeshCapture:
    """The seed mesh (built once per process; node targets build their own fresh copies)."""
    return build_mesh(seed)


# -- node targets ------------------------------------------------------------------------------


class NodeHarness:
    """The victim's receive path, with time moving on and timers firing as in the daemon."""

    def __init__(self, seed: int = 1, step: float = 2e-5, under_load: int | None = None
                 ) -> None:
        self.seed = seed
        self.step = step
        self.under_load = under_load
        self.reset()

    def reset(self) -> None:
        m = build_mesh(self.seed, self.under_load)
        self.mesh = m
        self.node = m.victim.node
        self.now = m.now
        self.sent = 0
        self._n = 0
        self._by_key = {x.key: x for x in m.members}
        self._by_wg = {x.wg.public_key.raw: x for x in m.members}
        self._pair = swim_records.CryptoCache(None)
        self._mac1 = mac1_key(m.victim.wg.public_key.raw)

    @property
    def wall(self) -> float:
        return WALL0 + self.now

    def receive(self, data: bytes) -> None:
        self._n += 1
        self.now += self.step
        src = self.source(data)
        out = self.node.receive_datagram(self.now, self.wall, data, src)
        self.sent += len(out)
        if self._n % 256 == 0:
            d = self.node.next_deadline()
            if d is not None and d <= self.now:
                self.node.tick(self.now, self.wall)

    def source(self, data: bytes) -> Endpoint:
        """Where a datagram claims to come from: the member it names, else a stranger."""
        for off in (5, 6):  # gossip sender / relay hop; hole-punch origin
            who = self._by_key.get(bytes(data[off : off + 32]))
            if who is not None:
                return who.ep
        return ("192.0.2.66", 40000 + (len(data) & 0xFF))

    # re-authentication (what a rogue member could send) ----------------------------------

    def reauth(self, data: bytes) -> bytes:
        if not data:
            return data
        t = data[0]
        if demux.classify(data) is demux.Kind.WIREGUARD:
            return self._wg(data)
        if t == relay.RELAY_DATA:
            return self._relay(data)
        if t in holepunch.HOLEPUNCH_TYPES:
            return self._punch(data)
        if t in org.ORG_TYPES:
            return self._org(data)
        if t == gossip.JOIN:
            return self._join(data)
        if t in gossip.GOSSIP_TYPES:
            return self._gossip(data)
        return data

    def _wg(self, data: bytes) -> bytes:
        for size, off in ((wireguard.INITIATION_SIZE, wireguard.INITIATION_MAC1_OFFSET),
                          (wireguard.RESPONSE_SIZE, wireguard.RESPONSE_MAC1_OFFSET)):
            if len(data) == size:
                return data[:off] + mac(self._mac1, data[:off]) + data[off + 16:]
        return data

    def _relay(self, data: bytes) -> bytes:
        who = self._by_key.get(bytes(data[5:37]))
        if who is None or len(data) < relay.OVERHEAD:
            return data
        v = self.mesh.victim
        body = data[:-relay.MAC_LEN]
        return body + mac(pair_key(relay_core.LABEL, who.key, who.wg, v.key,
                                   v.wg.public_key.raw), body)

    def _punch(self, data: bytes) -> bytes:
        who = self._by_key.get(bytes(data[6:38]))
        if who is None or len(data) < holepunch.MIN_LEN:
            return data
        body = data[:-holepunch.SIG_LEN]
        return body + who.ident.sign(holepunch.SIGN_CONTEXT + body)

    def _org(self, data: bytes) -> bytes:
        """Re-sign the items of the trusted org and re-MAC the packet as the member whose
        WireGuard key the trailer names."""
        body, sender_wg, _tag = org.split_link(data)
        key = self.mesh.org_key
        okey = key.public_key.raw
        try:
            if body[0] == org.ORG_CERT_REVOKE:
                revs = org.decode_revocations(body)
                body = org.encode_revocations([dataclasses.replace(r, signature=key.sign(
                    org.revoke_message(r.org_key, r.node_key, r.revoked_at)))
                    if r.org_key == okey else r for r in revs])
            else:
                aliases = org.decode_aliases(body)
                body = org.encode_aliases([dataclasses.replace(a, signature=key.sign(
                    org.alias_message(a.org_key, a.alias, a.issued_at)))
                    if a.org_key == okey else a for a in aliases])
        except WireFormatError:
            pass
        who = self._by_wg.get(bytes(sender_wg))
        if who is None:
            return body + sender_wg + _tag
        v = self.mesh.victim
        link = pair_key(org_gossip.LINK_LABEL, who.key, who.wg, v.key, v.wg.public_key.raw)
        return body + sender_wg + mac(link, body + sender_wg)

    def _resign_record(self, raw: bytes) -> bytes:
        who = self._by_key.get(bytes(raw[4:36]))
        if who is None or len(raw) < gossip.SIG_LEN:
            return raw
        body = raw[:-gossip.SIG_LEN]
        return body + who.ident.sign(swim_records.RECORD_DOMAIN + body)

    def _resign_accusation(self, tag: int, raw: bytes) -> bytes:
        who = self._by_key.get(bytes(raw[40:72]))
        if who is None:
            return raw
        domain = swim_records.DEAD_DOMAIN if tag == gossip.TAG_DEAD else \
            swim_records.SUSPECT_DOMAIN
        body = raw[:-gossip.SIG_LEN]
        return body + who.ident.sign(domain + body)

    def _join(self, data: bytes) -> bytes:
        off = gossip.HEADER_LEN + 8
        try:
            size = gossip.record_len_at(data, off)
        except WireFormatError:
            return data
        return data[:off] + self._resign_record(data[off : off + size]) + data[off + size:]

    def _gossip(self, data: bytes) -> bytes:
        who = self._by_key.get(bytes(data[5:37]))
        if who is None or len(data) < gossip.AUTH_MIN:
            return data
        try:
            p = gossip.decode_packet(data)
        except WireFormatError:
            body = data[:-gossip.MAC_LEN]
        else:
            entries = tuple(
                (tag, self._resign_record(raw) if tag == gossip.TAG_RECORD
                 else self._resign_accusation(tag, raw)) for tag, raw in p.entries)
            rec = self._resign_record(p.record) if p.record else p.record
            body = gossip.encode_body(dataclasses.replace(p, entries=entries, record=rec),
                                      check=False)
        v = self.mesh.victim
        key = self._pair.pair_key(who.wg, who.key, v.wg.public_key.raw, v.key)
        if key is None:
            return data
        return body + mac(key, body)


def node_targets(seed: int = 1, reset_every: int = 50_000) -> dict[str, Target]:
    """`node` (mutated datagrams as they are) and `node_auth` (re-authenticated)."""
    out: dict[str, Target] = {}
    for name, auth in (("node", False), ("node_auth", True)):
        # re-authenticated handshakes should reach the Noise code, not only the cookie check
        h = NodeHarness(seed, under_load=10**9 if auth else None)
        seeds = _dedupe(h.mesh.to_victim + h.mesh.relay_seeds + h.mesh.punch_seeds
                        + _stun_seeds()[1:3])
        out[name] = Target(name, seeds, h.receive, (), fixup=h.reauth if auth else None,
                           reset=h.reset, reset_every=reset_every)
    return out


def all_targets() -> dict[str, Target]:
    return {**codec_targets(), **node_targets()}


__all__ = [
    "Failure",
    "FuzzStats",
    "MeshCapture",
    "Mutator",
    "NodeHarness",
    "RoundTripError",
    "Target",
    "all_targets",
    "build_mesh",
    "check_one",
    "codec_targets",
    "counted_logs",
    "fuzz",
    "mesh_capture",
    "node_targets",
    "prepare",
]
