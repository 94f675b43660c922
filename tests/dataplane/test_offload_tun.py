"""The offload code against the real kernel: a TUN with IFF_VNET_HDR and TSO in a fresh network
namespace, a kernel TCP socket on one side and a minimal userspace TCP peer (built from the
packets of test_offload.py) on the other.

Kernel -> userspace: the kernel's TSO super-packets are split with `split_tun_read`; every
segment must verify and the byte stream must arrive intact. Userspace -> kernel: segments are
merged with `coalesce` and written as GSO packets; the kernel socket must receive the bytes.

The namespace part runs this file as a script under `ip netns exec` (Python 3.11 has no setns).
"""

from __future__ import annotations

import os
import secrets
import select
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from meshguard.dataplane.offload import checksums_ok, coalesce
from meshguard.dataplane.vnet import (
    VIRTIO_NET_HDR_GSO_NONE,
    ZERO_HDR,
    TunOffloadError,
    VnetTunIO,
    enable_offloads,
    open_tun,
)

CAN_NETNS = os.geteuid() == 0 and os.path.exists("/dev/net/tun")


def test_enable_offloads_rejects_a_non_tun_fd() -> None:
    fd = os.open("/dev/null", os.O_RDWR)
    try:
        with pytest.raises(TunOffloadError):
            enable_offloads(fd)
    finally:
        os.close(fd)


@pytest.mark.netns
@pytest.mark.skipif(not CAN_NETNS, reason="needs root and /dev/net/tun")
@pytest.mark.parametrize(("family", "tso"), [("v4", "tso"), ("v6", "tso"), ("v4", "none")])
def test_kernel_tso_and_gso_write_through_a_vnet_tun(family: str, tso: str) -> None:
    """With "none", TUNSETOFFLOAD is 0: reads are plain packets, GSO writes still work."""
    netns = f"mgot{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        r = subprocess.run(
            ["ip", "netns", "exec", netns, sys.executable, __file__, "--inner", family, tso],
            capture_output=True, text=True, timeout=90,
        )
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    words = r.stdout.split()
    assert words[0] == "OK", r.stdout
    gso_reads, super_writes = int(words[1]), int(words[2])
    if tso == "tso":
        assert gso_reads > 0  # the kernel really handed over super-packets
    else:
        assert gso_reads == 0
    assert super_writes == 3


# -- the part that runs inside the namespace ------------------------------------------------


