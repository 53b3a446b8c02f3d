/* GGUF reader: maps a GGUF v2/v3 file read-only and validates all of it before anyone uses it.
 *
 * Layout (little-endian): "GGUF", u32 version, u64 tensor count, u64 kv count; kvs (string
 * key, u32 type, value); tensor infos (string name, u32 n_dims, u64 ne[n_dims], u32 type,
 * u64 offset); padding to general.alignment; the data section. A string is u64 length + bytes.
 *
 * Invariants once model_gguf_open* returns 0: every key and tensor name is unique; every tensor
 * has a known type, 1..4 positive dims whose products fit int64 and size_t, ne[0] a multiple of
 * its block size, an aligned offset, and bytes that lie inside the file without overlapping
 * another tensor. Nothing read from the file reaches CHECK, and no allocation is sized from a
 * count before that count was checked against the bytes left (an element takes at least one
 * byte, a string at least eight), so memory stays a small multiple of the file size.
 */
#include "model/model.h"
#include "wire/wire.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_DEPTH 8 /* arrays of arrays nest at most this deep; real files use 1 */

/* Bump allocator for keys, strings and value arrays: everything is freed at once. */
typedef struct arena_chunk arena_chunk_t;
struct arena_chunk {
    arena_chunk_t *next;
    size_t used, cap;
    _Alignas(16) unsigned char mem[];
};

struct model_gguf {
    char *name;                /* path or caller-given name, for messages */
    const unsigned char *base; /* (size) bytes of the file */
    size_t size;
    bool mapped; /* base came from mmap and is unmapped in model_gguf_free */
    uint32_t version;
    uint64_t alignment;
    uint64_t data_offset;
    int n_kv;
    model_gguf_kv_t *kv;  /* (n_kv) */
    int n_tensors;
    model_tensor_t *tensors; /* (n_tensors), file order */
    int *tensor_by_name;     /* (n_tensors) indices sorted by name, for lookup */
    arena_chunk_t *arena;
};

/* Reading cursor over the file bytes; every read checks the bytes left first. */
typedef struct {
    model_gguf_t *g;
    size_t pos;
} rd_t;

static void *arena_alloc(model_gguf_t *g, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    arena_chunk_t *c = g->arena;
    if (!c || c->cap - c->used < n) {
        size_t cap = n > 65536 ? n : 65536;
        c = xmalloc(sizeof(*c) + cap);
        c->cap = cap;
        c->used = 0;
        c->next = g->arena;
        g->arena = c;
    }
    void *p = c->mem + c->used;
    c->used += n;
    return p;
}

static size_t left(const rd_t *r)
{
    return r->g->size - r->pos;
}

static int need(rd_t *r, size_t n, const char *what)
{
    if (left(r) < n) {
        LOG_ERR("%s: truncated: %s needs %zu bytes at offset %zu, %zu left", r->g->name, what, n,
                r->pos, left(r));
        return MODEL_E_TRUNCATED;
    }
    return 0;
}

static int rd_bytes(rd_t *r, void *dst, size_t n, const char *what)
{
    int err = need(r, n, what);
    if (err) return err;
    memcpy(dst, r->g->base + r->pos, n);
    r->pos += n;
    return 0;
}

static int rd_u32(rd_t *r, uint32_t *v, const char *what)
{
    return rd_bytes(r, v, 4, what);
}

static int rd_u64(rd_t *r, uint64_t *v, const char *what)
{
    return rd_bytes(r, v, 8, what);
}

/* The code for a count of n items of at least each bytes that does not fit in what is left:
 * beyond the whole file it is a bad count (LIMIT); otherwise the file was cut short. */
static int too_big(const rd_t *r, uint64_t n, size_t each)
{
    return n > r->g->size / each ? MODEL_E_LIMIT : MODEL_E_TRUNCATED;
}

