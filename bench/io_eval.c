/* io_eval: one end of a measured tunnel, TUN <-> UDP, for bench/io_eval.py.
 *
 *   io_eval --mode epoll|uring --tun NAME --peer IPV4 --port P [--queues N] [--mq 0|1]
 *           [--shared-port 0|1] [--crypto 0|1] [--depth D] [--fixed 0|1]
 *
 * Does the work of a data path without its protocol: reads the TUN (IFF_VNET_HDR with
 * checksum/TSO4/TSO6 offloads), cuts TCP super-packets into MTU-sized segments (checksums
 * completed), seals each as a WireGuard-sized transport message (16-byte header, padding,
 * 16-byte tag; ChaCha20-Poly1305 via OpenSSL when --crypto 1, a zero tag otherwise) and sends
 * them to the peer with UDP GSO; receives datagrams (UDP GRO), opens them, coalesces TCP
 * segments of a flow into super-packets and writes them to the TUN. Both directions run in one
 * process, like the data path.
 *
 * --mode epoll: per thread one epoll on a non-blocking TUN fd and UDP socket; a wake-up reads
 *   the TUN up to 64 times (read), sends all sealed messages in one sendmmsg of GSO runs, or
 *   takes up to 4 recvmmsg batches of 64 and writes each output buffer with write.
 * --mode uring: per thread one io_uring (raw syscalls, no liburing; DEFER_TASKRUN): the TUN
 *   (blocking fd) is read by one multishot read with a provided-buffer ring (--depth 0, the
 *   default; Linux 6.7+) or by D plain reads kept in flight (--depth D), the UDP socket by a
 *   multishot recvmsg with a provided-buffer ring; sendmsg (GSO runs) and write submissions
 *   are batched: one io_uring_enter per round. --fixed 1 registers the buffers (WRITE_FIXED,
 *   and READ_FIXED for in-flight reads).
 * --queues N: N threads, each with its own TUN queue (IFF_MULTI_QUEUE, given whenever
 *   --mq 1 or N > 1) and its own UDP socket on port P+i talking to the peer's P+i; with
 *   --shared-port 1 all sockets are bound to P (SO_REUSEPORT) and talk to the peer's P, as
 *   with one WireGuard peer: every datagram from the peer then has one 4-tuple and reaches one
 *   socket (one thread), whichever thread sent it.
 *
 * Prints "ready" once the TUN exists, runs until SIGTERM/SIGINT, then prints one JSON line
 * of counters. Exit status 2 on a setup error (message on stderr).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <linux/io_uring.h>
#include <linux/virtio_net.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif
#ifndef IORING_OP_READ_MULTISHOT
#define IORING_OP_READ_MULTISHOT 49 /* Linux 6.7 */
#endif

#define VNET 10
#define TUN_BUF (65536 + VNET)
#define OUT_CAP (96 * 1024)        /* sealed messages of one TUN read */
#define RX_BUF (65536 + 8192)      /* one received GRO train */
#define BATCH 64
#define RECV_ROUNDS 4
#define GSO_SEGS 64
#define GSO_BYTES 65000
#define MAX_WMSG 64                /* messages per write buffer: coalescer's limit */
#define WBUF (65536 + VNET + 64)

static volatile int stop_flag;
static int opt_crypto = 1, opt_fixed = 0, opt_depth = 0; /* depth 0: multishot TUN read */
static const uint8_t KEY[32] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
                                17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32};

typedef struct {
    uint64_t tun_reads, tun_read_bytes, gso_reads, sealed, sent_msgs, send_calls, send_errors;
    uint64_t udp_bufs, recv_calls, opened, opened_bytes, auth_fail, bad, tun_writes, gso_writes;
    uint64_t write_errors, waits, enters, recv_nobufs, read_nobufs;
} Counters;

typedef struct {
    uint8_t *data;
    size_t len, seg, count;
} Sealed;

typedef struct Worker Worker;

/* ------------------------------------------------------------------ checksum ---- */

static uint64_t csum_add(uint64_t acc, const uint8_t *p, size_t n)
{
    while (n >= 4) {
        uint32_t v;
        memcpy(&v, p, 4);
        acc += v;
        p += 4;
        n -= 4;
    }
    if (n >= 2) {
        uint16_t v;
        memcpy(&v, p, 2);
        acc += v;
        p += 2;
        n -= 2;
    }
    if (n) {
        uint8_t b[2] = {p[0], 0};
        uint16_t v;
        memcpy(&v, b, 2);
        acc += v;
    }
    return acc;
}

static uint16_t fold(uint64_t acc)
{
    while (acc >> 16)
        acc = (acc & 0xFFFF) + (acc >> 16);
    return (uint16_t)acc;
}

static inline uint32_t be16(const uint8_t *p) { return ((uint32_t)p[0] << 8) | p[1]; }
static inline uint32_t be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline void wbe16(uint8_t *p, uint32_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static inline void wbe32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}
static inline uint32_t le16(const uint8_t *p) { return (uint32_t)p[0] | ((uint32_t)p[1] << 8); }

/* pseudo-header sum (IPv4 or IPv6) for a transport segment of `len` bytes */
static uint64_t pseudo(const uint8_t *ip, uint32_t proto, size_t len)
{
    uint64_t acc;
    if ((ip[0] >> 4) == 4)
        acc = csum_add(0, ip + 12, 8);
    else
        acc = csum_add(0, ip + 8, 32);
    acc += htons((uint16_t)proto);
    acc += htons((uint16_t)(len & 0xFFFF));
    acc += htons((uint16_t)(len >> 16));
    return acc;
}

static void ip4_csum(uint8_t *ip, size_t ihl)
{
    ip[10] = ip[11] = 0;
    uint16_t c = (uint16_t)~fold(csum_add(0, ip, ihl));
    memcpy(ip + 10, &c, 2);
}

/* ------------------------------------------------------------------ workers ---- */

struct Worker {
    int id, tunfd, udpfd;
    int uring;
    struct sockaddr_in peer;
    EVP_CIPHER_CTX *enc, *dec;
    uint64_t counter;
    Counters c;
    pthread_t th;
    /* epoll mode */
    uint8_t *rbuf;            /* one TUN read */
    uint8_t *out;             /* BATCH * OUT_CAP sealed messages */
    uint8_t *rx;              /* BATCH * RX_BUF received */
    uint8_t *wbuf;            /* one write buffer */
};

