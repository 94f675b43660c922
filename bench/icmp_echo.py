"""ICMP echo from inside a network namespace, sent by bench/run.py itself.

A raw ICMP socket is opened in the namespace (setns(2) to it and back, around socket()); the
socket stays in that namespace. Timing the first reply this way leaves out the few
milliseconds that starting `ip netns exec ping` costs, which would otherwise be a large part
of a start-up time measured in tens of milliseconds.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

CLONE_NEWNET = 0x40000000
ECHO_REQUEST, ECHO_REPLY = 8, 0
PAYLOAD = bytes(56)  # ping's default size


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def icmp_socket(netns: str) -> socket.socket:
    """A raw ICMP socket in the named namespace (`ip netns add` name)."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/var/run/netns/{netns}", os.O_RDONLY)
        try:
            _setns(target)
            try:
                return socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
            finally:
                _setns(own)
        finally:
            os.close(target)
    finally:
        os.close(own)


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return int(~total & 0xFFFF)


def echo_request(ident: int, seq: int) -> bytes:
    head = struct.pack("!BBHHH", ECHO_REQUEST, 0, 0, ident, seq)
    return struct.pack("!BBHHH", ECHO_REQUEST, 0, checksum(head + PAYLOAD), ident,
                       seq) + PAYLOAD


@dataclass(frozen=True)
class Reply:
    at: float  # time.monotonic() when the reply was read
    seq: int  # which echo it answered (0 = the first one sent)
    rtt_ms: float  # that echo's own round trip


class EchoProbe:
    """Echo requests to `dst` from namespace `netns`, one every `resend_s`, until one reply."""

    def __init__(self, netns: str, dst: str) -> None:
        self.sock = icmp_socket(netns)
        self.dst = dst
        self.ident = (os.getpid() ^ int.from_bytes(os.urandom(2), "big")) & 0xFFFF

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> EchoProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def first_reply(self, deadline_s: float, resend_s: float = 0.01,
                    check: Callable[[], None] | None = None) -> Reply:
        """Send echoes until the first reply; `check` runs between sends (it raises to give
        up early, say when a daemon exited). Raises RuntimeError after `deadline_s`."""
        sent: list[float] = []
        end = time.monotonic() + deadline_s
        next_send = time.monotonic()
        while True:
            now = time.monotonic()
            if now >= end:
                raise RuntimeError(f"no echo reply from {self.dst} within {deadline_s:g} s")
            if now >= next_send:
                if check is not None:
                    check()
                with contextlib.suppress(OSError):  # no route yet: try again next time
                    self.sock.sendto(echo_request(self.ident, len(sent) & 0xFFFF),
                                     (self.dst, 0))
                sent.append(now)
                next_send = now + resend_s
            ready, _, _ = select.select([self.sock], [], [], max(0.0, next_send - now))
            if not ready:
                continue
            data, (src, _) = self.sock.recvfrom(65535)
            at = time.monotonic()
            ihl = (data[0] & 0x0F) * 4
            if src != self.dst or len(data) < ihl + 8:
                continue
            kind, _, _, ident, seq = struct.unpack_from("!BBHHH", data, ihl)
            if kind == ECHO_REPLY and ident == self.ident and seq < len(sent):
                return Reply(at, seq, (at - sent[seq]) * 1000)