/* A string as a NUL-terminated arena copy. */
static int rd_str(rd_t *r, const char **s, uint64_t *len, const char *what)
{
    uint64_t n;
    int err = rd_u64(r, &n, what);
    if (err) return err;
    if (n > left(r)) {
        LOG_ERR("%s: %s of %llu bytes at offset %zu runs past the end (%zu bytes left)",
                r->g->name, what, (unsigned long long)n, r->pos, left(r));
        return too_big(r, n, 1);
    }
    char *c = arena_alloc(r->g, (size_t)n + 1);
    memcpy(c, r->g->base + r->pos, (size_t)n);
    c[n] = '\0';
    r->pos += (size_t)n;
    *s = c;
    *len = n;
    return 0;
}

/* Bytes one element of type t takes in the file, at least. */
static size_t min_size(model_gguf_type_t t)
{
    switch (t) {
    case MODEL_GGUF_UINT8: case MODEL_GGUF_INT8: case MODEL_GGUF_BOOL: return 1;
    case MODEL_GGUF_UINT16: case MODEL_GGUF_INT16: return 2;
    case MODEL_GGUF_UINT32: case MODEL_GGUF_INT32: case MODEL_GGUF_FLOAT32: return 4;
    case MODEL_GGUF_UINT64: case MODEL_GGUF_INT64: case MODEL_GGUF_FLOAT64: return 8;
    case MODEL_GGUF_STRING: return 8;
    case MODEL_GGUF_ARRAY: return 12; /* element type + count */
    default: return 0;
    }
}

static int rd_value(rd_t *r, model_gguf_type_t t, model_gguf_value_t *v, int depth);

static int rd_array(rd_t *r, model_gguf_value_t *v, int depth)
{
    if (depth >= GGUF_MAX_DEPTH) {
        LOG_ERR("%s: arrays nested deeper than %d at offset %zu", r->g->name, GGUF_MAX_DEPTH,
                r->pos);
        return MODEL_E_LIMIT;
    }
    uint32_t et;
    uint64_t n;
    int err = rd_u32(r, &et, "array element type");
    if (!err) err = rd_u64(r, &n, "array count");
    if (err) return err;
    if (et >= MODEL_GGUF_TYPE_COUNT) {
        LOG_ERR("%s: unknown array element type %u at offset %zu", r->g->name, et, r->pos - 12);
        return MODEL_E_TYPE;
    }
    /* Checked before allocating: a lying count must not make us allocate. */
    if (n > left(r) / min_size((model_gguf_type_t)et)) {
        LOG_ERR("%s: array of %llu %s elements at offset %zu cannot fit in the %zu bytes left",
                r->g->name, (unsigned long long)n, model_gguf_type_name((model_gguf_type_t)et),
                r->pos, left(r));
        return too_big(r, n, min_size((model_gguf_type_t)et));
    }
    v->arr.type = (model_gguf_type_t)et;
    v->arr.n = n;
    v->arr.v = arena_alloc(r->g, (size_t)n * sizeof(model_gguf_value_t));
    for (uint64_t i = 0; i < n; i++) {
        err = rd_value(r, (model_gguf_type_t)et, &v->arr.v[i], depth + 1);
        if (err) return err;
    }
    return 0;
}

