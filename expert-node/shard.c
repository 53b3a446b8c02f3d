/* The node's shard: which (layer, expert) pairs it serves and where their weights live.
 *
 * A pair's three slices (gate, up, down of blk.L.ffn_*_exps, expert E) come from one of three
 * places: views into the -m model's mapping (only the pages a FORWARD touches are ever read
 * from disk), a verified cache file under DIR/<fingerprint>/L.E.kind, or SHARD_CHUNKs received
 * into 64-byte aligned buffers and checked against their CRC-32C once the last byte is in.
 *
 * Invariants: only the socket thread calls in here except xnode__shard_find (see xnode-int.h);
 * every structural change (publishing a slice, replacing the assignment, freeing a buffer)
 * happens under the write lock. held never exceeds mem_limit: a slice is refused before its
 * buffer is allocated. Sizes from the wire are checked before they reach kern_row_bytes.
 */
#include "expert-node/xnode-int.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Cache file names use these ([a-z] only); bias slices are never cached (see cache_write). */
static const char *const KIND_NAME[WIRE_SHARD_KIND_COUNT] = {"gate",     "up",     "down",
                                                             "gatebias", "upbias", "downbias"};

#define CACHE_MAGIC "MMSLICE1"
#define CACHE_HDR 64 /* header bytes before the slice, so the data stays 64-byte aligned */
#define CACHE_MAX_PAIRS 65536

static uint64_t a64(uint64_t n) { return (n + 63) & ~(uint64_t)63; }

static bool pair_ready(const xnode__pair_t *p)
{
    return p->data[0] && p->data[1] && p->data[2] &&
           (!p->want_bias || (p->data[WIRE_SHARD_GATE_BIAS] && p->data[WIRE_SHARD_UP_BIAS] &&
                              p->data[WIRE_SHARD_DOWN_BIAS]));
}

static uint64_t pair_bytes(const xnode__pair_t *p)
{
    uint64_t n = 0;
    for (int k = 0; k < WIRE_SHARD_KIND_COUNT; k++) n += p->bytes[k];
    return n;
}

/* Frees what p owns (published buffers and slices in flight). Caller holds the write lock. */
static void pair_clear(xnode__pair_t *p)
{
    for (int k = 0; k < WIRE_SHARD_KIND_COUNT; k++) {
        free(p->own[k]);
        free(p->rx[k]);
        p->own[k] = NULL;
        p->rx[k] = NULL;
        p->data[k] = NULL;
        p->bytes[k] = 0;
        p->rx_got[k] = p->rx_total[k] = 0;
    }
}

/* A fingerprint we may use as a directory name. */
static bool fp_safe(const char *fp)
{
    size_t n = strlen(fp);
    if (n == 0 || n > 128 || fp[0] == '.') return false;
    for (size_t i = 0; i < n; i++) {
        char c = fp[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              c == '-' || c == '_' || c == '.'))
            return false;
    }
    return true;
}

/* Bytes of rows rows of n elements of type t, or 0 when n is not whole blocks. */
static uint64_t rows_bytes(kern_type_t t, uint32_t rows, uint32_t n)
{
    const kern_type_info_t *ti = kern_type_info(t);
    if (!ti || n == 0 || n % (uint32_t)ti->block) return 0;
    return (uint64_t)kern_row_bytes(t, n) * rows;
}

bool xnode__pair_fits(const xnode__pair_t *p, uint32_t n_embd, uint32_t *n_ff)
{
    uint64_t gate_row = rows_bytes(p->type[WIRE_SHARD_GATE], 1, n_embd);
    if (gate_row == 0 || p->bytes[WIRE_SHARD_GATE] % gate_row) return false;
    uint64_t ff = p->bytes[WIRE_SHARD_GATE] / gate_row;
    if (ff == 0 || ff > UINT32_MAX) return false;
    if (rows_bytes(p->type[WIRE_SHARD_UP], (uint32_t)ff, n_embd) != p->bytes[WIRE_SHARD_UP])
        return false;
    if (rows_bytes(p->type[WIRE_SHARD_DOWN], n_embd, (uint32_t)ff) != p->bytes[WIRE_SHARD_DOWN])
        return false;
    *n_ff = (uint32_t)ff;
    return true;
}

/* ---------------------------------------------------------------- cache files */

