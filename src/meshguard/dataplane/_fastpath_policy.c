/* The policy filter in C: included by _fastpath.c (one translation unit, one build command).
 *
 * The twin of dataplane/policy_filter.py (the reference: what a verdict means, in which order
 * a packet is judged) and dataplane/conntrack.py (the flows this node opened). The data-path
 * thread calls pf_judge on every decrypted packet before its TUN write and pf_track on every
 * routed TUN read (with the chain of the peer it goes to), with the filter's mutex held once per batch; the asyncio loop's paths call the
 * PolicyFilter object's filter() and track() once per batch. With no policy in force the
 * thread's filter pointer is NULL: one branch per batch.
 *
 * Conntrack here is set-associative (PF_WAYS flows per hash bucket, the idlest of a full
 * bucket evicted): bounded memory and time per packet, and the same verdicts as the Python
 * table while no bucket is full. The hash is keyed by a seed the caller draws.
 */

#define PF_MAX_EXT 8
#define PF_WAYS 8
#define PF_KEYLEN 40 /* proto, address length, local address, port, remote address, port, 0 */
#define PF_MAX_CHAINS (1 << 20)
#define PF_MAX_COUNTERS (1 << 22)

enum { PV_ALLOW, PV_DENY, PV_UNPARSED, PV_REPLY, PV_ICMP, PV_N };

typedef struct {
    uint8_t allow, proto;
    uint16_t lo, hi;
    uint32_t counter;
} PfRule;

typedef struct {
    const PfRule *rules;
    int n, default_allow;
    uint32_t default_counter;
} PfChain;

typedef struct {
    uint8_t key[32];
    int chain; /* -1: an empty slot */
} PfPeer;

typedef struct {
    PfChain *chains;
    int nchains, fallback;
    PfRule *rules;
    PfPeer *peers; /* open addressing; NULL when no peer has a chain of its own */
    size_t peer_mask;
    uint64_t *ctr;
    int nctr;
} PfTable;

typedef struct {
    uint8_t key[PF_KEYLEN];
    uint8_t used;
    double expires, timeout;
} CtEntry;

typedef struct {
    PyObject_HEAD
    pthread_mutex_t mu;
    int ready;
    PfTable *t;
    CtEntry *ct;
    size_t bucket_mask;
    uint64_t seed;
    double udp_timeout, tcp_timeout;
    uint64_t reasons[PV_N];
    uint64_t evicted;
} PolicyObject;

static PyTypeObject PolicyType;

typedef struct {
    int proto, alen, sport, dport; /* ports -1: a protocol without them */
    int opens; /* a TCP SYN without ACK: the first packet of a connection */
    const uint8_t *src, *dst;
} PfFlow;

/* the 5-tuple of an IP packet; -1 when it cannot be classified (policy_filter.classify) */
static int pf_classify(const uint8_t *p, size_t n, PfFlow *f)
{
    size_t pos;
    int proto;
    if (n < 20)
        return -1;
    int ver = p[0] >> 4;
    if (ver == 4) {
        size_t ihl = (size_t)(p[0] & 0x0F) * 4;
        if (ihl < 20 || ihl > n)
            return -1;
        if (get16(p + 6) & 0x1FFF)
            return -1; /* a non-first fragment */
        proto = p[9];
        f->src = p + 12;
        f->dst = p + 16;
        f->alen = 4;
        pos = ihl;
        if (proto == 1)
            goto portless;
    } else if (ver == 6) {
        if (n < 40)
            return -1;
        proto = p[6];
        f->src = p + 8;
        f->dst = p + 24;
        f->alen = 16;
        pos = 40;
        int walked = 0;
        while (proto == 0 || proto == 43 || proto == 60 || proto == 44) {
            if (++walked > PF_MAX_EXT || pos + 8 > n)
                return -1;
            size_t hl;
            if (proto == 44) {
                if (get16(p + pos + 2) & 0xFFF8)
                    return -1; /* a non-first fragment */
                hl = 8;
            } else {
                hl = ((size_t)p[pos + 1] + 1) * 8;
                if (pos + hl > n)
                    return -1;
            }
            proto = p[pos];
            pos += hl;
        }
        if (proto == 58)
            goto portless;
    } else {
        return -1;
    }
    if (proto == 6) {
        if (pos + 20 > n)
            return -1;
    } else if (proto == 17) {
        if (pos + 8 > n)
            return -1;
    } else {
        goto portless;
    }
    f->proto = proto;
    f->sport = (int)get16(p + pos);
    f->dport = (int)get16(p + pos + 2);
    f->opens = proto == 6 && (p[pos + 13] & 0x12) == 0x02;
    return 0;
portless:
    f->proto = proto;
    f->sport = f->dport = -1;
    f->opens = 0;
    return 0;
}

