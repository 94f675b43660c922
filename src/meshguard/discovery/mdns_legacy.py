"""Answers the original Zig meshguard's mDNS seed query (sans-IO; docs/seeds.md#mdns).

The original's `--mdns` sends one "legacy unicast" query (RFC 6762 section 6.7: from an
ephemeral port, not 5353) to 224.0.0.251:5353 for TXT `_meshguard._udp.local` and takes every
`meshguard=IP:PORT` string of the answers as a seed. python-zeroconf answers DNS-SD questions
(PTR for the service type, SRV/TXT for each instance) but not that one, so the daemon answers
it here: unicast, to the port it came from, with this node's seed record (TTL 10 s, as that
section asks).

Only queries sent to the multicast group are answered (the destination address is checked, so
a unicast query from off the link with a forged source draws nothing), queries from port 5353
are zeroconf's to answer, and answers are rate limited per source and overall. The answer is
at most as large as the question plus one TXT record, so it amplifies nothing worth having.
"""

from __future__ import annotations

from meshguard.errors import WireFormatError
from meshguard.nat.budget import SourceBudget
from meshguard.sansio import Endpoint
from meshguard.wire.dns import (
    AA,
    CLASS_ANY,
    CLASS_IN,
    TYPE_ANY,
    Answer,
    build_response,
    parse_query,
)

MDNS_GROUP = "224.0.0.251"
MDNS_PORT = 5353
TYPE_TXT = 16
LEGACY_TTL = 10
QUESTION = "_meshguard._udp.local"
MAX_QUERY = 512


def txt_rdata(strings: list[str]) -> bytes:
    out = b""
    for s in strings:
        raw = s.encode("ascii")[:255]
        out += bytes([len(raw)]) + raw
    return out


class LegacyResponder:
    def __init__(self, strings: list[str]) -> None:
        self._rdata = txt_rdata(strings)
        self._budget = SourceBudget(per_source_rate=2.0, per_source_burst=4.0,
                                    global_rate=20.0, global_burst=40.0, max_sources=1024)
        self.counters = {"mdns_legacy_answered": 0, "mdns_legacy_ignored": 0,
                         "mdns_legacy_malformed": 0, "mdns_legacy_limited": 0}

    def set_strings(self, strings: list[str]) -> None:
        self._rdata = txt_rdata(strings)

    def answer(self, now: float, data: bytes, src: Endpoint, to_group: bool) -> bytes | None:
        """The unicast answer to send back to `src`, or None."""
        c = self.counters
        if not to_group or src[1] == MDNS_PORT or not self._rdata:
            c["mdns_legacy_ignored"] += 1
            return None
        if len(data) > MAX_QUERY:
            c["mdns_legacy_malformed"] += 1
            return None
        try:
            q = parse_query(data)
        except WireFormatError:
            c["mdns_legacy_malformed"] += 1
            return None
        qu = q.question
        if (q.header.is_response or q.header.opcode != 0 or qu.name != QUESTION
                or qu.qtype not in (TYPE_TXT, TYPE_ANY)
                or qu.qclass & 0x7FFF not in (CLASS_IN, CLASS_ANY)):
            c["mdns_legacy_ignored"] += 1
            return None
        if self._budget.take(now, src[0]) is not None:
            c["mdns_legacy_limited"] += 1
            return None
        c["mdns_legacy_answered"] += 1
        return build_response(q.header.id, AA, 0, qu.raw,
                              [Answer(TYPE_TXT, LEGACY_TTL, self._rdata)])