static void cache_path(const xnode__shard_t *sh, const char *fp, uint32_t l, uint32_t e, int k,
                       char *out, size_t cap)
{
    snprintf(out, cap, "%s/%s/%" PRIu32 ".%" PRIu32 ".%s", sh->cache_dir, fp, l, e, KIND_NAME[k]);
}

static int write_all(int fd, const void *p, size_t n)
{
    const uint8_t *b = p;
    while (n) {
        ssize_t w = write(fd, b, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -errno;
        b += w;
        n -= (size_t)w;
    }
    return 0;
}

static int read_all(int fd, void *p, size_t n)
{
    uint8_t *b = p;
    while (n) {
        ssize_t r = read(fd, b, n);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return -errno;
        if (r == 0) return -EIO; /* shorter than its header says */
        b += r;
        n -= (size_t)r;
    }
    return 0;
}

/* Writes one verified slice to the cache (through a temporary name, so a reader never sees
 * half a file). Best effort: the cache only saves a transfer, so failures are logged only. */
static void cache_write(const xnode__shard_t *sh, const xnode__pair_t *p, int k, uint32_t crc)
{
    /* gpt-oss pairs are not cached at all: a restart would list them as held from their three
     * weight files, and the cache has no record that they need biases too. */
    if (!sh->cache_dir || !fp_safe(sh->fp) || p->want_bias) return;
    char dir[4096], path[4200], tmp[4210];
    snprintf(dir, sizeof(dir), "%s/%s", sh->cache_dir, sh->fp);
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
        LOG_WARN("cannot create %s: %s", dir, strerror(errno));
        return;
    }
    cache_path(sh, sh->fp, p->layer, p->expert, k, path, sizeof(path));
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    uint8_t hdr[CACHE_HDR] = {0};
    uint32_t f[6] = {(uint32_t)p->type[k], p->layer, p->expert, (uint32_t)k, crc, 0};
    memcpy(hdr, CACHE_MAGIC, 8);
    memcpy(hdr + 8, f, sizeof(f));
    memcpy(hdr + 32, &p->bytes[k], 8);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    int err = fd < 0 ? -errno : 0;
    if (!err) err = write_all(fd, hdr, sizeof(hdr));
    if (!err) err = write_all(fd, p->data[k], p->bytes[k]);
    if (fd >= 0 && close(fd) != 0 && !err) err = -errno;
    if (!err && rename(tmp, path) != 0) err = -errno;
    if (err) {
        LOG_WARN("cannot write %s: %s", path, strerror(-err));
        unlink(tmp);
    }
}

/* Opens a cache file and checks its header against (l, e, k). Returns the fd, or -1 (logged at
 * debug: a missing file is normal). */
static int cache_open(const char *path, uint32_t l, uint32_t e, int k, kern_type_t *type,
                      uint64_t *bytes, uint32_t *crc)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    uint8_t hdr[CACHE_HDR];
    uint32_t f[6];
    struct stat st;
    if (read_all(fd, hdr, sizeof(hdr)) != 0 || fstat(fd, &st) != 0) goto bad;
    memcpy(f, hdr + 8, sizeof(f));
    memcpy(bytes, hdr + 32, 8);
    const kern_type_info_t *ti = kern_type_info((int)f[0]);
    if (memcmp(hdr, CACHE_MAGIC, 8) || !ti || !ti->compute || f[1] != l || f[2] != e ||
        f[3] != (uint32_t)k || *bytes == 0 || *bytes > (UINT64_C(1) << 36) ||
        (uint64_t)st.st_size != CACHE_HDR + *bytes)
        goto bad;
    *type = (kern_type_t)f[0];
    *crc = f[4];
    return fd;
bad:
    LOG_WARN("ignoring %s: not a slice file of layer %u expert %u %s", path, l, e, KIND_NAME[k]);
    close(fd);
    return -1;
}

/* Checks a cache file's CRC-32C without keeping it, 1 MiB at a time. */
static bool cache_verify(const char *path, uint32_t l, uint32_t e, int k)
{
    kern_type_t type;
    uint64_t bytes;
    uint32_t want;
    int fd = cache_open(path, l, e, k, &type, &bytes, &want);
    if (fd < 0) return false;
    enum { BLOCK = 1 << 20 };
    uint8_t *buf = xmalloc(BLOCK);
    uint32_t crc = 0;
    int err = 0;
    for (uint64_t off = 0; !err && off < bytes; off += BLOCK) {
        size_t n = bytes - off < BLOCK ? (size_t)(bytes - off) : BLOCK;
        err = read_all(fd, buf, n);
        crc = wire_crc32c(crc, buf, n);
    }
    free(buf);
    close(fd);
    if (err || crc != want) {
        LOG_WARN("ignoring %s: %s", path, err ? strerror(-err) : "CRC-32C mismatch");
        return false;
    }
    return true;
}

