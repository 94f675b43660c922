"""UPnP-IGD port mapping through miniupnpc (blocking: the port-mapping task runs it in a
thread). One `IgdClient` per daemon: the gateway found by the first discovery is kept for
renewals and the deletion at shutdown.

Checks on what the LAN says: the IGD must sit at the default gateway's address (a stray or
hostile SSDP responder elsewhere on the LAN is not asked), and its external address is
checked by the sans-IO core (nat/portmap.py) like any other grant.
"""

from __future__ import annotations

import logging
import urllib.parse
from typing import Any

from meshguard.nat.portmap import UpnpCall, UpnpResult

log = logging.getLogger("meshguard.portmap")

DISCOVER_MS = 2000
DESCRIPTION = "meshguard"
ONLY_PERMANENT = "OnlyPermanentLeasesSupported"  # UPnP error 725
CONFLICT = "ConflictInMappingEntry"  # UPnP error 718 (a refusal, 606, is not retried)


class IgdClient:
    def __init__(self, gateway: str, discover_ms: int = DISCOVER_MS) -> None:
        self.gateway = gateway
        self.discover_ms = discover_ms
        self._upnp: Any = None

    def _connect(self) -> Any:
        if self._upnp is not None:
            return self._upnp
        import miniupnpc  # the C extension loads only where UPnP is tried

        u = miniupnpc.UPnP()
        u.discoverdelay = self.discover_ms
        if u.discover() == 0:
            raise OSError("no UPnP gateway answered")
        control = str(u.selectigd())
        host = urllib.parse.urlsplit(control).hostname
        if host != self.gateway:
            raise OSError(f"the IGD at {host} is not the default gateway {self.gateway}")
        self._upnp = u
        return u

    def call(self, c: UpnpCall) -> UpnpResult:
        """Run one call; every failure is an UpnpResult with the reason (never raises)."""
        try:
            u = self._connect()
        except Exception as exc:
            return UpnpResult(False, error=str(exc) or type(exc).__name__)
        try:
            if c.op == "unmap":
                u.deleteportmapping(c.external_port, "UDP")
                return UpnpResult(True)
            ext_ip = str(u.externalipaddress() or "")
            lan = str(u.lanaddr)
            lease = c.lease
            try:
                u.addportmapping(c.external_port, "UDP", lan, c.internal_port, DESCRIPTION,
                                 "", lease)
                port = c.external_port
            except Exception as exc:  # miniupnpc raises Exception("<UPnP error text>")
                if ONLY_PERMANENT in str(exc):
                    lease = 0
                    u.addportmapping(c.external_port, "UDP", lan, c.internal_port,
                                     DESCRIPTION, "", 0)
                    port = c.external_port
                elif CONFLICT in str(exc):  # the port is taken: let the IGD (v2) pick one
                    log.debug("UPnP: port %d refused (%s); asking for any port",
                              c.external_port, exc)
                    port = int(u.addanyportmapping(c.external_port, "UDP", lan,
                                                   c.internal_port, DESCRIPTION, "", lease))
                else:
                    raise
            return UpnpResult(True, (ext_ip, port), lease)
        except Exception as exc:
            if c.op == "map":  # ask discovery again next time (the router may have moved)
                self._upnp = None
            return UpnpResult(False, error=str(exc) or type(exc).__name__, refused=True)
