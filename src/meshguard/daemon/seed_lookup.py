"""The lookups behind seed sources (docs/seeds.md): host names (A and AAAA, with their TTL)
and `--dns DOMAIN` TXT records, through dnspython's asyncio resolver.

The resolver reads /etc/resolv.conf, or the file named by $MESHGUARD_RESOLV_CONF. A host name
the resolver does not know (an /etc/hosts name, a resolver-less machine) is looked up with
getaddrinfo, whose answer has no TTL. Every failure is a LookupFailed with one line naming the
name, for the daemon's warning; nothing here is fatal.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Mapping

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver

from meshguard.discovery.txt_records import parse_txt_answer, txt_name
from meshguard.sansio import Endpoint

LIFETIME = 5.0  # seconds one lookup may take, retries included
RESOLV_CONF_ENV = "MESHGUARD_RESOLV_CONF"


class LookupFailed(Exception):
    """A seed lookup gave nothing usable; str() is the one-line reason."""


def make_resolver(env: Mapping[str, str]) -> dns.asyncresolver.Resolver | None:
    """dnspython's resolver, or None when there is no usable resolver configuration."""
    path = env.get(RESOLV_CONF_ENV) or "/etc/resolv.conf"
    try:
        r = dns.asyncresolver.Resolver(filename=path)
    except (dns.resolver.NoResolverConfiguration, OSError):
        return None
    r.lifetime = LIFETIME
    return r


def _why(exc: Exception) -> str:
    if isinstance(exc, dns.resolver.NXDOMAIN):
        return "no such name (NXDOMAIN)"
    if isinstance(exc, dns.resolver.NoAnswer):
        return "empty answer"
    if isinstance(exc, dns.exception.Timeout):
        return "no answer from the resolver (timeout)"
    if isinstance(exc, dns.resolver.NoNameservers):
        return "every name server failed"
    return str(exc) or type(exc).__name__


async def lookup_host(resolver: dns.asyncresolver.Resolver | None, host: str, port: int
                      ) -> tuple[list[Endpoint], float | None]:
    """The addresses of a seed host name (IPv4 first) and the lowest TTL of the answers."""
    found: list[Endpoint] = []
    ttls: list[float] = []
    errors: list[Exception] = []
    if resolver is not None:
        for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            try:
                ans = await resolver.resolve(host, rdtype, search=True)
            except (dns.exception.DNSException, OSError) as exc:
                errors.append(exc)
                continue
            ttls.append(float(ans.rrset.ttl) if ans.rrset is not None else 0.0)
            found.extend((r.address, port) for r in ans)
        if found:
            return found, min(ttls)
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM), LIFETIME)
    except (OSError, TimeoutError) as exc:
        why = _why(errors[0]) if errors else (getattr(exc, "strerror", None) or "timeout")
        raise LookupFailed(f"cannot resolve seed {host}: {why}") from None
    infos.sort(key=lambda i: 0 if i[0] == socket.AF_INET else 1)
    for info in infos:
        ep = (str(info[4][0]).split("%")[0], port)
        if ep not in found:
            found.append(ep)
    return found, None


async def lookup_txt(resolver: dns.asyncresolver.Resolver | None, domain: str
                     ) -> tuple[list[Endpoint], float, list[str]]:
    """The seeds listed as `meshguard=IP:PORT` TXT records at `_meshguard._udp.DOMAIN`, the
    answer's TTL and one warning per malformed record."""
    name = txt_name(domain)
    if resolver is None:
        raise LookupFailed(f"--dns {domain}: no resolver configured (/etc/resolv.conf)")
    try:
        ans = await resolver.resolve(name, dns.rdatatype.TXT, search=False)
    except (dns.exception.DNSException, OSError) as exc:
        raise LookupFailed(f"--dns {domain}: TXT {name}: {_why(exc)}") from None
    strings = [list(r.strings) for r in ans]
    seeds, problems = parse_txt_answer(strings)
    ttl = float(ans.rrset.ttl) if ans.rrset is not None else 0.0
    if not seeds:
        detail = "; ".join(problems) if problems else "no meshguard=IP:PORT record"
        raise LookupFailed(f"--dns {domain}: TXT {name}: {detail}")
    return seeds, ttl, [f"--dns {domain}: {p}" for p in problems]