/* Reads a cache file into a new aligned buffer after checking it. 0 or WIRE_E_CHECKSUM. */
static int cache_load(const xnode__shard_t *sh, xnode__pair_t *p, int k)
{
    char path[4200];
    cache_path(sh, sh->cache_fp, p->layer, p->expert, k, path, sizeof(path));
    kern_type_t type;
    uint64_t bytes;
    uint32_t want;
    int fd = cache_open(path, p->layer, p->expert, k, &type, &bytes, &want);
    if (fd < 0) return WIRE_E_CHECKSUM;
    uint8_t *buf = xmalloc_aligned(64, a64(bytes));
    int err = read_all(fd, buf, bytes);
    close(fd);
    if (err || wire_crc32c(0, buf, bytes) != want) {
        LOG_ERR("%s changed since start-up (%s)", path, err ? strerror(-err) : "CRC mismatch");
        free(buf);
        return WIRE_E_CHECKSUM;
    }
    p->own[k] = buf;
    p->data[k] = buf;
    p->type[k] = type;
    p->bytes[k] = bytes;
    return 0;
}

typedef struct {
    uint32_t layer, expert, mask;
} cache_ent_t;

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Lists the pairs with all three slices verified in DIR/<cache_fp>/. */
static void cache_scan(xnode__shard_t *sh)
{
    free(sh->cached_layer);
    free(sh->cached_expert);
    sh->cached_layer = sh->cached_expert = NULL;
    sh->n_cached = 0;
    if (!sh->cache_dir || !fp_safe(sh->cache_fp)) return;
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s/%s", sh->cache_dir, sh->cache_fp);
    DIR *d = opendir(dir);
    if (!d) return;
    /* Keys (layer << 32 | expert) << 2 | kind of every good file, sorted, then grouped. */
    uint64_t *keys = NULL;
    size_t n = 0, cap = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL && n < 3 * CACHE_MAX_PAIRS) {
        unsigned l, e;
        char kind[16], tail;
        if (sscanf(de->d_name, "%u.%u.%15[a-z]%c", &l, &e, kind, &tail) != 3) continue;
        int k = -1;
        for (int i = 0; i < WIRE_SHARD_KIND_COUNT; i++)
            if (!strcmp(kind, KIND_NAME[i])) k = i;
        if (k < 0 || l >= 65536 || e >= 65536) continue;
        char path[4200];
        cache_path(sh, sh->cache_fp, l, e, k, path, sizeof(path));
        if (!cache_verify(path, l, e, k)) continue;
        if (n == cap) keys = xrealloc(keys, (cap = cap ? 2 * cap : 256) * sizeof(*keys));
        keys[n++] = ((uint64_t)l << 34) | ((uint64_t)e << 2) | (uint64_t)k;
    }
    closedir(d);
    qsort(keys, n, sizeof(*keys), cmp_u64);
    sh->cached_layer = xmalloc((n / 3 + 1) * sizeof(uint32_t));
    sh->cached_expert = xmalloc((n / 3 + 1) * sizeof(uint32_t));
    for (size_t i = 0; i + 2 < n; i++) {
        if ((keys[i] >> 2) == (keys[i + 2] >> 2)) { /* kinds 0, 1, 2 of one pair, sorted */
            sh->cached_layer[sh->n_cached] = (uint32_t)(keys[i] >> 34);
            sh->cached_expert[sh->n_cached] = (uint32_t)(keys[i] >> 2) & 0xffffffffu;
            sh->n_cached++;
            i += 2;
        }
    }
    free(keys);
    LOG_INFO("cache %s: %u complete experts", dir, sh->n_cached);
}