static void pf_key(uint8_t k[PF_KEYLEN], int proto, int alen, const uint8_t *local, int lport,
                   const uint8_t *remote, int rport)
{
    memset(k, 0, PF_KEYLEN);
    k[0] = (uint8_t)proto;
    k[1] = (uint8_t)alen;
    memcpy(k + 2, local, (size_t)alen);
    put16(k + 2 + alen, (uint32_t)lport);
    memcpy(k + 4 + alen, remote, (size_t)alen);
    put16(k + 4 + 2 * alen, (uint32_t)rport);
}

static CtEntry *ct_bucket(PolicyObject *pf, const uint8_t k[PF_KEYLEN])
{
    uint64_t h = pf->seed;
    for (int i = 0; i < PF_KEYLEN; i += 8) {
        uint64_t w;
        memcpy(&w, k + i, 8);
        h = (h ^ w) * 0x9E3779B97F4A7C15ULL;
        h ^= h >> 29;
    }
    h *= 0xBF58476D1CE4E5B9ULL;
    h ^= h >> 32;
    return &pf->ct[(h & pf->bucket_mask) * PF_WAYS];
}

/* The verdict on the previous TCP/UDP packet of a batch: a bulk flow's packets share their
 * 5-tuple and chain, and within one batch (one `now`, the mutex held, nothing inserted by what
 * arrives) the same 5-tuple gets the same verdict, so it is looked up once. Counting stays per
 * packet. */
typedef struct {
    const PfChain *chain; /* NULL: nothing remembered */
    int v, counter;
    uint8_t key[PF_KEYLEN];
} PfMemo;

static int pf_rules_allow(const PfChain *c, int proto, int port, uint32_t *counter);

/* an outbound packet of the flow: refresh it, or create it when it `opens` a TCP connection or
 * the rules of `c` deny its replies to `lport` (mutex held) */
static void ct_note(PolicyObject *pf, const uint8_t k[PF_KEYLEN], int proto, double now,
                    const PfChain *c, int lport, int opens)
{
    CtEntry *b = ct_bucket(pf, k), *victim = NULL;
    double timeout = proto == 6 ? pf->tcp_timeout : pf->udp_timeout;
    for (int i = 0; i < PF_WAYS; i++) {
        if (b[i].used && !memcmp(b[i].key, k, PF_KEYLEN)) {
            b[i].expires = now + timeout;
            b[i].timeout = timeout;
            return;
        }
    }
    uint32_t ctr;
    if (!opens && pf_rules_allow(c, proto, lport, &ctr))
        return; /* an answer whose replies the peer's rules let in: no entry (pf_track) */
    for (int i = 0; i < PF_WAYS && victim == NULL; i++)
        if (!b[i].used || b[i].expires <= now)
            victim = &b[i];
    if (victim == NULL) {
        victim = &b[0];
        for (int i = 1; i < PF_WAYS; i++)
            if (b[i].expires < victim->expires)
                victim = &b[i];
        pf->evicted++;
    }
    memcpy(victim->key, k, PF_KEYLEN);
    victim->used = 1;
    victim->expires = now + timeout;
    victim->timeout = timeout;
}

/* an inbound packet: 1 when it belongs to a live flow, which it refreshes (mutex held) */
static int ct_seen(PolicyObject *pf, const uint8_t k[PF_KEYLEN], double now)
{
    CtEntry *b = ct_bucket(pf, k);
    for (int i = 0; i < PF_WAYS; i++) {
        if (b[i].used && !memcmp(b[i].key, k, PF_KEYLEN)) {
            if (now >= b[i].expires) {
                b[i].used = 0;
                return 0;
            }
            b[i].expires = now + b[i].timeout;
            return 1;
        }
    }
    return 0;
}

static size_t pf_peer_hash(const uint8_t *key)
{
    return (size_t)flow_hash(key, 32);
}

