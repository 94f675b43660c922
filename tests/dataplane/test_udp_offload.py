"""UDP GSO send and GRO receive, on real loopback sockets (IPv4 and IPv6)."""

from __future__ import annotations

import os
import select
import socket
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshguard.dataplane.udp_offload import (
    GroReceiver,
    UdpBatchSender,
    enable_gro,
    gso_runs,
    probe_gso,
    set_buffer_sizes,
    setup_socket,
    split_gro,
)

from .helpers import kernel_has_gro, kernel_has_gso

FAMILIES = [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")]


def _has_v6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.fixture(params=FAMILIES, ids=["v4", "v6"])
def pair(request: pytest.FixtureRequest) -> Iterator[tuple[socket.socket, socket.socket]]:
    fam, host = request.param
    if fam == socket.AF_INET6 and not _has_v6():
        pytest.skip("no IPv6 loopback")
    a = socket.socket(fam, socket.SOCK_DGRAM)
    b = socket.socket(fam, socket.SOCK_DGRAM)
    try:
        a.bind((host, 0))
        b.bind((host, 0))
        set_buffer_sizes(b, 8 << 20)
        b.setblocking(False)
        yield a, b
    finally:
        a.close()
        b.close()


def drain(recv: GroReceiver, want: int, timeout: float = 5.0) -> tuple[list[bytes], int]:
    """Read until `want` datagrams arrived (or the deadline); returns them and the read count."""
    got: list[bytes] = []
    reads = 0
    while len(got) < want:
        r, _, _ = select.select([recv.sock], [], [], timeout)
        if not r:
            break
        try:
            dgrams, _addr = recv.recv()
        except BlockingIOError:
            continue
        reads += 1
        got.extend(bytes(d) for d in dgrams)
    return got, reads


def test_gso_runs() -> None:
    assert gso_runs([]) == []
    assert gso_runs([100, 100, 100, 40, 100]) == [(0, 4), (4, 5)]
    assert gso_runs([100, 120, 120]) == [(0, 1), (1, 3)]
    assert gso_runs([50] * 10, max_segments=4) == [(0, 4), (4, 8), (8, 10)]
    assert gso_runs([1000] * 70, max_bytes=10000) == [(i, i + 10) for i in range(0, 70, 10)]
    assert gso_runs([10, 0, 10]) == [(0, 1), (1, 2), (2, 3)]


@given(st.lists(st.integers(1, 1500), max_size=200))
def test_gso_runs_properties(sizes: list[int]) -> None:
    runs = gso_runs(sizes)
    assert [k for i, j in runs for k in range(i, j)] == list(range(len(sizes)))
    for i, j in runs:
        run = sizes[i:j]
        assert all(s == run[0] for s in run[:-1]) and run[-1] <= run[0]
        assert len(run) <= 64 and (len(run) == 1 or sum(run) <= 65000)


def test_split_gro() -> None:
    mv = memoryview(bytes(range(250)))
    parts = split_gro(mv, 100)
    assert [bytes(p) for p in parts] == [bytes(range(100)), bytes(range(100, 200)),
                                         bytes(range(200, 250))]
    assert split_gro(mv, 0) == [mv] and split_gro(mv, 250) == [mv]


def test_gso_send_arrives_as_separate_datagrams(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    gso = kernel_has_gso(a.family)
    assert probe_gso(a) == gso
    sender = UdpBatchSender(a)
    dgrams = [os.urandom(1452) for _ in range(20)] + [os.urandom(300)] + [os.urandom(77)] * 3
    assert sender.send(dgrams, b.getsockname()) == len(dgrams)
    assert sender.gso == gso
    assert sender.stats_syscalls < len(dgrams) if gso else sender.stats_syscalls == len(dgrams)
    recv = GroReceiver(b, enable=False)
    got, reads = drain(recv, len(dgrams))
    assert got == dgrams
    assert reads == len(dgrams)  # no GRO: one datagram per read


def test_gro_receive_splits_gso_sends(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    recv = GroReceiver(b)
    gro, gso = kernel_has_gro(b.family), kernel_has_gso(a.family)
    assert (recv.gro, probe_gso(a)) == (gro, gso)
    sender = UdpBatchSender(a)
    batches = [[os.urandom(1200) for _ in range(30)] + [os.urandom(17)],
               [os.urandom(64) for _ in range(64)],
               [os.urandom(500)]]
    for batch in batches:
        assert sender.send(batch, b.getsockname()) == len(batch)
    want = [d for batch in batches for d in batch]
    got, reads = drain(recv, len(want))
    assert got == want
    if gro and gso:
        assert reads < len(want)  # at least one read carried several datagrams
    else:
        assert reads == len(want)


def test_plain_fallback_and_connected_socket(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    a.connect(b.getsockname())
    sender = UdpBatchSender(a, gso=False)
    dgrams = [os.urandom(n) for n in (10, 1400, 1400, 5)]
    assert sender.send(dgrams) == 4 and sender.stats_syscalls == 4
    recv = GroReceiver(b)
    got, _ = drain(recv, 4)
    assert got == dgrams


def test_send_to_closed_port_counts_drops(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    dest = b.getsockname()
    b.close()
    a.connect(dest)
    a.setblocking(False)
    sender = UdpBatchSender(a)
    total = 0
    # The first send triggers an ICMP port unreachable; later sends on the connected socket
    # see ECONNREFUSED, which must be counted, not raised.
    for _ in range(5):
        total += sender.send([b"x" * 100] * 3)
    assert total + sender.stats_dropped == 15
    assert sender.stats_dropped > 0


def test_setup_socket_reports_support() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        sup = setup_socket(s, 1 << 20)
        assert sup.gro == enable_gro(s) == kernel_has_gro(s.family)
        assert sup.gso == probe_gso(s) == kernel_has_gso(s.family)
        snd, rcv = set_buffer_sizes(s, 1 << 20)
        if os.geteuid() == 0:
            assert snd >= 1 << 20 and rcv >= 1 << 20


def test_gso_and_gro_on_a_dual_stack_socket_to_v4_mapped() -> None:
    """The engine's socket is AF_INET6 with IPV6_V6ONLY off; IPv4 peers are v4-mapped."""
    if not _has_v6():
        pytest.skip("no IPv6")
    a = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        for s in (a, b):
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            s.bind(("::", 0))
        b.setblocking(False)
        recv = GroReceiver(b)
        sender = UdpBatchSender(a)
        both = kernel_has_gro(socket.AF_INET6) and kernel_has_gso(socket.AF_INET6)
        assert (recv.gro and sender.gso) == both
        dgrams = [os.urandom(1000) for _ in range(10)] + [os.urandom(3)]
        assert sender.send(dgrams, ("::ffff:127.0.0.1", b.getsockname()[1])) == len(dgrams)
        assert sender.stats_syscalls == (1 if both else len(dgrams))
        got, reads = drain(recv, len(dgrams))
        assert got == dgrams
        assert reads < len(dgrams) if both else reads == len(dgrams)
    finally:
        a.close()
        b.close()