/* Remembers fp as the model last served, so a restart lists its cached pairs. */
static void cache_set_current(xnode__shard_t *sh, const char *fp)
{
    if (!sh->cache_dir || !fp_safe(fp) || !strcmp(sh->cache_fp, fp)) return;
    char path[4096], tmp[4200];
    snprintf(path, sizeof(path), "%s/current", sh->cache_dir);
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f || fprintf(f, "%s\n", fp) < 0 || fclose(f) != 0 || rename(tmp, path) != 0) {
        LOG_WARN("cannot write %s: %s", path, strerror(errno));
        if (f) unlink(tmp);
    }
    snprintf(sh->cache_fp, sizeof(sh->cache_fp), "%s", fp);
    cache_scan(sh);
}

/* ---------------------------------------------------------------- life cycle */

int xnode__shard_init(xnode__shard_t *sh, const char *model_path, const char *cache_dir,
                      uint64_t mem_limit)
{
    memset(sh, 0, sizeof(*sh));
    if (pthread_rwlock_init(&sh->lock, NULL) != 0) return -EAGAIN;
    sh->lock_ok = true;
    sh->mem_limit = mem_limit;
    if (model_path) {
        int err = model_load(model_path, &sh->m);
        if (err) {
            LOG_ERR("cannot load %s: %s", model_path, model_strerror(err));
            return err;
        }
        if (sh->m->hp.n_expert <= 0) {
            LOG_ERR("%s has no routed experts", model_path);
            return -EINVAL;
        }
        model_fingerprint(sh->m->gguf, sh->m_fp, sizeof(sh->m_fp));
        LOG_INFO("model %s: %d layers x %d experts, fingerprint %s", model_path,
                 sh->m->hp.n_layer, sh->m->hp.n_expert, sh->m_fp);
    }
    if (cache_dir) {
        sh->cache_dir = xstrdup(cache_dir);
        if (mkdir(cache_dir, 0755) != 0 && errno != EEXIST) {
            LOG_ERR("cannot create cache directory %s: %s", cache_dir, strerror(errno));
            return -errno;
        }
        char path[4096], fp[XNODE_FP_CAP] = "";
        snprintf(path, sizeof(path), "%s/current", cache_dir);
        FILE *f = fopen(path, "r");
        if (f) {
            if (fgets(fp, sizeof(fp), f)) fp[strcspn(fp, "\r\n")] = 0;
            fclose(f);
        }
        if (fp_safe(fp)) {
            snprintf(sh->cache_fp, sizeof(sh->cache_fp), "%s", fp);
            cache_scan(sh);
        }
    }
    return 0;
}

void xnode__shard_deinit(xnode__shard_t *sh)
{
    for (uint32_t i = 0; sh->pairs && i < sh->n_pairs; i++) pair_clear(&sh->pairs[i]);
    free(sh->pairs);
    free(sh->index);
    free(sh->cached_layer);
    free(sh->cached_expert);
    free(sh->cache_dir);
    model_free(sh->m);
    if (sh->lock_ok) pthread_rwlock_destroy(&sh->lock);
    memset(sh, 0, sizeof(*sh));
}

/* ---------------------------------------------------------------- what we hold */

static bool model_has(const xnode__shard_t *sh, uint32_t l, uint32_t e)
{
    const model_hparams_t *hp = &sh->m->hp;
    return l < (uint32_t)hp->n_layer && e < (uint32_t)hp->n_expert &&
           sh->m->layers[l].gate_exps != NULL;
}

static const char *held_fp(const xnode__shard_t *sh)
{
    if (sh->assigned) return sh->fp;
    if (sh->m) return sh->m_fp;
    return sh->cache_fp;
}

