/* GGUF writer: collects metadata and tensor declarations, then writes a GGUF v3 file in one
 * pass, laid out as llama.cpp's own writer does it so the files load there and a re-written
 * file is byte-identical to the original.
 *
 * Invariants: each kv is kept already serialized (key, type, value bytes), so writing is a
 * concatenation and replacing a key keeps its position; tensor offsets are assigned at write
 * time, each aligned, with zero padding after every tensor including the last. Tensor bytes
 * come from an owned copy or, in whole rows, from the caller's fill callback through one
 * bounded chunk buffer.
 */
#include "model/model.h"
#include "wire/wire.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define WRITER_CHUNK (4u << 20) /* bytes asked from the fill callback at a time, at most */

typedef struct {
    unsigned char *p;
    size_t n, cap;
} bytes_t;

typedef struct {
    char *key;
    bytes_t b; /* serialized: key string, u32 type, value */
} wkv_t;

typedef struct {
    char *name;
    kern_type_t type;
    int n_dims;
    int64_t ne[4];
    size_t row_bytes, nbytes;
    void *data; /* owned copy, or NULL: bytes come from the fill callback */
} wtensor_t;

struct model_gguf_writer {
    wkv_t *kv;
    int n_kv, cap_kv;
    wtensor_t *t;
    int n_t, cap_t;
};

static void put(bytes_t *b, const void *v, size_t n)
{
    if (n == 0) return; /* v may be NULL then (an empty array) */
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = xrealloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, v, n);
    b->n += n;
}

static void put_u32(bytes_t *b, uint32_t v) { put(b, &v, 4); }
static void put_u64(bytes_t *b, uint64_t v) { put(b, &v, 8); }

static void put_str(bytes_t *b, const char *s, size_t len)
{
    put_u64(b, len);
    put(b, s, len);
}

model_gguf_writer_t *model_gguf_writer_new(void)
{
    return xcalloc(1, sizeof(model_gguf_writer_t));
}

void model_gguf_writer_free(model_gguf_writer_t *w)
{
    if (!w) return;
    for (int i = 0; i < w->n_kv; i++) {
        free(w->kv[i].key);
        free(w->kv[i].b.p);
    }
    for (int i = 0; i < w->n_t; i++) {
        free(w->t[i].name);
        free(w->t[i].data);
    }
    free(w->kv);
    free(w->t);
    free(w);
}

/* The kv for key, emptied and starting with its key and type, new or in its old place. */
static bytes_t *begin_kv(model_gguf_writer_t *w, const char *key, model_gguf_type_t type)
{
    wkv_t *kv = NULL;
    for (int i = 0; i < w->n_kv && !kv; i++)
        if (strcmp(w->kv[i].key, key) == 0) kv = &w->kv[i];
    if (!kv) {
        if (w->n_kv == w->cap_kv) {
            w->cap_kv = w->cap_kv * 2 + 16;
            w->kv = xrealloc(w->kv, (size_t)w->cap_kv * sizeof(*w->kv));
        }
        kv = &w->kv[w->n_kv++];
        kv->key = xstrdup(key);
        kv->b = (bytes_t){0};
    }
    kv->b.n = 0;
    put_str(&kv->b, key, strlen(key));
    put_u32(&kv->b, (uint32_t)type);
    return &kv->b;
}

void model_gguf_writer_set_u32(model_gguf_writer_t *w, const char *key, uint32_t v)
{
    put_u32(begin_kv(w, key, MODEL_GGUF_UINT32), v);
}

void model_gguf_writer_set_i32(model_gguf_writer_t *w, const char *key, int32_t v)
{
    put(begin_kv(w, key, MODEL_GGUF_INT32), &v, 4);
}

void model_gguf_writer_set_u64(model_gguf_writer_t *w, const char *key, uint64_t v)
{
    put_u64(begin_kv(w, key, MODEL_GGUF_UINT64), v);
}

void model_gguf_writer_set_f32(model_gguf_writer_t *w, const char *key, float v)
{
    put(begin_kv(w, key, MODEL_GGUF_FLOAT32), &v, 4);
}

void model_gguf_writer_set_bool(model_gguf_writer_t *w, const char *key, bool v)
{
    uint8_t b = v;
    put(begin_kv(w, key, MODEL_GGUF_BOOL), &b, 1);
}

void model_gguf_writer_set_str(model_gguf_writer_t *w, const char *key, const char *v)
{
    put_str(begin_kv(w, key, MODEL_GGUF_STRING), v, strlen(v));
}

/* File bytes of one scalar of a numeric or bool type; 0 for STRING/ARRAY. */
static size_t scalar_size(model_gguf_type_t t)
{
    switch (t) {
    case MODEL_GGUF_UINT8: case MODEL_GGUF_INT8: case MODEL_GGUF_BOOL: return 1;
    case MODEL_GGUF_UINT16: case MODEL_GGUF_INT16: return 2;
    case MODEL_GGUF_UINT32: case MODEL_GGUF_INT32: case MODEL_GGUF_FLOAT32: return 4;
    case MODEL_GGUF_UINT64: case MODEL_GGUF_INT64: case MODEL_GGUF_FLOAT64: return 8;
    default: return 0;
    }
}