def _inner(family: str, tso: str) -> None:  # pragma: no cover - runs in a subprocess
    # run as a script (not as part of the tests package): imports are made here, from this
    # file's directory, once the child is inside the namespace
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from helpers import tcp_packet

    from meshguard.dataplane.offload import TCP_ACK, TCP_PSH, TCP_SYN

    v6 = family == "v6"
    fam = socket.AF_INET6 if v6 else socket.AF_INET
    local, peer = ("fd00:9::1", "fd00:9::2") if v6 else ("10.9.0.1", "10.9.0.2")
    lb, pb = socket.inet_pton(fam, local), socket.inet_pton(fam, peer)
    name = "mgtun0"
    fd = open_tun(name)
    if tso == "tso":
        state = enable_offloads(fd)
        assert state.vnet_hdr and state.csum and state.tso, state
    else:
        state = enable_offloads(fd, want=0)
        assert state.vnet_hdr and state.offloads == 0, state
    plain = open_tun("mgtun1", vnet_hdr=False)
    assert not enable_offloads(plain).vnet_hdr
    os.close(plain)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    if v6:
        subprocess.run(["ip", "-6", "addr", "add", f"{local}/64", "dev", name, "nodad"], check=True)
    else:
        subprocess.run(["ip", "addr", "add", f"{local}/24", "dev", name], check=True)
    subprocess.run(["ip", "link", "set", name, "mtu", "1420", "up"], check=True)
    os.set_blocking(fd, False)
    srv = socket.socket(fam, socket.SOCK_STREAM)
    srv.bind((local, 5000))
    srv.listen()
    srv.settimeout(10)
    sport, dport = 40000, 5000

    def pkt(seq: int, payload: bytes, flags: int, ack: int, opts: bytes = b"") -> bytes:
        return tcp_packet(pb, lb, seq, payload, flags=flags, sport=sport, dport=dport, ack=ack,
                          window=65535, options=opts)

    io = VnetTunIO(fd, state)

    def read_tcp(timeout: float = 5.0) -> list[bytes]:
        out: list[bytes] = []
        r, _, _ = select.select([fd], [], [], timeout)
        if not r:
            return out
        while True:
            pkts = io.read_batch(8)
            if not pkts:
                return out
            for s in pkts:
                l4 = 40 if v6 else 20
                nh = s[6] if v6 else s[9]
                if nh != 6 or struct.unpack_from("!H", s, l4 + 2)[0] != sport:
                    continue
                assert checksums_ok(s), s[:60].hex()
                out.append(s)

    def fields(s: bytes) -> tuple[int, int, bytes]:
        l4 = 40 if v6 else 20
        hl = l4 + (s[l4 + 12] >> 4) * 4
        return struct.unpack_from("!I", s, l4 + 4)[0], s[l4 + 13], s[hl:]

    # handshake
    os.write(fd, ZERO_HDR + pkt(1000, b"", TCP_SYN, 0, b"\x02\x04" + struct.pack("!H", 1380)))
    deadline = time.monotonic() + 10
    kseq = None
    while kseq is None and time.monotonic() < deadline:
        for s in read_tcp():
            seq, flags, _ = fields(s)
            if flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK:
                kseq = (seq + 1) & 0xFFFFFFFF
    assert kseq is not None, "no SYN-ACK"
    os.write(fd, ZERO_HDR + pkt(1001, b"", TCP_ACK, kseq))
    conn, _ = srv.accept()
    conn.settimeout(10)

    # kernel -> userspace: TSO super-packets split by split_tun_read
    data = os.urandom(400_000)
    sender = threading.Thread(target=conn.sendall, args=(data,))
    sender.start()
    got = bytearray()
    expected = kseq
    deadline = time.monotonic() + 30
    while len(got) < len(data) and time.monotonic() < deadline:
        for s in read_tcp(1.0):
            seq, _, payload = fields(s)
            if seq == expected and payload:
                got += payload
                expected = (expected + len(payload)) & 0xFFFFFFFF
        os.write(fd, ZERO_HDR + pkt(1001, b"", TCP_ACK, expected))
    sender.join(10)
    assert bytes(got) == data, f"received {len(got)} of {len(data)} bytes"

    # userspace -> kernel: segments coalesced into GSO writes
    seq = 1001
    super_writes = 0
    for _ in range(3):
        chunk = os.urandom(30_000)
        segs = []
        for off in range(0, len(chunk), 1380):
            part = chunk[off : off + 1380]
            last = off + 1380 >= len(chunk)
            segs.append(pkt(seq + off, part, TCP_ACK | (TCP_PSH if last else 0), expected))
        out = coalesce(segs)
        assert len(out) == 1 and out[0][1] != VIRTIO_NET_HDR_GSO_NONE
        assert io.write_batch(segs) == 1
        super_writes += 1
        recv = bytearray()
        while len(recv) < len(chunk):
            b = conn.recv(65536)
            assert b, "connection closed"
            recv += b
        assert bytes(recv) == chunk
        seq += len(chunk)
        read_tcp(0)  # drain the kernel's ACKs
    assert io.stats.gso_writes == super_writes and io.stats.bad_reads == 0, io.stats
    assert io.stats.write_errors == 0, io.stats
    print("OK", io.stats.gso_reads, super_writes)


if __name__ == "__main__":  # pragma: no cover
    if len(sys.argv) == 4 and sys.argv[1] == "--inner":
        _inner(sys.argv[2], sys.argv[3])
