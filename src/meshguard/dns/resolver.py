"""The mesh DNS resolver: query bytes in, response bytes out (sans-IO).

Names (all lowercase, under the `mesh` top-level domain; see mesh/node.py `dns_names`):

  <node>.<org-hex6>.mesh   a member admitted by an org certificate: the certificate's node name
                           and the org domain (docs/compatibility.md); the org signed the name, so
                           every member trusting the org serves the same name for the same key
  <node>.<alias>.mesh      the same member when the org announced an alias (OrgAliasAnnounce)
  <name>.mesh              a member admitted by an authorized key: the file name of
                           authorized_keys/<name>.pub on *this* node (a local nickname, as in
                           ~/.ssh/config: two nodes may call the same peer differently)

Answers: A = the member's mesh IPv4 (after collision resolution; none when it is IPv6 only),
AAAA = its mesh IPv6. A name that exists with no record of the asked type, or an interior name
such as `abc123.mesh`, gets NOERROR with no answer (NODATA, RFC 2308); other names under
`mesh` get NXDOMAIN; both negative answers carry the zone's SOA in the authority section, its
TTL and MINIMUM the negative TTL (RFC 2308 3, 5). `mesh.` itself answers SOA and NS (the
server `ns.mesh.`, which resolves to this server's own addresses unless a member holds that
name). Names outside `mesh` get REFUSED (no recursion: RA is clear). Every answer
is authoritative (AA). Non-query opcodes get NOTIMP, malformed questions FORMERR, and packets
that are not even a query header (too short, or a response) get no reply at all, so the
resolver can never be turned into a reflector of its own output. Nothing here raises on input.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from meshguard.errors import WireFormatError
from meshguard.identity.names import MESH_TLD
from meshguard.wire import dns

DEFAULT_TTL = 30  # seconds: membership changes within seconds, so keep caches short
# how long a "no such name" may be cached: short, so a member that just joined resolves soon
NEGATIVE_TTL = 10
MAX_TCP = 65535
NS_NAME = f"ns.{MESH_TLD}"
SOA_RNAME = f"hostmaster.{MESH_TLD}"
# no secondaries ever transfer the zone: conventional values (RFC 1912 2.2)
SOA_REFRESH, SOA_RETRY, SOA_EXPIRE = 3600, 600, 86400
_APEX = dns.encode_name(MESH_TLD)


@dataclass(frozen=True)
class HostAddresses:
    ipv4: tuple[ipaddress.IPv4Address, ...] = ()
    ipv6: tuple[ipaddress.IPv6Address, ...] = ()


NameTable = Mapping[str, HostAddresses]


def build_table(entries: Iterable[tuple[str, HostAddresses]]) -> dict[str, HostAddresses]:
    """Lowercase names; a name claimed twice keeps the union of addresses (order kept)."""
    out: dict[str, HostAddresses] = {}
    for name, addrs in entries:
        key = name.lower().rstrip(".")
        cur = out.get(key)
        if cur is None:
            out[key] = addrs
        else:
            out[key] = HostAddresses(
                cur.ipv4 + tuple(a for a in addrs.ipv4 if a not in cur.ipv4),
                cur.ipv6 + tuple(a for a in addrs.ipv6 if a not in cur.ipv6))
    return out


@dataclass
class Resolver:
    """Answers queries from `table`, which the mesh replaces as membership changes."""

    table: NameTable = field(default_factory=dict)
    ttl: int = DEFAULT_TTL
    counters: Counter[str] = field(default_factory=Counter)
    negative_ttl: int = NEGATIVE_TTL
    serial: int = 1  # the SOA serial: moves forward whenever the table changes
    server: HostAddresses = HostAddresses()  # this server's own addresses (`ns.mesh`)
    _interior: frozenset[str] = frozenset()
    _interior_of: int = -1
    _soa: tuple[int, dns.Answer, dns.Answer] | None = None

    def set_table(self, table: NameTable, wall: float | None = None) -> None:
        """Serve `table`; if it differs from the current one the SOA serial moves to the unix
        time `wall` (or one past the old serial when that is not later)."""
        if table != self.table:
            self.serial = max(int(wall or 0), self.serial + 1) & 0xFFFFFFFF
        self.table = table
        self._interior_of = -1

    def soa_records(self) -> tuple[dns.Answer, dns.Answer]:
        """The zone's SOA as an answer (TTL `ttl`) and for negative answers' authority section
        (TTL min(ttl, negative_ttl), RFC 2308 3)."""
        if self._soa is None or self._soa[0] != self.serial:
            rdata = dns.Soa(NS_NAME, SOA_RNAME, self.serial, SOA_REFRESH, SOA_RETRY,
                            SOA_EXPIRE, self.negative_ttl).rdata()
            self._soa = (self.serial, dns.Answer(dns.TYPE_SOA, self.ttl, rdata, _APEX),
                         dns.Answer(dns.TYPE_SOA, min(self.ttl, self.negative_ttl), rdata,
                                    _APEX))
        return self._soa[1], self._soa[2]

    def _interior_names(self) -> frozenset[str]:
        if self._interior_of != id(self.table):
            names: set[str] = {MESH_TLD}
            for n in self.table:
                parts = n.split(".")
                for i in range(1, len(parts)):
                    names.add(".".join(parts[i:]))
            self._interior = frozenset(names)
            self._interior_of = id(self.table)
        return self._interior

    def handle(self, data: bytes, *, tcp: bool = False) -> bytes | None:
        """The response to one query message, or None when nothing should be sent."""
        try:
            return self._handle(data, tcp)
        except (WireFormatError, ValueError, IndexError):  # pragma: no cover - defensive
            self.counters["dns_errors"] += 1
            return None

    def _handle(self, data: bytes, tcp: bool) -> bytes | None:
        try:
            h = dns.parse_header(data)
        except WireFormatError:
            self.counters["dns_garbage"] += 1
            return None
        if h.is_response:
            self.counters["dns_garbage"] += 1
            return None
        base = (h.opcode << dns.OPCODE_SHIFT) | (h.flags & dns.RD)
        if h.opcode != 0:
            self.counters["dns_notimp"] += 1
            return dns.build_response(h.id, base, dns.RCODE_NOTIMP, None)
        try:
            q = dns.parse_query(data)
        except WireFormatError:
            self.counters["dns_formerr"] += 1
            return dns.build_response(h.id, base, dns.RCODE_FORMERR, None)
        edns = q.edns_payload is not None
        limit = MAX_TCP if tcp else (q.edns_payload or dns.UDP_PLAIN)
        limit = min(limit, MAX_TCP if tcp else max(dns.UDP_PLAIN, dns.EDNS_PAYLOAD))
        question = q.question
        name = question.name
        in_zone = name == MESH_TLD or name.endswith("." + MESH_TLD)
        if not in_zone or question.qclass not in (dns.CLASS_IN, dns.CLASS_ANY):
            self.counters["dns_refused"] += 1
            return dns.build_response(h.id, base, dns.RCODE_REFUSED, question.raw, edns=edns,
                                      max_size=limit)
        flags = base | dns.AA
        soa, negative = self.soa_records()
        qtype = question.qtype
        if name == MESH_TLD and qtype in (dns.TYPE_SOA, dns.TYPE_NS, dns.TYPE_ANY):
            apex: list[dns.Answer] = []
            if qtype != dns.TYPE_NS:
                apex.append(soa)
            if qtype != dns.TYPE_SOA:
                apex.append(dns.Answer(dns.TYPE_NS, self.ttl, dns.encode_name(NS_NAME)))
            self.counters["dns_answered"] += 1
            return dns.build_response(h.id, flags, dns.RCODE_NOERROR, question.raw, apex,
                                      edns=edns, max_size=limit)
        host = self.table.get(name)
        if host is None and name == NS_NAME and (self.server.ipv4 or self.server.ipv6):
            host = self.server
        if host is None:
            if name in self._interior_names():
                self.counters["dns_nodata"] += 1
                return dns.build_response(h.id, flags, dns.RCODE_NOERROR, question.raw,
                                          authority=(negative,), edns=edns, max_size=limit)
            self.counters["dns_nxdomain"] += 1
            return dns.build_response(h.id, flags, dns.RCODE_NXDOMAIN, question.raw,
                                      authority=(negative,), edns=edns, max_size=limit)
        answers: list[dns.Answer] = []
        if qtype in (dns.TYPE_A, dns.TYPE_ANY):
            answers += [dns.Answer(dns.TYPE_A, self.ttl, a.packed) for a in host.ipv4]
        if qtype in (dns.TYPE_AAAA, dns.TYPE_ANY):
            answers += [dns.Answer(dns.TYPE_AAAA, self.ttl, a.packed) for a in host.ipv6]
        if not answers:
            self.counters["dns_nodata"] += 1
            return dns.build_response(h.id, flags, dns.RCODE_NOERROR, question.raw,
                                      authority=(negative,), edns=edns, max_size=limit)
        self.counters["dns_answered"] += 1
        return dns.build_response(h.id, flags, dns.RCODE_NOERROR, question.raw, answers,
                                  edns=edns, max_size=limit)
