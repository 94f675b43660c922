/* meshguard.dataplane._fastpath: the data plane's batched inner loops in C.
 *
 * The same API as meshguard/dataplane/fastpath.py's pure Python implementation, which is the
 * reference (tests compare both byte for byte):
 *
 *   Cipher(key)                         ChaCha20-Poly1305 under one key (OpenSSL EVP contexts
 *                                       built once); .seal(counter, pt) / .open(counter, ct)
 *   checksum(data, initial=0)           internet checksum (RFC 1071) plus an unfolded sum
 *   segment_count(buf, vnet=True)       how many IP packets a TUN read yields
 *   seal_segments(cipher, receiver, first, buf, vnet=True) -> (data, seg_size, count)
 *                                       split a TUN read (virtio-net header + packet) into
 *                                       packets (TSO/USO split, checksum completion) and seal
 *                                       each as a WireGuard transport message; the messages
 *                                       are back to back, all seg_size bytes but the last
 *                                       (ready for one UDP GSO send)
 *   open_batch(cipher, buf, seg_size, receiver, offset=0) -> (end, results)
 *                                       open consecutive transport messages of `receiver` in a
 *                                       GRO buffer; results: (counter, status, packet, source,
 *                                       wire length) per message
 *   coalesce(packets, verify=True)      merge TCP segments into virtio-net GSO writes
 *   PolicyFilter(...)                   policy enforcement and connection tracking
 *                                       (_fastpath_policy.c, included below; the twin of
 *                                       dataplane/policy_filter.py)
 *
 * Protocol policy (replay window, routing, timers) stays in Python.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <string.h>

#define VNET_HDR_LEN 10
#define F_NEEDS_CSUM 1
#define GSO_NONE 0
#define GSO_TCPV4 1
#define GSO_TCPV6 4
#define GSO_UDP_L4 5
#define GSO_ECN 0x80
#define TCP_FIN 0x01
#define TCP_PSH 0x08
#define TCP_ACK 0x10
#define TCP_CWR 0x80
#define MAX_SUPER 65535
#define ST_OK 0
#define ST_KEEPALIVE 1
#define ST_BAD_AUTH 2
#define ST_BAD_INNER 3

/* ---------------------------------------------------------------- checksums ---- */

/* A number congruent modulo 0xFFFF to the sum of the little-endian 16-bit words of p (an odd
 * tail byte is the low byte of a last word); zero only for all-zero data. 2**32 is 1 modulo
 * 0xFFFF, so summing 32-bit words is enough. */
static uint64_t le_sum(const uint8_t *p, size_t n)
{
    uint64_t s = 0;
    while (n >= 4) {
        uint32_t w;
        memcpy(&w, p, 4);
        s += w;
        p += 4;
        n -= 4;
    }
    if (n >= 2) {
        uint16_t w;
        memcpy(&w, p, 2);
        s += w;
        p += 2;
        n -= 2;
    }
    if (n)
        s += p[0];
    return s;
}

/* The big-endian word sum modulo 0xFFFF: swapping the bytes of a word is multiplying by 256
 * modulo 0xFFFF. (Assumes a little-endian host, as the virtio-net header code does.) */
static uint32_t be_mod(const uint8_t *p, size_t n)
{
    return (uint32_t)(((le_sum(p, n) % 0xFFFF) * 256) % 0xFFFF);
}

static uint16_t finish(uint64_t v)
{
    uint32_t r = (uint32_t)(v % 0xFFFF);
    return r ? (uint16_t)(0xFFFF - r) : 0;
}

static inline void put16(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static inline uint32_t get16(const uint8_t *p) { return ((uint32_t)p[0] << 8) | p[1]; }

static inline uint32_t get32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static inline uint32_t le16(const uint8_t *p) { return (uint32_t)p[0] | ((uint32_t)p[1] << 8); }

static inline uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static inline uint64_t le64(const uint8_t *p)
{
    return (uint64_t)le32(p) | ((uint64_t)le32(p + 4) << 32);
}

/* pseudo-header addresses of an IPv4 (version 4) or IPv6 packet, as a sum modulo 0xFFFF */
static uint32_t addr_sum(const uint8_t *pkt)
{
    if ((pkt[0] >> 4) == 4)
        return be_mod(pkt + 12, 8);
    return be_mod(pkt + 8, 32);
}

static void ipv4_csum(uint8_t *hdr, size_t ihl)
{
    hdr[10] = hdr[11] = 0;
    put16(hdr + 10, finish(be_mod(hdr, ihl)));
}

static PyObject *fp_checksum(PyObject *self, PyObject *args)
{
    Py_buffer b;
    PyObject *initial = NULL;
    if (!PyArg_ParseTuple(args, "y*|O!", &b, &PyLong_Type, &initial))
        return NULL;
    uint64_t raw = le_sum(b.buf, (size_t)b.len);
    uint32_t data_mod = (uint32_t)(((raw % 0xFFFF) * 256) % 0xFFFF);
    PyBuffer_Release(&b);
    uint32_t init_mod = 0;
    int init_nonzero = 0;
    if (initial != NULL) {
        PyObject *zero = PyLong_FromLong(0);
        int neg = PyObject_RichCompareBool(initial, zero, Py_LT);
        init_nonzero = PyObject_RichCompareBool(initial, zero, Py_NE);
        Py_DECREF(zero);
        if (neg) {
            PyErr_SetString(PyExc_ValueError, "initial must not be negative");
            return NULL;
        }
        PyObject *m = PyLong_FromLong(0xFFFF);
        PyObject *r = PyNumber_Remainder(initial, m);
        Py_DECREF(m);
        if (r == NULL)
            return NULL;
        init_mod = (uint32_t)PyLong_AsUnsignedLong(r);
        Py_DECREF(r);
    }
    uint32_t sum;
    if (raw == 0 && !init_nonzero)
        sum = 0;
    else {
        sum = (data_mod + init_mod) % 0xFFFF;
        if (sum == 0)
            sum = 0xFFFF;
    }
    return PyLong_FromUnsignedLong(0xFFFF - sum);
}

/* ---------------------------------------------------------- TCP MSS clamp ---- */

/* The twin of wire/tcp_mss.py's clamp (identical bytes): lower the first MSS option of a TCP
 * SYN (IPv4 not fragmented, IPv6 without extension headers) to mtu - 40 (IPv4) or mtu - 60
 * (IPv6), in place; every length is checked before it is read. The checksum is computed again
 * unless `partial` (a NEEDS_CSUM read whose checksum the data path completes). 1: changed. */
static int clamp_mss(uint8_t *pkt, size_t n, int mtu, int partial)
{
    if (mtu <= 0 || n < 20)
        return 0;
    size_t l4, end, hdrs;
    int ver = pkt[0] >> 4;
    if (ver == 4) {
        l4 = (size_t)(pkt[0] & 15) * 4;
        if (l4 < 20 || pkt[9] != 6 || (get16(pkt + 6) & 0x3FFF))
            return 0;
        end = get16(pkt + 2);
        if (end > n || end < l4)
            return 0;
        hdrs = 40;
    } else if (ver == 6) {
        if (n < 40 || pkt[6] != 6)
            return 0;
        end = 40 + get16(pkt + 4);
        if (end > n)
            return 0;
        l4 = 40;
        hdrs = 60;
    } else {
        return 0;
    }
    if (l4 + 20 > end || !(pkt[l4 + 13] & 0x02))
        return 0;
    if ((size_t)mtu <= hdrs)
        return 0;
    uint32_t ceiling = (uint32_t)((size_t)mtu - hdrs);
    size_t thl = (size_t)(pkt[l4 + 12] >> 4) * 4;
    if (thl < 20 || l4 + thl > end)
        return 0;
    size_t i = l4 + 20, opt_end = l4 + thl;
    while (i < opt_end) {
        uint8_t kind = pkt[i];
        if (kind == 0)
            break;
        if (kind == 1) {
            i++;
            continue;
        }
        if (i + 1 >= opt_end)
            break;
        size_t olen = pkt[i + 1];
        if (olen < 2 || i + olen > opt_end)
            break;
        if (kind == 2 && olen == 4) {
            if (get16(pkt + i + 2) <= ceiling)
                return 0;
            put16(pkt + i + 2, ceiling);
            if (!partial) {
                uint8_t *t = pkt + l4;
                size_t tl = end - l4;
                t[16] = t[17] = 0;
                uint64_t sum = addr_sum(pkt) + 6 + (uint64_t)tl + be_mod(t, tl);
                put16(t + 16, finish(sum));
            }
            return 1;
        }
        i += olen;
    }
    return 0;
}

static PyObject *fp_clamp_mss(PyObject *self, PyObject *args)
{
    Py_buffer b;
    int mtu, off = 0, partial = 0;
    if (!PyArg_ParseTuple(args, "y*i|ip", &b, &mtu, &off, &partial))
        return NULL;
    if (off < 0 || (Py_ssize_t)off > b.len) {
        PyBuffer_Release(&b);
        PyErr_SetString(PyExc_ValueError, "offset outside the packet");
        return NULL;
    }
    PyObject *out = PyBytes_FromStringAndSize(b.buf, b.len);
    PyBuffer_Release(&b);
    if (out == NULL)
        return NULL;
    uint8_t *d = (uint8_t *)PyBytes_AS_STRING(out);
    clamp_mss(d + off, (size_t)PyBytes_GET_SIZE(out) - (size_t)off, mtu, partial);
    return out;
}

/* ------------------------------------------------------------------- cipher ---- */

typedef struct {
    PyObject_HEAD
    EVP_CIPHER_CTX *enc;
    EVP_CIPHER_CTX *dec;
} CipherObject;

static PyTypeObject CipherType;

static void cipher_dealloc(CipherObject *self)
{
    if (self->enc)
        EVP_CIPHER_CTX_free(self->enc);
    if (self->dec)
        EVP_CIPHER_CTX_free(self->dec);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int cipher_init(CipherObject *self, PyObject *args, PyObject *kw)
{
    Py_buffer key;
    if (!PyArg_ParseTuple(args, "y*", &key))
        return -1;
    if (key.len != 32) {
        PyBuffer_Release(&key);
        PyErr_SetString(PyExc_ValueError, "ChaCha20-Poly1305 key must be 32 bytes");
        return -1;
    }
    if (self->enc == NULL)
        self->enc = EVP_CIPHER_CTX_new();
    if (self->dec == NULL)
        self->dec = EVP_CIPHER_CTX_new();
    int ok = self->enc && self->dec &&
             EVP_EncryptInit_ex(self->enc, EVP_chacha20_poly1305(), NULL, key.buf, NULL) == 1 &&
             EVP_DecryptInit_ex(self->dec, EVP_chacha20_poly1305(), NULL, key.buf, NULL) == 1;
    PyBuffer_Release(&key);
    if (!ok) {
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL ChaCha20-Poly1305 unavailable");
        return -1;
    }
    return 0;
}

static void nonce_of(uint8_t nonce[12], uint64_t counter)
{
    memset(nonce, 0, 4);
    for (int i = 0; i < 8; i++)
        nonce[4 + i] = (uint8_t)(counter >> (8 * i));
}

/* in place: n bytes at p encrypted, 16-byte tag written at p + n */
static int seal_inplace(CipherObject *c, uint64_t counter, uint8_t *p, size_t n)
{
    uint8_t nonce[12];
    int outl;
    nonce_of(nonce, counter);
    if (EVP_EncryptInit_ex(c->enc, NULL, NULL, NULL, nonce) != 1)
        return -1;
    if (n && EVP_EncryptUpdate(c->enc, p, &outl, p, (int)n) != 1)
        return -1;
    if (EVP_EncryptFinal_ex(c->enc, p + n, &outl) != 1)
        return -1;
    if (EVP_CIPHER_CTX_ctrl(c->enc, EVP_CTRL_AEAD_GET_TAG, 16, p + n) != 1)
        return -1;
    return 0;
}

/* ct (n bytes, tag included) -> out (n - 16 bytes); 0 when it authenticates */
static int open_to(CipherObject *c, uint64_t counter, const uint8_t *ct, size_t n, uint8_t *out)
{
    uint8_t nonce[12];
    uint8_t tag[16];
    int outl;
    if (n < 16)
        return -1;
    nonce_of(nonce, counter);
    memcpy(tag, ct + n - 16, 16);
    if (EVP_DecryptInit_ex(c->dec, NULL, NULL, NULL, nonce) != 1)
        return -1;
    if (EVP_CIPHER_CTX_ctrl(c->dec, EVP_CTRL_AEAD_SET_TAG, 16, tag) != 1)
        return -1;
    if (n > 16 && EVP_DecryptUpdate(c->dec, out, &outl, ct, (int)(n - 16)) != 1)
        return -1;
    if (EVP_DecryptFinal_ex(c->dec, out + (n - 16), &outl) != 1)
        return -1;
    return 0;
}

static PyObject *cipher_seal(CipherObject *self, PyObject *args)
{
    unsigned long long counter;
    Py_buffer pt;
    if (!PyArg_ParseTuple(args, "Ky*", &counter, &pt))
        return NULL;
    PyObject *out = PyBytes_FromStringAndSize(NULL, pt.len + 16);
    if (out == NULL) {
        PyBuffer_Release(&pt);
        return NULL;
    }
    uint8_t *o = (uint8_t *)PyBytes_AS_STRING(out);
    memcpy(o, pt.buf, (size_t)pt.len);
    int r = seal_inplace(self, counter, o, (size_t)pt.len);
    PyBuffer_Release(&pt);
    if (r) {
        Py_DECREF(out);
        PyErr_SetString(PyExc_RuntimeError, "seal failed");
        return NULL;
    }
    return out;
}

static PyObject *cipher_open(CipherObject *self, PyObject *args)
{
    unsigned long long counter;
    Py_buffer ct;
    if (!PyArg_ParseTuple(args, "Ky*", &counter, &ct))
        return NULL;
    if (ct.len < 16) {
        PyBuffer_Release(&ct);
        Py_RETURN_NONE;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, ct.len - 16);
    if (out == NULL) {
        PyBuffer_Release(&ct);
        return NULL;
    }
    int r = open_to(self, counter, ct.buf, (size_t)ct.len, (uint8_t *)PyBytes_AS_STRING(out));
    PyBuffer_Release(&ct);
    if (r) {
        Py_DECREF(out);
        Py_RETURN_NONE;
    }
    return out;
}

static PyMethodDef cipher_methods[] = {
    {"seal", (PyCFunction)cipher_seal, METH_VARARGS,
     "seal(counter, plaintext) -> ciphertext + tag (WireGuard nonce, no associated data)"},
    {"open", (PyCFunction)cipher_open, METH_VARARGS,
     "open(counter, ciphertext) -> plaintext, or None when it does not authenticate"},
    {NULL, NULL, 0, NULL}};

static PyObject *cipher_repr(PyObject *self) { return PyUnicode_FromString("Cipher(<redacted>)"); }

static PyTypeObject CipherType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "meshguard.dataplane._fastpath.Cipher",
    .tp_basicsize = sizeof(CipherObject),
    .tp_dealloc = (destructor)cipher_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "ChaCha20-Poly1305 under one transport key (WireGuard counter nonces)",
    .tp_methods = cipher_methods,
    .tp_init = (initproc)cipher_init,
    .tp_new = PyType_GenericNew,
    .tp_repr = cipher_repr,
};

/* ------------------------------------------------------------- segmentation ---- */

typedef struct {
    int kind;        /* 0 plain copy, 1 complete checksum, 2 TCP split, 3 UDP split */
    const uint8_t *pkt;
    size_t n;
    size_t l4, hl;   /* transport offset, header length (IP + TCP/UDP) */
    size_t mss;
    size_t count;
    size_t csum_start, csum_offset;
} Plan;

/* the plan of a TUN read; on a malformed read -1 with *err the reason (no Python call: the
 * data-path thread uses it without the GIL) */
#define bad(msg) (*err = (msg), -1)

static int plan_of(const uint8_t *buf, size_t len, int vnet, Plan *pl, const char **err)
{
    memset(pl, 0, sizeof(*pl));
    if (!vnet) {
        pl->kind = 0;
        pl->pkt = buf;
        pl->n = len;
        pl->count = 1;
        return 0;
    }
    if (len < VNET_HDR_LEN)
        return bad("short read from a vnet-hdr TUN");
    uint32_t flags = buf[0], gso_type = buf[1];
    uint32_t gso_size = le16(buf + 4), cstart = le16(buf + 6), coff = le16(buf + 8);
    const uint8_t *pkt = buf + VNET_HDR_LEN;
    size_t n = len - VNET_HDR_LEN;
    pl->pkt = pkt;
    pl->n = n;
    pl->count = 1;
    uint32_t gso = gso_type & ~GSO_ECN;
    if (gso == GSO_NONE) {
        if (flags & F_NEEDS_CSUM) {
            if ((size_t)cstart + coff + 2 > n)
                return bad("checksum offsets outside the packet");
            pl->kind = 1;
            pl->csum_start = cstart;
            pl->csum_offset = coff;
        }
        return 0;
    }
    if (n < 20)
        return bad("GSO packet too short");
    uint32_t ver = pkt[0] >> 4;
    if (ver != 4 && ver != 6)
        return bad("GSO packet is neither IPv4 nor IPv6");
    if ((gso == GSO_TCPV4 && ver == 6) || (gso == GSO_TCPV6 && ver == 4))
        return bad("GSO type does not match the IP version");
    size_t l4;
    if (flags & F_NEEDS_CSUM)
        l4 = cstart;
    else
        l4 = ver == 4 ? (size_t)(pkt[0] & 0x0F) * 4 : 40;
    if (ver == 6 && (n < 40 || l4 < 40))
        return bad("IPv6 GSO packet with a short header");
    if (l4 & 1)
        return bad("odd transport header offset");
    if (gso == GSO_TCPV4 || gso == GSO_TCPV6) {
        if (l4 < 20 || l4 + 20 > n)
            return bad("TCP header outside the packet");
        size_t thl = (size_t)(pkt[l4 + 12] >> 4) * 4;
        if (thl < 20 || l4 + thl > n)
            return bad("bad TCP data offset");
        if (gso_size == 0)
            return bad("GSO packet without gso_size");
        pl->kind = 2;
        pl->hl = l4 + thl;
    } else if (gso == GSO_UDP_L4) {
        if (l4 < 20 || l4 + 8 > n)
            return bad("UDP header outside the packet");
        if (gso_size == 0)
            return bad("GSO packet without gso_size");
        pl->kind = 3;
        pl->hl = l4 + 8;
    } else {
        return bad("unsupported GSO type");
    }
    pl->l4 = l4;
    pl->mss = gso_size;
    size_t payload = n - pl->hl;
    pl->count = payload == 0 ? 1 : (payload + gso_size - 1) / gso_size;
    return 0;
}
#undef bad

static int make_plan(const uint8_t *buf, size_t len, int vnet, Plan *pl)
{
    const char *err = NULL;
    if (plan_of(buf, len, vnet, pl, &err)) {
        PyErr_SetString(PyExc_ValueError, err);
        return -1;
    }
    return 0;
}

static size_t plan_msg_len(size_t inner)
{
    return 16 + ((inner + 15) & ~(size_t)15) + 16;
}

/* writes segment i (IP packet) at out; returns its length */
static size_t write_segment(const Plan *pl, size_t i, uint8_t *out)
{
    const uint8_t *pkt = pl->pkt;
    if (pl->kind == 0) {
        memcpy(out, pkt, pl->n);
        return pl->n;
    }
    if (pl->kind == 1) {
        memcpy(out, pkt, pl->n);
        uint8_t *d = out + pl->csum_start;
        size_t dn = pl->n - pl->csum_start;
        uint64_t raw = le_sum(d, dn);
        uint32_t c;
        if (raw == 0)
            c = 0xFFFF;
        else {
            uint32_t r = (uint32_t)(((raw % 0xFFFF) * 256) % 0xFFFF);
            c = r ? 0xFFFF - r : 0;
        }
        if (c == 0 && pl->csum_offset == 6)
            c = 0xFFFF;
        put16(out + pl->csum_start + pl->csum_offset, c);
        return pl->n;
    }
    size_t l4 = pl->l4, hl = pl->hl;
    size_t payload = pl->n - hl;
    size_t off = i * pl->mss;
    size_t end = off + pl->mss;
    int last = end >= payload;
    if (last)
        end = payload;
    size_t seg_len = hl + end - off;
    int v4 = (pkt[0] >> 4) == 4;
    memcpy(out, pkt, hl);
    memcpy(out + hl, pkt + hl + off, end - off);
    if (v4) {
        put16(out + 2, (uint32_t)seg_len);
        put16(out + 4, (get16(pkt + 4) + (uint32_t)i) & 0xFFFF);
        ipv4_csum(out, l4);
    } else {
        put16(out + 4, (uint32_t)(seg_len - 40));
    }
    uint32_t proto;
    size_t csum_at;
    if (pl->kind == 2) {
        proto = 6;
        csum_at = l4 + 16;
        put32(out + l4 + 4, (get32(pkt + l4 + 4) + (uint32_t)off));
        uint8_t f = pkt[l4 + 13];
        if (!last)
            f &= (uint8_t)~(TCP_FIN | TCP_PSH);
        if (i)
            f &= (uint8_t)~TCP_CWR;
        out[l4 + 13] = f;
    } else {
        proto = 17;
        csum_at = l4 + 6;
        put16(out + l4 + 4, (uint32_t)(seg_len - l4));
    }
    out[csum_at] = out[csum_at + 1] = 0;
    uint64_t v = (uint64_t)be_mod(out + l4, hl - l4) + be_mod(out + hl, end - off) +
                 addr_sum(pkt) + proto + (seg_len - l4);
    uint32_t c = finish(v);
    if (pl->kind == 3 && c == 0)
        c = 0xFFFF;
    put16(out + csum_at, c);
    return seg_len;
}

static size_t seg_inner_len(const Plan *pl, size_t i)
{
    if (pl->kind < 2)
        return pl->n;
    size_t payload = pl->n - pl->hl;
    size_t off = i * pl->mss;
    size_t end = off + pl->mss;
    if (end > payload)
        end = payload;
    return pl->hl + end - off;
}

static PyObject *fp_segment_count(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"buf", "vnet", NULL};
    Py_buffer b;
    int vnet = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "y*|p", kwlist, &b, &vnet))
        return NULL;
    Plan pl;
    int r = make_plan(b.buf, (size_t)b.len, vnet, &pl);
    PyBuffer_Release(&b);
    if (r)
        return NULL;
    return PyLong_FromSize_t(pl.count);
}

