"""Packet floods for load tests and benchmarks: what a stranger can send to a meshguard port.

    pkts = initiations(responder_public_key, 256)      # valid mac1, random everything else
    sender = FloodSender(ns, "10.0.0.1", 51820, pkts, rate=20_000, seconds=5)
    sender.start(); ...; sent = sender.wait()

Generators (each returns `n` distinct datagrams, cycled by the sender):
  initiations(pub, n)      WireGuard initiations with a valid mac1 (no mac2): they cost the
                           receiver a mac1 check and, under load, a cookie reply
  org_revokes(org, n)      OrgCertRevoke (0x42) items claiming to come from a trusted org
                           key, random node keys and signatures (8 items per packet)
  holepunch(n)             hole-punch requests/responses (0x33/0x34), random keys, bad signatures
  relay(n)                 RelayData (0x31) hops with random keys and MACs
  joins(n)                 gossip Joins (0x05) carrying records of random identities
  garbage(n)               random bytes of random length
  cookie_replies(n)        WireGuard cookie replies (type 3) for random indices
  transports(n)            WireGuard transport messages (type 4) for random indices

The sender is a small C program (sendmmsg, paced to `rate`), compiled with `cc` on first use
into a cache directory; without a compiler a Python sender (sendto loop) is used, which
reaches a few tens of thousands of packets per second.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from meshguard.crypto.hashes import blake2s, mac
from meshguard.testing.netns import Namespace
from meshguard.wire import gossip
from meshguard.wire import holepunch as hp_wire
from meshguard.wire import org as org_wire
from meshguard.wire import relay as relay_wire
from meshguard.wire import wireguard as wg_wire
from meshguard.wireguard.cookie import mac1_key

SENDER_C = r"""
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    if (argc < 6) {
        fprintf(stderr, "usage: %s DST PORT RATE SECONDS FILE [SRCPORT]\n", argv[0]);
        return 2;
    }
    const char *dst = argv[1];
    int port = atoi(argv[2]);
    double rate = atof(argv[3]), seconds = atof(argv[4]);
    FILE *f = fopen(argv[5], "rb");
    if (!f) { perror("open"); return 2; }
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *blob = malloc(size + 1);
    if (fread(blob, 1, size, f) != (size_t)size) { perror("read"); return 2; }
    fclose(f);
    int n = 0, cap = 1024;
    struct iovec *tmpl = malloc(cap * sizeof(*tmpl));
    for (long off = 0; off + 2 <= size;) {
        int len = blob[off] | (blob[off + 1] << 8);
        off += 2;
        if (off + len > size) break;
        if (n == cap) { cap *= 2; tmpl = realloc(tmpl, cap * sizeof(*tmpl)); }
        tmpl[n].iov_base = blob + off;
        tmpl[n].iov_len = len;
        n++;
        off += len;
    }
    if (!n) { fprintf(stderr, "no packets\n"); return 2; }
    struct sockaddr_storage ss;
    socklen_t slen;
    memset(&ss, 0, sizeof(ss));
    int family;
    if (strchr(dst, ':')) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(port);
        if (inet_pton(AF_INET6, dst, &s6->sin6_addr) != 1) return 2;
        slen = sizeof(*s6);
        family = AF_INET6;
    } else {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
        s4->sin_family = AF_INET;
        s4->sin_port = htons(port);
        if (inet_pton(AF_INET, dst, &s4->sin_addr) != 1) return 2;
        slen = sizeof(*s4);
        family = AF_INET;
    }
    int fd = socket(family, SOCK_DGRAM, 0);
    if (fd < 0) { perror("socket"); return 2; }
    int buf = 4 << 20;
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buf, sizeof(buf));
    if (argc > 6) {
        struct sockaddr_storage b;
        memset(&b, 0, sizeof(b));
        b.ss_family = family;
        if (family == AF_INET)
            ((struct sockaddr_in *)&b)->sin_port = htons(atoi(argv[6]));
        else
            ((struct sockaddr_in6 *)&b)->sin6_port = htons(atoi(argv[6]));
        if (bind(fd, (struct sockaddr *)&b, family == AF_INET ? sizeof(struct sockaddr_in)
                                                             : sizeof(struct sockaddr_in6))) {
            perror("bind");
            return 2;
        }
    }
    if (connect(fd, (struct sockaddr *)&ss, slen)) { perror("connect"); return 2; }
    struct mmsghdr msgs[BATCH], in[BATCH];
    struct iovec riov[BATCH];
    static uint8_t rbuf[BATCH][2048];
    memset(msgs, 0, sizeof(msgs));
    memset(in, 0, sizeof(in));
    for (int i = 0; i < BATCH; i++) {
        riov[i].iov_base = rbuf[i];
        riov[i].iov_len = sizeof(rbuf[i]);
        in[i].msg_hdr.msg_iov = &riov[i];
        in[i].msg_hdr.msg_iovlen = 1;
    }
    long sent = 0, errors = 0, replies = 0;
    int idx = 0;
    double start = now(), t;
    while ((t = now() - start) < seconds) {
        long due = (long)(rate * t) + 1 - sent;
        if (due <= 0) {
            struct timespec ts = {0, 200000};
            nanosleep(&ts, NULL);
            continue;
        }
        int k = due < BATCH ? (int)due : BATCH;
        for (int i = 0; i < k; i++) {
            msgs[i].msg_hdr.msg_iov = &tmpl[idx];
            msgs[i].msg_hdr.msg_iovlen = 1;
            idx = idx + 1 == n ? 0 : idx + 1;
        }
        int got;
        while ((got = recvmmsg(fd, in, BATCH, MSG_DONTWAIT, NULL)) > 0)
            replies += got; /* what the target answered (cookie replies, ...) */
        int r = sendmmsg(fd, msgs, k, 0);
        if (r > 0)
            sent += r;
        else {
            errors++;
            /* ECONNREFUSED from an earlier ICMP error, ENOBUFS: go on */
            sent += k; /* keep the pace: count as attempted */
        }
    }
    double elapsed = now() - start;
    struct timespec ts = {0, 300000000}; /* answers still on their way */
    nanosleep(&ts, NULL);
    int got;
    while ((got = recvmmsg(fd, in, BATCH, MSG_DONTWAIT, NULL)) > 0)
        replies += got;
    printf("%ld %ld %.3f %ld\n", sent, errors, elapsed, replies);
    return 0;
}
"""

_CACHE = Path(tempfile.gettempdir()) / "meshguard-flood"


def build_sender(cache: Path = _CACHE) -> Path | None:
    """The compiled C sender (built once per source version), or None without a compiler."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    digest = blake2s(SENDER_C.encode()).hex()[:12]
    exe = cache / f"flood-{digest}"
    if exe.exists():
        return exe
    cache.mkdir(parents=True, exist_ok=True)
    src = cache / f"flood-{digest}.c"
    src.write_text(SENDER_C)
    tmp = cache / f"flood-{digest}.{os.getpid()}"
    res = subprocess.run([cc, "-O2", "-o", str(tmp), str(src)], capture_output=True, text=True,
                         timeout=120)
    if res.returncode != 0:
        return None
    tmp.replace(exe)
    return exe