static int rd_value(rd_t *r, model_gguf_type_t t, model_gguf_value_t *v, int depth)
{
    memset(v, 0, sizeof(*v));
    v->type = t;
    union {
        uint8_t u8; int8_t i8; uint16_t u16; int16_t i16; uint32_t u32; int32_t i32;
        uint64_t u64; int64_t i64; float f32; double f64;
    } x;
    int err = 0;
    switch (t) {
    case MODEL_GGUF_UINT8: err = rd_bytes(r, &x.u8, 1, "u8 value"); v->u = x.u8; break;
    case MODEL_GGUF_INT8: err = rd_bytes(r, &x.i8, 1, "i8 value"); v->i = x.i8; break;
    case MODEL_GGUF_UINT16: err = rd_bytes(r, &x.u16, 2, "u16 value"); v->u = x.u16; break;
    case MODEL_GGUF_INT16: err = rd_bytes(r, &x.i16, 2, "i16 value"); v->i = x.i16; break;
    case MODEL_GGUF_UINT32: err = rd_bytes(r, &x.u32, 4, "u32 value"); v->u = x.u32; break;
    case MODEL_GGUF_INT32: err = rd_bytes(r, &x.i32, 4, "i32 value"); v->i = x.i32; break;
    case MODEL_GGUF_UINT64: err = rd_bytes(r, &x.u64, 8, "u64 value"); v->u = x.u64; break;
    case MODEL_GGUF_INT64: err = rd_bytes(r, &x.i64, 8, "i64 value"); v->i = x.i64; break;
    case MODEL_GGUF_FLOAT32: err = rd_bytes(r, &x.f32, 4, "f32 value"); v->f = x.f32; break;
    case MODEL_GGUF_FLOAT64: err = rd_bytes(r, &x.f64, 8, "f64 value"); v->f = x.f64; break;
    case MODEL_GGUF_BOOL:
        err = rd_bytes(r, &x.u8, 1, "bool value");
        /* llama.cpp accepts any byte; 0 is false and anything else true. */
        v->b = x.u8 != 0;
        break;
    case MODEL_GGUF_STRING: err = rd_str(r, &v->str.s, &v->str.len, "string value"); break;
    case MODEL_GGUF_ARRAY: err = rd_array(r, v, depth); break;
    default:
        LOG_ERR("%s: unknown value type %d at offset %zu", r->g->name, (int)t, r->pos);
        return MODEL_E_TYPE;
    }
    return err;
}

/* Byte-exact comparison for sorting names that might hold NULs: length first, then bytes. */
typedef struct {
    const char *s;
    uint64_t len;
    int idx;
} name_ref_t;

static int cmp_name(const void *a, const void *b)
{
    const name_ref_t *x = a, *y = b;
    if (x->len != y->len) return x->len < y->len ? -1 : 1;
    int c = memcmp(x->s, y->s, (size_t)x->len);
    if (c) return c;
    return x->idx < y->idx ? -1 : x->idx > y->idx;
}

/* Finds the first duplicate among refs (n); returns its index in refs or -1. Sorts refs. */
static int find_duplicate(name_ref_t *refs, int n)
{
    qsort(refs, (size_t)n, sizeof(*refs), cmp_name);
    for (int i = 1; i < n; i++)
        if (refs[i].len == refs[i - 1].len && !memcmp(refs[i].s, refs[i - 1].s, refs[i].len))
            return i;
    return -1;
}

static int parse_kvs(rd_t *r, uint64_t n_kv)
{
    model_gguf_t *g = r->g;
    /* A kv takes at least a key length (8), a type (4) and one value byte. */
    if (n_kv > left(r) / 13 || n_kv > INT_MAX) {
        LOG_ERR("%s: %llu metadata entries cannot fit in the %zu bytes after the header", g->name,
                (unsigned long long)n_kv, left(r));
        return n_kv > INT_MAX ? MODEL_E_LIMIT : too_big(r, n_kv, 13);
    }
    g->kv = xcalloc((size_t)n_kv + 1, sizeof(*g->kv));
    name_ref_t *refs = xcalloc((size_t)n_kv + 1, sizeof(*refs));
    int err = 0;
    for (uint64_t i = 0; i < n_kv && !err; i++) {
        model_gguf_kv_t *kv = &g->kv[i];
        uint32_t t;
        err = rd_str(r, &kv->key, &refs[i].len, "metadata key");
        if (!err) err = rd_u32(r, &t, "metadata value type");
        if (!err && t >= MODEL_GGUF_TYPE_COUNT) {
            LOG_ERR("%s: key '%s' has unknown value type %u", g->name, kv->key, t);
            err = MODEL_E_TYPE;
        }
        if (!err) err = rd_value(r, (model_gguf_type_t)t, &kv->val, 0);
        refs[i].s = kv->key;
        refs[i].idx = (int)i;
        g->n_kv = (int)i + 1;
    }
    if (!err) {
        int d = find_duplicate(refs, (int)n_kv);
        if (d >= 0) {
            LOG_ERR("%s: duplicate metadata key '%s'", g->name, refs[d].s);
            err = MODEL_E_DUPLICATE;
        }
    }
    free(refs);
    return err;
}