/* the chain of the peer `key` (NULL: the fallback) */
static const PfChain *pf_chain_of(const PfTable *t, const uint8_t *key)
{
    if (key != NULL && t->peers != NULL) {
        for (size_t i = pf_peer_hash(key) & t->peer_mask;; i = (i + 1) & t->peer_mask) {
            const PfPeer *e = &t->peers[i];
            if (e->chain < 0)
                break;
            if (!memcmp(e->key, key, 32))
                return &t->chains[e->chain];
        }
    }
    return &t->chains[t->fallback];
}

/* what the rules of `c` (first match, then the default) say of a packet of `proto` to `port`
 * (-1: a protocol without ports, which only `all all` matches); `*counter` the deciding one */
static int pf_rules_allow(const PfChain *c, int proto, int port, uint32_t *counter)
{
    for (int i = 0; i < c->n; i++) {
        const PfRule *r = &c->rules[i];
        int hit = port >= 0 ? (r->proto == 0 || r->proto == proto) && r->lo <= port &&
                                  port <= r->hi
                            : r->proto == 0 && r->lo == 0 && r->hi == 65535;
        if (hit) {
            *counter = r->counter;
            return r->allow;
        }
    }
    *counter = c->default_counter;
    return c->default_allow;
}

/* the verdict on one packet from a peer judged by `c`, counted (mutex held); `memo` (may be
 * NULL) lives for one batch at most */
static int pf_judge(PolicyObject *pf, const PfTable *t, const PfChain *c, const uint8_t *p,
                    size_t n, double now, int *counter, PfMemo *memo)
{
    PfFlow f;
    int v;
    *counter = -1;
    if (pf_classify(p, n, &f)) {
        v = PV_UNPARSED;
    } else if (f.proto == (f.alen == 4 ? 1 : 58)) {
        v = PV_ICMP;
    } else {
        uint8_t k[PF_KEYLEN];
        int ports = f.sport >= 0;
        if (ports) {
            pf_key(k, f.proto, f.alen, f.dst, f.dport, f.src, f.sport);
            if (memo != NULL && memo->chain == c && !memcmp(memo->key, k, PF_KEYLEN)) {
                *counter = memo->counter;
                if (memo->counter >= 0)
                    t->ctr[memo->counter]++;
                pf->reasons[memo->v]++;
                return memo->v;
            }
        }
        uint32_t ctr;
        int allow = pf_rules_allow(c, f.proto, f.dport, &ctr);
        if (allow) {
            v = PV_ALLOW;
        } else if (ports && ct_seen(pf, k, now)) {
            v = PV_REPLY; /* denied by the rules, but a flow this node sent on */
        } else {
            v = PV_DENY;
        }
        if (v != PV_REPLY) {
            t->ctr[ctr]++;
            *counter = (int)ctr;
        }
        if (ports && memo != NULL) {
            memo->chain = c;
            memo->v = v;
            memo->counter = *counter;
            memcpy(memo->key, k, PF_KEYLEN);
        }
    }
    pf->reasons[v]++;
    return v;
}

static inline int pf_passes(int v) { return v == PV_ALLOW || v == PV_REPLY || v == PV_ICMP; }

/* learn the flow of a packet this node sends to a peer judged by `c` (mutex held): a TCP SYN
 * (without ACK) always, anything else only when that chain's rules deny its replies. An
 * answer whose replies the rules let in anyway needs no entry, which would only keep them
 * passing after the rules stop allowing them, and a peer could fill the table with the
 * answers of a service it may reach; a peer cannot make this node open connections
 * (docs/policy.md). `last` (may be NULL) is the key seen before in this
 * batch, to the same peer (same `now`: noting it again would change nothing). */
static void pf_track(PolicyObject *pf, const PfChain *c, const uint8_t *p, size_t n,
                     double now, uint8_t last[PF_KEYLEN])
{
    PfFlow f;
    if (pf_classify(p, n, &f) || f.sport < 0)
        return;
    uint8_t k[PF_KEYLEN];
    pf_key(k, f.proto, f.alen, f.src, f.sport, f.dst, f.dport);
    if (last != NULL) {
        if (!memcmp(last, k, PF_KEYLEN))
            return;
        memcpy(last, k, PF_KEYLEN);
    }
    ct_note(pf, k, f.proto, now, c, f.sport, f.opens);
}