def write_templates(path: Path, packets: Sequence[bytes]) -> None:
    with open(path, "wb") as f:
        for p in packets:
            f.write(struct.pack("<H", len(p)) + p)


class FloodSender:
    """One flooding process in `ns`: `packets` cycled to dst:port at `rate` per second."""

    def __init__(self, ns: Namespace, dst: str, port: int, packets: Sequence[bytes],
                 rate: float, seconds: float, src_port: int = 0,
                 workdir: Path | None = None) -> None:
        self.ns = ns
        self.dst, self.port = dst, port
        self.rate, self.seconds = rate, seconds
        self.src_port = src_port
        self._dir = Path(tempfile.mkdtemp(prefix="mgflood-", dir=workdir))
        self._tmpl = self._dir / "packets.bin"
        write_templates(self._tmpl, packets)
        self.proc: subprocess.Popen[bytes] | None = None
        self.sent = 0
        self.elapsed = 0.0
        self.replies = 0  # datagrams the target sent back to the flooding socket

    def argv(self) -> list[str]:
        exe = build_sender()
        args = [self.dst, str(self.port), str(self.rate), str(self.seconds), str(self._tmpl)]
        if self.src_port:
            args.append(str(self.src_port))
        if exe is not None:
            return [str(exe), *args]
        return [sys.executable, "-m", "meshguard.testing.flood", *args]

    def start(self) -> None:
        self.proc = self.ns.popen(self.argv(), stdout=subprocess.PIPE)

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the sender; the number of datagrams it sent."""
        assert self.proc is not None
        out, _ = self.proc.communicate(timeout=timeout or self.seconds + 30)
        parts = out.split()
        if parts:
            self.sent = int(parts[0])
            self.elapsed = float(parts[2]) if len(parts) > 2 else self.seconds
            self.replies = int(parts[3]) if len(parts) > 3 else 0
        shutil.rmtree(self._dir, ignore_errors=True)
        return self.sent

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.ns.stop(self.proc)
        shutil.rmtree(self._dir, ignore_errors=True)


# --- packet generators ----------------------------------------------------------------------


def initiations(responder_public_key: bytes, n: int) -> list[bytes]:
    """Initiations to `responder_public_key` with a valid mac1 and a zero mac2."""
    key = mac1_key(responder_public_key)
    out = []
    for _ in range(n):
        body = b"\x01\x00\x00\x00" + os.urandom(wg_wire.INITIATION_MAC1_OFFSET - 4)
        out.append(body + mac(key, body) + bytes(16))
    return out


def org_revokes(org_key: bytes, n: int) -> list[bytes]:
    """OrgCertRevoke packets of 8 items "by" `org_key`, random node keys and signatures."""
    out = []
    for _ in range(n):
        items = [org_wire.CertRevocation(org_key, os.urandom(32), int(time.time()),
                                         os.urandom(64)) for _ in range(org_wire.MAX_ITEMS)]
        out.append(org_wire.encode_revocations(items))
    return out


def holepunch(n: int) -> list[bytes]:
    out = []
    for i in range(n):
        t = hp_wire.HOLEPUNCH_REQUEST if i % 2 == 0 else hp_wire.HOLEPUNCH_RESPONSE
        m = hp_wire.PunchMessage(t, i % 4 // 2, os.urandom(32), os.urandom(32),
                                 int.from_bytes(os.urandom(8), "little"),
                                 int(time.time() * 1000), (("10.9.9.9", 51820),),
                                 os.urandom(64))
        out.append(hp_wire.encode(m))
    return out


def relay(n: int) -> list[bytes]:
    out = []
    for i in range(n):
        m = relay_wire.RelayMessage(os.urandom(32), os.urandom(32), os.urandom(32),
                                    os.urandom(i % 3 * 60))
        out.append(relay_wire.authenticated_part(m) + os.urandom(relay_wire.MAC_LEN))
    return out


def joins(n: int) -> list[bytes]:
    out = []
    for _ in range(n):
        rec = gossip.NodeRecord(identity=os.urandom(32), wg_public=os.urandom(32),
                                incarnation=1, endpoints=(("10.9.9.9", 51821),),
                                signature=os.urandom(64))
        p = gossip.Packet(type=gossip.JOIN, seq=int.from_bytes(os.urandom(8), "little"),
                          record=gossip.encode_record(rec))
        out.append(gossip.encode_packet(p))
    return out


def cookie_replies(n: int) -> list[bytes]:
    """Cookie replies (type 3) for random receiver indices."""
    return [b"\x03\x00\x00\x00" + os.urandom(wg_wire.COOKIE_REPLY_SIZE - 4) for _ in range(n)]


def transports(n: int) -> list[bytes]:
    """Transport messages (type 4) for random receiver indices, 32 to 1420 bytes."""
    out = []
    for i in range(n):
        size = 32 + (i * 97) % 1389
        out.append(b"\x04\x00\x00\x00" + os.urandom(size - 4))
    return out


def garbage(n: int) -> list[bytes]:
    out = []
    for _ in range(n):
        size = 1 + os.urandom(1)[0] * 5
        out.append(os.urandom(size))
    return out


GENERATORS: dict[str, Callable[[int], list[bytes]]] = {
    "holepunch": holepunch, "relay": relay, "join": joins, "garbage": garbage,
    "cookie": cookie_replies, "transport": transports}


# --- the Python fallback sender ---------------------------------------------------------------


def _drain(s: socket.socket) -> int:
    n = 0
    while True:
        try:
            s.recv(2048)
        except OSError:
            return n
        n += 1


def _python_send(argv: list[str]) -> int:
    dst, port, rate, seconds, path = argv[0], int(argv[1]), float(argv[2]), float(argv[3]), argv[4]
    blob = Path(path).read_bytes()
    pkts: list[bytes] = []
    off = 0
    while off + 2 <= len(blob):
        (ln,) = struct.unpack_from("<H", blob, off)
        pkts.append(blob[off + 2 : off + 2 + ln])
        off += 2 + ln
    fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    if len(argv) > 5:
        s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", int(argv[5])))
    s.connect((dst, port))
    s.setblocking(False)
    send = s.send
    sent = errors = replies = 0
    i = 0
    n = len(pkts)
    start = time.monotonic()
    while (t := time.monotonic() - start) < seconds:
        due = int(rate * t) + 1 - sent
        if due <= 0:
            time.sleep(0.0002)
            continue
        for _ in range(min(due, 64)):
            try:
                send(pkts[i])
            except OSError:
                errors += 1
            i = i + 1 if i + 1 < n else 0
            sent += 1
        replies += _drain(s)
    elapsed = time.monotonic() - start
    time.sleep(0.3)
    replies += _drain(s)
    print(sent, errors, f"{elapsed:.3f}", replies)
    return 0


if __name__ == "__main__":
    raise SystemExit(_python_send(sys.argv[1:]))