static PyObject *fp_seal_segments(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"cipher", "receiver", "first", "buf", "vnet", NULL};
    PyObject *cobj;
    unsigned long receiver;
    unsigned long long first;
    Py_buffer b;
    int vnet = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!kKy*|p", kwlist, &CipherType, &cobj, &receiver,
                                     &first, &b, &vnet))
        return NULL;
    CipherObject *c = (CipherObject *)cobj;
    Plan pl;
    if (make_plan(b.buf, (size_t)b.len, vnet, &pl)) {
        PyBuffer_Release(&b);
        return NULL;
    }
    size_t total = 0;
    size_t seg_size = plan_msg_len(seg_inner_len(&pl, 0));
    for (size_t i = 0; i < pl.count; i++)
        total += plan_msg_len(seg_inner_len(&pl, i));
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
    if (out == NULL) {
        PyBuffer_Release(&b);
        return NULL;
    }
    uint8_t *o = (uint8_t *)PyBytes_AS_STRING(out);
    int failed = 0;
    Py_BEGIN_ALLOW_THREADS
    for (size_t i = 0; i < pl.count; i++) {
        uint64_t counter = first + i;
        size_t inner = write_segment(&pl, i, o + 16);
        size_t padded = (inner + 15) & ~(size_t)15;
        memset(o + 16 + inner, 0, padded - inner);
        o[0] = 4;
        o[1] = o[2] = o[3] = 0;
        for (int k = 0; k < 4; k++)
            o[4 + k] = (uint8_t)(receiver >> (8 * k));
        for (int k = 0; k < 8; k++)
            o[8 + k] = (uint8_t)(counter >> (8 * k));
        if (seal_inplace(c, counter, o + 16, padded)) {
            failed = 1;
            break;
        }
        o += 32 + padded;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&b);
    if (failed) {
        Py_DECREF(out);
        PyErr_SetString(PyExc_RuntimeError, "seal failed");
        return NULL;
    }
    return Py_BuildValue("(Nnn)", out, (Py_ssize_t)seg_size, (Py_ssize_t)pl.count);
}

/* -------------------------------------------------------------- open_batch ---- */

static PyObject *fp_open_batch(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"cipher", "buf", "seg_size", "receiver", "offset", NULL};
    PyObject *cobj;
    Py_buffer b;
    Py_ssize_t seg, offset = 0;
    unsigned long receiver;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!y*nk|n", kwlist, &CipherType, &cobj, &b, &seg,
                                     &receiver, &offset))
        return NULL;
    CipherObject *c = (CipherObject *)cobj;
    const uint8_t *buf = b.buf;
    size_t n = (size_t)b.len;
    size_t pos = offset < 0 ? 0 : (size_t)offset;
    PyObject *results = PyList_New(0);
    uint8_t *scratch = NULL;
    if (results == NULL)
        goto fail;
    scratch = PyMem_Malloc(65536);
    if (scratch == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    while (pos < n) {
        size_t dlen = n - pos;
        if (seg > 0 && (size_t)seg < dlen)
            dlen = (size_t)seg;
        const uint8_t *d = buf + pos;
        if (dlen < 32 || le32(d) != 4 || le32(d + 4) != (uint32_t)receiver || dlen - 32 > 65536)
            break;
        uint64_t counter = le64(d + 8);
        size_t ptlen = dlen - 32;
        int st;
        PyObject *pkt = NULL, *src = NULL;
        if (open_to(c, counter, d + 16, dlen - 16, scratch)) {
            st = ST_BAD_AUTH;
        } else if (ptlen == 0) {
            st = ST_KEEPALIVE;
        } else {
            uint32_t ver = scratch[0] >> 4;
            size_t total = 0;
            st = ST_BAD_INNER;
            if (ver == 4 && ptlen >= 20) {
                total = get16(scratch + 2);
                if (total >= 20 && total <= ptlen) {
                    st = ST_OK;
                    src = PyBytes_FromStringAndSize((char *)scratch + 12, 4);
                }
            } else if (ver == 6 && ptlen >= 40) {
                total = 40 + get16(scratch + 4);
                if (total <= ptlen) {
                    st = ST_OK;
                    src = PyBytes_FromStringAndSize((char *)scratch + 8, 16);
                }
            }
            if (st == ST_OK) {
                if (src == NULL)
                    goto fail;
                pkt = PyBytes_FromStringAndSize((char *)scratch, (Py_ssize_t)total);
                if (pkt == NULL) {
                    Py_DECREF(src);
                    goto fail;
                }
            }
        }
        if (pkt == NULL) {
            pkt = st == ST_KEEPALIVE ? PyBytes_FromStringAndSize(NULL, 0) : Py_NewRef(Py_None);
            if (pkt == NULL)
                goto fail;
        }
        if (src == NULL)
            src = Py_NewRef(Py_None);
        PyObject *item = Py_BuildValue("(KiNNn)", (unsigned long long)counter, st, pkt, src,
                                       (Py_ssize_t)dlen);
        if (item == NULL || PyList_Append(results, item)) {
            Py_XDECREF(item);
            goto fail;
        }
        Py_DECREF(item);
        pos += dlen;
    }
    PyMem_Free(scratch);
    PyBuffer_Release(&b);
    return Py_BuildValue("(nN)", (Py_ssize_t)pos, results);
fail:
    PyMem_Free(scratch);
    Py_XDECREF(results);
    PyBuffer_Release(&b);
    return NULL;
}

/* ---------------------------------------------------------------- coalesce ---- */

typedef struct {
    const uint8_t *p;
    size_t n;
    int next; /* next packet of the same group, -1 */
} Pkt;

typedef struct {
    int first, last, count;
    int closed;
    size_t l4, hl, mss, size;
    uint32_t next_seq;
} Group;

/* (l4, hl, payload) of a coalescable TCP packet; 0 when it is not one */
static int tcp_view(const uint8_t *p, size_t n, size_t *l4, size_t *hl, size_t *plen)
{
    if (n < 40)
        return 0;
    if (p[0] == 0x45) {
        if (p[9] != 6 || get16(p + 2) != n)
            return 0;
        if ((p[6] & 0x3F) || p[7])
            return 0;
        *l4 = 20;
    } else if ((p[0] >> 4) == 6) {
        if (n < 60 || p[6] != 6 || get16(p + 4) != n - 40)
            return 0;
        *l4 = 40;
    } else {
        return 0;
    }
    size_t thl = (size_t)(p[*l4 + 12] >> 4) * 4;
    if (thl < 20 || *l4 + thl > n)
        return 0;
    *hl = *l4 + thl;
    *plen = n - *hl;
    return 1;
}

/* the merge signature of two packets with the same l4 and hl is equal */
static int same_sig(const uint8_t *a, const uint8_t *b, size_t l4, size_t hl)
{
    if (l4 == 20)
        return !memcmp(a, b, 2) && !memcmp(a + 6, b + 6, 4) && !memcmp(a + 12, b + 12, 12) &&
               !memcmp(a + 28, b + 28, 5) && !memcmp(a + 34, b + 34, 2) &&
               !memcmp(a + 38, b + 38, hl - 38);
    return !memcmp(a, b, 4) && !memcmp(a + 6, b + 6, 38) && !memcmp(a + 48, b + 48, 5) &&
           !memcmp(a + 54, b + 54, 2) && !memcmp(a + 58, b + 58, hl - 58);
}

static uint64_t flow_hash(const uint8_t *k, size_t n)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++)
        h = (h ^ k[i]) * 1099511628211ULL;
    return h;
}

static int l4_ok(const uint8_t *p, size_t n, size_t l4)
{
    uint64_t v = (uint64_t)be_mod(p + l4, n - l4) + addr_sum(p) + 6 + (n - l4);
    return v % 0xFFFF == 0;
}

/* the length of the super-packet (virtio-net header included) of packets idx[0..k) */
static size_t super_len(const Pkt *pk, const int *idx, int k, size_t l4)
{
    const uint8_t *first = pk[idx[0]].p;
    size_t hl = l4 + (size_t)(first[l4 + 12] >> 4) * 4;
    size_t total = hl;
    for (int i = 0; i < k; i++)
        total += pk[idx[i]].n - hl;
    return VNET_HDR_LEN + total;
}

/* a super-packet from packets idx[0..k) (same flow, same header length), written at d */
static void super_into(uint8_t *d, const Pkt *pk, const int *idx, int k, size_t l4)
{
    const uint8_t *first = pk[idx[0]].p;
    size_t hl = l4 + (size_t)(first[l4 + 12] >> 4) * 4;
    size_t total = super_len(pk, idx, k, l4) - VNET_HDR_LEN;
    size_t mss = pk[idx[0]].n - hl;
    uint8_t *head = d + VNET_HDR_LEN;
    memcpy(head, first, hl);
    uint32_t gso_type;
    if (l4 == 20) {
        put16(head + 2, (uint32_t)total);
        ipv4_csum(head, 20);
        gso_type = GSO_TCPV4;
    } else {
        put16(head + 4, (uint32_t)(total - 40));
        gso_type = GSO_TCPV6;
    }
    head[l4 + 13] |= pk[idx[k - 1]].p[l4 + 13] & TCP_PSH;
    uint32_t r = (uint32_t)(((uint64_t)addr_sum(head) + 6 + (total - l4)) % 0xFFFF);
    put16(head + l4 + 16, r ? r : 0xFFFF);
    d[0] = F_NEEDS_CSUM;
    d[1] = (uint8_t)gso_type;
    d[2] = (uint8_t)hl;
    d[3] = (uint8_t)(hl >> 8);
    d[4] = (uint8_t)mss;
    d[5] = (uint8_t)(mss >> 8);
    d[6] = (uint8_t)l4;
    d[7] = (uint8_t)(l4 >> 8);
    d[8] = 16;
    d[9] = 0;
    uint8_t *w = head + hl;
    for (int i = 0; i < k; i++) {
        const Pkt *q = &pk[idx[i]];
        memcpy(w, q->p + hl, q->n - hl);
        w += q->n - hl;
    }
}

/* what coalescing yields, one buffer at a time: packets idx[0..k) of one flow merged (k > 1),
 * or one packet behind a zero virtio-net header (k == 1); nonzero stops */
typedef int (*EmitFn)(void *ctx, const Pkt *pk, const int *idx, int k, size_t l4);

/* scratch for coalescing up to np packets (no Python calls: the data-path thread uses it) */
typedef struct {
    Group *groups;
    int *idx;
    int *table;
    size_t tsize;
} CoalesceScratch;

static int scratch_init(CoalesceScratch *cs, size_t np, void *(*alloc)(size_t))
{
    cs->tsize = 16;
    while (cs->tsize < np * 2)
        cs->tsize <<= 1;
    cs->groups = alloc((np + 1) * sizeof(Group));
    cs->idx = alloc((np + 1) * sizeof(int));
    cs->table = alloc(cs->tsize * sizeof(int)); /* flow -> group, -1 empty */
    return cs->groups && cs->idx && cs->table ? 0 : -1;
}

static int coalesce_core(Pkt *pk, int np, int verify, CoalesceScratch *cs, EmitFn emit,
                         void *ctx)
{
    Group *groups = cs->groups;
    int *idx = cs->idx, *table = cs->table;
    size_t tsize = cs->tsize;
    for (size_t i = 0; i < tsize; i++)
        table[i] = -1;
    int ng = 0;
    for (int i = 0; i < np; i++) {
        const uint8_t *p = pk[i].p;
        size_t n = pk[i].n, l4, hl, plen;
        pk[i].next = -1;
        if (!tcp_view(p, n, &l4, &hl, &plen)) {
            Group *g = &groups[ng++];
            memset(g, 0, sizeof(*g));
            g->first = g->last = i;
            g->count = 1;
            g->closed = 1;
            continue;
        }
        const uint8_t *key = l4 == 20 ? p + 12 : p + 8;
        size_t klen = l4 == 20 ? 12 : 36;
        uint8_t flags = p[l4 + 13];
        int mergeable = plen > 0 && (flags & ~TCP_PSH) == TCP_ACK;
        uint32_t seq = get32(p + l4 + 4);
        size_t slot = (size_t)flow_hash(key, klen) & (tsize - 1);
        int gi = -1;
        while (table[slot] >= 0) {
            Group *cand = &groups[table[slot]];
            const uint8_t *cp = pk[cand->first].p;
            size_t cl4 = (cp[0] >> 4) == 4 ? 20 : 40;
            if (cl4 == l4 && !memcmp(cl4 == 20 ? cp + 12 : cp + 8, key, klen)) {
                gi = table[slot];
                break;
            }
            slot = (slot + 1) & (tsize - 1);
        }
        if (gi >= 0 && mergeable) {
            Group *g = &groups[gi];
            if (!g->closed && g->l4 == l4 && plen <= g->mss && g->size + plen <= MAX_SUPER &&
                seq == g->next_seq && g->hl == hl && same_sig(p, pk[g->first].p, l4, hl)) {
                pk[g->last].next = i;
                g->last = i;
                g->count++;
                g->size += plen;
                g->next_seq = g->next_seq + (uint32_t)plen;
                if (plen < g->mss || (flags & TCP_PSH))
                    g->closed = 1;
                continue;
            }
        }
        Group *g = &groups[ng];
        memset(g, 0, sizeof(*g));
        g->first = g->last = i;
        g->count = 1;
        g->closed = 1;
        g->size = n;
        if (mergeable && !(flags & TCP_PSH)) {
            g->closed = 0;
            g->l4 = l4;
            g->hl = hl;
            g->mss = plen;
            g->next_seq = seq + (uint32_t)plen;
        }
        table[slot] = ng; /* the flow's latest group (replaces an older one) */
        ng++;
    }
    for (int gi = 0; gi < ng; gi++) {
        Group *g = &groups[gi];
        if (g->count == 1) {
            if (emit(ctx, pk, &g->first, 1, 0))
                return -1;
            continue;
        }
        int k = 0;
        for (int j = g->first; j >= 0; j = pk[j].next)
            idx[k++] = j;
        size_t l4 = g->l4;
        int ok = 1;
        if (verify) {
            uint64_t total = 0;
            for (int j = 0; j < k; j++) {
                const Pkt *q = &pk[idx[j]];
                total += be_mod(q->p + l4, q->n - l4) + (q->n - l4);
            }
            total += (uint64_t)k * (addr_sum(pk[idx[0]].p) + 6);
            ok = total % 0xFFFF == 0;
        }
        if (ok) {
            if (emit(ctx, pk, idx, k, l4))
                return -1;
            continue;
        }
        /* runs of verifying segments, bad ones alone */
        int start = 0;
        for (int j = 0; j <= k; j++) {
            int good = j < k && l4_ok(pk[idx[j]].p, pk[idx[j]].n, l4);
            if (good)
                continue;
            if (j > start && emit(ctx, pk, idx + start, j - start, l4))
                return -1;
            if (j < k && emit(ctx, pk, idx + j, 1, 0))
                return -1;
            start = j + 1;
        }
    }
    return 0;
}

