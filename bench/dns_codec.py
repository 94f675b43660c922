#!/usr/bin/env python3
"""Queries per second of the mesh resolver: its hand-written codec (wire/dns.py) against the
same answers built with dnspython, to decide whether dnspython can replace the codec.

    PYTHONPATH=src .venv/bin/python bench/dns_codec.py [--repeat 5] [--number 20000]

Both sides take query bytes and return response bytes with the same semantics (dns/resolver.py:
AA, REFUSED outside `mesh`, NXDOMAIN/NODATA with the zone's SOA in the authority section, EDNS0,
truncation, silence for garbage); the dnspython side keeps a prebuilt RRset per name and type,
the fastest way to use it. Cases: an A answer, an AAAA answer, NXDOMAIN (with SOA), and random
garbage. Prints the best-of-N rate of each and the ratio dnspython/hand-written (>= 0.9 would
mean dnspython is fast enough to take over). The machine is shared: rates are noisy, ratios
less so. The decision and the numbers are in docs/mesh-dns-and-org-revocation.md#the-codec.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import timeit
from collections.abc import Callable

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.version

from meshguard.dns.resolver import (
    NS_NAME,
    SOA_EXPIRE,
    SOA_REFRESH,
    SOA_RETRY,
    SOA_RNAME,
    HostAddresses,
    Resolver,
    build_table,
)
from meshguard.wire import dns as wire

Handler = Callable[[bytes], bytes | None]


def table(n: int = 50) -> dict[str, HostAddresses]:
    return build_table(
        (f"node-{i}.abc123.mesh", HostAddresses((ipaddress.IPv4Address(f"10.99.1.{i + 1}"),),
                                                (ipaddress.IPv6Address(f"fd99:6d67::{i + 1}"),)))
        for i in range(n))


class DnspythonResolver:
    """The resolver's answers, parsed and built by dnspython."""

    def __init__(self, names: dict[str, HostAddresses], ttl: int = 30, negative: int = 10,
                 serial: int = 1) -> None:
        self.ttl = ttl
        self.apex = dns.name.from_text("mesh.")
        self.rrsets: dict[tuple[dns.name.Name, int], dns.rrset.RRset] = {}
        interior = {self.apex}
        for key, host in names.items():
            n = dns.name.from_text(key + ".")
            for rdtype, addrs in ((dns.rdatatype.A, host.ipv4),
                                  (dns.rdatatype.AAAA, host.ipv6)):
                if addrs:
                    self.rrsets[(n, rdtype)] = dns.rrset.from_text_list(
                        n, ttl, dns.rdataclass.IN, rdtype, [str(a) for a in addrs])
            interior.update(n.parent() for _ in [0] if len(n) > 3)
        self.names = {dns.name.from_text(k + ".") for k in names}
        self.interior = interior
        soa = dns.rdata.from_text(
            dns.rdataclass.IN, dns.rdatatype.SOA,
            f"{NS_NAME}. {SOA_RNAME}. {serial} {SOA_REFRESH} {SOA_RETRY} {SOA_EXPIRE} {negative}")
        self.negative = dns.rrset.from_rdata(self.apex, min(ttl, negative), soa)

    def handle(self, data: bytes, tcp: bool = False) -> bytes | None:
        try:
            q = dns.message.from_wire(data)
        except dns.message.ShortHeader:
            return None
        except Exception:  # every parser error is garbage
            if len(data) < 12 or data[2] & 0x80:
                return None
            return wire.build_response(int.from_bytes(data[:2], "big"),
                                       (data[2] << 8) & 0x7900, wire.RCODE_FORMERR, None)
        if q.flags & dns.flags.QR:
            return None
        if q.opcode() != dns.opcode.QUERY or len(q.question) != 1:
            r = dns.message.make_response(q)
            r.question = []
            r.set_rcode(dns.rcode.NOTIMP if q.opcode() else dns.rcode.FORMERR)
            return r.to_wire()
        r = dns.message.make_response(q)
        r.flags &= ~dns.flags.RA
        limit = 65535 if tcp else min(max(512, q.payload if q.edns >= 0 else 512), 1232)
        (question,) = q.question
        qname = question.name
        if not qname.is_subdomain(self.apex):
            r.set_rcode(dns.rcode.REFUSED)
            return r.to_wire(max_size=limit)
        r.flags |= dns.flags.AA
        qname = qname.canonicalize()
        if qname not in self.names:
            if qname not in self.interior:
                r.set_rcode(dns.rcode.NXDOMAIN)
            r.authority.append(self.negative)
            return r.to_wire(max_size=limit)
        types = ((dns.rdatatype.A, dns.rdatatype.AAAA) if question.rdtype == dns.rdatatype.ANY
                 else (question.rdtype,))
        for t in types:
            rrset = self.rrsets.get((qname, t))
            if rrset is not None:
                r.answer.append(rrset)
        if not r.answer:
            r.authority.append(self.negative)
        try:
            return r.to_wire(max_size=limit)
        except dns.exception.TooBig:
            r.answer, r.authority = [], []
            r.flags |= dns.flags.TC
            return r.to_wire()