static void pf_free_table(PfTable *t)
{
    if (t == NULL)
        return;
    free(t->chains);
    free(t->rules);
    free(t->peers);
    free(t->ctr);
    free(t);
}

/* --- the Python object --- */

static void pf_dealloc(PolicyObject *pf)
{
    pf_free_table(pf->t);
    free(pf->ct);
    if (pf->ready)
        pthread_mutex_destroy(&pf->mu);
    Py_TYPE(pf)->tp_free((PyObject *)pf);
}

static PfTable *pf_allow_all(void)
{
    PfTable *t = calloc(1, sizeof(PfTable));
    if (t == NULL)
        return NULL;
    t->chains = calloc(1, sizeof(PfChain));
    t->ctr = calloc(1, sizeof(uint64_t));
    t->rules = NULL;
    t->nchains = 1;
    t->nctr = 1;
    if (t->chains == NULL || t->ctr == NULL) {
        pf_free_table(t);
        return NULL;
    }
    t->chains[0].default_allow = 1;
    return t;
}

static int pf_init(PolicyObject *pf, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"capacity", "seed", "udp_timeout", "tcp_timeout", NULL};
    Py_ssize_t capacity = 65536;
    unsigned long long seed = 0;
    double udp = 180.0, tcp = 600.0;
    if (pf->ready) {
        PyErr_SetString(PyExc_RuntimeError, "PolicyFilter already initialised");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|nKdd", kwlist, &capacity, &seed, &udp, &tcp))
        return -1;
    if (capacity < 1 || capacity > (1 << 24) || !(udp > 0) || !(tcp > 0)) {
        PyErr_SetString(PyExc_ValueError, "PolicyFilter: capacity 1..2**24, timeouts > 0");
        return -1;
    }
    size_t buckets = 1;
    while (buckets * PF_WAYS < (size_t)capacity)
        buckets *= 2;
    pf->ct = calloc(buckets * PF_WAYS, sizeof(CtEntry));
    pf->t = pf_allow_all();
    if (pf->ct == NULL || pf->t == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    pf->bucket_mask = buckets - 1;
    pf->seed = seed;
    pf->udp_timeout = udp;
    pf->tcp_timeout = tcp;
    pthread_mutex_init(&pf->mu, NULL);
    pf->ready = 1;
    return 0;
}

static int pf_ready(PolicyObject *pf)
{
    if (!pf->ready)
        PyErr_SetString(PyExc_RuntimeError, "PolicyFilter not initialised");
    return pf->ready;
}

static void pf_lock(PolicyObject *pf)
{
    if (pthread_mutex_trylock(&pf->mu) == 0)
        return;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&pf->mu);
    Py_END_ALLOW_THREADS
}

static int pf_parse_rule(PyObject *o, int nctr, PfRule *r)
{
    int allow, proto, lo, hi, ctr;
    if (!PyArg_ParseTuple(o, "piiii", &allow, &proto, &lo, &hi, &ctr))
        return -1;
    if (proto < 0 || proto > 255 || lo < 0 || hi > 65535 || lo > hi || ctr < 0 || ctr >= nctr) {
        PyErr_SetString(PyExc_ValueError, "policy rule: (allow, proto 0..255, lo, hi, counter)");
        return -1;
    }
    r->allow = (uint8_t)allow;
    r->proto = (uint8_t)proto;
    r->lo = (uint16_t)lo;
    r->hi = (uint16_t)hi;
    r->counter = (uint32_t)ctr;
    return 0;
}