/* the Python emitter: one bytes object per buffer, appended to a list */
static int emit_py(void *ctx, const Pkt *pk, const int *idx, int k, size_t l4)
{
    size_t n = k == 1 ? pk[idx[0]].n + VNET_HDR_LEN : super_len(pk, idx, k, l4);
    PyObject *o = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)n);
    if (o == NULL)
        return -1;
    uint8_t *d = (uint8_t *)PyBytes_AS_STRING(o);
    if (k == 1) {
        memset(d, 0, VNET_HDR_LEN);
        memcpy(d + VNET_HDR_LEN, pk[idx[0]].p, pk[idx[0]].n);
    } else {
        super_into(d, pk, idx, k, l4);
    }
    int r = PyList_Append((PyObject *)ctx, o);
    Py_DECREF(o);
    return r;
}

static PyObject *fp_coalesce(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"packets", "verify", NULL};
    PyObject *seq_in;
    int verify = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|p", kwlist, &seq_in, &verify))
        return NULL;
    PyObject *seq = PySequence_Fast(seq_in, "packets must be a sequence");
    if (seq == NULL)
        return NULL;
    Py_ssize_t np = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    Py_buffer *bufs = PyMem_Calloc((size_t)np + 1, sizeof(Py_buffer));
    Pkt *pk = PyMem_Calloc((size_t)np + 1, sizeof(Pkt));
    CoalesceScratch cs;
    int sok = scratch_init(&cs, (size_t)np, PyMem_Malloc);
    PyObject *out = NULL;
    Py_ssize_t nb = 0;
    if (!bufs || !pk || sok) {
        PyErr_NoMemory();
        goto done;
    }
    for (; nb < np; nb++) {
        if (PyObject_GetBuffer(items[nb], &bufs[nb], PyBUF_SIMPLE))
            goto done;
        pk[nb].p = bufs[nb].buf;
        pk[nb].n = (size_t)bufs[nb].len;
        pk[nb].next = -1;
    }
    out = PyList_New(0);
    if (out == NULL)
        goto done;
    if (coalesce_core(pk, (int)np, verify, &cs, emit_py, out))
        Py_CLEAR(out);
done:
    for (Py_ssize_t i = 0; i < nb; i++)
        PyBuffer_Release(&bufs[i]);
    PyMem_Free(bufs);
    PyMem_Free(pk);
    PyMem_Free(cs.groups);
    PyMem_Free(cs.idx);
    PyMem_Free(cs.table);
    Py_DECREF(seq);
    return out;
}

/* ------------------------------------------------------- handshake guard ---- */
/*
 * HandshakeGuard: the cheap-first checks of received WireGuard handshake messages (the twin of
 * wireguard/cookie.py's HandshakeGuard, which is the reference), and recv_batch: the UDP
 * receive loop (recvmmsg) that runs them on handshake messages without entering Python, so a
 * flood of initiations is read as fast as it arrives. Per message (initiation: 148 bytes,
 * response: 92):
 *   ticket      the engine admitted this very message a moment ago: pass, nothing counted
 *   under load  and the source address is over its token bucket: RATE_LIMITED (the message
 *               still counts as load)
 *   mac1        wrong: BAD_MAC1
 *   load        the message is counted; more than `threshold` in a 1 s window -> under load
 *               for `hold` s
 *   under load: mac2 wrong -> a cookie reply when the source's network (IPv4 address, IPv6
 *               /64) and the global cookie budget allow (COOKIE), else COOKIE_LIMITED;
 *               mac2 right -> the network's DH bucket (RATE_LIMITED)
 *   PASS        go on to the DH work (Python)
 * and on each received cookie reply (64 bytes): a per-source bucket (RATE_LIMITED).
 */

#include <openssl/rand.h>
#include <errno.h>
#include <pthread.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <sys/socket.h>
#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif

#define V_PASS 0
#define V_NO_KEY 1
#define V_RATE_LIMITED 2
#define V_BAD_MAC1 3
#define V_COOKIE 4
#define V_COOKIE_LIMITED 5
#define N_VERDICTS 6

/* BLAKE2s (RFC 7693), keyed, for WireGuard's 16-byte MACs */
static const uint32_t B2S_IV[8] = {0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A,
                                   0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19};
static const uint8_t B2S_SIGMA[10][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
    {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
    {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
    {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
    {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0}};

typedef struct {
    uint32_t h[8];
    uint32_t t;
    uint8_t buf[64];
    size_t buflen;
} B2s;

static inline uint32_t ror32(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

static void b2s_compress(B2s *S, const uint8_t *block, int last)
{
    uint32_t m[16], v[16];
    for (int i = 0; i < 16; i++)
        m[i] = le32(block + 4 * i);
    for (int i = 0; i < 8; i++) {
        v[i] = S->h[i];
        v[i + 8] = B2S_IV[i];
    }
    v[12] ^= S->t;
    if (last)
        v[14] = ~v[14];
#define B2G(a, b, c, d, x, y)                                                                   \
    do {                                                                                        \
        v[a] = v[a] + v[b] + (x);                                                               \
        v[d] = ror32(v[d] ^ v[a], 16);                                                          \
        v[c] = v[c] + v[d];                                                                     \
        v[b] = ror32(v[b] ^ v[c], 12);                                                          \
        v[a] = v[a] + v[b] + (y);                                                               \
        v[d] = ror32(v[d] ^ v[a], 8);                                                           \
        v[c] = v[c] + v[d];                                                                     \
        v[b] = ror32(v[b] ^ v[c], 7);                                                           \
    } while (0)
    for (int r = 0; r < 10; r++) {
        const uint8_t *s = B2S_SIGMA[r];
        B2G(0, 4, 8, 12, m[s[0]], m[s[1]]);
        B2G(1, 5, 9, 13, m[s[2]], m[s[3]]);
        B2G(2, 6, 10, 14, m[s[4]], m[s[5]]);
        B2G(3, 7, 11, 15, m[s[6]], m[s[7]]);
        B2G(0, 5, 10, 15, m[s[8]], m[s[9]]);
        B2G(1, 6, 11, 12, m[s[10]], m[s[11]]);
        B2G(2, 7, 8, 13, m[s[12]], m[s[13]]);
        B2G(3, 4, 9, 14, m[s[14]], m[s[15]]);
    }
#undef B2G
    for (int i = 0; i < 8; i++)
        S->h[i] ^= v[i] ^ v[i + 8];
}

/* keyed state (outlen 16) after compressing the key block: the data that follows must not
 * be empty (true of every WireGuard MAC) */
static void b2s_init_mac(B2s *S, const uint8_t *key, size_t keylen)
{
    uint8_t block[64];
    memcpy(S->h, B2S_IV, sizeof(S->h));
    S->h[0] ^= 0x01010000u ^ ((uint32_t)keylen << 8) ^ 16u;
    memset(block, 0, 64);
    memcpy(block, key, keylen);
    S->t = 64;
    b2s_compress(S, block, 0);
    S->buflen = 0;
}

static void b2s_update(B2s *S, const uint8_t *p, size_t n)
{
    while (n > 0) {
        if (S->buflen == 64) { /* a full block is compressed only once more data follows */
            S->t += 64;
            b2s_compress(S, S->buf, 0);
            S->buflen = 0;
        }
        size_t k = 64 - S->buflen;
        if (k > n)
            k = n;
        memcpy(S->buf + S->buflen, p, k);
        S->buflen += k;
        p += k;
        n -= k;
    }
}

static void b2s_final16(B2s *S, uint8_t out[16])
{
    S->t += (uint32_t)S->buflen;
    memset(S->buf + S->buflen, 0, 64 - S->buflen);
    b2s_compress(S, S->buf, 1);
    for (int i = 0; i < 4; i++) {
        out[4 * i] = (uint8_t)S->h[i];
        out[4 * i + 1] = (uint8_t)(S->h[i] >> 8);
        out[4 * i + 2] = (uint8_t)(S->h[i] >> 16);
        out[4 * i + 3] = (uint8_t)(S->h[i] >> 24);
    }
}

static void b2s_mac(const uint8_t *key, size_t keylen, const uint8_t *p, size_t n,
                    uint8_t out[16])
{
    B2s S;
    b2s_init_mac(&S, key, keylen);
    b2s_update(&S, p, n);
    b2s_final16(&S, out);
}

static int ct_equal16(const uint8_t *a, const uint8_t *b)
{
    uint8_t d = 0;
    for (int i = 0; i < 16; i++)
        d |= a[i] ^ b[i];
    return d == 0;
}

/* HChaCha20 (draft-irtf-cfrg-xchacha 2.2) */
#define QR(a, b, c, d)                                                                         \
    do {                                                                                        \
        a += b; d ^= a; d = (d << 16) | (d >> 16);                                              \
        c += d; b ^= c; b = (b << 12) | (b >> 20);                                              \
        a += b; d ^= a; d = (d << 8) | (d >> 24);                                               \
        c += d; b ^= c; b = (b << 7) | (b >> 25);                                               \
    } while (0)

static void hchacha20(const uint8_t key[32], const uint8_t in[16], uint8_t out[32])
{
    uint32_t x[16] = {0x61707865, 0x3320646e, 0x79622d32, 0x6b206574};
    for (int i = 0; i < 8; i++)
        x[4 + i] = le32(key + 4 * i);
    for (int i = 0; i < 4; i++)
        x[12 + i] = le32(in + 4 * i);
    for (int r = 0; r < 10; r++) {
        QR(x[0], x[4], x[8], x[12]);
        QR(x[1], x[5], x[9], x[13]);
        QR(x[2], x[6], x[10], x[14]);
        QR(x[3], x[7], x[11], x[15]);
        QR(x[0], x[5], x[10], x[15]);
        QR(x[1], x[6], x[11], x[12]);
        QR(x[2], x[7], x[8], x[13]);
        QR(x[3], x[4], x[9], x[14]);
    }
    const int idx[8] = {0, 1, 2, 3, 12, 13, 14, 15};
    for (int i = 0; i < 8; i++) {
        uint32_t w = x[idx[i]];
        out[4 * i] = (uint8_t)w;
        out[4 * i + 1] = (uint8_t)(w >> 8);
        out[4 * i + 2] = (uint8_t)(w >> 16);
        out[4 * i + 3] = (uint8_t)(w >> 24);
    }
}
#undef QR

/* token buckets per source: open addressing, rebuilt on garbage collection */
typedef struct {
    uint8_t used, klen;
    uint8_t key[16];
    double tokens, last;
} Bucket;

typedef struct {
    Bucket *slots;
    size_t cap, len;
    double rate, burst, last_gc;
    size_t max_sources;
    int overflow_pass; /* a full table lets new sources through untracked (else: shared) */
} Buckets;

static uint64_t key_hash(const uint8_t *k, size_t n)
{
    uint64_t h = 1469598103934665603ULL ^ n; /* k may be NULL when n == 0 */
    for (size_t i = 0; i < n; i++)
        h = (h ^ k[i]) * 1099511628211ULL;
    return h ^ (h >> 29);
}

static int buckets_init(Buckets *b, double rate, double burst, size_t max_sources,
                        int overflow_pass)
{
    b->overflow_pass = overflow_pass;
    b->cap = 64;
    while (b->cap < 2 * (max_sources + 1))
        b->cap <<= 1;
    b->slots = PyMem_RawCalloc(b->cap, sizeof(Bucket));
    if (b->slots == NULL)
        return -1;
    b->len = 0;
    b->rate = rate;
    b->burst = burst;
    b->last_gc = -INFINITY;
    b->max_sources = max_sources;
    return 0;
}

static Bucket *buckets_find(Buckets *b, const uint8_t *key, size_t klen, int *found)
{
    size_t mask = b->cap - 1, i = (size_t)key_hash(key, klen) & mask;
    while (b->slots[i].used) {
        Bucket *s = &b->slots[i];
        if (s->klen == klen && (!klen || !memcmp(s->key, key, klen))) {
            *found = 1;
            return s;
        }
        i = (i + 1) & mask;
    }
    *found = 0;
    return &b->slots[i];
}

static void buckets_gc(Buckets *b, double now)
{
    double full_after = b->burst / b->rate;
    size_t keep = 0;
    for (size_t i = 0; i < b->cap; i++)
        if (b->slots[i].used && now - b->slots[i].last < full_after)
            keep++;
    if (keep == b->len)
        return;
    Bucket *old = b->slots;
    /* the data-path thread runs this without the GIL: the raw allocator only */
    Bucket *fresh = PyMem_RawCalloc(b->cap, sizeof(Bucket));
    if (fresh == NULL)
        return; /* keep the old table: still correct, only fuller */
    b->slots = fresh;
    b->len = 0;
    for (size_t i = 0; i < b->cap; i++) {
        if (!old[i].used || !(now - old[i].last < full_after))
            continue;
        int found;
        Bucket *s = buckets_find(b, old[i].key, old[i].klen, &found);
        *s = old[i];
        b->len++;
    }
    PyMem_RawFree(old);
}

/* SourceRateLimiter.allow: True when the source may go on (one token taken) */
static int buckets_allow(Buckets *b, double now, const uint8_t *key, size_t klen)
{
    if (now - b->last_gc >= 1.0) {
        buckets_gc(b, now);
        b->last_gc = now;
    }
    int found;
    Bucket *s = buckets_find(b, key, klen, &found);
    if (!found && b->len >= b->max_sources) {
        if (b->overflow_pass)
            return 1;
        s = buckets_find(b, key, 0, &found); /* everyone new shares the overflow bucket */
        klen = 0;
    }
    if (!found) {
        s->used = 1;
        s->klen = (uint8_t)klen;
        if (klen)
            memcpy(s->key, key, klen);
        s->tokens = b->burst;
        s->last = now;
        b->len++;
    }
    double tokens = s->tokens + (now - s->last) * b->rate;
    if (tokens > b->burst)
        tokens = b->burst;
    s->last = now;
    if (tokens < 1.0) {
        s->tokens = tokens;
        return 0;
    }
    s->tokens = tokens - 1.0;
    return 1;
}

typedef struct {
    PyObject_HEAD
    int has_key;
    uint8_t mac1_key[32], cookie_key[32];
    B2s mac1_state;
    uint8_t secret[32];
    double secret_time;
    long threshold;
    double hold, window_start, under_until;
    long count;
    /* per address before mac1, cookies per network, per network before DH, global cookies,
     * cookie replies received per address */
    Buckets pre, net, dh, ck, cr;
    uint8_t ticket[16];
    int has_ticket;
    EVP_CIPHER_CTX *ctx;
    unsigned long long counts[N_VERDICTS];
    /* the data-path thread checks messages too: every use of the state above holds it */
    pthread_mutex_t lock;
} GuardObject;

#define GLOCK(g) pthread_mutex_lock(&(g)->lock)
#define GUNLOCK(g) pthread_mutex_unlock(&(g)->lock)

static PyTypeObject GuardType;

static void guard_dealloc(GuardObject *g)
{
    PyMem_RawFree(g->pre.slots);
    PyMem_RawFree(g->net.slots);
    PyMem_RawFree(g->dh.slots);
    PyMem_RawFree(g->ck.slots);
    PyMem_RawFree(g->cr.slots);
    if (g->ctx)
        EVP_CIPHER_CTX_free(g->ctx);
    OPENSSL_cleanse(g->secret, sizeof(g->secret));
    pthread_mutex_destroy(&g->lock);
    Py_TYPE(g)->tp_free((PyObject *)g);
}

static int guard_init(GuardObject *g, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"threshold", "hold", "source_rate", "source_burst", "net_rate",
                             "net_burst", "dh_rate", "dh_burst", "cookie_rate", "cookie_burst",
                             "reply_rate", "reply_burst", "max_sources", NULL};
    long threshold;
    double hold, srate, sburst, nrate, nburst, drate, dburst, crate, cburst, rrate, rburst;
    Py_ssize_t max_sources;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "ldddddddddddn", kwlist, &threshold, &hold,
                                     &srate, &sburst, &nrate, &nburst, &drate, &dburst, &crate,
                                     &cburst, &rrate, &rburst, &max_sources))
        return -1;
    if (srate <= 0 || nrate <= 0 || drate <= 0 || crate <= 0 || rrate <= 0 || max_sources < 1 ||
        max_sources > (1 << 22)) {
        PyErr_SetString(PyExc_ValueError, "rates must be positive, max_sources 1..2**22");
        return -1;
    }
    if (g->pre.slots != NULL || g->ctx != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "HandshakeGuard already initialised");
        return -1;
    }
    pthread_mutex_init(&g->lock, NULL);
    g->has_key = 0;
    g->secret_time = -INFINITY;
    g->threshold = threshold;
    g->hold = hold;
    g->window_start = -INFINITY;
    g->under_until = -INFINITY;
    g->count = 0;
    g->has_ticket = 0;
    memset(g->counts, 0, sizeof(g->counts));
    if (buckets_init(&g->pre, srate, sburst, (size_t)max_sources, 1) ||
        buckets_init(&g->net, nrate, nburst, (size_t)max_sources, 1) ||
        buckets_init(&g->dh, drate, dburst, (size_t)max_sources, 0) ||
        buckets_init(&g->ck, crate, cburst, 1, 0) ||
        buckets_init(&g->cr, rrate, rburst, (size_t)max_sources, 1)) {
        PyErr_NoMemory();
        return -1;
    }
    g->ctx = EVP_CIPHER_CTX_new();
    if (g->ctx == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static PyObject *guard_set_keys(GuardObject *g, PyObject *args)
{
    Py_buffer m1, ck;
    if (!PyArg_ParseTuple(args, "y*y*", &m1, &ck))
        return NULL;
    if ((m1.len != 0 && m1.len != 32) || ck.len != m1.len) {
        PyBuffer_Release(&m1);
        PyBuffer_Release(&ck);
        PyErr_SetString(PyExc_ValueError, "keys are 32 bytes each, or both empty");
        return NULL;
    }
    GLOCK(g);
    g->has_key = m1.len == 32;
    if (g->has_key) {
        memcpy(g->mac1_key, m1.buf, 32);
        memcpy(g->cookie_key, ck.buf, 32);
        b2s_init_mac(&g->mac1_state, g->mac1_key, 32);
    }
    GUNLOCK(g);
    PyBuffer_Release(&m1);
    PyBuffer_Release(&ck);
    Py_RETURN_NONE;
}

static void load_record(GuardObject *g, double now)
{
    if (now - g->window_start >= 1.0) {
        g->window_start = now;
        g->count = 0;
    }
    g->count++;
    if (g->count > g->threshold)
        g->under_until = now + g->hold;
}

static int current_secret(GuardObject *g, double now)
{
    if (now - g->secret_time >= 120.0) {
        if (RAND_bytes(g->secret, 32) != 1)
            return -1;
        g->secret_time = now;
    }
    return 0;
}

/* the 64-byte cookie reply to `msg` (mac1 at m1off) from the source `ep` (address + port) */
static int make_reply(GuardObject *g, double now, const uint8_t *msg, size_t m1off,
                      const uint8_t *ep, size_t eplen, uint8_t out[64])
{
    uint8_t cookie[16], subkey[32], nonce12[12];
    int outl;
    if (current_secret(g, now))
        return -1;
    b2s_mac(g->secret, 32, ep, eplen, cookie);
    out[0] = 3;
    out[1] = out[2] = out[3] = 0;
    memcpy(out + 4, msg + 4, 4); /* the sender index of the message answered */
    if (RAND_bytes(out + 8, 24) != 1)
        return -1;
    hchacha20(g->cookie_key, out + 8, subkey);
    memset(nonce12, 0, 4);
    memcpy(nonce12 + 4, out + 8 + 16, 8);
    int ok = EVP_EncryptInit_ex(g->ctx, EVP_chacha20_poly1305(), NULL, subkey, nonce12) == 1 &&
             EVP_EncryptUpdate(g->ctx, NULL, &outl, msg + m1off, 16) == 1 &&
             EVP_EncryptUpdate(g->ctx, out + 32, &outl, cookie, 16) == 1 &&
             EVP_EncryptFinal_ex(g->ctx, out + 48, &outl) == 1 &&
             EVP_CIPHER_CTX_ctrl(g->ctx, EVP_CTRL_AEAD_GET_TAG, 16, out + 48) == 1;
    OPENSSL_cleanse(subkey, sizeof(subkey));
    return ok ? 0 : -1;
}

/* the checks on one handshake message (148 or 92 bytes, type already checked); `key` is the
 * source's bucket key, `ep` its address and port (what a cookie is bound to). Returns a
 * verdict; V_COOKIE fills `reply`; -1 on an internal failure (no Python error set). */
static int guard_check(GuardObject *g, double now, const uint8_t *msg, size_t n,
                       const uint8_t *key, size_t klen, const uint8_t *ep, size_t eplen,
                       uint8_t reply[64])
{
    size_t m1off = n - 32, m2off = n - 16;
    size_t nlen = klen == 16 ? 8 : klen; /* the network: an IPv6 /64, else the address */
    if (g->has_ticket && ct_equal16(g->ticket, msg + m1off)) {
        g->has_ticket = 0;
        return V_PASS;
    }
    if (!g->has_key)
        return V_NO_KEY;
    if (now < g->under_until && !buckets_allow(&g->pre, now, key, klen)) {
        load_record(g, now);
        return V_RATE_LIMITED;
    }
    uint8_t m[16];
    B2s S = g->mac1_state;
    b2s_update(&S, msg, m1off);
    b2s_final16(&S, m);
    if (!ct_equal16(m, msg + m1off))
        return V_BAD_MAC1;
    load_record(g, now);
    if (!(now < g->under_until))
        return V_PASS;
    static const uint8_t zero[16];
    int mac2_ok = 0;
    if (!ct_equal16(msg + m2off, zero)) {
        uint8_t cookie[16];
        if (current_secret(g, now))
            return -1;
        b2s_mac(g->secret, 32, ep, eplen, cookie);
        b2s_mac(cookie, 16, msg, m2off, m);
        mac2_ok = ct_equal16(m, msg + m2off);
    }
    if (!mac2_ok) {
        if (!buckets_allow(&g->net, now, key, nlen) || !buckets_allow(&g->ck, now, NULL, 0))
            return V_COOKIE_LIMITED;
        if (make_reply(g, now, msg, m1off, ep, eplen, reply))
            return -1;
        return V_COOKIE;
    }
    if (!buckets_allow(&g->dh, now, key, nlen))
        return V_RATE_LIMITED;
    return V_PASS;
}

/* a received cookie reply (64 bytes): 1 to go on, 0 when its source is over its bucket (a
 * responder sends one per handshake message of ours, so this bounds only floods) */
static int guard_cookie_reply(GuardObject *g, double now, const uint8_t *msg, size_t n,
                              const uint8_t *key, size_t klen)
{
    if (g->has_ticket && ct_equal16(g->ticket, msg + n - 32)) {
        g->has_ticket = 0;
        return 1;
    }
    return buckets_allow(&g->cr, now, key, klen);
}

static PyObject *guard_cookie_reply_py(GuardObject *g, PyObject *args)
{
    double now;
    Py_buffer d, k;
    if (!PyArg_ParseTuple(args, "dy*y*", &now, &d, &k))
        return NULL;
    PyObject *res = NULL;
    if (d.len != 64) {
        PyErr_SetString(PyExc_ValueError, "not a cookie reply length");
    } else {
        uint8_t kb[16];
        size_t klen = (size_t)k.len > 16 ? 16 : (size_t)k.len;
        memcpy(kb, k.buf, klen);
        GLOCK(g);
        int ok = guard_cookie_reply(g, now, d.buf, 64, kb, klen);
        GUNLOCK(g);
        res = PyBool_FromLong(ok);
    }
    PyBuffer_Release(&d);
    PyBuffer_Release(&k);
    return res;
}

static PyObject *guard_precheck(GuardObject *g, PyObject *args)
{
    double now;
    Py_buffer d, k, e;
    if (!PyArg_ParseTuple(args, "dy*y*y*", &now, &d, &k, &e))
        return NULL;
    PyObject *res = NULL;
    uint8_t reply[64];
    if (d.len != 148 && d.len != 92) {
        PyErr_SetString(PyExc_ValueError, "not a handshake message length");
        goto done;
    }
    uint8_t kb[16];
    size_t klen = (size_t)k.len > 16 ? 16 : (size_t)k.len;
    memcpy(kb, k.buf, klen);
    GLOCK(g);
    int v = guard_check(g, now, d.buf, (size_t)d.len, kb, klen, e.buf, (size_t)e.len, reply);
    GUNLOCK(g);
    if (v < 0) {
        PyErr_SetString(PyExc_RuntimeError, "handshake guard: crypto failure");
        goto done;
    }
    if (v == V_COOKIE)
        res = Py_BuildValue("(iy#)", v, (const char *)reply, (Py_ssize_t)64);
    else
        res = Py_BuildValue("(iO)", v, Py_None);
done:
    PyBuffer_Release(&d);
    PyBuffer_Release(&k);
    PyBuffer_Release(&e);
    return res;
}

static PyObject *guard_set_ticket(GuardObject *g, PyObject *args)
{
    Py_buffer t;
    if (!PyArg_ParseTuple(args, "y*", &t))
        return NULL;
    if (t.len != 16) {
        PyBuffer_Release(&t);
        PyErr_SetString(PyExc_ValueError, "a ticket is a 16-byte mac1");
        return NULL;
    }
    GLOCK(g);
    memcpy(g->ticket, t.buf, 16);
    g->has_ticket = 1;
    GUNLOCK(g);
    PyBuffer_Release(&t);
    Py_RETURN_NONE;
}

static PyObject *guard_under_load(GuardObject *g, PyObject *arg)
{
    double now = PyFloat_AsDouble(arg);
    if (now == -1.0 && PyErr_Occurred())
        return NULL;
    GLOCK(g);
    int under = now < g->under_until;
    GUNLOCK(g);
    return PyBool_FromLong(under);
}

static PyObject *guard_take_counts(GuardObject *g, PyObject *unused)
{
    PyObject *t = PyTuple_New(N_VERDICTS);
    if (t == NULL)
        return NULL;
    unsigned long long c[N_VERDICTS];
    GLOCK(g);
    memcpy(c, g->counts, sizeof(c));
    memset(g->counts, 0, sizeof(g->counts));
    GUNLOCK(g);
    for (int i = 0; i < N_VERDICTS; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(c[i]);
        if (v == NULL) {
            Py_DECREF(t);
            return NULL;
        }
        PyTuple_SET_ITEM(t, i, v);
    }
    return t;
}

static PyObject *guard_sources(GuardObject *g, void *closure)
{
    return PyLong_FromSize_t(g->pre.len + g->net.len + g->dh.len + g->cr.len);
}

static PyObject *guard_get_threshold(GuardObject *g, void *closure)
{
    return PyLong_FromLong(g->threshold);
}

static int guard_set_threshold(GuardObject *g, PyObject *v, void *closure)
{
    long t = v ? PyLong_AsLong(v) : -1;
    if (t == -1 && (v == NULL || PyErr_Occurred())) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "threshold must be an int");
        return -1;
    }
    g->threshold = t;
    return 0;
}