const char *xnode__shard_held(const xnode__shard_t *sh, uint32_t **layer, uint32_t **expert,
                              uint32_t *n)
{
    const char *fp = held_fp(sh);
    size_t cap = 1, cnt = 0;
    bool from_model = sh->m && !strcmp(sh->m_fp, fp);
    bool from_cache = fp[0] && !strcmp(sh->cache_fp, fp);
    bool from_shard = sh->assigned;
    if (from_model) cap += (size_t)sh->m->hp.n_layer * (size_t)sh->m->hp.n_expert;
    if (from_cache) cap += sh->n_cached;
    if (from_shard) cap += sh->n_pairs;
    uint64_t *keys = xmalloc(cap * sizeof(*keys));
    if (from_model)
        for (uint32_t l = 0; l < (uint32_t)sh->m->hp.n_layer; l++)
            for (uint32_t e = 0; e < (uint32_t)sh->m->hp.n_expert; e++)
                if (model_has(sh, l, e)) keys[cnt++] = ((uint64_t)l << 32) | e;
    if (from_cache)
        for (uint32_t i = 0; i < sh->n_cached; i++)
            keys[cnt++] = ((uint64_t)sh->cached_layer[i] << 32) | sh->cached_expert[i];
    if (from_shard)
        for (uint32_t i = 0; i < sh->n_pairs; i++)
            if (pair_ready(&sh->pairs[i]))
                keys[cnt++] = ((uint64_t)sh->pairs[i].layer << 32) | sh->pairs[i].expert;
    qsort(keys, cnt, sizeof(*keys), cmp_u64);
    *layer = xmalloc((cnt + 1) * sizeof(uint32_t));
    *expert = xmalloc((cnt + 1) * sizeof(uint32_t));
    uint32_t m = 0;
    for (size_t i = 0; i < cnt; i++) {
        if (i && keys[i] == keys[i - 1]) continue;
        (*layer)[m] = (uint32_t)(keys[i] >> 32);
        (*expert)[m] = (uint32_t)keys[i];
        m++;
    }
    free(keys);
    *n = m;
    return fp;
}

/* Whether (l, e) is in the sorted held list. */
static bool held_has(const uint32_t *layer, const uint32_t *expert, uint32_t n, uint32_t l,
                     uint32_t e)
{
    uint64_t key = ((uint64_t)l << 32) | e;
    uint32_t lo = 0, hi = n;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        uint64_t k = ((uint64_t)layer[mid] << 32) | expert[mid];
        if (k == key) return true;
        if (k < key) lo = mid + 1;
        else hi = mid;
    }
    return false;
}

const xnode__pair_t *xnode__shard_find(const xnode__shard_t *sh, uint32_t layer, uint32_t expert)
{
    if (!sh->assigned || layer >= sh->n_layers || expert >= sh->n_experts) return NULL;
    int32_t i = sh->index[(size_t)layer * sh->n_experts + expert];
    if (i < 0 || !pair_ready(&sh->pairs[i])) return NULL;
    return &sh->pairs[i];
}

bool xnode__shard_complete(const xnode__shard_t *sh)
{
    return sh->assigned && sh->n_ready == sh->n_pairs;
}

/* ---------------------------------------------------------------- ASSIGN */

static void model_view(const xnode__shard_t *sh, xnode__pair_t *p)
{
    const model_layer_t *ly = &sh->m->layers[p->layer];
    const model_tensor_t *t[WIRE_SHARD_KIND_COUNT] = {ly->gate_exps,   ly->up_exps,
                                                      ly->down_exps,   ly->gate_exps_b,
                                                      ly->up_exps_b,   ly->down_exps_b};
    for (int k = 0; k < WIRE_SHARD_KIND_COUNT; k++) {
        if (!t[k]) continue;
        /* Weights: one (rows, cols) slice per expert; biases (gpt-oss): one F32 row each. */
        size_t stride = k <= WIRE_SHARD_DOWN ? model_expert_stride(t[k])
                                             : kern_row_bytes(t[k]->type, t[k]->ne[0]);
        p->data[k] = (const uint8_t *)t[k]->data + stride * p->expert;
        p->type[k] = t[k]->type;
        p->bytes[k] = stride;
    }
}