def cases() -> dict[str, list[bytes]]:
    rng = os.urandom
    return {
        "A": [wire.build_query(i, f"node-{i % 50}.abc123.mesh", wire.TYPE_A) for i in range(64)],
        "AAAA": [wire.build_query(i, f"node-{i % 50}.abc123.mesh", wire.TYPE_AAAA,
                                  edns_payload=1232) for i in range(64)],
        "NXDOMAIN": [wire.build_query(i, f"gone-{i}.abc123.mesh", wire.TYPE_A)
                     for i in range(64)],
        "garbage": [rng(12 + i % 60) for i in range(64)],
    }


def rates(handlers: list[Handler], queries: list[bytes], repeat: int,
          number: int) -> list[float]:
    """Best-of-`repeat` queries per second of each handler; the handlers take turns in every
    round, so a busy moment of the shared machine hits both sides alike."""
    loops = max(1, number // len(queries))
    best = [float("inf")] * len(handlers)
    for _ in range(repeat):
        for i, handle in enumerate(handlers):
            def run(handle: Handler = handle) -> None:
                for q in queries:
                    handle(q)

            best[i] = min(best[i], timeit.timeit(run, number=loops))
    return [loops * len(queries) / b for b in best]


def same_answers(ours: Handler, theirs: Handler, queries: list[bytes]) -> None:
    """Both sides agree on rcode, flags and record counts (the comparison is fair)."""
    for q in queries:
        a, b = ours(q), theirs(q)
        assert (a is None) == (b is None), q
        if a is not None and b is not None:
            assert wire.parse_header(a) == wire.parse_header(b), (q, a, b)


def main() -> None:
    ap = argparse.ArgumentParser(description="mesh resolver: hand-written codec vs dnspython")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--number", type=int, default=20000, help="queries per round")
    args = ap.parse_args()
    names = table()
    ours = Resolver(names)
    theirs = DnspythonResolver(names, serial=ours.serial)
    all_cases = cases()
    for label, qs in all_cases.items():
        if label != "garbage":  # garbage: both answer nothing or FORMERR, not always alike
            same_answers(ours.handle, theirs.handle, qs)
    print(f"dnspython {dns.version.version}; best of {args.repeat} rounds of "
          f"{args.number} queries")
    print(f"{'case':<10} {'hand-written q/s':>17} {'dnspython q/s':>14} {'ratio':>6}")
    for label, qs in all_cases.items():
        mine, lib = rates([ours.handle, theirs.handle], qs, args.repeat, args.number)
        print(f"{label:<10} {mine:>17,.0f} {lib:>14,.0f} {lib / mine:>6.2f}")


if __name__ == "__main__":
    main()