static PyObject *guard_get_hold(GuardObject *g, void *closure)
{
    return PyFloat_FromDouble(g->hold);
}

static int guard_set_hold(GuardObject *g, PyObject *v, void *closure)
{
    double h = v ? PyFloat_AsDouble(v) : -1.0;
    if (v == NULL || (h == -1.0 && PyErr_Occurred())) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "hold must be a number");
        return -1;
    }
    g->hold = h;
    return 0;
}

static PyObject *guard_self(PyObject *g, void *closure) { return Py_NewRef(g); }

static PyMethodDef guard_methods[] = {
    {"set_keys", (PyCFunction)guard_set_keys, METH_VARARGS,
     "set_keys(mac1_key, cookie_key): 32 bytes each, or b'' and b'' (no private key)"},
    {"precheck", (PyCFunction)guard_precheck, METH_VARARGS,
     "precheck(now, msg, source_key, source_endpoint) -> (verdict, cookie reply or None)"},
    {"cookie_reply", (PyCFunction)guard_cookie_reply_py, METH_VARARGS,
     "cookie_reply(now, msg, source_key) -> bool: False when the source is over its bucket"},
    {"set_ticket", (PyCFunction)guard_set_ticket, METH_VARARGS,
     "set_ticket(b): the next check of the message with b at bytes [-32:-16] passes at once"},
    {"under_load", (PyCFunction)guard_under_load, METH_O, "under_load(now) -> bool"},
    {"take_counts", (PyCFunction)guard_take_counts, METH_NOARGS,
     "verdict counts of the messages recv_batch handled itself (reset)"},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef guard_getset[] = {
    {"threshold", (getter)guard_get_threshold, (setter)guard_set_threshold,
     "handshake messages per second before the device is under load", NULL},
    {"hold", (getter)guard_get_hold, (setter)guard_set_hold, "seconds under load", NULL},
    {"load", (getter)guard_self, NULL, "the load meter (this object)", NULL},
    {"sources", (getter)guard_sources, NULL, "sources tracked by the token buckets", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyTypeObject GuardType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "meshguard.dataplane._fastpath.HandshakeGuard",
    .tp_basicsize = sizeof(GuardObject),
    .tp_dealloc = (destructor)guard_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "cheap-first checks of received handshake messages (wireguard/cookie.py)",
    .tp_methods = guard_methods,
    .tp_getset = guard_getset,
    .tp_init = (initproc)guard_init,
    .tp_new = PyType_GenericNew,
};

/* --------------------------------------------------------------- recv_batch ---- */

#define RB_MAX 64
#define RB_BUF (65536 + 4096)
static uint8_t *rb_bufs;

/* bucket key (the address) and endpoint bytes (address + port) of a sockaddr */
static int source_of(const struct sockaddr_storage *ss, uint8_t key[16], size_t *klen,
                     uint8_t ep[18], size_t *eplen)
{
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *s = (const struct sockaddr_in *)ss;
        memcpy(key, &s->sin_addr, 4);
        *klen = 4;
        memcpy(ep, &s->sin_addr, 4);
        memcpy(ep + 4, &s->sin_port, 2);
        *eplen = 6;
        return 0;
    }
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)ss;
        const uint8_t *a = s->sin6_addr.s6_addr;
        static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        if (!memcmp(a, mapped, 12)) {
            memcpy(key, a + 12, 4);
            *klen = 4;
            memcpy(ep, a + 12, 4);
            memcpy(ep + 4, &s->sin6_port, 2);
            *eplen = 6;
            return 0;
        }
        memcpy(key, a, 16);
        *klen = 16;
        memcpy(ep, a, 16);
        memcpy(ep + 16, &s->sin6_port, 2);
        *eplen = 18;
        return 0;
    }
    return -1;
}

static int is_handshake(const uint8_t *d, size_t n)
{
    return (n == 148 && le32(d) == 1) || (n == 92 && le32(d) == 2);
}

static int rb_append(PyObject *items, const uint8_t *d, size_t n, Py_ssize_t seg,
                     PyObject *addr, int admitted)
{
    PyObject *item = Py_BuildValue("(y#nOi)", (const char *)d, (Py_ssize_t)n, seg, addr,
                                   admitted);
    if (item == NULL)
        return -1;
    int r = PyList_Append(items, item);
    Py_DECREF(item);
    return r;
}

