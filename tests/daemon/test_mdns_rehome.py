"""The mDNS service after an underlay change (daemon/mdns_service.py `moved`), without root:
python-zeroconf on loopback addresses. The service is withdrawn from the old address and
advertised, with its TXT, on the new one; the same addresses again change nothing."""

from __future__ import annotations

import asyncio

from zeroconf import IPVersion

from meshguard.clock import SystemClock
from meshguard.daemon.mdns_service import MdnsService

from .helpers import until

PORT = 51999
KEY = bytes(range(32))



def test_a_moved_node_withdraws_the_old_address_and_advertises_the_new() -> None:
    async def run() -> tuple[list[str], dict[str, str | None], bool, bool, list[str]]:
        svc = MdnsService(SystemClock(), KEY, "alpha", [("127.0.0.1", PORT)], lambda _e: None)
        try:
            await svc.start()
            await until(lambda: svc.registered_as is not None)
            old = svc._azc
            assert old is not None
            name = svc.registered_as
            assert name is not None
            svc.moved(("127.0.0.1",), ("127.0.0.2", "fd00::2"))
            await until(lambda: svc._azc is not old and svc.registered_as is not None)
            new = svc._azc
            assert new is not None
            info = new.zeroconf.registry.async_get_info_name(svc.registered_as or "")
            assert info is not None
            withdrawn = old.zeroconf.registry.async_get_info_name(name) is None
            props = {k.decode(): (v.decode() if v is not None else None)
                     for k, v in info.properties.items()}
            again = svc._azc
            await svc.readvertise(("127.0.0.2",))  # the same IPv4 address: nothing to do
            return (info.parsed_addresses(IPVersion.V4Only), props, withdrawn,
                    svc._azc is again, [h for h, _ in svc.endpoints])
        finally:
            await svc.close()

    addresses, props, withdrawn, kept, endpoints = asyncio.run(run())
    assert addresses == ["127.0.0.2"]
    assert props["meshguard"] == f"127.0.0.2:{PORT}"
    assert withdrawn
    assert kept
    assert endpoints == ["127.0.0.2"]