/* set_table(chains, by_peer, fallback, n_counters) (policy_filter.table_args) */
static PyObject *pf_set_table(PolicyObject *pf, PyObject *args)
{
    PyObject *chains_in, *by_peer;
    int fallback, nctr;
    if (!pf_ready(pf) || !PyArg_ParseTuple(args, "OO!ii", &chains_in, &PyDict_Type, &by_peer,
                                           &fallback, &nctr))
        return NULL;
    PyObject *cs = PySequence_Fast(chains_in, "chains: a sequence");
    if (cs == NULL)
        return NULL;
    Py_ssize_t nc = PySequence_Fast_GET_SIZE(cs), npeer = PyDict_Size(by_peer);
    PfTable *t = calloc(1, sizeof(PfTable));
    PyObject *rs = NULL;
    if (t == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    if (nc < 1 || nc > PF_MAX_CHAINS || fallback < 0 || fallback >= nc || nctr < 1 ||
        nctr > PF_MAX_COUNTERS) {
        PyErr_SetString(PyExc_ValueError, "policy table: no chains, or a bad fallback");
        goto fail;
    }
    Py_ssize_t nrules = 0;
    for (Py_ssize_t i = 0; i < nc; i++) {
        PyObject *c = PySequence_Fast_GET_ITEM(cs, i);
        PyObject *rules = PyTuple_Check(c) && PyTuple_GET_SIZE(c) == 3 ? PyTuple_GET_ITEM(c, 2)
                                                                        : NULL;
        Py_ssize_t k = rules ? PySequence_Size(rules) : -1;
        if (k < 0) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_TypeError, "a chain: (default_allow, counter, rules)");
            goto fail;
        }
        nrules += k;
    }
    t->nchains = (int)nc;
    t->fallback = fallback;
    t->nctr = nctr;
    t->chains = calloc((size_t)nc, sizeof(PfChain));
    t->rules = calloc((size_t)nrules + 1, sizeof(PfRule));
    t->ctr = calloc((size_t)nctr, sizeof(uint64_t));
    if (!t->chains || !t->rules || !t->ctr) {
        PyErr_NoMemory();
        goto fail;
    }
    Py_ssize_t at = 0;
    for (Py_ssize_t i = 0; i < nc; i++) {
        PyObject *c = PySequence_Fast_GET_ITEM(cs, i), *rules;
        int dallow, dctr;
        if (!PyArg_ParseTuple(c, "piO", &dallow, &dctr, &rules))
            goto fail;
        if (dctr < 0 || dctr >= nctr) {
            PyErr_SetString(PyExc_ValueError, "policy table: a counter out of range");
            goto fail;
        }
        rs = PySequence_Fast(rules, "rules: a sequence");
        if (rs == NULL)
            goto fail;
        Py_ssize_t k = PySequence_Fast_GET_SIZE(rs);
        if (at + k > nrules) {
            PyErr_SetString(PyExc_ValueError, "policy table: the chains changed while read");
            goto fail;
        }
        t->chains[i].rules = t->rules + at;
        t->chains[i].n = (int)k;
        t->chains[i].default_allow = dallow;
        t->chains[i].default_counter = (uint32_t)dctr;
        for (Py_ssize_t j = 0; j < k; j++)
            if (pf_parse_rule(PySequence_Fast_GET_ITEM(rs, j), nctr, &t->rules[at + j]))
                goto fail;
        at += k;
        Py_CLEAR(rs);
    }
    if (npeer > 0) {
        size_t size = 4;
        while (size < (size_t)npeer * 2)
            size *= 2;
        t->peers = malloc(size * sizeof(PfPeer));
        if (t->peers == NULL) {
            PyErr_NoMemory();
            goto fail;
        }
        for (size_t i = 0; i < size; i++)
            t->peers[i].chain = -1;
        t->peer_mask = size - 1;
        PyObject *key, *val;
        Py_ssize_t it = 0;
        while (PyDict_Next(by_peer, &it, &key, &val)) {
            long chain = PyLong_AsLong(val);
            if (chain == -1 && PyErr_Occurred())
                goto fail;
            if (!PyBytes_Check(key) || PyBytes_GET_SIZE(key) != 32 || chain < 0 || chain >= nc) {
                PyErr_SetString(PyExc_ValueError,
                                "policy table: by_peer maps 32-byte keys to chain indices");
                goto fail;
            }
            const uint8_t *kb = (const uint8_t *)PyBytes_AS_STRING(key);
            size_t i = pf_peer_hash(kb) & t->peer_mask;
            while (t->peers[i].chain >= 0 && memcmp(t->peers[i].key, kb, 32))
                i = (i + 1) & t->peer_mask;
            memcpy(t->peers[i].key, kb, 32);
            t->peers[i].chain = (int)chain;
        }
    }
    Py_DECREF(cs);
    pf_lock(pf);
    PfTable *old = pf->t;
    pf->t = t;
    pthread_mutex_unlock(&pf->mu);
    pf_free_table(old);
    Py_RETURN_NONE;