static PyObject *fp_recv_batch(PyObject *self, PyObject *args)
{
    int fd, limit;
    PyObject *gobj, *indices = Py_None;
    double now;
    if (!PyArg_ParseTuple(args, "iiOd|O", &fd, &limit, &gobj, &now, &indices))
        return NULL;
    if (indices != Py_None && !PyDict_Check(indices)) {
        PyErr_SetString(PyExc_TypeError, "indices must be a dict or None");
        return NULL;
    }
    GuardObject *g = NULL;
    if (gobj != Py_None) {
        if (!PyObject_TypeCheck(gobj, &GuardType)) {
            PyErr_SetString(PyExc_TypeError, "guard must be a HandshakeGuard or None");
            return NULL;
        }
        g = (GuardObject *)gobj;
    }
    if (limit < 1)
        limit = 1;
    if (limit > RB_MAX)
        limit = RB_MAX;
    if (rb_bufs == NULL) {
        rb_bufs = PyMem_Malloc((size_t)RB_MAX * RB_BUF);
        if (rb_bufs == NULL)
            return PyErr_NoMemory();
    }
    struct mmsghdr msgs[RB_MAX];
    struct iovec iov[RB_MAX];
    struct sockaddr_storage names[RB_MAX];
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } ctrl[RB_MAX];
    memset(msgs, 0, sizeof(msgs[0]) * (size_t)limit);
    for (int i = 0; i < limit; i++) {
        iov[i].iov_base = rb_bufs + (size_t)i * RB_BUF;
        iov[i].iov_len = RB_BUF;
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_name = &names[i];
        msgs[i].msg_hdr.msg_namelen = sizeof(names[i]);
        msgs[i].msg_hdr.msg_control = ctrl[i].buf;
        msgs[i].msg_hdr.msg_controllen = sizeof(ctrl[i].buf);
    }
    /* non-blocking, and the GIL stays held: the receive buffers are shared by all callers */
    int got = recvmmsg(fd, msgs, (unsigned)limit, MSG_DONTWAIT, NULL);
    long reads = 0, datagrams = 0, gro_reads = 0, errors = 0, sent = 0, send_errors = 0;
    long would_block = 0, unknown = 0;
    if (got < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            errors = 1;
        got = 0;
    }
    PyObject *items = PyList_New(0);
    if (items == NULL)
        return NULL;
    uint8_t reply[64];
    for (int i = 0; i < got; i++) {
        struct msghdr *h = &msgs[i].msg_hdr;
        if (h->msg_flags & MSG_TRUNC) {
            errors++;
            continue;
        }
        reads++;
        size_t n = msgs[i].msg_len;
        const uint8_t *d = iov[i].iov_base;
        size_t seg = 0;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(h); c != NULL; c = CMSG_NXTHDR(h, c)) {
            if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO) {
                if (c->cmsg_len >= CMSG_LEN(sizeof(int))) {
                    int v;
                    memcpy(&v, CMSG_DATA(c), sizeof(int));
                    seg = v > 0 ? (size_t)v : 0;
                } else if (c->cmsg_len >= CMSG_LEN(sizeof(uint16_t))) {
                    uint16_t v;
                    memcpy(&v, CMSG_DATA(c), sizeof(v));
                    seg = v;
                }
            }
        }
        if (!(seg > 0 && seg < n))
            seg = 0;
        if (seg) {
            gro_reads++;
            datagrams += (long)((n + seg - 1) / seg);
        } else {
            datagrams++;
        }
        if (indices != Py_None && !seg && n >= 32 && le32(d) == 4) {
            /* a transport message naming no receiver index of ours: counted, dropped */
            PyObject *idx = PyLong_FromUnsignedLong(le32(d + 4));
            if (idx == NULL)
                goto fail;
            int known = PyDict_Contains(indices, idx);
            Py_DECREF(idx);
            if (known < 0)
                goto fail;
            if (!known) {
                unknown++;
                continue;
            }
        }
        PyObject *addr = PyBytes_FromStringAndSize((const char *)&names[i], h->msg_namelen);
        if (addr == NULL)
            goto fail;
        uint8_t key[16], ep[18];
        size_t klen = 0, eplen = 0;
        int guarded = g != NULL && source_of(&names[i], key, &klen, ep, &eplen) == 0;
        size_t dlen = seg ? seg : n;
        if (guarded && !seg && n == 64 && le32(d) == 3) {
            /* a cookie reply: a per-source bucket first, the rest up with a ticket */
            GLOCK(g);
            int cr_ok = guard_cookie_reply(g, now, d, n, key, klen);
            if (!cr_ok)
                g->counts[V_RATE_LIMITED]++;
            GUNLOCK(g);
            if (cr_ok) {
                if (rb_append(items, d, n, 0, addr, 1)) {
                    Py_DECREF(addr);
                    goto fail;
                }
            }
            Py_DECREF(addr);
            continue;
        }
        int split = guarded && is_handshake(d, dlen < n ? dlen : n);
        if (!split) {
            if (rb_append(items, d, n, (Py_ssize_t)seg, addr, 0)) {
                Py_DECREF(addr);
                goto fail;
            }
            Py_DECREF(addr);
            continue;
        }
        /* one datagram, or a GRO train of them: guard each handshake message; runs of other
         * datagrams go up as they are (cut every seg bytes) */
        size_t pos = 0, run = 0, run_n = 0;
        while (pos < n) {
            size_t l = n - pos;
            if (seg && seg < l)
                l = seg;
            const uint8_t *p = d + pos;
            if (!is_handshake(p, l)) {
                if (!run_n)
                    run = pos;
                run_n += l;
                pos += l;
                continue;
            }
            if (run_n) {
                if (rb_append(items, d + run, run_n, run_n > seg ? (Py_ssize_t)seg : 0, addr,
                              0))
                    goto fail_addr;
                run_n = 0;
            }
            GLOCK(g);
            int v = guard_check(g, now, p, l, key, klen, ep, eplen, reply);
            if (v > 0)
                g->counts[v]++;
            GUNLOCK(g);
            if (v == V_PASS) {
                if (rb_append(items, p, l, 0, addr, 1))
                    goto fail_addr;
            } else if (v < 0) {
                errors++;
            } else {
                if (v == V_COOKIE) {
                    ssize_t r = sendto(fd, reply, 64, MSG_DONTWAIT,
                                       (const struct sockaddr *)&names[i], h->msg_namelen);
                    if (r == 64)
                        sent++;
                    else if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                        would_block++;
                    else
                        send_errors++;
                }
            }
            pos += l;
        }
        if (run_n && rb_append(items, d + run, run_n, run_n > seg ? (Py_ssize_t)seg : 0, addr,
                               0))
            goto fail_addr;
        Py_DECREF(addr);
        continue;
    fail_addr:
        Py_DECREF(addr);
        goto fail;
    }
    return Py_BuildValue("(Nlllllllll)", items, (long)got, reads, datagrams, gro_reads, errors,
                         sent, send_errors, would_block, unknown);
fail:
    Py_DECREF(items);
    return NULL;
}

/* ---------------------------------------------------------------- KeyState ---- */
/*
 * KeyState: what a keypair's two users share, the Python Device (slow path: keepalives,
 * queued packets, transport data handed up) and the data-path thread below. The send counter
 * is atomic (reserve: a compare-and-swap, so no counter is handed out twice and none lost),
 * the replay window (RFC 6479, the twin of wireguard/keypair.py's ReplayWindow) is under a
 * mutex, and the two ChaCha20-Poly1305 contexts are the data-path thread's alone.
 */
#include "_fastpath_policy.c"

#include <fcntl.h>
#include <stdatomic.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define REJECT_AFTER_MESSAGES (UINT64_MAX - 8192ULL) /* 2**64 - 2**13 - 1 */
#define REJECT_AFTER_TIME 180.0
#define RING_BLOCKS 64
#define REPLAY_WINDOW ((RING_BLOCKS - 1) * 64)

typedef struct {
    PyObject_HEAD
    EVP_CIPHER_CTX *enc, *dec;
    uint32_t local_index, remote_index;
    double created;
    _Atomic uint64_t send_counter;
    pthread_mutex_t lock; /* the replay window */
    int has_last;
    uint64_t last;
    uint64_t blocks[RING_BLOCKS];
    /* the data-path thread's notes, under its DataPath's mutex */
    uint64_t tx_pk, tx_bytes, rx_pk, rx_bytes, rx_keep;
    struct sockaddr_storage rx_src;
    socklen_t rx_srclen;
    int dirty;
    PyObject *weakrefs; /* so tests can see a KeyState (and its keys) go with its keypair */
} KeyStateObject;

static PyTypeObject KeyStateType;

static void ks_dealloc(KeyStateObject *k)
{
    if (k->weakrefs)
        PyObject_ClearWeakRefs((PyObject *)k);
    if (k->enc)
        EVP_CIPHER_CTX_free(k->enc);
    if (k->dec)
        EVP_CIPHER_CTX_free(k->dec);
    pthread_mutex_destroy(&k->lock);
    Py_TYPE(k)->tp_free((PyObject *)k);
}

static int ks_init(KeyStateObject *k, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"send_key", "receive_key", "local_index", "remote_index",
                             "created", "send_counter", "replay_last", "replay_blocks", NULL};
    Py_buffer sk, rk;
    unsigned long li, ri;
    double created;
    unsigned long long counter = 0;
    long long last = -1;
    PyObject *blocks = NULL;
    if (k->enc != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "KeyState already initialised");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kw, "y*y*kkd|KLO", kwlist, &sk, &rk, &li, &ri,
                                     &created, &counter, &last, &blocks))
        return -1;
    int r = -1;
    if (sk.len != 32 || rk.len != 32) {
        PyErr_SetString(PyExc_ValueError, "keys are 32 bytes");
        goto done;
    }
    pthread_mutex_init(&k->lock, NULL);
    k->local_index = (uint32_t)li;
    k->remote_index = (uint32_t)ri;
    k->created = created;
    atomic_store(&k->send_counter, (uint64_t)counter);
    k->has_last = last >= 0;
    k->last = last >= 0 ? (uint64_t)last : 0;
    if (blocks != NULL && blocks != Py_None) {
        PyObject *seq = PySequence_Fast(blocks, "replay_blocks must be a sequence");
        if (seq == NULL)
            goto done;
        if (PySequence_Fast_GET_SIZE(seq) != RING_BLOCKS) {
            Py_DECREF(seq);
            PyErr_SetString(PyExc_ValueError, "replay_blocks: 64 blocks");
            goto done;
        }
        for (int i = 0; i < RING_BLOCKS; i++) {
            k->blocks[i] = PyLong_AsUnsignedLongLong(PySequence_Fast_GET_ITEM(seq, i));
            if (PyErr_Occurred()) {
                Py_DECREF(seq);
                goto done;
            }
        }
        Py_DECREF(seq);
    }
    k->enc = EVP_CIPHER_CTX_new();
    k->dec = EVP_CIPHER_CTX_new();
    if (!k->enc || !k->dec ||
        EVP_EncryptInit_ex(k->enc, EVP_chacha20_poly1305(), NULL, sk.buf, NULL) != 1 ||
        EVP_DecryptInit_ex(k->dec, EVP_chacha20_poly1305(), NULL, rk.buf, NULL) != 1) {
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL ChaCha20-Poly1305 unavailable");
        goto done;
    }
    r = 0;
done:
    PyBuffer_Release(&sk);
    PyBuffer_Release(&rk);
    return r;
}

/* first of n consecutive send counters; 0 when the keypair is exhausted */
static int ks_reserve(KeyStateObject *k, uint64_t n, uint64_t *first)
{
    uint64_t cur = atomic_load(&k->send_counter);
    do {
        if (n > REJECT_AFTER_MESSAGES || cur > REJECT_AFTER_MESSAGES - n)
            return 0;
    } while (!atomic_compare_exchange_weak(&k->send_counter, &cur, cur + n));
    *first = cur;
    return 1;
}

static int replay_check(KeyStateObject *k, uint64_t c)
{
    if (c >= REJECT_AFTER_MESSAGES)
        return 0;
    if (!k->has_last || c > k->last)
        return 1;
    if (k->last - c >= REPLAY_WINDOW)
        return 0;
    return !((k->blocks[(c >> 6) & (RING_BLOCKS - 1)] >> (c & 63)) & 1);
}

static int replay_accept(KeyStateObject *k, uint64_t c)
{
    if (c >= REJECT_AFTER_MESSAGES)
        return 0;
    uint64_t index = c >> 6;
    if (!k->has_last || c > k->last) {
        int64_t current = k->has_last ? (int64_t)(k->last >> 6) : -1;
        int64_t diff = (int64_t)index - current;
        if (diff > 0) {
            int64_t m = diff < RING_BLOCKS ? diff : RING_BLOCKS;
            for (int64_t i = 1; i <= m; i++)
                k->blocks[(uint64_t)(current + i) & (RING_BLOCKS - 1)] = 0;
        }
        k->last = c;
        k->has_last = 1;
    } else if (k->last - c >= REPLAY_WINDOW) {
        return 0;
    }
    uint64_t *b = &k->blocks[index & (RING_BLOCKS - 1)];
    uint64_t bit = 1ULL << (c & 63);
    if (*b & bit)
        return 0;
    *b |= bit;
    return 1;
}

static PyObject *ks_reserve_py(KeyStateObject *k, PyObject *arg)
{
    unsigned long long n = PyLong_AsUnsignedLongLong(arg);
    if (PyErr_Occurred())
        return NULL;
    uint64_t first;
    if (!ks_reserve(k, n, &first))
        Py_RETURN_NONE;
    return PyLong_FromUnsignedLongLong(first);
}

static int counter_arg(PyObject *arg, uint64_t *c, int *valid)
{
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(arg, &overflow);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (overflow > 0) {
        unsigned long long u = PyLong_AsUnsignedLongLong(arg);
        if (PyErr_Occurred()) {
            PyErr_Clear();
            *valid = 0;
            return 0;
        }
        *c = u;
        *valid = 1;
        return 0;
    }
    *valid = overflow == 0 && v >= 0;
    *c = (uint64_t)v;
    return 0;
}

static PyObject *ks_check_py(KeyStateObject *k, PyObject *arg)
{
    uint64_t c;
    int valid;
    if (counter_arg(arg, &c, &valid))
        return NULL;
    if (!valid)
        Py_RETURN_FALSE;
    pthread_mutex_lock(&k->lock);
    int r = replay_check(k, c);
    pthread_mutex_unlock(&k->lock);
    return PyBool_FromLong(r);
}

static PyObject *ks_accept_py(KeyStateObject *k, PyObject *arg)
{
    uint64_t c;
    int valid;
    if (counter_arg(arg, &c, &valid))
        return NULL;
    if (!valid)
        Py_RETURN_FALSE;
    pthread_mutex_lock(&k->lock);
    int r = replay_accept(k, c);
    pthread_mutex_unlock(&k->lock);
    return PyBool_FromLong(r);
}

static PyObject *ks_sent(KeyStateObject *k, void *c)
{
    return PyLong_FromUnsignedLongLong(atomic_load(&k->send_counter));
}

static PyObject *ks_last(KeyStateObject *k, void *c)
{
    pthread_mutex_lock(&k->lock);
    int has = k->has_last;
    uint64_t last = k->last;
    pthread_mutex_unlock(&k->lock);
    return has ? PyLong_FromUnsignedLongLong(last) : PyLong_FromLong(-1);
}

static PyObject *ks_local(KeyStateObject *k, void *c) { return PyLong_FromUnsignedLong(k->local_index); }
static PyObject *ks_remote(KeyStateObject *k, void *c) { return PyLong_FromUnsignedLong(k->remote_index); }
static PyObject *ks_created(KeyStateObject *k, void *c) { return PyFloat_FromDouble(k->created); }
static PyObject *ks_repr(PyObject *self) { return PyUnicode_FromString("KeyState(<redacted>)"); }