static int read_alignment(model_gguf_t *g)
{
    g->alignment = GGUF_DEFAULT_ALIGNMENT;
    const model_gguf_value_t *v = model_gguf_get(g, "general.alignment");
    if (!v) return 0;
    if (v->type != MODEL_GGUF_UINT32 || v->u == 0 || (v->u & (v->u - 1)) != 0) {
        LOG_ERR("%s: general.alignment must be a nonzero power of two of type u32", g->name);
        return MODEL_E_LAYOUT;
    }
    g->alignment = v->u;
    return 0;
}

static int parse_tensor_info(rd_t *r, model_tensor_t *t, uint64_t *name_len)
{
    model_gguf_t *g = r->g;
    uint32_t n_dims, type;
    int err = rd_str(r, &t->name, name_len, "tensor name");
    if (!err) err = rd_u32(r, &n_dims, "tensor n_dims");
    if (err) return err;
    if (n_dims < 1 || n_dims > 4) {
        LOG_ERR("%s: tensor '%s' has %u dimensions (1..4 supported)", g->name, t->name, n_dims);
        return MODEL_E_LIMIT;
    }
    t->n_dims = (int)n_dims;
    for (int d = 0; d < 4; d++) t->ne[d] = 1;
    for (uint32_t d = 0; d < n_dims; d++) {
        uint64_t ne;
        err = rd_u64(r, &ne, "tensor dimension");
        if (err) return err;
        if (ne == 0 || ne > INT64_MAX) {
            LOG_ERR("%s: tensor '%s' dimension %u is %lld", g->name, t->name, d, (long long)ne);
            return MODEL_E_LIMIT;
        }
        t->ne[d] = (int64_t)ne;
    }
    err = rd_u32(r, &type, "tensor type");
    if (!err) err = rd_u64(r, &t->offset, "tensor offset");
    if (err) return err;

    const kern_type_info_t *ti = type < KERN_TYPE_COUNT ? kern_type_info((int)type) : NULL;
    if (!ti) {
        LOG_ERR("%s: tensor '%s' has unknown type %u", g->name, t->name, type);
        return MODEL_E_TYPE;
    }
    t->type = (kern_type_t)type;
    int64_t n = t->ne[0];
    for (int d = 1; d < 4; d++) {
        if (__builtin_mul_overflow(n, t->ne[d], &n)) {
            LOG_ERR("%s: tensor '%s' element count overflows", g->name, t->name);
            return MODEL_E_LIMIT;
        }
    }
    if (t->ne[0] % ti->block != 0) {
        LOG_ERR("%s: tensor '%s' row of %lld elements is not a multiple of %s's block of %d",
                g->name, t->name, (long long)t->ne[0], ti->name, ti->block);
        return MODEL_E_LAYOUT;
    }
    uint64_t bytes = (uint64_t)(t->ne[0] / ti->block) * ti->block_bytes;
    for (int d = 1; d < 4; d++) {
        if (__builtin_mul_overflow(bytes, (uint64_t)t->ne[d], &bytes) || bytes > SIZE_MAX) {
            LOG_ERR("%s: tensor '%s' byte size overflows", g->name, t->name);
            return MODEL_E_LIMIT;
        }
    }
    t->nbytes = (size_t)bytes;
    if (t->offset % g->alignment != 0) {
        LOG_ERR("%s: tensor '%s' offset %llu is not a multiple of the alignment %llu", g->name,
                t->name, (unsigned long long)t->offset, (unsigned long long)g->alignment);
        return MODEL_E_LAYOUT;
    }
    return 0;
}