static size_t seal_msg(Worker *w, uint8_t *msg, size_t inner)
{
    size_t padded = (inner + 15) & ~(size_t)15;
    memset(msg + 16 + inner, 0, padded - inner);
    uint64_t ctr = w->counter++;
    msg[0] = 4;
    msg[1] = msg[2] = msg[3] = 0;
    uint32_t rcv = (uint32_t)w->id;
    memcpy(msg + 4, &rcv, 4);
    memcpy(msg + 8, &ctr, 8);
    uint8_t *p = msg + 16;
    if (opt_crypto) {
        uint8_t nonce[12] = {0};
        memcpy(nonce + 4, &ctr, 8);
        int l = 0;
        EVP_EncryptInit_ex(w->enc, NULL, NULL, NULL, nonce);
        EVP_EncryptUpdate(w->enc, p, &l, p, (int)padded);
        EVP_EncryptFinal_ex(w->enc, p + l, &l);
        EVP_CIPHER_CTX_ctrl(w->enc, EVP_CTRL_AEAD_GET_TAG, 16, p + padded);
    } else {
        memset(p + padded, 0, 16);
    }
    return 32 + padded;
}

/* open one message in place; returns the inner packet length or -1 */
static long open_msg(Worker *w, uint8_t *msg, size_t n)
{
    if (n < 32 + 20 || msg[0] != 4 || ((n - 32) & 15)) {
        w->c.bad++;
        return -1;
    }
    uint8_t *p = msg + 16;
    size_t padded = n - 32;
    if (opt_crypto) {
        uint8_t nonce[12] = {0};
        memcpy(nonce + 4, msg + 8, 8);
        int l = 0;
        EVP_DecryptInit_ex(w->dec, NULL, NULL, NULL, nonce);
        EVP_DecryptUpdate(w->dec, p, &l, p, (int)padded);
        EVP_CIPHER_CTX_ctrl(w->dec, EVP_CTRL_AEAD_SET_TAG, 16, p + padded);
        if (EVP_DecryptFinal_ex(w->dec, p + l, &l) <= 0) {
            w->c.auth_fail++;
            return -1;
        }
    }
    size_t inner;
    if ((p[0] >> 4) == 4)
        inner = be16(p + 2);
    else if ((p[0] >> 4) == 6)
        inner = 40 + be16(p + 4);
    else
        inner = 0;
    if (inner < 20 || inner > padded) {
        w->c.bad++;
        return -1;
    }
    w->c.opened++;
    w->c.opened_bytes += inner;
    return (long)inner;
}

/* one TUN read (virtio-net header + packet) -> sealed messages at out */
static int seal_read(Worker *w, uint8_t *buf, size_t n, uint8_t *out, Sealed *s)
{
    if (n < VNET + 20)
        goto bad;
    uint32_t flags = buf[0], gso = buf[1] & 0x7F;
    uint32_t mss = le16(buf + 4), cs = le16(buf + 6), co = le16(buf + 8);
    uint8_t *pkt = buf + VNET;
    size_t len = n - VNET;
    s->data = out;
    if (gso == VIRTIO_NET_HDR_GSO_NONE) {
        if (flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) {
            if ((size_t)cs + co + 2 > len)
                goto bad;
            uint16_t c = (uint16_t)~fold(csum_add(0, pkt + cs, len - cs));
            if (c == 0 && co == 6)
                c = 0xFFFF;
            memcpy(pkt + cs + co, &c, 2);
        }
        memcpy(out + 16, pkt, len);
        s->len = s->seg = seal_msg(w, out, len);
        s->count = 1;
        w->c.sealed++;
        return 0;
    }
    if (gso != VIRTIO_NET_HDR_GSO_TCPV4 && gso != VIRTIO_NET_HDR_GSO_TCPV6)
        goto bad;
    int v4 = (pkt[0] >> 4) == 4;
    size_t l4 = (flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) ? cs : (v4 ? (size_t)(pkt[0] & 15) * 4 : 40);
    if (l4 + 20 > len || mss == 0)
        goto bad;
    size_t hl = l4 + (size_t)(pkt[l4 + 12] >> 4) * 4;
    if (hl > len)
        goto bad;
    size_t payload = len - hl, count = (payload + mss - 1) / mss, pos = 0;
    if (count == 0)
        count = 1;
    if (count * (hl + mss + 48) > OUT_CAP)
        goto bad;
    for (size_t i = 0; i < count; i++) {
        size_t off = i * mss, end = off + mss;
        int last = end >= payload;
        if (last)
            end = payload;
        size_t slen = hl + end - off;
        uint8_t *o = out + pos + 16;
        memcpy(o, pkt, hl);
        memcpy(o + hl, pkt + hl + off, end - off);
        if (v4) {
            wbe16(o + 2, (uint32_t)slen);
            wbe16(o + 4, (be16(pkt + 4) + (uint32_t)i) & 0xFFFF);
            ip4_csum(o, l4);
        } else {
            wbe16(o + 4, (uint32_t)(slen - 40));
        }
        wbe32(o + l4 + 4, be32(pkt + l4 + 4) + (uint32_t)off);
        uint8_t f = pkt[l4 + 13];
        if (!last)
            f &= (uint8_t)~0x09; /* FIN, PSH */
        if (i)
            f &= (uint8_t)~0x80; /* CWR */
        o[l4 + 13] = f;
        o[l4 + 16] = o[l4 + 17] = 0;
        uint16_t c = (uint16_t)~fold(csum_add(pseudo(o, 6, slen - l4), o + l4, slen - l4));
        memcpy(o + l4 + 16, &c, 2);
        size_t m = seal_msg(w, out + pos, slen);
        if (i == 0)
            s->seg = m;
        pos += m;
    }
    s->len = pos;
    s->count = count;
    w->c.sealed += count;
    w->c.gso_reads++;
    return 0;
bad:
    w->c.bad++;
    return -1;
}

/* GSO runs of sealed messages: consecutive equal-size messages, at most GSO_SEGS and
 * GSO_BYTES each; calls emit(iov, niov, seg, count) per run */
typedef void (*RunFn)(Worker *w, struct iovec *iov, int niov, size_t seg, size_t count,
                      void *ctx);