int xnode__shard_assign(xnode__shard_t *sh, const wire_assign_t *a, char *msg, size_t cap)
{
    const char *fp = a->model ? a->model : "";
    if (strlen(fp) >= XNODE_FP_CAP) {
        snprintf(msg, cap, "model fingerprint longer than %d bytes", XNODE_FP_CAP - 1);
        return WIRE_E_LIMIT;
    }
    if (a->n_layers == 0 || a->n_experts == 0) {
        snprintf(msg, cap, "ASSIGN without n_layers or n_experts");
        return WIRE_E_FIELD;
    }
    if (a->expert_act >= WIRE_EXPERT_ACT_COUNT) {
        snprintf(msg, cap, "ASSIGN expert_act %u is not known here", a->expert_act);
        return WIRE_E_FIELD;
    }
    const bool want_bias = a->expert_act == WIRE_EXPERT_ACT_SWIGLU_OAI;
    bool use_model = sh->m && !strcmp(sh->m_fp, fp);
    if (use_model && want_bias != (sh->m->hp.arch == MODEL_ARCH_GPTOSS)) {
        snprintf(msg, cap, "ASSIGN expert_act %u does not fit model %s (%s)", a->expert_act, fp,
                 sh->m->hp.arch_name);
        return WIRE_E_FIELD;
    }
    if (use_model) {
        const model_hparams_t *hp = &sh->m->hp;
        if (a->n_layers != (uint32_t)hp->n_layer || a->n_experts != (uint32_t)hp->n_expert ||
            (a->n_embd && a->n_embd != (uint32_t)hp->n_embd) ||
            (a->n_ff && a->n_ff != (uint32_t)hp->n_ff_exp)) {
            snprintf(msg, cap, "ASSIGN shapes differ from model %s with the same fingerprint",
                     fp);
            return WIRE_E_FIELD;
        }
    }
    size_t n_slots = (size_t)a->n_layers * a->n_experts;
    int32_t *index = xmalloc(n_slots * sizeof(int32_t));
    for (size_t i = 0; i < n_slots; i++) index[i] = -1;
    for (uint32_t i = 0; i < a->n_pairs; i++) {
        uint32_t l = a->layer[i], e = a->expert[i];
        const char *bad = l >= a->n_layers || e >= a->n_experts ? "out of range"
                          : index[(size_t)l * a->n_experts + e] >= 0 ? "listed twice"
                          : use_model && !model_has(sh, l, e) ? "not a routed expert of the model"
                                                              : NULL;
        if (bad) {
            snprintf(msg, cap, "ASSIGN pair (layer %u, expert %u) %s", l, e, bad);
            free(index);
            return WIRE_E_FIELD;
        }
        index[(size_t)l * a->n_experts + e] = (int32_t)i;
    }

    /* What we can hold without a transfer is what WELCOME listed (or would list now). */
    uint32_t *hl, *he, hn;
    bool same_fp = fp[0] && !strcmp(xnode__shard_held(sh, &hl, &he, &hn), fp);

    /* Memory: the coordinator's figure when sent, else what the known sources add up to;
     * slices still to come are checked again as they arrive. */
    uint64_t need = 0;
    if (use_model)
        for (uint32_t i = 0; i < a->n_pairs; i++) {
            xnode__pair_t tmp = {.layer = a->layer[i], .expert = a->expert[i],
                                 .want_bias = want_bias};
            model_view(sh, &tmp);
            need += pair_bytes(&tmp);
        }
    if (a->bytes > need) need = a->bytes;
    if (need > sh->mem_limit) {
        snprintf(msg, cap, "assignment needs %" PRIu64 " bytes, --mem-limit is %" PRIu64, need,
                 sh->mem_limit);
        free(index);
        free(hl);
        free(he);
        return -ENOSPC;
    }

    xnode__pair_t *pairs = xcalloc(a->n_pairs ? a->n_pairs : 1, sizeof(*pairs));
    bool keep_old = sh->assigned && !strcmp(sh->fp, fp) && same_fp;
    bool *moved = sh->assigned ? xcalloc(sh->n_pairs + 1, sizeof(bool)) : NULL;
    int err = 0;
    for (uint32_t i = 0; i < a->n_pairs && !err; i++) {
        xnode__pair_t *p = &pairs[i];
        p->layer = a->layer[i];
        p->expert = a->expert[i];
        p->want_bias = want_bias;
        if (!same_fp || !held_has(hl, he, hn, p->layer, p->expert)) continue;
        const xnode__pair_t *old = keep_old ? xnode__shard_find(sh, p->layer, p->expert) : NULL;
        if (old) {
            for (int k = 0; k < WIRE_SHARD_KIND_COUNT; k++) {
                p->data[k] = old->data[k];
                p->own[k] = old->own[k];
                p->type[k] = old->type[k];
                p->bytes[k] = old->bytes[k];
            }
            moved[old - sh->pairs] = true;
        } else if (use_model) {
            model_view(sh, p);
        } else if (want_bias) {
            err = WIRE_E_FIELD; /* never written (cache_write), so the cache is not ours */
            snprintf(msg, cap, "cache lists gpt-oss expert (layer %u, expert %u) without its "
                     "biases; restart the node with an empty cache", p->layer, p->expert);
        } else {
            for (int k = 0; k <= WIRE_SHARD_DOWN && !err; k++) err = cache_load(sh, p, k);
            if (err)
                snprintf(msg, cap, "cache of layer %u expert %u is damaged; restart the node",
                         p->layer, p->expert);
        }
    }
    free(hl);
    free(he);
    uint64_t held = 0;
    uint32_t n_ready = 0;
    for (uint32_t i = 0; i < a->n_pairs; i++) {
        held += pair_bytes(&pairs[i]);
        n_ready += pair_ready(&pairs[i]);
    }
    if (!err && held > sh->mem_limit) {
        snprintf(msg, cap, "assignment needs %" PRIu64 " bytes, --mem-limit is %" PRIu64, held,
                 sh->mem_limit);
        err = -ENOSPC;
    }
    if (err) {
        /* Nothing moved out of the old assignment is freed here: only what we loaded. */
        for (uint32_t i = 0; i < a->n_pairs; i++) {
            bool borrowed = false;
            for (uint32_t j = 0; moved && j < sh->n_pairs; j++)
                if (moved[j] && sh->pairs[j].layer == pairs[i].layer &&
                    sh->pairs[j].expert == pairs[i].expert)
                    borrowed = true;
            if (!borrowed) pair_clear(&pairs[i]);
        }
        free(pairs);
        free(index);
        free(moved);
        return err;
    }

    pthread_rwlock_wrlock(&sh->lock);
    for (uint32_t j = 0; j < sh->n_pairs; j++) {
        if (moved && moved[j]) {
            /* Its published buffers now belong to the new pair; drop only slices in flight. */
            for (int k = 0; k < WIRE_SHARD_KIND_COUNT; k++) {
                free(sh->pairs[j].rx[k]);
                sh->pairs[j].rx[k] = NULL;
            }
        } else {
            pair_clear(&sh->pairs[j]);
        }
    }
    free(sh->pairs);
    free(sh->index);
    sh->pairs = pairs;
    sh->index = index;
    sh->n_pairs = a->n_pairs;
    if (!keep_old || !sh->assigned) sh->n_embd = sh->n_ff = 0;
    snprintf(sh->fp, sizeof(sh->fp), "%s", fp);
    sh->n_layers = a->n_layers;
    sh->n_experts = a->n_experts;
    if (a->n_embd) sh->n_embd = a->n_embd;
    if (a->n_ff) sh->n_ff = a->n_ff;
    if (use_model) {
        sh->n_embd = (uint32_t)sh->m->hp.n_embd;
        sh->n_ff = (uint32_t)sh->m->hp.n_ff_exp;
    }
    sh->n_ready = n_ready;
    sh->act = want_bias ? KERN_ACT_SWIGLU_OAI : KERN_ACT_SWIGLU;
    sh->held = held;
    sh->assigned = true;
    pthread_rwlock_unlock(&sh->lock);
    free(moved);
    cache_set_current(sh, fp);
    LOG_INFO("assigned %u experts of %s (%u layers x %u): %u held, %" PRIu64 " bytes", a->n_pairs,
             fp, a->n_layers, a->n_experts, n_ready, held);
    return 0;
}