static int cmp_offset(const void *a, const void *b)
{
    const model_tensor_t *x = *(model_tensor_t *const *)a, *y = *(model_tensor_t *const *)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* Data section bounds and overlaps, once data_offset is known. */
static int check_tensor_data(model_gguf_t *g)
{
    uint64_t room = g->data_offset <= g->size ? g->size - g->data_offset : 0;
    for (int i = 0; i < g->n_tensors; i++) {
        model_tensor_t *t = &g->tensors[i];
        if (t->offset > room || t->nbytes > room - t->offset) {
            LOG_ERR("%s: tensor '%s' data (%zu bytes at data offset %llu) runs past the end of "
                    "the file", g->name, t->name, t->nbytes, (unsigned long long)t->offset);
            return MODEL_E_TRUNCATED;
        }
        t->data = g->base + g->data_offset + t->offset;
    }
    model_tensor_t **by_off = xmalloc(((size_t)g->n_tensors + 1) * sizeof(*by_off));
    for (int i = 0; i < g->n_tensors; i++) by_off[i] = &g->tensors[i];
    qsort(by_off, (size_t)g->n_tensors, sizeof(*by_off), cmp_offset);
    int err = 0;
    for (int i = 1; i < g->n_tensors && !err; i++) {
        const model_tensor_t *a = by_off[i - 1], *b = by_off[i];
        if (b->offset < a->offset + a->nbytes) {
            LOG_ERR("%s: tensors '%s' and '%s' overlap", g->name, a->name, b->name);
            err = MODEL_E_LAYOUT;
        }
    }
    free(by_off);
    return err;
}

static int parse_tensors(rd_t *r, uint64_t n_tensors)
{
    model_gguf_t *g = r->g;
    /* An info takes at least name length 8, n_dims 4, one dim 8, type 4, offset 8. */
    if (n_tensors > left(r) / 32 || n_tensors > INT_MAX) {
        LOG_ERR("%s: %llu tensor infos cannot fit in the %zu bytes left", g->name,
                (unsigned long long)n_tensors, left(r));
        return n_tensors > INT_MAX ? MODEL_E_LIMIT : too_big(r, n_tensors, 32);
    }
    g->tensors = xcalloc((size_t)n_tensors + 1, sizeof(*g->tensors));
    name_ref_t *refs = xcalloc((size_t)n_tensors + 1, sizeof(*refs));
    int err = 0;
    for (uint64_t i = 0; i < n_tensors && !err; i++) {
        err = parse_tensor_info(r, &g->tensors[i], &refs[i].len);
        refs[i].s = g->tensors[i].name;
        refs[i].idx = (int)i;
    }
    if (!err) {
        g->n_tensors = (int)n_tensors;
        int d = find_duplicate(refs, g->n_tensors);
        if (d >= 0) {
            LOG_ERR("%s: duplicate tensor name '%s'", g->name, refs[d].s);
            err = MODEL_E_DUPLICATE;
        }
    }
    free(refs);
    return err;
}

static int cmp_strcmp(const void *a, const void *b)
{
    const name_ref_t *x = a, *y = b;
    return strcmp(x->s, y->s);
}

/* Index of tensors by strcmp order of their (NUL-terminated) names, for binary search. */
static void index_tensors(model_gguf_t *g)
{
    name_ref_t *refs = xmalloc(((size_t)g->n_tensors + 1) * sizeof(*refs));
    for (int i = 0; i < g->n_tensors; i++) refs[i] = (name_ref_t){g->tensors[i].name, 0, i};
    qsort(refs, (size_t)g->n_tensors, sizeof(*refs), cmp_strcmp);
    g->tensor_by_name = xmalloc(((size_t)g->n_tensors + 1) * sizeof(int));
    for (int i = 0; i < g->n_tensors; i++) g->tensor_by_name[i] = refs[i].idx;
    free(refs);
}

static int parse(model_gguf_t *g)
{
    if (g->size < 4 || memcmp(g->base, "GGUF", 4) != 0) {
        LOG_ERR("%s: not a GGUF file (bad magic)", g->name);
        return MODEL_E_MAGIC;
    }
    rd_t r = {.g = g, .pos = 4};
    int err = rd_u32(&r, &g->version, "version");
    if (err) return err;
    if (g->version != 2 && g->version != 3) {
        LOG_ERR("%s: GGUF version %u is not supported (2 and 3 are; big-endian files are not)",
                g->name, g->version);
        return MODEL_E_VERSION;
    }
    uint64_t n_tensors, n_kv;
    err = rd_u64(&r, &n_tensors, "tensor count");
    if (!err) err = rd_u64(&r, &n_kv, "metadata count");
    if (!err) err = parse_kvs(&r, n_kv);
    if (!err) err = read_alignment(g);
    if (!err) err = parse_tensors(&r, n_tensors);
    if (err) return err;
    uint64_t a = g->alignment;
    g->data_offset = ((uint64_t)r.pos + a - 1) / a * a;
    err = check_tensor_data(g);
    if (err) return err;
    index_tensors(g);
    return 0;
}

static model_gguf_t *gguf_alloc(const char *name)
{
    model_gguf_t *g = xcalloc(1, sizeof(*g));
    g->name = xstrdup(name ? name : "(memory)");
    return g;
}

int model_gguf_open_mem(const void *buf, size_t len, const char *name, model_gguf_t **out)
{
    model_gguf_t *g = gguf_alloc(name);
    g->base = buf;
    g->size = len;
    int err = parse(g);
    if (err) {
        model_gguf_free(g);
        *out = NULL;
        return err;
    }
    *out = g;
    return 0;
}

int model_gguf_open(const char *path, model_gguf_t **out)
{
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        LOG_ERR("%s: cannot open: %s", path, strerror(e));
        return -e;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        LOG_ERR("%s: cannot stat: %s", path, strerror(e));
        close(fd);
        return -e;
    }
    if (!S_ISREG(st.st_mode) || st.st_size < 4) {
        LOG_ERR("%s: %s", path, S_ISREG(st.st_mode) ? "not a GGUF file (too short)"
                                                     : "not a regular file");
        close(fd);
        return S_ISREG(st.st_mode) ? MODEL_E_MAGIC : -EINVAL;
    }
    size_t size = (size_t)st.st_size;
    void *m = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (m == MAP_FAILED) {
        LOG_ERR("%s: cannot map %zu bytes: %s", path, size, strerror(e));
        return -e;
    }
    model_gguf_t *g = gguf_alloc(path);
    g->base = m;
    g->size = size;
    g->mapped = true;
    int err = parse(g);
    if (err) {
        model_gguf_free(g);
        return err;
    }
    *out = g;
    return 0;
}