static void gso_runs(Worker *w, Sealed *s, int ns, RunFn emit, void *ctx)
{
    struct iovec iov[BATCH * 2];
    int niov = 0;
    size_t run_seg = 0, run_n = 0, run_bytes = 0;
    int open = 0;
    for (int i = 0; i < ns; i++) {
        size_t seg = s[i].seg, per = GSO_BYTES / seg;
        if (per > GSO_SEGS)
            per = GSO_SEGS;
        if (open && seg == run_seg && run_n + s[i].count <= per &&
            run_bytes + s[i].len <= GSO_BYTES && niov < BATCH * 2) {
            iov[niov].iov_base = s[i].data;
            iov[niov++].iov_len = s[i].len;
            run_n += s[i].count;
            run_bytes += s[i].len;
            open = s[i].len == s[i].count * seg;
            continue;
        }
        if (niov)
            emit(w, iov, niov, run_seg, run_n, ctx);
        niov = 0;
        if (s[i].count <= per) {
            iov[0].iov_base = s[i].data;
            iov[0].iov_len = s[i].len;
            niov = 1;
            run_seg = seg;
            run_n = s[i].count;
            run_bytes = s[i].len;
            open = s[i].len == s[i].count * seg;
            continue;
        }
        for (size_t off = 0; off < s[i].len; off += per * seg) {
            size_t l = s[i].len - off < per * seg ? s[i].len - off : per * seg;
            struct iovec one = {s[i].data + off, l};
            emit(w, &one, 1, seg, (l + seg - 1) / seg, ctx);
        }
        open = 0;
    }
    if (niov)
        emit(w, iov, niov, run_seg, run_n, ctx);
}

/* coalescer: decrypted packets of one received buffer -> TUN write buffers */
typedef struct {
    uint8_t *p;
    size_t n;
} Pkt;

typedef uint8_t *(*BufFn)(Worker *w, void *ctx);
typedef void (*WriteFn)(Worker *w, uint8_t *buf, size_t n, void *ctx);

static int tcp4(const uint8_t *p, size_t n, size_t *l4, size_t *hl)
{
    if (n < 40 || (p[0] >> 4) != 4 || p[9] != 6 || (be16(p + 6) & 0x3FFF))
        return 0;
    size_t ihl = (size_t)(p[0] & 15) * 4;
    if (ihl < 20 || ihl + 20 > n)
        return 0;
    size_t thl = (size_t)(p[ihl + 12] >> 4) * 4;
    if (thl < 20 || ihl + thl > n)
        return 0;
    uint8_t f = p[ihl + 13];
    if (f != 0x10 && f != 0x18)
        return 0; /* ACK or ACK|PSH only */
    *l4 = ihl;
    *hl = ihl + thl;
    return 1;
}

static int same_flow(const uint8_t *a, const uint8_t *b, size_t l4, size_t hl)
{
    return !memcmp(a + 12, b + 12, 8) && !memcmp(a + l4, b + l4, 4) &&
           !memcmp(a + l4 + 8, b + l4 + 8, 4) && !memcmp(a + l4 + 14, b + l4 + 14, 2) &&
           !memcmp(a + l4 + 20, b + l4 + 20, hl - l4 - 20) && a[1] == b[1] && a[8] == b[8];
}

static void coalesce(Worker *w, Pkt *pk, int np, BufFn getbuf, WriteFn write_fn, void *ctx)
{
    int i = 0;
    while (i < np) {
        size_t l4, hl;
        uint8_t *p = pk[i].p;
        int j = i + 1;
        if (tcp4(p, pk[i].n, &l4, &hl) && pk[i].n > hl && !(p[l4 + 13] & 0x08)) {
            size_t mss = pk[i].n - hl, total = mss;
            uint32_t next = be32(p + l4 + 4) + (uint32_t)mss;
            while (j < np && j - i < MAX_WMSG) {
                size_t ql4, qhl;
                uint8_t *q = pk[j].p;
                if (!tcp4(q, pk[j].n, &ql4, &qhl) || ql4 != l4 || qhl != hl ||
                    !same_flow(p, q, l4, hl) || be32(q + l4 + 4) != next)
                    break;
                size_t ql = pk[j].n - hl;
                if (ql == 0 || ql > mss || hl + total + ql > 65535)
                    break;
                total += ql;
                next += (uint32_t)ql;
                j++;
                if (ql < mss || (q[l4 + 13] & 0x08))
                    break;
            }
        }
        uint8_t *b = getbuf(w, ctx);
        if (b == NULL)
            return;
        if (j - i == 1) {
            memset(b, 0, VNET);
            memcpy(b + VNET, p, pk[i].n);
            write_fn(w, b, VNET + pk[i].n, ctx);
            i++;
            continue;
        }
        uint8_t *o = b + VNET;
        memcpy(o, p, hl);
        size_t pos = hl;
        for (int k = i; k < j; k++) {
            memcpy(o + pos, pk[k].p + hl, pk[k].n - hl);
            pos += pk[k].n - hl;
        }
        o[l4 + 13] = pk[j - 1].p[l4 + 13];
        wbe16(o + 2, (uint32_t)pos);
        ip4_csum(o, l4);
        uint16_t c = fold(pseudo(o, 6, pos - l4));
        memcpy(o + l4 + 16, &c, 2);
        uint16_t hdr[5] = {0, (uint16_t)hl, (uint16_t)(pk[i].n - hl), (uint16_t)l4, 16};
        memcpy(b, hdr, VNET);
        b[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
        b[1] = VIRTIO_NET_HDR_GSO_TCPV4;
        w->c.gso_writes++;
        write_fn(w, b, VNET + pos, ctx);
        i = j;
    }
}

/* one received buffer (a datagram or a GRO train of `seg`-byte datagrams) -> TUN writes */
static void open_buffer(Worker *w, uint8_t *d, size_t n, size_t seg, BufFn getbuf,
                        WriteFn write_fn, void *ctx)
{
    Pkt pk[GSO_SEGS * 2];
    int np = 0;
    if (seg == 0 || seg >= n)
        seg = n;
    for (size_t pos = 0; pos < n && np < GSO_SEGS * 2; pos += seg) {
        size_t l = n - pos < seg ? n - pos : seg;
        long inner = open_msg(w, d + pos, l);
        if (inner < 0)
            continue;
        pk[np].p = d + pos + 16;
        pk[np++].n = (size_t)inner;
    }
    w->c.udp_bufs++;
    coalesce(w, pk, np, getbuf, write_fn, ctx);
}

static size_t gro_seg(struct msghdr *h)
{
    for (struct cmsghdr *c = CMSG_FIRSTHDR(h); c != NULL; c = CMSG_NXTHDR(h, c)) {
        if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO) {
            int v = 0;
            if (c->cmsg_len >= CMSG_LEN(sizeof(int)))
                memcpy(&v, CMSG_DATA(c), sizeof(int));
            else {
                uint16_t s;
                memcpy(&s, CMSG_DATA(c), 2);
                v = s;
            }
            return v > 0 ? (size_t)v : 0;
        }
    }
    return 0;
}