void model_gguf_writer_set_arr(model_gguf_writer_t *w, const char *key, model_gguf_type_t elem,
                               const void *data, size_t n)
{
    size_t sz = scalar_size(elem);
    CHECK(sz > 0); /* strings go through set_arr_str, nested arrays through set_value */
    bytes_t *b = begin_kv(w, key, MODEL_GGUF_ARRAY);
    put_u32(b, (uint32_t)elem);
    put_u64(b, n);
    put(b, data, n * sz);
}

void model_gguf_writer_set_arr_str(model_gguf_writer_t *w, const char *key,
                                   const char *const *v, size_t n)
{
    bytes_t *b = begin_kv(w, key, MODEL_GGUF_ARRAY);
    put_u32(b, MODEL_GGUF_STRING);
    put_u64(b, n);
    for (size_t i = 0; i < n; i++) put_str(b, v[i], strlen(v[i]));
}

/* Serializes the payload of v (no type tag: the caller wrote it). */
static void put_value(bytes_t *b, const model_gguf_value_t *v)
{
    union {
        uint8_t u8; uint16_t u16; uint32_t u32; uint64_t u64; float f32; double f64;
    } x;
    switch (v->type) {
    case MODEL_GGUF_UINT8: case MODEL_GGUF_INT8: x.u8 = (uint8_t)v->u; put(b, &x, 1); break;
    case MODEL_GGUF_UINT16: case MODEL_GGUF_INT16: x.u16 = (uint16_t)v->u; put(b, &x, 2); break;
    case MODEL_GGUF_UINT32: case MODEL_GGUF_INT32: x.u32 = (uint32_t)v->u; put(b, &x, 4); break;
    case MODEL_GGUF_UINT64: case MODEL_GGUF_INT64: put_u64(b, v->u); break;
    case MODEL_GGUF_FLOAT32: x.f32 = (float)v->f; put(b, &x, 4); break;
    case MODEL_GGUF_FLOAT64: x.f64 = v->f; put(b, &x, 8); break;
    case MODEL_GGUF_BOOL: x.u8 = v->b; put(b, &x, 1); break;
    case MODEL_GGUF_STRING: put_str(b, v->str.s, (size_t)v->str.len); break;
    case MODEL_GGUF_ARRAY:
        put_u32(b, (uint32_t)v->arr.type);
        put_u64(b, v->arr.n);
        for (uint64_t i = 0; i < v->arr.n; i++) {
            CHECK(v->arr.v[i].type == v->arr.type); /* arrays are homogeneous */
            put_value(b, &v->arr.v[i]);
        }
        break;
    default: CHECK(!"value type out of range");
    }
}

void model_gguf_writer_set_value(model_gguf_writer_t *w, const char *key,
                                 const model_gguf_value_t *v)
{
    put_value(begin_kv(w, key, v->type), v);
}

int model_gguf_writer_add_tensor(model_gguf_writer_t *w, const char *name, kern_type_t type,
                                 int n_dims, const int64_t *ne)
{
    const kern_type_info_t *ti = kern_type_info((int)type);
    if (!ti) return MODEL_E_TYPE;
    if (n_dims < 1 || n_dims > 4) return MODEL_E_LIMIT;
    wtensor_t t = {.type = type, .n_dims = n_dims, .ne = {1, 1, 1, 1}};
    int64_t count = 1;
    for (int d = 0; d < n_dims; d++) {
        if (ne[d] <= 0 || __builtin_mul_overflow(count, ne[d], &count)) return MODEL_E_LIMIT;
        t.ne[d] = ne[d];
    }
    if (t.ne[0] % ti->block) return MODEL_E_LAYOUT;
    uint64_t bytes = (uint64_t)(t.ne[0] / ti->block) * ti->block_bytes;
    t.row_bytes = (size_t)bytes;
    for (int d = 1; d < 4; d++)
        if (__builtin_mul_overflow(bytes, (uint64_t)t.ne[d], &bytes) || bytes > SIZE_MAX / 2)
            return MODEL_E_LIMIT;
    t.nbytes = (size_t)bytes;
    for (int i = 0; i < w->n_t; i++)
        if (strcmp(w->t[i].name, name) == 0) return MODEL_E_DUPLICATE;
    if (w->n_t == w->cap_t) {
        w->cap_t = w->cap_t * 2 + 16;
        w->t = xrealloc(w->t, (size_t)w->cap_t * sizeof(*w->t));
    }
    t.name = xstrdup(name);
    w->t[w->n_t] = t;
    return w->n_t++;
}

int model_gguf_writer_add_tensor_data(model_gguf_writer_t *w, const char *name,
                                      kern_type_t type, int n_dims, const int64_t *ne,
                                      const void *data)
{
    int idx = model_gguf_writer_add_tensor(w, name, type, n_dims, ne);
    if (idx < 0) return idx;
    wtensor_t *t = &w->t[idx];
    t->data = xmalloc(t->nbytes);
    memcpy(t->data, data, t->nbytes);
    return idx;
}