void model_gguf_free(model_gguf_t *g)
{
    if (!g) return;
    if (g->mapped) munmap((void *)g->base, g->size);
    while (g->arena) {
        arena_chunk_t *next = g->arena->next;
        free(g->arena);
        g->arena = next;
    }
    free(g->kv);
    free(g->tensors);
    free(g->tensor_by_name);
    free(g->name);
    free(g);
}

const char *model_strerror(int err)
{
    switch (err) {
    case 0: return "success";
    case MODEL_E_MAGIC: return "not a GGUF file";
    case MODEL_E_VERSION: return "unsupported GGUF version";
    case MODEL_E_TRUNCATED: return "truncated file";
    case MODEL_E_LIMIT: return "count, length or dimension out of range";
    case MODEL_E_TYPE: return "unknown value or tensor type";
    case MODEL_E_LAYOUT: return "bad tensor data layout";
    case MODEL_E_DUPLICATE: return "duplicate key or tensor name";
    case MODEL_E_ARCH: return "unsupported architecture or missing tensor";
    case MODEL_E_VOCAB: return "unsupported or inconsistent tokenizer";
    default: return err < 0 && err > -4096 ? strerror(-err) : "unknown error";
    }
}

const char *model_gguf_path(const model_gguf_t *g) { return g->name; }
uint32_t model_gguf_version(const model_gguf_t *g) { return g->version; }
uint64_t model_gguf_alignment(const model_gguf_t *g) { return g->alignment; }
uint64_t model_gguf_data_offset(const model_gguf_t *g) { return g->data_offset; }
size_t model_gguf_file_size(const model_gguf_t *g) { return g->size; }
const void *model_gguf_bytes(const model_gguf_t *g) { return g->base; }
int model_gguf_kv_count(const model_gguf_t *g) { return g->n_kv; }
int model_gguf_tensor_count(const model_gguf_t *g) { return g->n_tensors; }