/* ------------------------------------------------------------- epoll mode ---- */

typedef struct {
    struct mmsghdr m[BATCH * 2];
    struct iovec iov[BATCH * 4];
    union {
        char buf[CMSG_SPACE(sizeof(uint16_t))];
        struct cmsghdr align;
    } ctl[BATCH * 2];
    int nm, niov;
} SendBatch;

static void ep_run(Worker *w, struct iovec *iov, int niov, size_t seg, size_t count, void *ctx)
{
    SendBatch *sb = ctx;
    if (sb->nm >= BATCH * 2 || sb->niov + niov > BATCH * 4)
        return;
    struct msghdr *h = &sb->m[sb->nm].msg_hdr;
    memset(h, 0, sizeof(*h));
    memcpy(&sb->iov[sb->niov], iov, sizeof(*iov) * (size_t)niov);
    h->msg_iov = &sb->iov[sb->niov];
    h->msg_iovlen = (size_t)niov;
    h->msg_name = &w->peer;
    h->msg_namelen = sizeof(w->peer);
    if (count > 1) {
        h->msg_control = sb->ctl[sb->nm].buf;
        h->msg_controllen = sizeof(sb->ctl[sb->nm].buf);
        struct cmsghdr *c = CMSG_FIRSTHDR(h);
        c->cmsg_level = SOL_UDP;
        c->cmsg_type = UDP_SEGMENT;
        c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
        uint16_t s = (uint16_t)seg;
        memcpy(CMSG_DATA(c), &s, 2);
    }
    sb->niov += niov;
    sb->m[sb->nm].msg_len = (unsigned)count; /* remembered until sent */
    sb->nm++;
}

static void ep_tun(Worker *w, SendBatch *sb)
{
    Sealed s[BATCH];
    int ns = 0;
    for (int k = 0; k < BATCH; k++) {
        ssize_t r = read(w->tunfd, w->rbuf, TUN_BUF);
        if (r <= 0)
            break;
        w->c.tun_reads++;
        w->c.tun_read_bytes += (uint64_t)r;
        if (seal_read(w, w->rbuf, (size_t)r, w->out + (size_t)ns * OUT_CAP, &s[ns]) == 0)
            ns++;
    }
    if (!ns)
        return;
    sb->nm = sb->niov = 0;
    gso_runs(w, s, ns, ep_run, sb);
    unsigned counts[BATCH * 2];
    for (int i = 0; i < sb->nm; i++)
        counts[i] = sb->m[i].msg_len;
    int done = 0;
    while (done < sb->nm) {
        int r = sendmmsg(w->udpfd, sb->m + done, (unsigned)(sb->nm - done), 0);
        w->c.send_calls++;
        if (r <= 0) {
            w->c.send_errors += counts[done];
            done++;
            continue;
        }
        for (int i = done; i < done + r; i++)
            w->c.sent_msgs += counts[i];
        done += r;
    }
}

static uint8_t *ep_getbuf(Worker *w, void *ctx)
{
    (void)ctx;
    return w->wbuf;
}

static void ep_write(Worker *w, uint8_t *b, size_t n, void *ctx)
{
    (void)ctx;
    if (write(w->tunfd, b, n) < 0)
        w->c.write_errors++;
    else
        w->c.tun_writes++;
}

static void ep_udp(Worker *w)
{
    struct mmsghdr m[BATCH];
    struct iovec iov[BATCH];
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } ctl[BATCH];
    for (int round = 0; round < RECV_ROUNDS; round++) {
        memset(m, 0, sizeof(m));
        for (int i = 0; i < BATCH; i++) {
            iov[i].iov_base = w->rx + (size_t)i * RX_BUF;
            iov[i].iov_len = RX_BUF;
            m[i].msg_hdr.msg_iov = &iov[i];
            m[i].msg_hdr.msg_iovlen = 1;
            m[i].msg_hdr.msg_control = ctl[i].buf;
            m[i].msg_hdr.msg_controllen = sizeof(ctl[i].buf);
        }
        int got = recvmmsg(w->udpfd, m, BATCH, MSG_DONTWAIT, NULL);
        w->c.recv_calls++;
        if (got <= 0)
            return;
        for (int i = 0; i < got; i++) {
            if (m[i].msg_hdr.msg_flags & MSG_TRUNC) {
                w->c.bad++;
                continue;
            }
            open_buffer(w, iov[i].iov_base, m[i].msg_len, gro_seg(&m[i].msg_hdr), ep_getbuf,
                        ep_write, NULL);
        }
        if (got < BATCH)
            return;
    }
}

static void *ep_main(void *arg)
{
    Worker *w = arg;
    SendBatch *sb = calloc(1, sizeof(SendBatch));
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = 0};
    epoll_ctl(ep, EPOLL_CTL_ADD, w->tunfd, &ev);
    ev.data.u32 = 1;
    epoll_ctl(ep, EPOLL_CTL_ADD, w->udpfd, &ev);
    while (!stop_flag) {
        struct epoll_event evs[2];
        int n = epoll_wait(ep, evs, 2, 100);
        w->c.waits++;
        for (int i = 0; i < n; i++) {
            if (evs[i].data.u32 == 0)
                ep_tun(w, sb);
            else
                ep_udp(w);
        }
    }
    close(ep);
    free(sb);
    return NULL;
}

/* ------------------------------------------------------------- uring mode ---- */

typedef struct {
    int fd;
    unsigned *sq_head, *sq_tail, *sq_mask, *sq_array, sq_entries;
    struct io_uring_sqe *sqes;
    unsigned *cq_head, *cq_tail, *cq_mask;
    struct io_uring_cqe *cqes;
    unsigned tail, pending;
} Ring;

enum { OP_READ = 1, OP_SEND, OP_RECV, OP_WRITE, OP_MREAD };
#define UD(op, idx) (((uint64_t)(op) << 32) | (uint32_t)(idx))