static PyMethodDef ks_methods[] = {
    {"reserve", (PyCFunction)ks_reserve_py, METH_O,
     "reserve(n) -> first of n send counters, or None when the keypair is exhausted"},
    {"check", (PyCFunction)ks_check_py, METH_O, "check(counter) -> the replay window would accept it"},
    {"accept", (PyCFunction)ks_accept_py, METH_O,
     "accept(counter) -> recorded (False: seen before or too old)"},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef ks_getset[] = {
    {"sent", (getter)ks_sent, NULL, "send counters handed out", NULL},
    {"last", (getter)ks_last, NULL, "highest counter accepted (-1: none)", NULL},
    {"local_index", (getter)ks_local, NULL, "the receiver index the remote puts in its headers", NULL},
    {"remote_index", (getter)ks_remote, NULL, "the receiver index we put in ours", NULL},
    {"created", (getter)ks_created, NULL, "when the keypair was made (engine clock)", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyTypeObject KeyStateType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "meshguard.dataplane._fastpath.KeyState",
    .tp_basicsize = sizeof(KeyStateObject),
    .tp_dealloc = (destructor)ks_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "a keypair's shared send counter, replay window and data-path ciphers",
    .tp_methods = ks_methods,
    .tp_getset = ks_getset,
    .tp_init = (initproc)ks_init,
    .tp_new = PyType_GenericNew,
    .tp_repr = ks_repr,
    .tp_weaklistoffset = offsetof(KeyStateObject, weakrefs),
};

static int ks_seal(KeyStateObject *k, uint64_t counter, uint8_t *p, size_t n)
{
    uint8_t nonce[12];
    int outl;
    nonce_of(nonce, counter);
    return EVP_EncryptInit_ex(k->enc, NULL, NULL, NULL, nonce) == 1 &&
                   (!n || EVP_EncryptUpdate(k->enc, p, &outl, p, (int)n) == 1) &&
                   EVP_EncryptFinal_ex(k->enc, p + n, &outl) == 1 &&
                   EVP_CIPHER_CTX_ctrl(k->enc, EVP_CTRL_AEAD_GET_TAG, 16, p + n) == 1
               ? 0
               : -1;
}

static int ks_open(KeyStateObject *k, uint64_t counter, const uint8_t *ct, size_t n, uint8_t *out)
{
    uint8_t nonce[12], tag[16];
    int outl;
    if (n < 16)
        return -1;
    nonce_of(nonce, counter);
    memcpy(tag, ct + n - 16, 16);
    return EVP_DecryptInit_ex(k->dec, NULL, NULL, NULL, nonce) == 1 &&
                   EVP_CIPHER_CTX_ctrl(k->dec, EVP_CTRL_AEAD_SET_TAG, 16, tag) == 1 &&
                   (n == 16 || EVP_DecryptUpdate(k->dec, out, &outl, ct, (int)(n - 16)) == 1) &&
                   EVP_DecryptFinal_ex(k->dec, out + (n - 16), &outl) == 1
               ? 0
               : -1;
}

/* ---------------------------------------------------------------- DataPath ---- */
/*
 * DataPath: the per-packet path in a thread of its own, without the GIL. It waits on the TUN
 * fd, the UDP fd and a stop eventfd (epoll), and per wake-up reads a batch, seals or opens
 * it, segments or coalesces it and writes it, under tables Python writes (set_tables, under
 * the mutex the thread takes once per batch): peers (slot -> endpoint, send KeyState),
 * receiver indices (index -> KeyState, peer slot, "next"), allowed-IPs routes. What it cannot
 * handle goes up to Python (drain, after a wake-up through the eventfd `wake_fd`): TUN reads
 * for a peer without a session or endpoint, every non-transport datagram past the handshake
 * guard. It notes per KeyState what it sent and received (drained by Python into the
 * Device's note_sent / note_received) and counts drops by reason.
 */

enum {
    C_NO_ROUTE, C_UNKNOWN_INDEX, C_REPLAY, C_BAD_AUTH, C_BAD_INNER, C_BAD_SOURCE,
    C_UDP_RX, C_UDP_TX, C_TUN_RX, C_TUN_TX, C_UDP_RX_BATCHES, C_TUN_RX_BATCHES,
    C_UDP_SEND_ERRORS, C_UDP_SEND_WOULD_BLOCK, C_UDP_RECV_ERRORS, C_TUN_WRITE_ERRORS,
    C_TUN_READ_ERRORS, C_TUN_BAD_READS, C_TUN_GSO_READS, C_TUN_GSO_WRITES, C_UDP_GSO_SENDS,
    C_UDP_GRO_READS, C_UP_OVERFLOW, NCTR
};
static const char *ctr_names[NCTR] = {
    "no_route", "unknown_index", "replay", "bad_auth", "bad_inner", "bad_source",
    "udp_rx", "udp_tx", "tun_rx", "tun_tx", "udp_rx_batches", "tun_rx_batches",
    "udp_send_errors", "udp_send_would_block", "udp_recv_errors", "tun_write_errors",
    "tun_read_errors", "tun_bad_reads", "tun_gso_reads", "tun_gso_writes", "udp_gso_sends",
    "udp_gro_reads", "up_overflow"};

#define DP_READS 64
#define DP_TUN_READ (65535 + VNET_HDR_LEN)
#define DP_SBUF (8u << 20)
#define DP_MSGS 4096
#define DP_PKTS 4096
#define DP_UP_MAX 4096
#define DP_UP_BYTES (16u << 20) /* bytes the up-queue holds at most (a stranger's 64 KiB junk) */
#define DP_NOTE_EVERY 0.02 /* s between wake-ups for notes alone while traffic flows */
#define DP_GSO_SEGS 64
#define DP_GSO_BYTES 65000

typedef struct {
    uint8_t addr[16];
    int plen, v6, slot;
} Route;

/* host routes (/32, /128: one per mesh peer) by open addressing; the rest are scanned */
typedef struct {
    uint8_t addr[16];
    int slot; /* -1: empty */
} HostRoute;

typedef struct {
    HostRoute *t;
    size_t mask; /* size - 1; no table when t is NULL */
} HostTable;

typedef struct {
    int has_ep;
    struct sockaddr_storage ep;
    socklen_t eplen;
    KeyStateObject *send;
    int clamp; /* the inner MTU TCP SYNs to and from the peer are clamped to; 0: none */
    int has_key;
    uint8_t key[32]; /* the peer's public key: its policy chain */
} PeerSlot;

typedef struct {
    uint32_t index;
    int slot, next;
    KeyStateObject *ks;
} RecvEntry;

typedef struct UpItem {
    struct UpItem *next;
    int kind; /* 0: a TUN read, 1: a datagram */
    int admitted;
    socklen_t alen;
    struct sockaddr_storage addr;
    size_t n;
    uint8_t data[];
} UpItem;

typedef struct {
    PyObject_HEAD
    int tun_fd, udp_fd, stop_fd, wake_fd, epfd;
    int vnet, tso, gso;
    int running, tun_gone;
    pthread_t thread;
    pthread_mutex_t mu;
    PeerSlot *peers;
    int npeers;
    RecvEntry *recv; /* sorted by index */
    int nrecv;
    Route *routes; /* longest prefix first, host routes excepted */
    int nroutes;
    HostTable hosts[2]; /* IPv4, IPv6 */
    PyObject *refs;  /* the objects the tables point at */
    GuardObject *guard;
    PolicyObject *policy; /* NULL: no policy in force, nothing judged or tracked */
    double offset; /* the engine's clock - CLOCK_MONOTONIC */
    UpItem *up_head, *up_tail;
    int up_len;
    size_t up_bytes;
    KeyStateObject **dirty;
    int ndirty, cap_dirty;
    uint64_t ctr[NCTR];
    int has_notes, urgent;
    /* the thread's buffers */
    uint8_t *rbuf, *sbuf, *obuf, *wbuf;
    struct mmsghdr *msgs;
    struct iovec *iovs;
    char (*ctrl)[CMSG_SPACE(sizeof(uint16_t))];
    int *msg_segs;
    size_t *msg_seg; /* each message's segment size */
    Pkt *pkts;
    CoalesceScratch cs;
} DataPathObject;

static PyTypeObject DataPathType;

static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static size_t host_hash(const uint8_t *a, size_t n)
{
    return (size_t)flow_hash(a, n);
}

static int route_lookup(const DataPathObject *dp, const uint8_t *a, int v6)
{
    const HostTable *h = &dp->hosts[v6];
    size_t alen = v6 ? 16 : 4;
    if (h->t != NULL) {
        /* a host route is the longest prefix there is */
        for (size_t i = host_hash(a, alen) & h->mask;; i = (i + 1) & h->mask) {
            const HostRoute *e = &h->t[i];
            if (e->slot < 0)
                break;
            if (!memcmp(e->addr, a, alen))
                return e->slot;
        }
    }
    for (int i = 0; i < dp->nroutes; i++) {
        const Route *r = &dp->routes[i];
        if (r->v6 != v6)
            continue;
        int full = r->plen / 8, rest = r->plen % 8;
        if (memcmp(r->addr, a, (size_t)full))
            continue;
        if (rest && ((r->addr[full] ^ a[full]) & (uint8_t)(0xFF << (8 - rest))))
            continue;
        return r->slot;
    }
    return -1;
}

static RecvEntry *recv_lookup(DataPathObject *dp, uint32_t index)
{
    int lo = 0, hi = dp->nrecv - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        uint32_t v = dp->recv[mid].index;
        if (v == index)
            return &dp->recv[mid];
        if (v < index)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return NULL;
}

static void mark_dirty(DataPathObject *dp, KeyStateObject *k)
{
    dp->has_notes = 1;
    if (k->dirty)
        return;
    if (dp->ndirty == dp->cap_dirty) {
        int cap = dp->cap_dirty ? dp->cap_dirty * 2 : 64;
        KeyStateObject **d = realloc(dp->dirty, (size_t)cap * sizeof(*d));
        if (d == NULL)
            return; /* noted again on the next packet */
        dp->dirty = d;
        dp->cap_dirty = cap;
    }
    k->dirty = 1;
    dp->dirty[dp->ndirty++] = k;
}

static void up_push(DataPathObject *dp, int kind, const uint8_t *d, size_t n,
                    const struct sockaddr_storage *addr, socklen_t alen, int admitted)
{
    if (dp->up_len >= DP_UP_MAX || dp->up_bytes + n > DP_UP_BYTES) {
        dp->ctr[C_UP_OVERFLOW]++;
        dp->has_notes = 1;
        return;
    }
    UpItem *it = malloc(sizeof(UpItem) + n);
    if (it == NULL) {
        dp->ctr[C_UP_OVERFLOW]++;
        dp->has_notes = 1;
        return;
    }
    it->next = NULL;
    it->kind = kind;
    it->admitted = admitted;
    it->alen = addr ? alen : 0;
    if (addr)
        memcpy(&it->addr, addr, alen);
    it->n = n;
    memcpy(it->data, d, n);
    if (dp->up_tail)
        dp->up_tail->next = it;
    else
        dp->up_head = it;
    dp->up_tail = it;
    dp->up_len++;
    dp->up_bytes += n;
    dp->urgent = 1;
}

static int same_endpoint(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family)
        return 0;
    if (a->ss_family == AF_INET6) {
        const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
        return x->sin6_port == y->sin6_port &&
               !memcmp(&x->sin6_addr, &y->sin6_addr, 16) && x->sin6_scope_id == y->sin6_scope_id;
    }
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    return 0;
}

/* --- TUN -> UDP --- */

static void dp_send_all(DataPathObject *dp, int nmsg)
{
    int done = 0;
    while (done < nmsg) {
        int r = sendmmsg(dp->udp_fd, dp->msgs + done, (unsigned)(nmsg - done), MSG_DONTWAIT);
        if (r > 0) {
            for (int i = done; i < done + r; i++) {
                dp->ctr[C_UDP_TX] += (uint64_t)dp->msg_segs[i];
                if (dp->msg_segs[i] > 1)
                    dp->ctr[C_UDP_GSO_SENDS]++;
            }
            done += r;
            continue;
        }
        int e = errno;
        struct mmsghdr *m = &dp->msgs[done];
        int segs = dp->msg_segs[done];
        if (segs > 1 && (e == EIO || e == EOPNOTSUPP || e == ENOPROTOOPT)) {
            /* the kernel refuses GSO: off for good, this message one datagram at a time */
            dp->gso = 0;
            struct iovec *v = m->msg_hdr.msg_iov;
            size_t seg = 0;
            struct cmsghdr *c = CMSG_FIRSTHDR(&m->msg_hdr);
            uint16_t s16;
            memcpy(&s16, CMSG_DATA(c), sizeof(s16));
            seg = s16;
            uint8_t *p = v->iov_base;
            size_t left = v->iov_len;
            while (left) {
                size_t l = left < seg ? left : seg;
                if (sendto(dp->udp_fd, p, l, MSG_DONTWAIT,
                           (struct sockaddr *)m->msg_hdr.msg_name, m->msg_hdr.msg_namelen) ==
                    (ssize_t)l)
                    dp->ctr[C_UDP_TX]++;
                else
                    dp->ctr[C_UDP_SEND_ERRORS]++;
                p += l;
                left -= l;
            }
        } else if (e == EAGAIN || e == EWOULDBLOCK) {
            dp->ctr[C_UDP_SEND_WOULD_BLOCK] += (uint64_t)segs;
        } else {
            dp->ctr[C_UDP_SEND_ERRORS] += (uint64_t)segs;
        }
        done++;
    }
}

static void set_segment_cmsg(DataPathObject *dp, int i, size_t seg)
{
    struct mmsghdr *m = &dp->msgs[i];
    m->msg_hdr.msg_control = dp->ctrl[i];
    m->msg_hdr.msg_controllen = CMSG_SPACE(sizeof(uint16_t));
    struct cmsghdr *c = CMSG_FIRSTHDR(&m->msg_hdr);
    c->cmsg_level = SOL_UDP;
    c->cmsg_type = 103; /* UDP_SEGMENT */
    c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
    uint16_t s16 = (uint16_t)seg;
    memcpy(CMSG_DATA(c), &s16, sizeof(s16));
}

/* queue `segs` sealed messages of `seg` bytes (the last may be shorter) to ps: one GSO send
 * when segs > 1, joined to the previous one when that goes to the same endpoint, has messages
 * of the same size, all full, and ends where these begin (reads sealed one after another) */
static void dp_add_msg(DataPathObject *dp, int *nmsg, uint8_t *p, size_t len, size_t seg,
                       int segs, PeerSlot *ps)
{
    if (*nmsg > 0 && dp->gso) {
        int j = *nmsg - 1;
        struct mmsghdr *pm = &dp->msgs[j];
        struct iovec *v = &dp->iovs[j];
        size_t per = DP_GSO_BYTES / seg;
        if (per > DP_GSO_SEGS)
            per = DP_GSO_SEGS;
        if (pm->msg_hdr.msg_name == (void *)&ps->ep && dp->msg_seg[j] == seg &&
            v->iov_len == (size_t)dp->msg_segs[j] * seg &&
            (uint8_t *)v->iov_base + v->iov_len == p &&
            (size_t)(dp->msg_segs[j] + segs) <= per && v->iov_len + len <= DP_GSO_BYTES) {
            v->iov_len += len;
            if (dp->msg_segs[j] == 1)
                set_segment_cmsg(dp, j, seg);
            dp->msg_segs[j] += segs;
            return;
        }
    }
    if (*nmsg == DP_MSGS) {
        dp_send_all(dp, *nmsg);
        *nmsg = 0;
    }
    int i = (*nmsg)++;
    struct mmsghdr *m = &dp->msgs[i];
    memset(m, 0, sizeof(*m));
    dp->iovs[i].iov_base = p;
    dp->iovs[i].iov_len = len;
    m->msg_hdr.msg_iov = &dp->iovs[i];
    m->msg_hdr.msg_iovlen = 1;
    m->msg_hdr.msg_name = &ps->ep;
    m->msg_hdr.msg_namelen = ps->eplen;
    dp->msg_segs[i] = segs;
    dp->msg_seg[i] = seg;
    if (segs > 1)
        set_segment_cmsg(dp, i, seg);
}

static void dp_tun_batch(DataPathObject *dp, double now, int limit)
{
    int nmsg = 0, reads = 0;
    size_t used = 0;
    size_t off = dp->vnet ? VNET_HDR_LEN : 0;
    PolicyObject *pol = dp->policy;
    uint8_t last[PF_KEYLEN] = {0};
    const PfChain *chain = NULL;
    int chain_slot = -1;
    if (pol != NULL)
        pthread_mutex_lock(&pol->mu);
    for (int r = 0; r < limit; r++) {
        uint8_t *rb = dp->rbuf;
        ssize_t got = read(dp->tun_fd, rb, DP_TUN_READ);
        if (got < 0) {
            int e = errno;
            if (e == EAGAIN || e == EWOULDBLOCK || e == EINTR)
                break;
            dp->ctr[C_TUN_READ_ERRORS]++;
            dp->has_notes = 1;
            if (e == EBADFD || e == EBADF || e == ENXIO || e == ENODEV) {
                dp->tun_gone = e;
                dp->urgent = 1;
                epoll_ctl(dp->epfd, EPOLL_CTL_DEL, dp->tun_fd, NULL);
            }
            break;
        }
        reads++;
        dp->ctr[C_TUN_RX]++;
        dp->has_notes = 1;
        size_t n = (size_t)got;
        if (n <= off) {
            if (dp->vnet)
                dp->ctr[C_TUN_BAD_READS]++;
            continue;
        }
        const uint8_t *ip = rb + off;
        size_t m = n - off;
        int ver = ip[0] >> 4, slot;
        if (ver == 4 && m >= 20)
            slot = route_lookup(dp, ip + 16, 0);
        else if (ver == 6 && m >= 40)
            slot = route_lookup(dp, ip + 24, 1);
        else {
            up_push(dp, 0, rb, n, NULL, 0, 0); /* Python counts it (bad_inner) */
            continue;
        }
        if (slot < 0) {
            dp->ctr[C_NO_ROUTE]++;
            continue;
        }
        PeerSlot *ps = &dp->peers[slot];
        if (pol != NULL) {
            if (slot != chain_slot) {
                chain = pf_chain_of(pol->t, ps->has_key ? ps->key : NULL);
                chain_slot = slot;
            }
            pf_track(pol, chain, ip, m, now, last); /* a flow this node opens: replies pass */
        }
        if (ps->clamp)
            clamp_mss(rb + off, m, ps->clamp, dp->vnet && (rb[0] & F_NEEDS_CSUM));
        KeyStateObject *ks = ps->send;
        if (ks == NULL || !ps->has_ep || now - ks->created >= REJECT_AFTER_TIME) {
            up_push(dp, 0, rb, n, NULL, 0, 0); /* Python queues it, starts a handshake */
            continue;
        }
        Plan pl;
        const char *err;
        if (plan_of(rb, n, dp->vnet, &pl, &err)) {
            dp->ctr[C_TUN_BAD_READS]++;
            continue;
        }
        size_t seg = plan_msg_len(seg_inner_len(&pl, 0)), total = 0;
        for (size_t i = 0; i < pl.count; i++)
            total += plan_msg_len(seg_inner_len(&pl, i));
        if (total > DP_SBUF) {
            /* more sealed bytes than the send buffer holds (a tiny gso_size behind a long
             * header): no real TSO read is this, drop it */
            dp->ctr[C_TUN_BAD_READS]++;
            continue;
        }
        if (used + total > DP_SBUF) {
            dp_send_all(dp, nmsg);
            nmsg = 0;
            used = 0;
        }
        uint64_t first;
        if (!ks_reserve(ks, pl.count, &first)) {
            up_push(dp, 0, rb, n, NULL, 0, 0);
            continue;
        }
        uint8_t *base = dp->sbuf + used, *o = base;
        int failed = 0;
        for (size_t i = 0; i < pl.count; i++) {
            uint64_t counter = first + i;
            size_t inner = write_segment(&pl, i, o + 16);
            size_t padded = (inner + 15) & ~(size_t)15;
            memset(o + 16 + inner, 0, padded - inner);
            o[0] = 4;
            o[1] = o[2] = o[3] = 0;
            for (int k = 0; k < 4; k++)
                o[4 + k] = (uint8_t)(ks->remote_index >> (8 * k));
            for (int k = 0; k < 8; k++)
                o[8 + k] = (uint8_t)(counter >> (8 * k));
            if (ks_seal(ks, counter, o + 16, padded)) {
                failed = 1;
                break;
            }
            o += 32 + padded;
        }
        if (failed) {
            dp->ctr[C_UDP_SEND_ERRORS] += pl.count;
            continue;
        }
        used += total;
        ks->tx_pk += pl.count;
        ks->tx_bytes += total;
        mark_dirty(dp, ks);
        if (pl.count > 1)
            dp->ctr[C_TUN_GSO_READS]++;
        /* GSO chunks of whole messages: all seg bytes but the read's last one */
        size_t per = 1;
        if (dp->gso) {
            per = DP_GSO_BYTES / seg;
            if (per > DP_GSO_SEGS)
                per = DP_GSO_SEGS;
            if (per < 1)
                per = 1;
        }
        uint8_t *p = base;
        size_t left = total, i = 0;
        while (i < pl.count) {
            size_t k = pl.count - i < per ? pl.count - i : per;
            size_t len = k * seg;
            if (len > left)
                len = left;
            dp_add_msg(dp, &nmsg, p, len, seg, (int)k, ps);
            p += len;
            left -= len;
            i += k;
        }
    }
    if (pol != NULL)
        pthread_mutex_unlock(&pol->mu);
    if (reads)
        dp->ctr[C_TUN_RX_BATCHES]++;
    if (nmsg)
        dp_send_all(dp, nmsg);
}

/* --- UDP -> TUN --- */

static int emit_tun(void *ctx, const Pkt *pk, const int *idx, int k, size_t l4)
{
    DataPathObject *dp = ctx;
    if (k == 1) {
        static const uint8_t zero[VNET_HDR_LEN];
        struct iovec v[2] = {{(void *)zero, VNET_HDR_LEN}, {(void *)pk[idx[0]].p, pk[idx[0]].n}};
        if (writev(dp->tun_fd, v, 2) < 0)
            dp->ctr[C_TUN_WRITE_ERRORS]++;
        return 0;
    }
    size_t n = super_len(pk, idx, k, l4);
    super_into(dp->wbuf, pk, idx, k, l4);
    if (write(dp->tun_fd, dp->wbuf, n) < 0)
        dp->ctr[C_TUN_WRITE_ERRORS]++;
    else
        dp->ctr[C_TUN_GSO_WRITES]++;
    return 0;
}

static void dp_write_tun(DataPathObject *dp, int np)
{
    if (!np)
        return;
    dp->ctr[C_TUN_TX] += (uint64_t)np;
    if (dp->vnet && dp->tso) {
        coalesce_core(dp->pkts, np, 1, &dp->cs, emit_tun, dp);
        return;
    }
    for (int i = 0; i < np; i++) {
        const Pkt *q = &dp->pkts[i];
        if (dp->vnet) {
            int j = i;
            emit_tun(dp, dp->pkts, &j, 1, 0);
        } else if (write(dp->tun_fd, q->p, q->n) < 0) {
            dp->ctr[C_TUN_WRITE_ERRORS]++;
        }
    }
}

/* a non-transport datagram: the handshake guard first, then up to Python */
static void dp_handshake(DataPathObject *dp, double now, const uint8_t *p, size_t l,
                         const struct sockaddr_storage *addr, socklen_t alen)
{
    GuardObject *g = dp->guard;
    uint8_t key[16], ep[18], reply[64];
    size_t klen = 0, eplen = 0;
    if (g == NULL || source_of(addr, key, &klen, ep, &eplen)) {
        up_push(dp, 1, p, l, addr, alen, 0);
        return;
    }
    if (l == 64 && le32(p) == 3) {
        GLOCK(g);
        int ok = guard_cookie_reply(g, now, p, l, key, klen);
        if (!ok)
            g->counts[V_RATE_LIMITED]++;
        GUNLOCK(g);
        if (ok)
            up_push(dp, 1, p, l, addr, alen, 1);
        else
            dp->has_notes = 1;
        return;
    }
    if (!is_handshake(p, l)) {
        up_push(dp, 1, p, l, addr, alen, 0);
        return;
    }
    GLOCK(g);
    int v = guard_check(g, now, p, l, key, klen, ep, eplen, reply);
    if (v > 0)
        g->counts[v]++;
    GUNLOCK(g);
    if (v == V_PASS) {
        up_push(dp, 1, p, l, addr, alen, 1);
        return;
    }
    dp->has_notes = 1;
    if (v == V_COOKIE) {
        ssize_t r = sendto(dp->udp_fd, reply, 64, MSG_DONTWAIT, (const struct sockaddr *)addr,
                           alen);
        if (r == 64)
            dp->ctr[C_UDP_TX]++;
        else if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            dp->ctr[C_UDP_SEND_WOULD_BLOCK]++;
        else
            dp->ctr[C_UDP_SEND_ERRORS]++;
    } else if (v < 0) {
        dp->ctr[C_UDP_RECV_ERRORS]++;
    }
}

/* returns the number of messages read (a full batch: the caller reads again) */
static int dp_udp_batch(DataPathObject *dp, double now)
{
    struct mmsghdr msgs[DP_READS];
    struct iovec iov[DP_READS];
    struct sockaddr_storage names[DP_READS];
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } ctrl[DP_READS];
    memset(msgs, 0, sizeof(msgs));
    for (int i = 0; i < DP_READS; i++) {
        iov[i].iov_base = dp->rbuf + (size_t)i * RB_BUF;
        iov[i].iov_len = RB_BUF;
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_name = &names[i];
        msgs[i].msg_hdr.msg_namelen = sizeof(names[i]);
        msgs[i].msg_hdr.msg_control = ctrl[i].buf;
        msgs[i].msg_hdr.msg_controllen = sizeof(ctrl[i].buf);
    }
    int got = recvmmsg(dp->udp_fd, msgs, DP_READS, MSG_DONTWAIT, NULL);
    if (got < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            dp->ctr[C_UDP_RECV_ERRORS]++;
            dp->has_notes = 1;
        }
        return 0;
    }
    if (got == 0)
        return 0;
    dp->ctr[C_UDP_RX_BATCHES]++;
    dp->has_notes = 1;
    int np = 0;
    size_t oused = 0;
    PolicyObject *pol = dp->policy;
    const PfChain *chain = NULL;
    int chain_slot = -1;
    PfMemo memo = {NULL, 0, 0, {0}};
    if (pol != NULL)
        pthread_mutex_lock(&pol->mu);
    for (int i = 0; i < got; i++) {
        struct msghdr *h = &msgs[i].msg_hdr;
        if (h->msg_flags & MSG_TRUNC) {
            dp->ctr[C_UDP_RECV_ERRORS]++;
            continue;
        }
        size_t n = msgs[i].msg_len, seg = 0;
        const uint8_t *d = iov[i].iov_base;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(h); c != NULL; c = CMSG_NXTHDR(h, c)) {
            if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO) {
                if (c->cmsg_len >= CMSG_LEN(sizeof(int))) {
                    int v;
                    memcpy(&v, CMSG_DATA(c), sizeof(int));
                    seg = v > 0 ? (size_t)v : 0;
                } else if (c->cmsg_len >= CMSG_LEN(sizeof(uint16_t))) {
                    uint16_t v;
                    memcpy(&v, CMSG_DATA(c), sizeof(v));
                    seg = v;
                }
            }
        }
        if (!(seg > 0 && seg < n))
            seg = 0;
        if (seg) {
            dp->ctr[C_UDP_GRO_READS]++;
            dp->ctr[C_UDP_RX] += (n + seg - 1) / seg;
        } else {
            dp->ctr[C_UDP_RX]++;
        }
        if (n == 0) {
            up_push(dp, 1, d, 0, &names[i], h->msg_namelen, 0);
            continue;
        }
        size_t pos = 0;
        while (pos < n) {
            size_t l = n - pos;
            if (seg && seg < l)
                l = seg;
            const uint8_t *p = d + pos;
            pos += l;
            if (l < 32 || le32(p) != 4) {
                dp_handshake(dp, now, p, l, &names[i], h->msg_namelen);
                continue;
            }
            RecvEntry *re = recv_lookup(dp, le32(p + 4));
            if (re == NULL || now - re->ks->created >= REJECT_AFTER_TIME) {
                dp->ctr[C_UNKNOWN_INDEX]++;
                continue;
            }
            KeyStateObject *ks = re->ks;
            uint64_t counter = le64(p + 8);
            uint8_t *out = dp->obuf + oused;
            size_t ptlen = l - 32;
            if (np >= DP_PKTS || oused + ptlen + 16 > (size_t)DP_READS * RB_BUF) {
                dp_write_tun(dp, np);
                np = 0;
                oused = 0;
                out = dp->obuf;
            }
            if (ks_open(ks, counter, p + 16, l - 16, out)) {
                pthread_mutex_lock(&ks->lock);
                int fresh = replay_check(ks, counter);
                pthread_mutex_unlock(&ks->lock);
                dp->ctr[fresh ? C_BAD_AUTH : C_REPLAY]++;
                continue;
            }
            pthread_mutex_lock(&ks->lock);
            int ok = replay_accept(ks, counter);
            pthread_mutex_unlock(&ks->lock);
            if (!ok) {
                dp->ctr[C_REPLAY]++;
                continue;
            }
            PeerSlot *ps = &dp->peers[re->slot];
            ks->rx_pk++;
            ks->rx_bytes += l;
            memcpy(&ks->rx_src, &names[i], h->msg_namelen);
            ks->rx_srclen = h->msg_namelen;
            mark_dirty(dp, ks);
            if (!ps->has_ep || !same_endpoint(&ps->ep, &names[i]))
                dp->urgent = 1; /* roaming: Python moves the peer */
            if (re->next) {
                /* the initiator used the session we answered: send with it at once */
                ps->send = ks;
                re->next = 0;
                dp->urgent = 1;
            }
            if (ptlen == 0) {
                ks->rx_keep++;
                continue;
            }
            int ver = out[0] >> 4;
            size_t total = 0;
            const uint8_t *src = NULL;
            if (ver == 4 && ptlen >= 20) {
                total = get16(out + 2);
                if (total >= 20 && total <= ptlen)
                    src = out + 12;
            } else if (ver == 6 && ptlen >= 40) {
                total = 40 + get16(out + 4);
                if (total <= ptlen)
                    src = out + 8;
            }
            if (src == NULL) {
                dp->ctr[C_BAD_INNER]++;
                continue;
            }
            if (route_lookup(dp, src, ver == 6) != re->slot) {
                dp->ctr[C_BAD_SOURCE]++;
                continue;
            }
            if (pol != NULL) {
                if (re->slot != chain_slot) {
                    chain = pf_chain_of(pol->t, ps->has_key ? ps->key : NULL);
                    chain_slot = re->slot;
                }
                int counter;
                if (!pf_passes(pf_judge(pol, pol->t, chain, out, total, now, &counter, &memo)))
                    continue; /* counted in the filter */
            }
            if (ps->clamp)
                clamp_mss(out, total, ps->clamp, 0);
            dp->pkts[np].p = out;
            dp->pkts[np].n = total;
            dp->pkts[np].next = -1;
            np++;
            oused += (ptlen + 15) & ~(size_t)15;
        }
    }
    dp_write_tun(dp, np);
    if (pol != NULL)
        pthread_mutex_unlock(&pol->mu);
    return got;
}