fail:
    Py_XDECREF(rs);
    Py_DECREF(cs);
    pf_free_table(t);
    return NULL;
}

static int pf_key_arg(PyObject *o, const uint8_t **key)
{
    if (o == Py_None) {
        *key = NULL;
        return 0;
    }
    if (!PyBytes_Check(o)) {
        PyErr_SetString(PyExc_TypeError, "a peer key: bytes or None");
        return -1;
    }
    /* a key of another length names no peer: the fallback chain */
    *key = PyBytes_GET_SIZE(o) == 32 ? (const uint8_t *)PyBytes_AS_STRING(o) : NULL;
    return 0;
}

static PyObject *pf_check(PolicyObject *pf, PyObject *args)
{
    PyObject *ko;
    Py_buffer b;
    double now;
    const uint8_t *key;
    if (!pf_ready(pf) || !PyArg_ParseTuple(args, "Oy*d", &ko, &b, &now))
        return NULL;
    if (pf_key_arg(ko, &key)) {
        PyBuffer_Release(&b);
        return NULL;
    }
    int counter;
    pf_lock(pf);
    int v = pf_judge(pf, pf->t, pf_chain_of(pf->t, key), b.buf, (size_t)b.len, now, &counter,
                     NULL);
    pthread_mutex_unlock(&pf->mu);
    PyBuffer_Release(&b);
    return Py_BuildValue("(ii)", v, counter);
}

/* filter(key, packets, start, now): drop from the list packets[start:] what may not pass */
static PyObject *pf_filter(PolicyObject *pf, PyObject *args)
{
    PyObject *ko, *list;
    Py_ssize_t start;
    double now;
    const uint8_t *key;
    if (!pf_ready(pf) || !PyArg_ParseTuple(args, "OO!nd", &ko, &PyList_Type, &list, &start, &now))
        return NULL;
    if (pf_key_arg(ko, &key))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(list);
    if (start < 0)
        start = 0;
    if (start > n)
        start = n;
    for (Py_ssize_t i = start; i < n; i++) {
        if (!PyBytes_Check(PyList_GET_ITEM(list, i))) {
            PyErr_SetString(PyExc_TypeError, "packets: a list of bytes");
            return NULL;
        }
    }
    Py_ssize_t w = start;
    pf_lock(pf);
    const PfChain *c = pf_chain_of(pf->t, key);
    PfMemo memo = {NULL, 0, 0, {0}};
    for (Py_ssize_t i = start; i < n; i++) {
        PyObject *p = PyList_GET_ITEM(list, i);
        int counter;
        int v = pf_judge(pf, pf->t, c, (const uint8_t *)PyBytes_AS_STRING(p),
                         (size_t)PyBytes_GET_SIZE(p), now, &counter, &memo);
        if (pf_passes(v)) {
            if (w != i) {
                /* move the reference down: the slot at w was dropped below */
                PyList_SET_ITEM(list, w, p);
                PyList_SET_ITEM(list, i, NULL);
            }
            w++;
        } else {
            PyList_SET_ITEM(list, i, NULL);
            Py_DECREF(p);
        }
    }
    pthread_mutex_unlock(&pf->mu);
    Py_SET_SIZE((PyVarObject *)list, w); /* the slots from w on hold nothing now */
    Py_RETURN_NONE;
}

/* track(reads, offset, now, peer_key=None): learn the flows of packets this node sends to
 * the peer `peer_key` */
static PyObject *pf_track_py(PolicyObject *pf, PyObject *args)
{
    PyObject *reads, *ko = Py_None;
    Py_ssize_t off;
    double now;
    const uint8_t *key;
    if (!pf_ready(pf) || !PyArg_ParseTuple(args, "Ond|O", &reads, &off, &now, &ko))
        return NULL;
    if (pf_key_arg(ko, &key))
        return NULL;
    PyObject *rs = PySequence_Fast(reads, "reads: a sequence of bytes");
    if (rs == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(rs);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!PyBytes_Check(PySequence_Fast_GET_ITEM(rs, i))) {
            Py_DECREF(rs);
            PyErr_SetString(PyExc_TypeError, "reads: a sequence of bytes");
            return NULL;
        }
    }
    uint8_t last[PF_KEYLEN] = {0}; /* no real key is all zero: proto 0 has no ports */
    pf_lock(pf);
    const PfChain *c = pf_chain_of(pf->t, key);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *r = PySequence_Fast_GET_ITEM(rs, i);
        Py_ssize_t len = PyBytes_GET_SIZE(r);
        if (off >= 0 && len > off)
            pf_track(pf, c, (const uint8_t *)PyBytes_AS_STRING(r) + off, (size_t)(len - off),
                     now, last);
    }
    pthread_mutex_unlock(&pf->mu);
    Py_DECREF(rs);
    Py_RETURN_NONE;
}