#define NRBUF 128                /* provided receive buffers (power of two) */
#define NRDBUF 64                /* provided TUN read buffers for the multishot read */
#define NWBUF 256                /* TUN write buffers */
#define NGROUP 256               /* sendmsg submissions in flight */
#define RB_HDR (sizeof(struct io_uring_recvmsg_out) + sizeof(struct sockaddr_in) + 64)

typedef struct {
    struct msghdr h;
    struct iovec iov[BATCH * 2];
    union {
        char buf[CMSG_SPACE(sizeof(uint16_t))];
        struct cmsghdr align;
    } ctl;
    int slots[BATCH * 2];
    int nslots;
    size_t count;
} Group;

typedef struct {
    Ring r;
    int slots;                   /* read slots: depth, or NRDBUF for the multishot read */
    uint8_t *rd;                 /* slots * TUN_BUF read buffers */
    uint8_t *out;                /* slots * OUT_CAP sealed */
    int *refs;                   /* sends still using a read slot's output */
    int *ready;
    int nready;
    uint8_t *wb;                 /* NWBUF * WBUF write buffers */
    int wfree[NWBUF], nwfree;
    Group *groups;
    int gfree[NGROUP], ngfree;
    uint8_t *rb;                 /* NRBUF * (RB_HDR + RX_BUF) provided buffers */
    struct io_uring_buf_ring *br, *brd;
    struct msghdr rmsg;
    unsigned short br_tail, brd_tail;
    int recv_armed, read_armed;
} Uring;

static int ring_init(Ring *r, unsigned entries)
{
    struct io_uring_params p;
    memset(&p, 0, sizeof(p));
    p.flags = IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SINGLE_ISSUER |
              IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_CQSIZE;
    p.cq_entries = entries * 4;
    r->fd = (int)syscall(__NR_io_uring_setup, entries, &p);
    if (r->fd < 0) {
        p.flags = IORING_SETUP_CQSIZE;
        r->fd = (int)syscall(__NR_io_uring_setup, entries, &p);
        if (r->fd < 0)
            return -1;
    }
    size_t sq_sz = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    size_t cq_sz = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    if (cq_sz > sq_sz)
        sq_sz = cq_sz;
    uint8_t *sq = mmap(NULL, sq_sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd,
                       IORING_OFF_SQ_RING);
    if (sq == MAP_FAILED)
        return -1;
    uint8_t *cq = sq; /* IORING_FEAT_SINGLE_MMAP (5.4+) */
    r->sq_head = (unsigned *)(sq + p.sq_off.head);
    r->sq_tail = (unsigned *)(sq + p.sq_off.tail);
    r->sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
    r->sq_array = (unsigned *)(sq + p.sq_off.array);
    r->sq_entries = p.sq_entries;
    r->cq_head = (unsigned *)(cq + p.cq_off.head);
    r->cq_tail = (unsigned *)(cq + p.cq_off.tail);
    r->cq_mask = (unsigned *)(cq + p.cq_off.ring_mask);
    r->cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
    r->sqes = mmap(NULL, p.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_SQES);
    if (r->sqes == MAP_FAILED)
        return -1;
    r->tail = *r->sq_tail;
    return 0;
}

static int ring_enter(Ring *r, unsigned wait, Counters *c)
{
    __atomic_store_n(r->sq_tail, r->tail, __ATOMIC_RELEASE);
    struct __kernel_timespec ts = {0, 100 * 1000 * 1000};
    struct io_uring_getevents_arg ga = {0, 0, 0, (uint64_t)(uintptr_t)&ts};
    unsigned flags = wait ? IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG : 0;
    int n = (int)syscall(__NR_io_uring_enter, r->fd, r->pending, wait, flags,
                         wait ? (void *)&ga : NULL, wait ? sizeof(ga) : 0);
    c->enters++;
    if (n >= 0)
        r->pending -= (unsigned)n < r->pending ? (unsigned)n : r->pending;
    return n;
}

static struct io_uring_sqe *get_sqe(Ring *r, Counters *c)
{
    unsigned head = __atomic_load_n(r->sq_head, __ATOMIC_ACQUIRE);
    if (r->tail - head >= r->sq_entries) {
        ring_enter(r, 0, c);
        head = __atomic_load_n(r->sq_head, __ATOMIC_ACQUIRE);
        if (r->tail - head >= r->sq_entries)
            return NULL;
    }
    unsigned idx = r->tail & *r->sq_mask;
    struct io_uring_sqe *sqe = &r->sqes[idx];
    memset(sqe, 0, sizeof(*sqe));
    r->sq_array[idx] = idx;
    r->tail++;
    r->pending++;
    return sqe;
}

static void brd_add(Uring *u, int bid)
{
    struct io_uring_buf *b = &u->brd->bufs[u->brd_tail & (NRDBUF - 1)];
    b->addr = (uint64_t)(uintptr_t)(u->rd + (size_t)bid * TUN_BUF);
    b->len = TUN_BUF;
    b->bid = (uint16_t)bid;
    u->brd_tail++;
    __atomic_store_n(&u->brd->tail, u->brd_tail, __ATOMIC_RELEASE);
}

static void u_mread(Worker *w, Uring *u)
{
    struct io_uring_sqe *q = get_sqe(&u->r, &w->c);
    if (q == NULL)
        return;
    q->opcode = IORING_OP_READ_MULTISHOT;
    q->fd = w->tunfd;
    q->flags = IOSQE_BUFFER_SELECT;
    q->buf_group = 2;
    q->user_data = UD(OP_MREAD, 0);
    u->read_armed = 1;
}

static void u_read(Worker *w, Uring *u, int slot)
{
    if (opt_depth == 0) {
        brd_add(u, slot); /* the buffer goes back to the multishot read */
        return;
    }
    struct io_uring_sqe *q = get_sqe(&u->r, &w->c);
    if (q == NULL)
        return;
    q->opcode = opt_fixed ? IORING_OP_READ_FIXED : IORING_OP_READ;
    q->fd = w->tunfd;
    q->addr = (uint64_t)(uintptr_t)(u->rd + (size_t)slot * TUN_BUF);
    q->len = TUN_BUF;
    q->off = (uint64_t)-1;
    q->buf_index = 0;
    q->user_data = UD(OP_READ, slot);
}