const model_gguf_kv_t *model_gguf_kv(const model_gguf_t *g, int i)
{
    return i >= 0 && i < g->n_kv ? &g->kv[i] : NULL;
}

const model_tensor_t *model_gguf_tensor(const model_gguf_t *g, int i)
{
    return i >= 0 && i < g->n_tensors ? &g->tensors[i] : NULL;
}

const model_gguf_value_t *model_gguf_get(const model_gguf_t *g, const char *key)
{
    /* Files hold tens of keys, so a scan beats keeping an index. */
    for (int i = 0; i < g->n_kv; i++)
        if (strcmp(g->kv[i].key, key) == 0) return &g->kv[i].val;
    return NULL;
}

const model_tensor_t *model_gguf_find_tensor(const model_gguf_t *g, const char *name)
{
    int lo = 0, hi = g->n_tensors;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        const model_tensor_t *t = &g->tensors[g->tensor_by_name[mid]];
        int c = strcmp(t->name, name);
        if (c == 0) return t;
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}

static bool is_unsigned(model_gguf_type_t t)
{
    return t == MODEL_GGUF_UINT8 || t == MODEL_GGUF_UINT16 || t == MODEL_GGUF_UINT32 ||
           t == MODEL_GGUF_UINT64;
}

static bool is_signed(model_gguf_type_t t)
{
    return t == MODEL_GGUF_INT8 || t == MODEL_GGUF_INT16 || t == MODEL_GGUF_INT32 ||
           t == MODEL_GGUF_INT64;
}

bool model_gguf_value_int(const model_gguf_value_t *v, int64_t *out)
{
    if (!v) return false;
    if (is_unsigned(v->type)) {
        if (v->u > INT64_MAX) return false;
        *out = (int64_t)v->u;
        return true;
    }
    if (is_signed(v->type)) {
        *out = v->i;
        return true;
    }
    return false;
}

bool model_gguf_value_float(const model_gguf_value_t *v, double *out)
{
    if (!v) return false;
    if (v->type == MODEL_GGUF_FLOAT32 || v->type == MODEL_GGUF_FLOAT64) {
        *out = v->f;
        return true;
    }
    if (is_unsigned(v->type)) {
        *out = (double)v->u;
        return true;
    }
    if (is_signed(v->type)) {
        *out = (double)v->i;
        return true;
    }
    return false;
}

bool model_gguf_get_int(const model_gguf_t *g, const char *key, int64_t *out)
{
    return model_gguf_value_int(model_gguf_get(g, key), out);
}

bool model_gguf_get_float(const model_gguf_t *g, const char *key, double *out)
{
    return model_gguf_value_float(model_gguf_get(g, key), out);
}

bool model_gguf_get_bool(const model_gguf_t *g, const char *key, bool *out)
{
    const model_gguf_value_t *v = model_gguf_get(g, key);
    if (!v || v->type != MODEL_GGUF_BOOL) return false;
    *out = v->b;
    return true;
}

const char *model_gguf_get_str(const model_gguf_t *g, const char *key)
{
    const model_gguf_value_t *v = model_gguf_get(g, key);
    return v && v->type == MODEL_GGUF_STRING ? v->str.s : NULL;
}

const model_gguf_value_t *model_gguf_get_arr(const model_gguf_t *g, const char *key, int elem)
{
    const model_gguf_value_t *v = model_gguf_get(g, key);
    if (!v || v->type != MODEL_GGUF_ARRAY) return NULL;
    if (elem >= 0 && (int)v->arr.type != elem) return NULL;
    return v;
}

const char *model_gguf_type_name(model_gguf_type_t t)
{
    static const char *const names[MODEL_GGUF_TYPE_COUNT] = {
        "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "str", "arr", "u64", "i64", "f64",
    };
    return (unsigned)t < MODEL_GGUF_TYPE_COUNT ? names[t] : "?";
}