/* ---------------------------------------------------------------- SHARD_CHUNK */

/* Drops the slice being received for kind k of p. */
static void rx_drop(xnode__shard_t *sh, xnode__pair_t *p, int k)
{
    if (!p->rx[k]) return;
    sh->held -= p->rx_total[k];
    free(p->rx[k]);
    p->rx[k] = NULL;
    p->rx_got[k] = p->rx_total[k] = 0;
}

int xnode__shard_chunk(xnode__shard_t *sh, const wire_shard_chunk_t *c, const void *data,
                       size_t n, char *msg, size_t cap)
{
    const char *name = c->tensor && c->tensor[0] ? c->tensor : KIND_NAME[c->kind];
    if (!sh->assigned) {
        snprintf(msg, cap, "SHARD_CHUNK before ASSIGN");
        return WIRE_E_FIELD;
    }
    if (c->layer >= sh->n_layers || c->expert >= sh->n_experts ||
        sh->index[(size_t)c->layer * sh->n_experts + c->expert] < 0) {
        snprintf(msg, cap, "%s: layer %u expert %u is not assigned to this node", name, c->layer,
                 c->expert);
        return WIRE_E_FIELD;
    }
    xnode__pair_t *p = &sh->pairs[sh->index[(size_t)c->layer * sh->n_experts + c->expert]];
    int k = (int)c->kind;
    const kern_type_info_t *ti = kern_type_info((int)c->ggml_type);
    if (!ti || !ti->compute) {
        snprintf(msg, cap, "%s: ggml type %u is not supported", name, c->ggml_type);
        return WIRE_E_DTYPE;
    }
    if (c->total == 0) {
        snprintf(msg, cap, "%s: empty slice", name);
        return WIRE_E_SIZE;
    }
    if (k > WIRE_SHARD_DOWN) {
        /* gpt-oss's bias rows: only for pairs that want them, F32, of the known widths. */
        uint64_t want = (k == WIRE_SHARD_DOWN_BIAS ? sh->n_embd : sh->n_ff) * 4ull;
        if (!p->want_bias || c->ggml_type != KERN_F32 || (want && c->total != want)) {
            snprintf(msg, cap, "%s: a %s slice of %" PRIu64 " bytes (type %s) does not fit this "
                     "assignment (expert_act %d, want F32 of %" PRIu64 " bytes)", name,
                     KIND_NAME[k], c->total, ti->name, (int)sh->act, want);
            return WIRE_E_SIZE;
        }
    } else if (sh->n_embd && sh->n_ff) {
        kern_type_t t = (kern_type_t)c->ggml_type;
        uint64_t want = k == WIRE_SHARD_DOWN ? rows_bytes(t, sh->n_embd, sh->n_ff)
                                             : rows_bytes(t, sh->n_ff, sh->n_embd);
        if (want != c->total) {
            snprintf(msg, cap, "%s: %" PRIu64 " bytes, expected %" PRIu64 " for %u x %u %s",
                     name, c->total, want, sh->n_embd, sh->n_ff, ti->name);
            return WIRE_E_SIZE;
        }
    }
    if (c->offset == 0) {
        rx_drop(sh, p, k);
        if (sh->held + c->total > sh->mem_limit) {
            snprintf(msg, cap, "%s: holding it needs %" PRIu64 " bytes, --mem-limit is %" PRIu64,
                     name, sh->held + c->total, sh->mem_limit);
            return -ENOSPC;
        }
        p->rx[k] = xmalloc_aligned(64, a64(c->total));
        p->rx_total[k] = c->total;
        p->rx_got[k] = 0;
        p->rx_crc[k] = 0;
        p->rx_want[k] = c->crc32c;
        p->rx_type[k] = c->ggml_type;
        sh->held += c->total;
    } else if (!p->rx[k] || c->offset != p->rx_got[k] || c->total != p->rx_total[k] ||
               c->crc32c != p->rx_want[k] || c->ggml_type != p->rx_type[k]) {
        rx_drop(sh, p, k);
        snprintf(msg, cap, "%s: chunk at offset %" PRIu64 " out of order", name, c->offset);
        return WIRE_E_FIELD;
    }
    /* The wire layer checked offset + n <= total. */
    memcpy(p->rx[k] + p->rx_got[k], data, n);
    p->rx_crc[k] = wire_crc32c(p->rx_crc[k], data, n);
    p->rx_got[k] += n;
    if (p->rx_got[k] < p->rx_total[k]) return 0;

    if (p->rx_crc[k] != p->rx_want[k]) {
        snprintf(msg, cap, "%s (layer %u expert %u %s): CRC-32C %08x, expected %08x", name,
                 c->layer, c->expert, KIND_NAME[k], p->rx_crc[k], p->rx_want[k]);
        rx_drop(sh, p, k);
        return WIRE_E_CHECKSUM;
    }
    bool was_ready = pair_ready(p);
    pthread_rwlock_wrlock(&sh->lock);
    if (p->data[k]) sh->held -= p->bytes[k];
    free(p->own[k]);
    p->own[k] = p->rx[k];
    p->data[k] = p->rx[k];
    p->type[k] = (kern_type_t)p->rx_type[k];
    p->bytes[k] = p->rx_total[k];
    p->rx[k] = NULL;
    p->rx_got[k] = p->rx_total[k] = 0;
    if (!was_ready && pair_ready(p)) sh->n_ready++;
    pthread_rwlock_unlock(&sh->lock);
    cache_write(sh, p, k, p->rx_want[k]);
    return 0;
}