static void u_recv(Worker *w, Uring *u)
{
    struct io_uring_sqe *q = get_sqe(&u->r, &w->c);
    if (q == NULL)
        return;
    q->opcode = IORING_OP_RECVMSG;
    q->fd = w->udpfd;
    q->addr = (uint64_t)(uintptr_t)&u->rmsg;
    q->ioprio = IORING_RECV_MULTISHOT;
    q->flags = IOSQE_BUFFER_SELECT;
    q->buf_group = 1;
    q->user_data = UD(OP_RECV, 0);
    u->recv_armed = 1;
}

static void br_add(Uring *u, int bid)
{
    struct io_uring_buf *b = &u->br->bufs[u->br_tail & (NRBUF - 1)];
    b->addr = (uint64_t)(uintptr_t)(u->rb + (size_t)bid * (RB_HDR + RX_BUF));
    b->len = RB_HDR + RX_BUF;
    b->bid = (uint16_t)bid;
    u->br_tail++;
    __atomic_store_n(&u->br->tail, u->br_tail, __ATOMIC_RELEASE);
}

typedef struct {
    Worker *w;
    Uring *u;
    int slots[BATCH * 2];
    int nslots;
} SendCtx;

static void u_run(Worker *w, struct iovec *iov, int niov, size_t seg, size_t count, void *ctx)
{
    SendCtx *sc = ctx;
    Uring *u = sc->u;
    if (!u->ngfree) {
        w->c.send_errors += count;
        return;
    }
    int gi = u->gfree[--u->ngfree];
    Group *g = &u->groups[gi];
    memset(&g->h, 0, sizeof(g->h));
    memcpy(g->iov, iov, sizeof(*iov) * (size_t)niov);
    g->h.msg_iov = g->iov;
    g->h.msg_iovlen = (size_t)niov;
    g->h.msg_name = &w->peer;
    g->h.msg_namelen = sizeof(w->peer);
    if (count > 1) {
        g->h.msg_control = g->ctl.buf;
        g->h.msg_controllen = sizeof(g->ctl.buf);
        struct cmsghdr *c = CMSG_FIRSTHDR(&g->h);
        c->cmsg_level = SOL_UDP;
        c->cmsg_type = UDP_SEGMENT;
        c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
        uint16_t s = (uint16_t)seg;
        memcpy(CMSG_DATA(c), &s, 2);
    }
    g->count = count;
    g->nslots = 0;
    /* the read slots whose output this run carries */
    for (int k = 0; k < niov; k++) {
        uint8_t *base = iov[k].iov_base;
        int slot = (int)((size_t)(base - u->out) / OUT_CAP);
        int dup = 0;
        for (int m = 0; m < g->nslots; m++)
            dup |= g->slots[m] == slot;
        if (!dup) {
            g->slots[g->nslots++] = slot;
            u->refs[slot]++;
        }
    }
    struct io_uring_sqe *q = get_sqe(&u->r, &w->c);
    if (q == NULL) {
        w->c.send_errors += count;
        return;
    }
    q->opcode = IORING_OP_SENDMSG;
    q->fd = w->udpfd;
    q->addr = (uint64_t)(uintptr_t)&g->h;
    q->user_data = UD(OP_SEND, gi);
}

static uint8_t *u_getbuf(Worker *w, void *ctx)
{
    Uring *u = ctx;
    if (!u->nwfree) {
        w->c.write_errors++;
        return NULL;
    }
    return u->wb + (size_t)u->wfree[--u->nwfree] * WBUF;
}

static void u_write(Worker *w, uint8_t *b, size_t n, void *ctx)
{
    Uring *u = ctx;
    int bi = (int)((size_t)(b - u->wb) / WBUF);
    struct io_uring_sqe *q = get_sqe(&u->r, &w->c);
    if (q == NULL) {
        u->wfree[u->nwfree++] = bi;
        w->c.write_errors++;
        return;
    }
    q->opcode = opt_fixed ? IORING_OP_WRITE_FIXED : IORING_OP_WRITE;
    q->fd = w->tunfd;
    q->addr = (uint64_t)(uintptr_t)b;
    q->len = (unsigned)n;
    q->off = (uint64_t)-1;
    q->buf_index = 1;
    q->user_data = UD(OP_WRITE, bi);
}

static void u_send_ready(Worker *w, Uring *u)
{
    Sealed s[BATCH];
    SendCtx sc = {.w = w, .u = u};
    int done = 0;
    while (done < u->nready) {
        int ns = 0, first = done;
        for (; done < u->nready && ns < BATCH; done++) {
            int slot = u->ready[done];
            uint8_t *out = u->out + (size_t)slot * OUT_CAP;
            if (seal_read(w, u->rd + (size_t)slot * TUN_BUF, (size_t)u->refs[slot], out,
                          &s[ns]) == 0)
                ns++;
            u->refs[slot] = 0;
        }
        if (ns)
            gso_runs(w, s, ns, u_run, &sc);
        for (int k = first; k < done; k++) {
            int slot = u->ready[k];
            if (u->refs[slot] == 0)
                u_read(w, u, slot); /* nothing sent from it */
        }
    }
    u->nready = 0;
}

static void u_handle_recv(Worker *w, Uring *u, struct io_uring_cqe *e)
{
    if (!(e->flags & IORING_CQE_F_MORE))
        u->recv_armed = 0;
    if (e->res < 0) {
        if (e->res == -ENOBUFS)
            w->c.recv_nobufs++;
        else
            w->c.bad++;
        return;
    }
    if (!(e->flags & IORING_CQE_F_BUFFER))
        return;
    int bid = (int)(e->flags >> IORING_CQE_BUFFER_SHIFT);
    uint8_t *buf = u->rb + (size_t)bid * (RB_HDR + RX_BUF);
    struct io_uring_recvmsg_out *o = (struct io_uring_recvmsg_out *)buf;
    uint8_t *ctl = buf + sizeof(*o) + u->rmsg.msg_namelen;
    uint8_t *payload = ctl + u->rmsg.msg_controllen;
    w->c.recv_calls++;
    if (o->flags & MSG_TRUNC) {
        w->c.bad++;
    } else {
        struct msghdr h;
        memset(&h, 0, sizeof(h));
        h.msg_control = ctl;
        h.msg_controllen = o->controllen;
        open_buffer(w, payload, o->payloadlen, gro_seg(&h), u_getbuf, u_write, u);
    }
    br_add(u, bid);
}

