"""Fuzz targets for every codec (testing/fuzz.py): each decodes what it is given and, where
the codec is canonical, checks that the decoded message encodes back to the same bytes."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import ipaddress
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path

from meshguard.crypto.keys import Ed25519PrivateKey, X25519PrivateKey
from meshguard.daemon import gossip_state
from meshguard.daemon.uapi_protocol import UapiParser
from meshguard.dns.resolver import HostAddresses, Resolver, build_table
from meshguard.errors import ConfigError, WireFormatError
from meshguard.identity import org_aliases, store
from meshguard.identity.certificate import V1_LEN, V2_LEN, NodeCertificate, sign_certificate
from meshguard.identity.errors import CertificateError, KeyFileError
from meshguard.identity.trust import (
    REVOCATIONS_HEADER,
    Revocation,
    parse_revocations,
)
from meshguard.identity.vouch import parse_vouch, sign_vouch, vouch_valid
from meshguard.identity.wgkey import WgKeyVouch, vouch_wg_key
from meshguard.mesh import demux, org_gossip
from meshguard.nat.stun_client import StunClient
from meshguard.policy.signed import sign_policy
from meshguard.testing.fuzz_datapath import datapath_targets
from meshguard.testing.fuzz_engine import WALL0, RoundTripError, Target, dedupe
from meshguard.testing.fuzz_fastpath import fastpath_targets
from meshguard.testing.fuzz_mesh import VICTIM_EP, mesh_capture
from meshguard.testing.fuzz_mss import mss_targets
from meshguard.testing.fuzz_pairing import pairing_targets
from meshguard.testing.fuzz_policy import policy_targets
from meshguard.testing.fuzz_router import router_targets
from meshguard.testing.rng import SeededRng
from meshguard.wire import (
    control,
    dns,
    gossip,
    holepunch,
    org,
    path_probe,
    policy_gossip,
    relay,
    stun,
    wireguard,
)

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


def _path_probe(data: bytes) -> None:
    m = path_probe.decode(data)
    body = (path_probe.probe_body(m.nonce, len(data), m.sender_wg)
            if m.kind == path_probe.PATH_PROBE
            else path_probe.ack_body(m.nonce, m.size, m.sender_wg))
    _roundtrip("path probe", data, body + m.mac)


def _path_probe_seeds() -> list[bytes]:
    key, tag = bytes(range(32)), bytes(16)
    return [path_probe.probe_body(7, 63, key) + tag, path_probe.probe_body(8, 1252, key) + tag,
            path_probe.ack_body(7, 1252, key) + tag]


def _org(data: bytes) -> None:
    body, _sender_wg, _tag = org.split_link(data)
    if body[:1] == bytes([org.ORG_CERT_REVOKE]):
        revs = org.decode_revocations(body)
        _roundtrip("OrgCertRevoke", body, org.encode_revocations(revs))
        for r in revs:
            org_gossip.revocation_valid(r)
    elif body[:1] == bytes([org.ORG_TRUST_VOUCH]):
        vouches = org.decode_vouches(body)
        _roundtrip("OrgTrustVouch", body, org.encode_vouches(vouches))
        for v in vouches:
            vouch_valid(v)
    else:
        aliases = org.decode_aliases(body)
        _roundtrip("OrgAliasAnnounce", body, org.encode_aliases(aliases))
        for a in aliases:
            org_gossip.alias_valid(a)
            org_gossip.alias_problem(a.alias)


def _org_vouch_file(data: bytes) -> None:
    """A `vouched/*.vouch` file (identity/vouch.py): exactly 136 bytes or nothing."""
    v = parse_vouch(data)
    if v is not None:
        _roundtrip("org vouch file", data, v.to_bytes())
        vouch_valid(v)


def _policy_gossip(data: bytes) -> None:
    body, _sender_wg, _tag = policy_gossip.split_link(data)
    msg = policy_gossip.decode(body)
    if isinstance(msg, tuple):
        again = policy_gossip.encode_announce(msg)
    elif isinstance(msg, policy_gossip.ChunkRequest):
        again = policy_gossip.encode_request(msg)
    else:
        again = policy_gossip.encode_chunk(msg)
    _roundtrip("policy gossip", body, again)


def _policy_gossip_seeds() -> list[bytes]:
    sp = sign_policy(_keys(907)[0], "to *\nallow tcp 22\n" * 100, 9, 1_700_000_000)
    item = policy_gossip.PolicyItem(sp.org_key, sp.serial, sp.digest, len(sp.raw))
    last = (len(sp.raw) - 1) // policy_gossip.CHUNK * policy_gossip.CHUNK
    trailer = bytes(range(32)) + bytes(16)
    return [b + trailer for b in (
        policy_gossip.encode_announce([item, item]),
        policy_gossip.encode_request(policy_gossip.ChunkRequest(sp.org_key, 9, sp.digest, 0)),
        policy_gossip.encode_chunk(policy_gossip.Chunk(sp.org_key, 9, sp.digest, 0,
                                                       len(sp.raw), sp.raw[:1024])),
        policy_gossip.encode_chunk(policy_gossip.Chunk(sp.org_key, 9, sp.digest, last,
                                                       len(sp.raw), sp.raw[last:])))]


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


def _org_aliases_target() -> Callable[[bytes], object]:
    """identity/org_aliases.py's reader of `org_aliases` (aliases kept across restarts)."""
    shm = Path("/dev/shm")
    d = Path(tempfile.mkdtemp(prefix="meshguard-fuzz-", dir=shm if shm.is_dir() else None))

    def run(data: bytes) -> None:
        (d / org_aliases.ORG_ALIASES).write_bytes(data)
        kept = org_aliases.load_aliases(d)
        assert len(kept.aliases) <= org_aliases.MAX_ALIASES
        assert all(org_aliases.alias_valid(a) for a in kept.aliases)

    return run


