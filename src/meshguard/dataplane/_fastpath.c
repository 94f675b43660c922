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

static int bad(const char *msg)
{
    PyErr_SetString(PyExc_ValueError, msg);
    return -1;
}

static int make_plan(const uint8_t *buf, size_t len, int vnet, Plan *pl)
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

static PyObject *zero_hdr_copy(const Pkt *pk)
{
    PyObject *o = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(pk->n + VNET_HDR_LEN));
    if (o == NULL)
        return NULL;
    uint8_t *d = (uint8_t *)PyBytes_AS_STRING(o);
    memset(d, 0, VNET_HDR_LEN);
    memcpy(d + VNET_HDR_LEN, pk->p, pk->n);
    return o;
}

/* a super-packet from packets idx[0..k) (same flow, same header length) */
static PyObject *build_super(const Pkt *pk, const int *idx, int k, size_t l4)
{
    const uint8_t *first = pk[idx[0]].p;
    size_t hl = l4 + (size_t)(first[l4 + 12] >> 4) * 4;
    size_t total = hl;
    for (int i = 0; i < k; i++)
        total += pk[idx[i]].n - hl;
    size_t mss = pk[idx[0]].n - hl;
    PyObject *o = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(VNET_HDR_LEN + total));
    if (o == NULL)
        return NULL;
    uint8_t *d = (uint8_t *)PyBytes_AS_STRING(o);
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
    return o;
}

static int emit(PyObject *out, PyObject *o)
{
    if (o == NULL)
        return -1;
    int r = PyList_Append(out, o);
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
    Group *groups = PyMem_Calloc((size_t)np + 1, sizeof(Group));
    int *idx = PyMem_Calloc((size_t)np + 1, sizeof(int));
    size_t tsize = 16;
    while (tsize < (size_t)np * 2)
        tsize <<= 1;
    int *table = PyMem_Malloc(tsize * sizeof(int)); /* flow -> group, -1 empty */
    PyObject *out = NULL;
    Py_ssize_t nb = 0;
    if (!bufs || !pk || !groups || !idx || !table) {
        PyErr_NoMemory();
        goto done;
    }
    for (size_t i = 0; i < tsize; i++)
        table[i] = -1;
    for (; nb < np; nb++) {
        if (PyObject_GetBuffer(items[nb], &bufs[nb], PyBUF_SIMPLE))
            goto done;
        pk[nb].p = bufs[nb].buf;
        pk[nb].n = (size_t)bufs[nb].len;
        pk[nb].next = -1;
    }
    int ng = 0;
    for (int i = 0; i < (int)np; i++) {
        const uint8_t *p = pk[i].p;
        size_t n = pk[i].n, l4, hl, plen;
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
    out = PyList_New(0);
    if (out == NULL)
        goto done;
    for (int gi = 0; gi < ng; gi++) {
        Group *g = &groups[gi];
        if (g->count == 1) {
            if (emit(out, zero_hdr_copy(&pk[g->first])))
                goto fail;
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
            if (emit(out, build_super(pk, idx, k, l4)))
                goto fail;
            continue;
        }
        /* runs of verifying segments, bad ones alone */
        int start = 0;
        for (int j = 0; j <= k; j++) {
            int good = j < k && l4_ok(pk[idx[j]].p, pk[idx[j]].n, l4);
            if (good)
                continue;
            if (j > start) {
                int len = j - start;
                if (emit(out, len > 1 ? build_super(pk, idx + start, len, l4)
                                      : zero_hdr_copy(&pk[idx[start]])))
                    goto fail;
            }
            if (j < k && emit(out, zero_hdr_copy(&pk[idx[j]])))
                goto fail;
            start = j + 1;
        }
    }
    goto done;
fail:
    Py_CLEAR(out);
done:
    for (Py_ssize_t i = 0; i < nb; i++)
        PyBuffer_Release(&bufs[i]);
    PyMem_Free(bufs);
    PyMem_Free(pk);
    PyMem_Free(groups);
    PyMem_Free(idx);
    PyMem_Free(table);
    Py_DECREF(seq);
    return out;
}

/* ------------------------------------------------------------------ module ---- */

static PyMethodDef methods[] = {
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
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, "_fastpath",
                                    "meshguard's data-plane inner loops in C", -1, methods};

PyMODINIT_FUNC PyInit__fastpath(void)
{
    if (PyType_Ready(&CipherType) < 0)
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
    return m;
}