static void dp_wake(DataPathObject *dp)
{
    uint64_t one = 1;
    if (write(dp->wake_fd, &one, sizeof(one)) < 0) {
        /* the counter is full: Python has a wake-up pending anyway */
    }
}

static void *dp_main(void *arg)
{
    DataPathObject *dp = arg;
    struct epoll_event evs[4];
    double last_wake = 0;
    for (;;) {
        int timeout = -1;
        pthread_mutex_lock(&dp->mu);
        int notes = dp->has_notes;
        pthread_mutex_unlock(&dp->mu);
        if (notes) {
            double wait = DP_NOTE_EVERY - (mono_now() - last_wake);
            timeout = wait <= 0 ? 0 : (int)(wait * 1000) + 1;
        }
        int n = epoll_wait(dp->epfd, evs, 4, timeout);
        if (n < 0 && errno != EINTR)
            break;
        int stop = 0;
        pthread_mutex_lock(&dp->mu);
        double t = mono_now();
        double now = t + dp->offset;
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == dp->stop_fd)
                stop = 1;
            else if (fd == dp->tun_fd && !dp->tun_gone)
                dp_tun_batch(dp, now, DP_READS);
            else if (fd == dp->udp_fd)
                for (int round = 0; round < 4 && dp_udp_batch(dp, now) == DP_READS; round++)
                    ;
        }
        int wake = dp->urgent || (dp->has_notes && t - last_wake >= DP_NOTE_EVERY);
        if (wake) {
            dp->urgent = 0;
            dp->has_notes = 0; /* Python takes them all on this wake-up */
        }
        pthread_mutex_unlock(&dp->mu);
        if (wake) {
            last_wake = t;
            dp_wake(dp);
        }
        if (stop)
            break;
    }
    return NULL;
}

/* --- the Python side --- */

static void dp_free_tables(PeerSlot *peers, RecvEntry *recv, Route *routes, HostTable *hosts)
{
    free(peers);
    free(recv);
    free(routes);
    if (hosts) {
        free(hosts[0].t);
        free(hosts[1].t);
    }
}

/* moves the host routes of routes[0..*n) into hosts[] (routes keeps the others, in order) */
static int split_hosts(Route *routes, int *n, HostTable hosts[2])
{
    size_t count[2] = {0, 0};
    for (int i = 0; i < *n; i++)
        if (routes[i].plen == (routes[i].v6 ? 128 : 32))
            count[routes[i].v6]++;
    for (int v = 0; v < 2; v++) {
        hosts[v].t = NULL;
        hosts[v].mask = 0;
        if (!count[v])
            continue;
        size_t size = 16;
        while (size < count[v] * 2)
            size <<= 1;
        hosts[v].t = malloc(size * sizeof(HostRoute));
        if (hosts[v].t == NULL)
            return -1;
        hosts[v].mask = size - 1;
        for (size_t i = 0; i < size; i++)
            hosts[v].t[i].slot = -1;
    }
    int kept = 0;
    for (int i = 0; i < *n; i++) {
        Route *r = &routes[i];
        if (r->plen != (r->v6 ? 128 : 32)) {
            routes[kept++] = *r;
            continue;
        }
        HostTable *h = &hosts[r->v6];
        size_t alen = r->v6 ? 16 : 4;
        size_t j = host_hash(r->addr, alen) & h->mask;
        while (h->t[j].slot >= 0 && memcmp(h->t[j].addr, r->addr, alen))
            j = (j + 1) & h->mask;
        memcpy(h->t[j].addr, r->addr, 16);
        h->t[j].slot = r->slot;
    }
    *n = kept;
    return 0;
}

static int dp_init(DataPathObject *dp, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"tun_fd", "udp_fd", "vnet", "tso", "gso", NULL};
    int tun_fd, udp_fd, vnet, tso, gso;
    if (dp->epfd > 0) {
        PyErr_SetString(PyExc_RuntimeError, "DataPath already initialised");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iippp", kwlist, &tun_fd, &udp_fd, &vnet, &tso,
                                     &gso))
        return -1;
    pthread_mutex_init(&dp->mu, NULL);
    dp->tun_fd = tun_fd;
    dp->udp_fd = udp_fd;
    dp->vnet = vnet;
    dp->tso = tso;
    dp->gso = gso;
    dp->stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    dp->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    dp->epfd = epoll_create1(EPOLL_CLOEXEC);
    dp->refs = PyList_New(0);
    size_t rsize = (size_t)DP_READS * RB_BUF;
    dp->rbuf = malloc(rsize);
    dp->obuf = malloc(rsize);
    dp->sbuf = malloc(DP_SBUF);
    dp->wbuf = malloc(MAX_SUPER + VNET_HDR_LEN + 64);
    dp->msgs = calloc(DP_MSGS, sizeof(*dp->msgs));
    dp->iovs = calloc(DP_MSGS, sizeof(*dp->iovs));
    dp->ctrl = calloc(DP_MSGS, sizeof(*dp->ctrl));
    dp->msg_segs = calloc(DP_MSGS, sizeof(int));
    dp->msg_seg = calloc(DP_MSGS, sizeof(size_t));
    dp->pkts = calloc(DP_PKTS, sizeof(Pkt));
    if (dp->stop_fd < 0 || dp->wake_fd < 0 || dp->epfd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    if (!dp->refs)
        return -1;
    if (!dp->rbuf || !dp->obuf || !dp->sbuf || !dp->wbuf || !dp->msgs || !dp->iovs ||
        !dp->ctrl || !dp->msg_segs || !dp->msg_seg || !dp->pkts || scratch_init(&dp->cs, DP_PKTS, malloc)) {
        PyErr_NoMemory();
        return -1;
    }
    int fds[3] = {dp->stop_fd, tun_fd, udp_fd};
    for (int i = 0; i < 3; i++) {
        if (fds[i] < 0)
            continue;
        int fl = fcntl(fds[i], F_GETFL);
        if (fl >= 0)
            fcntl(fds[i], F_SETFL, fl | O_NONBLOCK);
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = fds[i]};
        if (epoll_ctl(dp->epfd, EPOLL_CTL_ADD, fds[i], &ev)) {
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
    }
    return 0;
}

static void dp_stop_thread(DataPathObject *dp)
{
    if (!dp->running)
        return;
    uint64_t one = 1;
    if (write(dp->stop_fd, &one, sizeof(one)) < 0) {
        /* cannot happen with a fresh eventfd; the join below would hang, so do not join */
        return;
    }
    Py_BEGIN_ALLOW_THREADS
    pthread_join(dp->thread, NULL);
    Py_END_ALLOW_THREADS
    dp->running = 0;
}

static void dp_dealloc(DataPathObject *dp)
{
    dp_stop_thread(dp);
    dp_free_tables(dp->peers, dp->recv, dp->routes, dp->hosts);
    for (UpItem *it = dp->up_head; it != NULL;) {
        UpItem *nx = it->next;
        free(it);
        it = nx;
    }
    free(dp->dirty);
    free(dp->rbuf);
    free(dp->obuf);
    free(dp->sbuf);
    free(dp->wbuf);
    free(dp->msgs);
    free(dp->iovs);
    free(dp->ctrl);
    free(dp->msg_segs);
    free(dp->msg_seg);
    free(dp->pkts);
    free(dp->cs.groups);
    free(dp->cs.idx);
    free(dp->cs.table);
    if (dp->epfd > 0)
        close(dp->epfd);
    if (dp->stop_fd > 0)
        close(dp->stop_fd);
    if (dp->wake_fd > 0)
        close(dp->wake_fd);
    Py_XDECREF(dp->refs);
    Py_XDECREF((PyObject *)dp->guard);
    Py_XDECREF((PyObject *)dp->policy);
    if (dp->epfd > 0)
        pthread_mutex_destroy(&dp->mu);
    Py_TYPE(dp)->tp_free((PyObject *)dp);
}

static void lock_mu(DataPathObject *dp)
{
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&dp->mu);
    Py_END_ALLOW_THREADS
}

