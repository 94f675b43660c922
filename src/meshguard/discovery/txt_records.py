"""The seed TXT record, `meshguard=IP:PORT`, shared with the original Zig meshguard.

The original publishes and reads seeds as TXT strings `meshguard=1.2.3.4:51821` at
`_meshguard._udp.DOMAIN` (`--dns DOMAIN`) and answers the same string for mDNS. IPv6 seeds are
written `meshguard=[fd00::1]:51821`. Every string comes from the network: anything else is an
error message for the caller to warn about, never an exception.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from meshguard.sansio import Endpoint

TXT_PREFIX = "meshguard="
SERVICE_LABEL = "_meshguard._udp"  # the DNS-SD service of both DNS TXT seeds and mDNS
MAX_TXT = 255  # one character-string of a TXT record


def txt_name(domain: str) -> str:
    """Where `--dns DOMAIN` looks: `_meshguard._udp.DOMAIN`."""
    return f"{SERVICE_LABEL}.{domain.strip().rstrip('.')}"


@dataclass(frozen=True)
class TxtSeed:
    """One parsed record: the endpoint, or why the string is not one."""

    text: str
    endpoint: Endpoint | None
    error: str | None = None


def parse_meshguard_txt(raw: bytes | str) -> TxtSeed:
    """`meshguard=IPv4:PORT` or `meshguard=[IPv6]:PORT` -> an endpoint. A TXT string of some
    other application (no `meshguard=` prefix) is not an error but no seed either."""
    if isinstance(raw, bytes):
        if len(raw) > MAX_TXT:
            return TxtSeed(repr(raw[:40]), None, "longer than a TXT string")
        text = raw.decode("utf-8", "replace")
    else:
        text = raw
    shown = text if len(text) <= 80 else text[:77] + "..."
    if not text.startswith(TXT_PREFIX):
        return TxtSeed(shown, None, None)
    rest = text[len(TXT_PREFIX):]
    if rest.startswith("["):
        host, sep, tail = rest[1:].partition("]")
        if not sep or not tail.startswith(":"):
            return TxtSeed(shown, None, "an IPv6 seed is written [ADDRESS]:PORT")
        port_s = tail[1:]
        want = 6
    else:
        host, sep, port_s = rest.rpartition(":")
        if not sep:
            return TxtSeed(shown, None, "no :PORT")
        want = 4
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return TxtSeed(shown, None, f"{host!r} is not an IP address")
    if ip.version != want:
        return TxtSeed(shown, None, "an IPv6 seed is written [ADDRESS]:PORT")
    if not port_s.isdigit() or not 0 < int(port_s) < 65536:
        return TxtSeed(shown, None, f"bad port {port_s!r}")
    if ip.is_multicast or ip.is_unspecified:
        return TxtSeed(shown, None, f"{ip} is not a unicast address")
    return TxtSeed(shown, (str(ip), int(port_s)))


def format_meshguard_txt(ep: Endpoint) -> str:
    host, port = ep
    return f"{TXT_PREFIX}[{host}]:{port}" if ":" in host else f"{TXT_PREFIX}{host}:{port}"


def parse_txt_answer(strings: list[list[bytes]]) -> tuple[list[Endpoint], list[str]]:
    """The TXT records of one answer (each a list of character-strings, joined as RFC 7208
    joins them) -> the seeds and one warning per malformed `meshguard=` record."""
    seeds: list[Endpoint] = []
    problems: list[str] = []
    for parts in strings:
        got = parse_meshguard_txt(b"".join(parts)[:MAX_TXT + 1])
        if got.endpoint is not None:
            if got.endpoint not in seeds:
                seeds.append(got.endpoint)
        elif got.error is not None:
            problems.append(f"malformed record {got.text!r}: {got.error}")
    return seeds, problems