/* The alignment the file will use: general.alignment when set, else 32; 0 when it is set to
 * something other than a u32 power of two. */
static uint64_t alignment_of(const model_gguf_writer_t *w)
{
    for (int i = 0; i < w->n_kv; i++) {
        if (strcmp(w->kv[i].key, "general.alignment") != 0) continue;
        const bytes_t *b = &w->kv[i].b;
        size_t at = 8 + strlen(w->kv[i].key);
        uint32_t type, v;
        memcpy(&type, b->p + at, 4);
        if (type != MODEL_GGUF_UINT32) return 0;
        memcpy(&v, b->p + at + 4, 4);
        return v && !(v & (v - 1)) ? v : 0;
    }
    return 32;
}

static uint64_t pad_to(uint64_t x, uint64_t a)
{
    return (x + a - 1) / a * a;
}

typedef struct {
    FILE *f;
    const char *path;
} out_t;

static int out_write(out_t *o, const void *p, size_t n)
{
    if (n && fwrite(p, 1, n, o->f) != n) {
        int e = errno ? errno : EIO;
        LOG_ERR("%s: write failed: %s", o->path, strerror(e));
        return -e;
    }
    return 0;
}

static int out_zeros(out_t *o, size_t n)
{
    static const unsigned char zeros[256];
    while (n) {
        size_t k = n < sizeof(zeros) ? n : sizeof(zeros);
        int err = out_write(o, zeros, k);
        if (err) return err;
        n -= k;
    }
    return 0;
}

static int write_all(model_gguf_writer_t *w, out_t *o, uint64_t align, model_gguf_fill_cb fill,
                     void *arg)
{
    bytes_t h = {0};
    put(&h, "GGUF", 4);
    put_u32(&h, 3);
    put_u64(&h, (uint64_t)w->n_t);
    put_u64(&h, (uint64_t)w->n_kv);
    for (int i = 0; i < w->n_kv; i++) put(&h, w->kv[i].b.p, w->kv[i].b.n);
    uint64_t off = 0;
    for (int i = 0; i < w->n_t; i++) {
        const wtensor_t *t = &w->t[i];
        put_str(&h, t->name, strlen(t->name));
        put_u32(&h, (uint32_t)t->n_dims);
        for (int d = 0; d < t->n_dims; d++) put_u64(&h, (uint64_t)t->ne[d]);
        put_u32(&h, (uint32_t)t->type);
        put_u64(&h, off);
        off += pad_to(t->nbytes, align);
    }
    int err = out_write(o, h.p, h.n);
    if (!err) err = out_zeros(o, pad_to(h.n, align) - h.n);
    free(h.p);

    unsigned char *chunk = NULL;
    for (int i = 0; i < w->n_t && !err; i++) {
        const wtensor_t *t = &w->t[i];
        if (t->data) {
            err = out_write(o, t->data, t->nbytes);
        } else if (!fill) {
            LOG_ERR("%s: tensor '%s' has no data and there is no fill callback", o->path,
                    t->name);
            err = -EINVAL;
        } else {
            /* Whole rows at a time, at most WRITER_CHUNK bytes unless one row is larger. */
            size_t rows = t->row_bytes >= WRITER_CHUNK ? 1 : WRITER_CHUNK / t->row_bytes;
            size_t cap = rows * t->row_bytes;
            chunk = xrealloc(chunk, cap);
            for (size_t at = 0; at < t->nbytes && !err; at += cap) {
                size_t len = t->nbytes - at < cap ? t->nbytes - at : cap;
                err = fill(arg, i, at, chunk, len);
                if (!err) err = out_write(o, chunk, len);
            }
        }
        if (!err) err = out_zeros(o, pad_to(t->nbytes, align) - t->nbytes);
    }
    free(chunk);
    return err;
}

int model_gguf_writer_write(model_gguf_writer_t *w, const char *path, model_gguf_fill_cb fill,
                            void *arg)
{
    uint64_t align = alignment_of(w);
    if (!align) {
        LOG_ERR("%s: general.alignment must be a u32 power of two", path);
        return MODEL_E_LAYOUT;
    }
    size_t plen = strlen(path);
    char *tmp = xmalloc(plen + 6);
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".part", 6);
    out_t o = {.f = fopen(tmp, "wb"), .path = tmp};
    if (!o.f) {
        int e = errno;
        LOG_ERR("%s: cannot create: %s", tmp, strerror(e));
        free(tmp);
        return -e;
    }
    setvbuf(o.f, NULL, _IOFBF, 1 << 20);
    int err = write_all(w, &o, align, fill, arg);
    if (fclose(o.f) != 0 && !err) {
        err = -(errno ? errno : EIO);
        LOG_ERR("%s: close failed: %s", tmp, strerror(-err));
    }
    if (!err && rename(tmp, path) != 0) {
        err = -errno;
        LOG_ERR("%s: cannot rename to %s: %s", tmp, path, strerror(-err));
    }
    if (err) unlink(tmp);
    free(tmp);
    return err;
}