static void *ur_main(void *arg)
{
    Worker *w = arg;
    Uring *u = calloc(1, sizeof(Uring));
    int depth = opt_depth;
    if (ring_init(&u->r, 512)) {
        fprintf(stderr, "io_uring_setup: %s\n", strerror(errno));
        exit(2);
    }
    u->slots = depth ? depth : NRDBUF;
    u->rd = malloc((size_t)u->slots * TUN_BUF);
    u->out = malloc((size_t)u->slots * OUT_CAP);
    u->refs = calloc((size_t)u->slots, sizeof(int));
    u->ready = calloc((size_t)u->slots, sizeof(int));
    u->wb = malloc((size_t)NWBUF * WBUF);
    u->groups = calloc(NGROUP, sizeof(Group));
    u->rb = malloc((size_t)NRBUF * (RB_HDR + RX_BUF));
    for (int i = 0; i < NWBUF; i++)
        u->wfree[u->nwfree++] = i;
    for (int i = 0; i < NGROUP; i++)
        u->gfree[u->ngfree++] = i;
    if (opt_fixed) {
        struct iovec regs[2] = {{u->rd, (size_t)u->slots * TUN_BUF},
                                {u->wb, (size_t)NWBUF * WBUF}};
        if (syscall(__NR_io_uring_register, u->r.fd, IORING_REGISTER_BUFFERS, regs, 2) < 0) {
            fprintf(stderr, "IORING_REGISTER_BUFFERS: %s\n", strerror(errno));
            exit(2);
        }
    }
    u->br = mmap(NULL, NRBUF * sizeof(struct io_uring_buf), PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    struct io_uring_buf_reg reg;
    memset(&reg, 0, sizeof(reg));
    reg.ring_addr = (uint64_t)(uintptr_t)u->br;
    reg.ring_entries = NRBUF;
    reg.bgid = 1;
    if (u->br == MAP_FAILED ||
        syscall(__NR_io_uring_register, u->r.fd, IORING_REGISTER_PBUF_RING, &reg, 1) < 0) {
        fprintf(stderr, "IORING_REGISTER_PBUF_RING: %s\n", strerror(errno));
        exit(2);
    }
    for (int i = 0; i < NRBUF; i++)
        br_add(u, i);
    if (depth == 0) {
        u->brd = mmap(NULL, NRDBUF * sizeof(struct io_uring_buf), PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
        memset(&reg, 0, sizeof(reg));
        reg.ring_addr = (uint64_t)(uintptr_t)u->brd;
        reg.ring_entries = NRDBUF;
        reg.bgid = 2;
        if (u->brd == MAP_FAILED ||
            syscall(__NR_io_uring_register, u->r.fd, IORING_REGISTER_PBUF_RING, &reg, 1) < 0) {
            fprintf(stderr, "IORING_REGISTER_PBUF_RING (read): %s\n", strerror(errno));
            exit(2);
        }
        for (int i = 0; i < NRDBUF; i++)
            brd_add(u, i);
        u_mread(w, u);
    }
    u->rmsg.msg_namelen = sizeof(struct sockaddr_in);
    u->rmsg.msg_controllen = 64 - sizeof(struct sockaddr_in) + 16;
    for (int i = 0; i < depth; i++)
        u_read(w, u, i);
    u_recv(w, u);
    while (!stop_flag) {
        int n = ring_enter(&u->r, 1, &w->c);
        w->c.waits++;
        if (n < 0 && errno != ETIME && errno != EINTR && errno != EBUSY) {
            fprintf(stderr, "io_uring_enter: %s\n", strerror(errno));
            exit(2);
        }
        unsigned head = *u->r.cq_head;
        unsigned tail = __atomic_load_n(u->r.cq_tail, __ATOMIC_ACQUIRE);
        while (head != tail) {
            for (; head != tail; head++) {
                struct io_uring_cqe *e = &u->r.cqes[head & *u->r.cq_mask];
                int op = (int)(e->user_data >> 32), idx = (int)(uint32_t)e->user_data;
                if (op == OP_MREAD) {
                    if (!(e->flags & IORING_CQE_F_MORE))
                        u->read_armed = 0;
                    if (e->res > 0 && (e->flags & IORING_CQE_F_BUFFER)) {
                        int bid = (int)(e->flags >> IORING_CQE_BUFFER_SHIFT);
                        w->c.tun_reads++;
                        w->c.tun_read_bytes += (uint64_t)e->res;
                        u->refs[bid] = e->res;
                        u->ready[u->nready++] = bid;
                    } else if (e->res == -ENOBUFS) {
                        w->c.read_nobufs++;
                    } else if (e->res < 0 && e->res != -EAGAIN) {
                        fprintf(stderr, "multishot read: %s\n", strerror(-e->res));
                        exit(2);
                    }
                } else if (op == OP_READ) {
                    if (e->res > 0) {
                        w->c.tun_reads++;
                        w->c.tun_read_bytes += (uint64_t)e->res;
                        u->refs[idx] = e->res; /* the length, until sealed */
                        u->ready[u->nready++] = idx;
                    } else {
                        u_read(w, u, idx);
                    }
                } else if (op == OP_SEND) {
                    Group *g = &u->groups[idx];
                    if (e->res < 0)
                        w->c.send_errors += g->count;
                    else
                        w->c.sent_msgs += g->count;
                    w->c.send_calls++;
                    for (int k = 0; k < g->nslots; k++)
                        if (--u->refs[g->slots[k]] == 0)
                            u_read(w, u, g->slots[k]);
                    u->gfree[u->ngfree++] = idx;
                } else if (op == OP_WRITE) {
                    if (e->res < 0)
                        w->c.write_errors++;
                    else
                        w->c.tun_writes++;
                    u->wfree[u->nwfree++] = idx;
                } else if (op == OP_RECV) {
                    u_handle_recv(w, u, e);
                }
            }
            __atomic_store_n(u->r.cq_head, head, __ATOMIC_RELEASE);
            tail = __atomic_load_n(u->r.cq_tail, __ATOMIC_ACQUIRE);
        }
        if (u->nready)
            u_send_ready(w, u);
        if (!u->recv_armed)
            u_recv(w, u);
        if (depth == 0 && !u->read_armed)
            u_mread(w, u);
    }
    return NULL;
}

/* ------------------------------------------------------------------- setup ---- */

static int open_tun(const char *name, int mq, int nonblock)
{
    int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC | (nonblock ? O_NONBLOCK : 0));
    if (fd < 0)
        return -1;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof(ifr));
    snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name);
    ifr.ifr_flags = IFF_TUN | IFF_NO_PI | IFF_VNET_HDR | (mq ? IFF_MULTI_QUEUE : 0);
    int hdr = VNET;
    if (ioctl(fd, TUNSETIFF, &ifr) < 0 || ioctl(fd, TUNSETVNETHDRSZ, &hdr) < 0 ||
        ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static int open_udp(int port, int nonblock, int reuseport)
{
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC | (nonblock ? SOCK_NONBLOCK : 0), 0);
    if (fd < 0)
        return -1;
    int one = 1, size = 4 << 20;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0) {
        close(fd);
        return -1;
    }
    setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof(size));
    setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof(size));
    if (setsockopt(fd, SOL_UDP, UDP_GRO, &one, sizeof(one)) < 0)
        fprintf(stderr, "UDP_GRO: %s\n", strerror(errno));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static void usage(void)
{
    fprintf(stderr, "usage: io_eval --mode epoll|uring --tun NAME --peer IPV4 --port P "
                    "[--queues N] [--mq 0|1] [--shared-port 0|1] [--crypto 0|1] [--depth D] "
                    "[--fixed 0|1]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *mode = NULL, *tun = NULL, *peer = NULL;
    int port = 0, queues = 1, mq = 0, shared_port = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "--mode"))
            mode = v;
        else if (!strcmp(k, "--tun"))
            tun = v;
        else if (!strcmp(k, "--peer"))
            peer = v;
        else if (!strcmp(k, "--port"))
            port = atoi(v);
        else if (!strcmp(k, "--queues"))
            queues = atoi(v);
        else if (!strcmp(k, "--mq"))
            mq = atoi(v);
        else if (!strcmp(k, "--shared-port"))
            shared_port = atoi(v);
        else if (!strcmp(k, "--crypto"))
            opt_crypto = atoi(v);
        else if (!strcmp(k, "--depth"))
            opt_depth = atoi(v);
        else if (!strcmp(k, "--fixed"))
            opt_fixed = atoi(v);
        else
            usage();
    }
    if (argc % 2 == 0 || !mode || !tun || !peer || port <= 0 || queues < 1 || queues > 16 ||
        opt_depth < 0 || opt_depth > BATCH)
        usage();
    int uring = !strcmp(mode, "uring");
    if (!uring && strcmp(mode, "epoll"))
        usage();
    if (queues > 1)
        mq = 1;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    Worker *ws = calloc((size_t)queues, sizeof(Worker));
    for (int i = 0; i < queues; i++) {
        Worker *w = &ws[i];
        w->id = i;
        w->uring = uring;
        w->tunfd = open_tun(tun, mq, !uring);
        int p = shared_port ? port : port + i;
        w->udpfd = open_udp(p, !uring, shared_port);
        if (w->tunfd < 0 || w->udpfd < 0) {
            fprintf(stderr, "setup of queue %d failed: %s\n", i, strerror(errno));
            return 2;
        }
        w->peer.sin_family = AF_INET;
        w->peer.sin_port = htons((uint16_t)p);
        if (inet_pton(AF_INET, peer, &w->peer.sin_addr) != 1)
            usage();
        w->enc = EVP_CIPHER_CTX_new();
        w->dec = EVP_CIPHER_CTX_new();
        EVP_EncryptInit_ex(w->enc, EVP_chacha20_poly1305(), NULL, KEY, NULL);
        EVP_DecryptInit_ex(w->dec, EVP_chacha20_poly1305(), NULL, KEY, NULL);
        if (!uring) {
            w->rbuf = malloc(TUN_BUF);
            w->out = malloc((size_t)BATCH * OUT_CAP);
            w->rx = malloc((size_t)BATCH * RX_BUF);
            w->wbuf = malloc(WBUF);
        }
    }
    printf("ready\n");
    fflush(stdout);
    for (int i = 0; i < queues; i++)
        pthread_create(&ws[i].th, NULL, uring ? ur_main : ep_main, &ws[i]);
    int sig;
    sigwait(&set, &sig);
    stop_flag = 1;
    Counters t;
    memset(&t, 0, sizeof(t));
    for (int i = 0; i < queues; i++) {
        pthread_join(ws[i].th, NULL);
        uint64_t *a = (uint64_t *)&t, *b = (uint64_t *)&ws[i].c;
        for (size_t k = 0; k < sizeof(Counters) / sizeof(uint64_t); k++)
            a[k] += b[k];
    }
    printf("{\"mode\": \"%s\", \"queues\": %d, \"crypto\": %d, \"fixed\": %d, \"depth\": %d, "
           "\"tun_reads\": %lu, \"tun_read_bytes\": %lu, \"gso_reads\": %lu, \"sealed\": %lu, "
           "\"sent_msgs\": %lu, \"send_calls\": %lu, \"send_errors\": %lu, \"udp_bufs\": %lu, "
           "\"recv_calls\": %lu, \"opened\": %lu, \"opened_bytes\": %lu, \"auth_fail\": %lu, "
           "\"bad\": %lu, "
           "\"tun_writes\": %lu, \"gso_writes\": %lu, \"write_errors\": %lu, \"waits\": %lu, "
           "\"enters\": %lu, \"recv_nobufs\": %lu, \"read_nobufs\": %lu}\n",
           mode, queues, opt_crypto, opt_fixed, opt_depth, t.tun_reads, t.tun_read_bytes,
           t.gso_reads, t.sealed, t.sent_msgs, t.send_calls, t.send_errors, t.udp_bufs,
           t.recv_calls, t.opened, t.opened_bytes, t.auth_fail, t.bad, t.tun_writes, t.gso_writes,
           t.write_errors, t.waits, t.enters, t.recv_nobufs, t.read_nobufs);
    printf("{\"queue_sealed\": [");
    for (int i = 0; i < queues; i++)
        printf("%s%lu", i ? ", " : "", ws[i].c.sealed);
    printf("], \"queue_opened\": [");
    for (int i = 0; i < queues; i++)
        printf("%s%lu", i ? ", " : "", ws[i].c.opened);
    printf("]}\n");
    fflush(stdout);
    return 0;
}
