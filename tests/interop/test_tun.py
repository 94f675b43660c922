"""TunDevice against the real kernel, inside a throwaway namespace."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator

import pytest

from meshguard.testing.netns import Namespace, netns_skip_reason

pytestmark = pytest.mark.netns

SCRIPT = textwrap.dedent(
    """
    import os, select, socket, struct, sys
    from meshguard.dataplane.tun import TunDevice, TunError

    def csum(b):
        s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
        s = (s >> 16) + (s & 0xFFFF); s += s >> 16
        return (~s) & 0xFFFF

    tun = TunDevice.open("mgtun0", mtu=1400)
    tun.add_address("10.9.0.1/24"); tun.add_address("fd09::1/64"); tun.up()
    assert tun.mtu() == 1400
    while tun.read() is not None:  # non-blocking: drains (IPv6 RS/MLD) then None
        pass
    try:
        TunDevice.open("mgtun0")
        raise SystemExit("second open of the same name succeeded")
    except TunError as e:
        print("dup:", e)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("10.9.0.1", 4000)); s.settimeout(2)
    s.sendto(b"hello-tun", ("10.9.0.2", 9))
    pkt = b""
    while not pkt or pkt[0] >> 4 != 4:
        assert select.select([tun.fd], [], [], 2)[0]
        pkt = tun.read()
    assert pkt[0] >> 4 == 4 and pkt[16:20] == socket.inet_aton("10.9.0.2"), pkt
    assert pkt.endswith(b"hello-tun")
    # answer with a hand-built IPv4/UDP packet from 10.9.0.2:9 (UDP checksum 0 = none)
    payload = b"reply!"
    udp = struct.pack("!HHHH", 9, 4000, 8 + len(payload), 0) + payload
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                      socket.inet_aton("10.9.0.2"), socket.inet_aton("10.9.0.1"))
    hdr = hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:]
    tun.write(hdr + udp)
    data, src = s.recvfrom(100)
    assert data == payload and src == ("10.9.0.2", 9), (data, src)
    tun.close(); tun.close()
    assert not os.path.exists("/sys/class/net/mgtun0")
    print("ok")
    """
)


@pytest.fixture
def ns() -> Iterator[Namespace]:
    reason = netns_skip_reason()
    if reason:
        pytest.skip(reason)
    with Namespace.create("mgtun") as n:
        yield n


def test_tun_roundtrip_in_namespace(ns: Namespace) -> None:
    res = ns.run([sys.executable, "-c", SCRIPT], check=False)
    assert res.returncode == 0, res.stderr
    assert "dup: interface mgtun0 already exists" in res.stdout
    assert res.stdout.strip().endswith("ok")


def test_tun_bad_name_is_a_clear_error() -> None:
    from meshguard.dataplane.tun import TunDevice, TunError

    with pytest.raises(TunError, match="invalid interface name"):
        TunDevice.open("x" * 16)