def _org_aliases_seeds() -> list[bytes]:
    org_key, _ = _keys(908)
    lines = [org_aliases.format_alias_line(org_gossip.sign_alias(org_key, a, t))
             for a, t in (("corp", 1_700_000_000), ("corp-2", 1_700_000_100))]
    return ["".join(lines).encode(), lines[0].encode(), b"# comment\n" + lines[1].encode()]


def _gossip_state_seeds() -> list[bytes]:
    lines = [f"{base64.b64encode(bytes([i]) * 32).decode()} {v}\n"
             for i, v in ((1, 0), (2, 1_700_000_000_000), (3, 2**64 - 1))]
    return ["".join(lines).encode(), lines[1].encode(), b"\n# comment\n" + lines[0].encode()]


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


def stun_seeds() -> list[bytes]:
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
    soa = dns.Soa("ns.mesh", "hostmaster.mesh", 1_800_000_000, 3600, 600, 86400, 10).rdata()
    nx = dns.build_response(1, 0, dns.RCODE_NXDOMAIN, question,
                            authority=[dns.Answer(dns.TYPE_SOA, 10, soa, b"\x04mesh\x00")])
    qsoa = dns.build_query(3, "mesh", dns.TYPE_SOA)
    return [q, q6, qany, qsoa, resp, nx, dns.build_response(2, 0, dns.RCODE_FORMERR, None)]


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
    vouches = [sign_vouch(org_key, bytes([i]) * 32, 1_700_000_000 + i) for i in range(2)]
    trailer = bytes(range(32)) + bytes(16)  # a sender's WireGuard key and a link MAC
    return [b + trailer for b in (org.encode_revocations(revs), org.encode_revocations(revs[:1]),
                                  org.encode_aliases(aliases), org.encode_aliases(aliases[:1]),
                                  org.encode_vouches(vouches))]


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
        Target("gossip", dedupe(by_type["gossip"]), _gossip, wf),
        Target("gossip_record", dedupe(records), _record, wf),
        Target("wireguard", dedupe(by_type["wireguard"]), _wireguard, wf),
        Target("relay", dedupe(by_type.get("relay", [])), _relay, wf),
        Target("holepunch", dedupe(by_type.get("holepunch", []) + mesh.punch_seeds),
               _holepunch, wf),
        Target("org", dedupe(by_type.get("org", []) + _synthetic_org_seeds()), _org, wf),
        Target("path_probe", _path_probe_seeds(), _path_probe, wf),
        Target("policy_gossip", _policy_gossip_seeds(), _policy_gossip, wf),
        Target("stun", stun_seeds(), _stun, wf),
        Target("stun_client", stun_seeds(), _stun_client, ()),
        Target("dns", _dns_seeds(), _dns, wf),
        Target("dns_resolver", _dns_seeds(), _resolver_target(), ()),
        Target("control", _control_seeds(), _control, wf, max_len=4096),
        Target("demux", dedupe(mesh.datagrams + stun_seeds())[:64], _demux, ()),
        Target("certificate", _certificate_seeds(), _certificate, (CertificateError,)),
        Target("wgkey_vouch", [s[1:] for s in _key_file_seeds() if s[:1] == b"v"]
               + [bytes(104)], _vouch, (KeyFileError,)),
        Target("org_vouch_file", [sign_vouch(_keys(907)[0], bytes(32), 1_700_000_000).to_bytes()],
               _org_vouch_file, (WireFormatError,), max_len=512),
        Target("key_files", _key_file_seeds(), _key_files, (KeyFileError,), max_len=512),
        Target("trust_files", _text_seeds(), _text_files, (ConfigError,), max_len=4096),
        Target("gossip_state", _gossip_state_seeds(), _gossip_state_target(), (),
               max_len=4096),
        Target("org_aliases", _org_aliases_seeds(), _org_aliases_target(), (), max_len=4096),
        Target("uapi", _uapi_seeds(), _uapi, (), max_len=4096),
    ]
    targets += fastpath_targets()
    targets += datapath_targets()
    targets += pairing_targets()
    targets += mss_targets()
    targets += policy_targets()
    targets += router_targets()
    return {t.name: t for t in targets}