/* take_counts() -> (rule counters, reason counters, evicted) since the previous call */
static PyObject *pf_take_counts(PolicyObject *pf, PyObject *unused)
{
    if (!pf_ready(pf))
        return NULL;
    pf_lock(pf);
    int nctr = pf->t->nctr;
    uint64_t *rules = malloc((size_t)nctr * sizeof(uint64_t));
    if (rules == NULL) {
        pthread_mutex_unlock(&pf->mu);
        return PyErr_NoMemory();
    }
    memcpy(rules, pf->t->ctr, (size_t)nctr * sizeof(uint64_t));
    memset(pf->t->ctr, 0, (size_t)nctr * sizeof(uint64_t));
    uint64_t reasons[PV_N], evicted = pf->evicted;
    memcpy(reasons, pf->reasons, sizeof(reasons));
    memset(pf->reasons, 0, sizeof(pf->reasons));
    pf->evicted = 0;
    pthread_mutex_unlock(&pf->mu);
    PyObject *rt = PyTuple_New(nctr), *qt = PyTuple_New(PV_N);
    for (int i = 0; rt != NULL && i < nctr; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(rules[i]);
        if (v == NULL)
            Py_CLEAR(rt);
        else
            PyTuple_SET_ITEM(rt, i, v);
    }
    for (int i = 0; qt != NULL && i < PV_N; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(reasons[i]);
        if (v == NULL)
            Py_CLEAR(qt);
        else
            PyTuple_SET_ITEM(qt, i, v);
    }
    free(rules);
    if (rt == NULL || qt == NULL) {
        Py_XDECREF(rt);
        Py_XDECREF(qt);
        return NULL;
    }
    return Py_BuildValue("(NNK)", rt, qt, (unsigned long long)evicted);
}

static PyObject *pf_clear(PolicyObject *pf, PyObject *unused)
{
    if (!pf_ready(pf))
        return NULL;
    pf_lock(pf);
    memset(pf->ct, 0, (pf->bucket_mask + 1) * PF_WAYS * sizeof(CtEntry));
    pthread_mutex_unlock(&pf->mu);
    Py_RETURN_NONE;
}

static PyMethodDef pf_methods[] = {
    {"set_table", (PyCFunction)pf_set_table, METH_VARARGS,
     "set_table(chains, by_peer, fallback, n_counters): install a compiled table "
     "(policy_filter.table_args); rule counters restart at zero, flows stay"},
    {"check", (PyCFunction)pf_check, METH_VARARGS,
     "check(peer_key, packet, now) -> (verdict, counter): one packet judged and counted"},
    {"filter", (PyCFunction)pf_filter, METH_VARARGS,
     "filter(peer_key, packets, start, now): remove from packets[start:] what may not pass"},
    {"track", (PyCFunction)pf_track_py, METH_VARARGS,
     "track(reads, offset, now, peer_key=None): learn the flows of packets this node sends "
     "to that peer whose replies its chain's rules deny"},
    {"take_counts", (PyCFunction)pf_take_counts, METH_NOARGS,
     "take_counts() -> (rule counters, reason counters, evicted) since the previous call"},
    {"clear", (PyCFunction)pf_clear, METH_NOARGS, "clear(): forget every flow"},
    {NULL, NULL, 0, NULL}};

static PyTypeObject PolicyType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "meshguard.dataplane._fastpath.PolicyFilter",
    .tp_basicsize = sizeof(PolicyObject),
    .tp_dealloc = (destructor)pf_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "policy enforcement and connection tracking (dataplane/policy_filter.py's twin)",
    .tp_methods = pf_methods,
    .tp_init = (initproc)pf_init,
    .tp_new = PyType_GenericNew,
};