/* the notes of the dirty KeyStates into `out` (GIL and mutex held) */
static int harvest_notes(DataPathObject *dp, PyObject *out)
{
    int r = 0;
    for (int i = 0; i < dp->ndirty; i++) {
        KeyStateObject *k = dp->dirty[i];
        k->dirty = 0;
        if (r)
            continue;
        PyObject *src = k->rx_srclen ? PyBytes_FromStringAndSize((char *)&k->rx_src, k->rx_srclen)
                                     : Py_NewRef(Py_None);
        PyObject *item = src ? Py_BuildValue("(OKKKKKN)", (PyObject *)k, k->tx_pk, k->tx_bytes,
                                             k->rx_pk, k->rx_bytes, k->rx_keep, src)
                             : NULL;
        if (item == NULL || PyList_Append(out, item))
            r = -1;
        Py_XDECREF(item);
        k->tx_pk = k->tx_bytes = k->rx_pk = k->rx_bytes = k->rx_keep = 0;
        k->rx_srclen = 0;
    }
    dp->ndirty = 0;
    return r;
}

static int parse_sockaddr(PyObject *o, PeerSlot *ps)
{
    if (o == Py_None) {
        ps->has_ep = 0;
        return 0;
    }
    char *b;
    Py_ssize_t n;
    if (PyBytes_AsStringAndSize(o, &b, &n))
        return -1;
    if (n < 2 || (size_t)n > sizeof(ps->ep)) {
        PyErr_SetString(PyExc_ValueError, "bad sockaddr");
        return -1;
    }
    memset(&ps->ep, 0, sizeof(ps->ep));
    memcpy(&ps->ep, b, (size_t)n);
    ps->eplen = (socklen_t)n;
    ps->has_ep = 1;
    return 0;
}

static int cmp_recv(const void *a, const void *b)
{
    uint32_t x = ((const RecvEntry *)a)->index, y = ((const RecvEntry *)b)->index;
    return x < y ? -1 : x > y;
}

static int cmp_route(const void *a, const void *b)
{
    return ((const Route *)b)->plen - ((const Route *)a)->plen;
}

static PyObject *dp_set_tables(DataPathObject *dp, PyObject *args)
{
    PyObject *peers_in, *recv_in, *routes_in;
    if (!PyArg_ParseTuple(args, "OOO", &peers_in, &recv_in, &routes_in))
        return NULL;
    PyObject *ps = PySequence_Fast(peers_in, "peers: a sequence");
    PyObject *rs = ps ? PySequence_Fast(recv_in, "indices: a sequence") : NULL;
    PyObject *ts = rs ? PySequence_Fast(routes_in, "routes: a sequence") : NULL;
    PyObject *refs = PyList_New(0);
    PeerSlot *peers = NULL;
    RecvEntry *recv = NULL;
    Route *routes = NULL;
    HostTable hosts[2] = {{NULL, 0}, {NULL, 0}};
    Py_ssize_t np = 0, nr = 0, nt = 0;
    if (!ts || !refs)
        goto fail;
    np = PySequence_Fast_GET_SIZE(ps);
    nr = PySequence_Fast_GET_SIZE(rs);
    nt = PySequence_Fast_GET_SIZE(ts);
    peers = calloc((size_t)np + 1, sizeof(PeerSlot));
    recv = calloc((size_t)nr + 1, sizeof(RecvEntry));
    routes = calloc((size_t)nt + 1, sizeof(Route));
    if (!peers || !recv || !routes) {
        PyErr_NoMemory();
        goto fail;
    }
    for (Py_ssize_t i = 0; i < np; i++) {
        PyObject *ep, *ks;
        int clamp = 0;
        const char *key = NULL;
        Py_ssize_t klen = 0;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(ps, i), "OO|iz#", &ep, &ks, &clamp, &key,
                              &klen))
            goto fail;
        if (parse_sockaddr(ep, &peers[i]))
            goto fail;
        peers[i].clamp = clamp > 0 ? clamp : 0;
        if (key != NULL && klen == 32) {
            memcpy(peers[i].key, key, 32);
            peers[i].has_key = 1;
        }
        if (ks != Py_None) {
            if (!PyObject_TypeCheck(ks, &KeyStateType)) {
                PyErr_SetString(PyExc_TypeError, "a peer's keys: a KeyState or None");
                goto fail;
            }
            if (PyList_Append(refs, ks))
                goto fail;
            peers[i].send = (KeyStateObject *)ks;
        }
    }
    for (Py_ssize_t i = 0; i < nr; i++) {
        PyObject *ks;
        unsigned long index;
        int slot, next;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(rs, i), "kO!ip", &index, &KeyStateType,
                              &ks, &slot, &next))
            goto fail;
        if (slot < 0 || slot >= np) {
            PyErr_SetString(PyExc_ValueError, "receive entry: no such peer slot");
            goto fail;
        }
        if (PyList_Append(refs, ks))
            goto fail;
        recv[i].index = (uint32_t)index;
        recv[i].ks = (KeyStateObject *)ks;
        recv[i].slot = slot;
        recv[i].next = next;
    }
    for (Py_ssize_t i = 0; i < nt; i++) {
        Py_buffer a;
        int plen, slot;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(ts, i), "y*ii", &a, &plen, &slot))
            goto fail;
        int ok = (a.len == 4 || a.len == 16) && plen >= 0 && plen <= a.len * 8 && slot >= 0 &&
                 slot < np;
        if (ok) {
            memcpy(routes[i].addr, a.buf, (size_t)a.len);
            routes[i].v6 = a.len == 16;
            routes[i].plen = plen;
            routes[i].slot = slot;
        }
        PyBuffer_Release(&a);
        if (!ok) {
            PyErr_SetString(PyExc_ValueError, "route: (4- or 16-byte address, prefix, slot)");
            goto fail;
        }
    }
    qsort(recv, (size_t)nr, sizeof(RecvEntry), cmp_recv);
    qsort(routes, (size_t)nt, sizeof(Route), cmp_route);
    int nrt = (int)nt;
    if (split_hosts(routes, &nrt, hosts)) {
        PyErr_NoMemory();
        goto fail;
    }
    PyObject *notes = PyList_New(0);
    if (notes == NULL)
        goto fail;
    lock_mu(dp);
    int hr = harvest_notes(dp, notes);
    PeerSlot *op = dp->peers;
    RecvEntry *orc = dp->recv;
    Route *ort = dp->routes;
    HostTable oh[2] = {dp->hosts[0], dp->hosts[1]};
    PyObject *orefs = dp->refs;
    dp->peers = peers;
    dp->npeers = (int)np;
    dp->recv = recv;
    dp->nrecv = (int)nr;
    dp->routes = routes;
    dp->nroutes = nrt;
    dp->hosts[0] = hosts[0];
    dp->hosts[1] = hosts[1];
    dp->refs = refs;
    pthread_mutex_unlock(&dp->mu);
    dp_free_tables(op, orc, ort, oh);
    Py_XDECREF(orefs);
    Py_DECREF(ps);
    Py_DECREF(rs);
    Py_DECREF(ts);
    if (hr) {
        Py_DECREF(notes);
        return NULL;
    }
    return notes;
fail:
    dp_free_tables(peers, recv, routes, hosts);
    Py_XDECREF(refs);
    Py_XDECREF(ps);
    Py_XDECREF(rs);
    Py_XDECREF(ts);
    return NULL;
}

static PyObject *dp_set_clock(DataPathObject *dp, PyObject *args)
{
    double v;
    if (!PyArg_ParseTuple(args, "d", &v))
        return NULL;
    lock_mu(dp);
    dp->offset = v;
    pthread_mutex_unlock(&dp->mu);
    Py_RETURN_NONE;
}

/* the engine counters (not the drops, which drain hands to the Device), taken and reset */
static PyObject *dp_take_stats(DataPathObject *dp, PyObject *unused)
{
    uint64_t c[NCTR];
    lock_mu(dp);
    for (int i = C_UDP_RX; i < NCTR; i++) {
        c[i] = dp->ctr[i];
        dp->ctr[i] = 0;
    }
    pthread_mutex_unlock(&dp->mu);
    PyObject *d = PyDict_New();
    for (int i = C_UDP_RX; d != NULL && i < NCTR; i++) {
        if (!c[i])
            continue;
        PyObject *n = PyLong_FromUnsignedLongLong(c[i]);
        if (n == NULL || PyDict_SetItemString(d, ctr_names[i], n))
            Py_CLEAR(d);
        Py_XDECREF(n);
    }
    return d;
}

static PyObject *dp_set_guard(DataPathObject *dp, PyObject *g)
{
    if (g != Py_None && !PyObject_TypeCheck(g, &GuardType)) {
        PyErr_SetString(PyExc_TypeError, "guard must be a HandshakeGuard or None");
        return NULL;
    }
    lock_mu(dp);
    GuardObject *old = dp->guard;
    dp->guard = g == Py_None ? NULL : (GuardObject *)Py_NewRef(g);
    pthread_mutex_unlock(&dp->mu);
    Py_XDECREF((PyObject *)old);
    Py_RETURN_NONE;
}

static PyObject *dp_set_policy(DataPathObject *dp, PyObject *p)
{
    if (p != Py_None && !PyObject_TypeCheck(p, &PolicyType)) {
        PyErr_SetString(PyExc_TypeError, "policy must be a PolicyFilter or None");
        return NULL;
    }
    lock_mu(dp);
    PolicyObject *old = dp->policy;
    dp->policy = p == Py_None ? NULL : (PolicyObject *)Py_NewRef(p);
    pthread_mutex_unlock(&dp->mu);
    Py_XDECREF((PyObject *)old);
    Py_RETURN_NONE;
}

static PyObject *dp_start(DataPathObject *dp, PyObject *unused)
{
    if (dp->running)
        Py_RETURN_NONE;
    uint64_t v;
    if (read(dp->stop_fd, &v, sizeof(v)) < 0) {
        /* no stop pending (the usual case): nothing to clear */
    }
    int e = pthread_create(&dp->thread, NULL, dp_main, dp);
    if (e) {
        errno = e;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    dp->running = 1;
    Py_RETURN_NONE;
}

static PyObject *dp_stop(DataPathObject *dp, PyObject *unused)
{
    dp_stop_thread(dp);
    Py_RETURN_NONE;
}

static PyObject *dp_drain(DataPathObject *dp, PyObject *unused)
{
    uint64_t v;
    if (read(dp->wake_fd, &v, sizeof(v)) < 0) {
        /* nothing pending: a drain without a wake-up */
    }
    PyObject *tun = PyList_New(0), *grams = PyList_New(0), *counts = PyDict_New();
    if (!tun || !grams || !counts) {
        Py_XDECREF(tun);
        Py_XDECREF(grams);
        Py_XDECREF(counts);
        return NULL;
    }
    lock_mu(dp);
    UpItem *head = dp->up_head;
    dp->up_head = dp->up_tail = NULL;
    dp->up_len = 0;
    dp->up_bytes = 0;
    PyObject *notes = PyList_New(0);
    int r = notes ? harvest_notes(dp, notes) : -1;
    uint64_t c[NCTR];
    memcpy(c, dp->ctr, sizeof(c));
    memset(dp->ctr, 0, sizeof(dp->ctr));
    int gone = dp->tun_gone;
    dp->tun_gone = 0;
    pthread_mutex_unlock(&dp->mu);
    for (UpItem *it = head; it != NULL;) {
        UpItem *nx = it->next;
        if (!r) {
            PyObject *o;
            if (it->kind == 0)
                o = PyBytes_FromStringAndSize((char *)it->data, (Py_ssize_t)it->n);
            else
                o = Py_BuildValue("(y#y#i)", (char *)it->data, (Py_ssize_t)it->n,
                                  (char *)&it->addr, (Py_ssize_t)it->alen, it->admitted);
            if (o == NULL || PyList_Append(it->kind == 0 ? tun : grams, o))
                r = -1;
            Py_XDECREF(o);
        }
        free(it);
        it = nx;
    }
    for (int i = 0; i < NCTR && !r; i++) {
        if (!c[i])
            continue;
        PyObject *n = PyLong_FromUnsignedLongLong(c[i]);
        if (n == NULL || PyDict_SetItemString(counts, ctr_names[i], n))
            r = -1;
        Py_XDECREF(n);
    }
    if (r) {
        Py_XDECREF(notes);
        Py_DECREF(tun);
        Py_DECREF(grams);
        Py_DECREF(counts);
        return NULL;
    }
    return Py_BuildValue("(NNNNi)", tun, grams, notes, counts, gone);
}

static PyObject *dp_wake_fd(DataPathObject *dp, void *c) { return PyLong_FromLong(dp->wake_fd); }
static PyObject *dp_running(DataPathObject *dp, void *c) { return PyBool_FromLong(dp->running); }
static PyObject *dp_gso(DataPathObject *dp, void *c) { return PyBool_FromLong(dp->gso); }

static PyMethodDef dp_methods[] = {
    {"set_tables", (PyCFunction)dp_set_tables, METH_VARARGS,
     "set_tables(peers, indices, routes) -> the notes of the tables replaced: peers "
     "[(sockaddr or None, KeyState or None)] by slot; indices [(index, KeyState, slot, next)]; "
     "routes [(address, prefix, slot)]"},
    {"set_clock", (PyCFunction)dp_set_clock, METH_VARARGS,
     "set_clock(offset): the engine's clock is CLOCK_MONOTONIC + offset"},
    {"take_stats", (PyCFunction)dp_take_stats, METH_NOARGS,
     "take_stats() -> {name: n}: the engine counters since the last call (drops excepted)"},
    {"set_guard", (PyCFunction)dp_set_guard, METH_O, "set_guard(guard or None)"},
    {"set_policy", (PyCFunction)dp_set_policy, METH_O,
     "set_policy(PolicyFilter or None): judge decrypted packets, track TUN reads"},
    {"start", (PyCFunction)dp_start, METH_NOARGS, "start the data-path thread"},
    {"stop", (PyCFunction)dp_stop, METH_NOARGS, "stop the data-path thread and join it"},
    {"drain", (PyCFunction)dp_drain, METH_NOARGS,
     "drain() -> (TUN reads, datagrams [(data, sockaddr, admitted)], notes [(KeyState, "
     "sent packets, sent bytes, received packets, received bytes, keepalives, source)], "
     "counters {name: n}, TUN gone errno)"},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef dp_getset[] = {
    {"wake_fd", (getter)dp_wake_fd, NULL, "readable when drain has something", NULL},
    {"running", (getter)dp_running, NULL, "the thread runs", NULL},
    {"gso", (getter)dp_gso, NULL, "UDP GSO in use (off for good once the kernel refused)", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyTypeObject DataPathType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "meshguard.dataplane._fastpath.DataPath",
    .tp_basicsize = sizeof(DataPathObject),
    .tp_dealloc = (destructor)dp_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "the per-packet path (TUN <-> UDP) in a thread without the GIL",
    .tp_methods = dp_methods,
    .tp_getset = dp_getset,
    .tp_init = (initproc)dp_init,
    .tp_new = PyType_GenericNew,
};

/* ------------------------------------------------------------------ module ---- */

static PyMethodDef methods[] = {
    {"clamp_mss", fp_clamp_mss, METH_VARARGS,
     "clamp_mss(packet, mtu, offset=0, partial=False) -> the packet with the MSS of a TCP SYN "
     "at offset lowered to fit an inner MTU (wire/tcp_mss.py's twin)"},
    {"checksum", fp_checksum, METH_VARARGS,
     "checksum(data, initial=0) -> internet checksum of data plus an unfolded sum"},
    {"segment_count", (PyCFunction)(void (*)(void))fp_segment_count,
     METH_VARARGS | METH_KEYWORDS, "segment_count(buf, vnet=True) -> packets in a TUN read"},
    {"seal_segments", (PyCFunction)(void (*)(void))fp_seal_segments,
     METH_VARARGS | METH_KEYWORDS,
     "seal_segments(cipher, receiver, first, buf, vnet=True) -> (data, seg_size, count)"},
    {"open_batch", (PyCFunction)(void (*)(void))fp_open_batch, METH_VARARGS | METH_KEYWORDS,
     "open_batch(cipher, buf, seg_size, receiver, offset=0) -> (end, results)"},
    {"coalesce", (PyCFunction)(void (*)(void))fp_coalesce, METH_VARARGS | METH_KEYWORDS,
     "coalesce(packets, verify=True) -> virtio-net buffers to write to the TUN"},
    {"recv_batch", fp_recv_batch, METH_VARARGS,
     "recv_batch(fd, limit, guard, now, indices=None) -> (items, got, reads, datagrams, "
     "gro_reads, errors, cookies_sent, send_errors, send_would_block, unknown_index); items: "
     "(data, seg, sockaddr, admitted)"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, "_fastpath",
                                    "meshguard's data-plane inner loops in C", -1, methods};

PyMODINIT_FUNC PyInit__fastpath(void)
{
    if (PyType_Ready(&CipherType) < 0 || PyType_Ready(&GuardType) < 0 ||
        PyType_Ready(&KeyStateType) < 0 || PyType_Ready(&DataPathType) < 0 ||
        PyType_Ready(&PolicyType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&moddef);
    if (m == NULL)
        return NULL;
    Py_INCREF(&CipherType);
    if (PyModule_AddObject(m, "Cipher", (PyObject *)&CipherType) < 0) {
        Py_DECREF(&CipherType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&GuardType);
    if (PyModule_AddObject(m, "HandshakeGuard", (PyObject *)&GuardType) < 0) {
        Py_DECREF(&GuardType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&KeyStateType);
    if (PyModule_AddObject(m, "KeyState", (PyObject *)&KeyStateType) < 0) {
        Py_DECREF(&KeyStateType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&DataPathType);
    if (PyModule_AddObject(m, "DataPath", (PyObject *)&DataPathType) < 0) {
        Py_DECREF(&DataPathType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&PolicyType);
    if (PyModule_AddObject(m, "PolicyFilter", (PyObject *)&PolicyType) < 0) {
        Py_DECREF(&PolicyType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
