/* Messages: plain structs (wire.h) <-> one ZeroMQ multipart message (header frame + tensor
 * frames, layout in wire/proto/moemesh.proto). The only file that maps the protobuf-c types.
 *
 * Invariants:
 *   - A wire_msg_t owns its frames through m->own; send always consumes (closes) the message,
 *     recv always consumes the whole multipart message from the socket, valid or not, so a
 *     hostile message never leaves the socket mid-message.
 *   - Nothing from the peer is used before it is checked: frame sizes against the limits,
 *     then the header unpacked with a budgeted allocator, then every count and shape against
 *     the header, the other fields and the limits (check_msg, also run on send with no limits
 *     so a sender's bug shows at the sender).
 *   - Tensor views point into the received frames when aligned for their dtype, else into a
 *     64-byte aligned copy held by the message.
 */
#include "wire/wire.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "wire/proto/moemesh.pb-c.h"

/* protobuf-c's unpack allocates the header size times a factor that depends on the field
 * mix (see the .proto); the budget makes the bound a hard limit instead of an argument. */
#define BUDGET_PER_HEADER_BYTE 16
#define BUDGET_BASE (64 * 1024)

typedef struct {
    size_t used, max;
} budget_t;

struct wire__msg_own {
    Moemesh__Envelope *env; /* unpacked header of a received message, or NULL */
    budget_t budget;
    ProtobufCAllocator alloc;
    int n_frames;                         /* tensor frames initialised in frames[] */
    zmq_msg_t frames[WIRE_MAX_TENSORS];   /* empty once sent */
    void *copies[WIRE_MAX_TENSORS];       /* aligned copies of misaligned received frames */
};

wire_limits_t wire_limits_default(void)
{
    return (wire_limits_t){
        .max_header_bytes = 256 * 1024, /* 1024 tokens x 16 experts with gates is ~100 KiB */
        .max_frame_bytes = 32u << 20,   /* 1024 tokens x 8192 f32 */
        .max_tokens = 1024,
        .max_experts_per_tok = 64,
        .max_expert_id = 1024,
        .max_layer = 256,
        .max_row_len = 8192,
        .max_pairs = 65536,
        .max_chunk_bytes = 4u << 20,
        .max_tensor_bytes = UINT64_C(4) << 30,
        .max_string = 256,
    };
}

/* What a sender's own message is checked against: consistency only. */
static const wire_limits_t unlimited = {
    UINT32_MAX, UINT64_MAX, UINT32_MAX, UINT32_MAX, UINT32_MAX, UINT32_MAX,
    UINT32_MAX, UINT32_MAX, UINT32_MAX, UINT64_MAX, UINT32_MAX,
};

const char *wire_kind_name(int kind)
{
    static const char *const names[WIRE_KIND_COUNT] = {
        "NONE", "HELLO", "WELCOME", "ASSIGN", "SHARD_CHUNK", "READY",
        "FORWARD", "RESULT", "HEARTBEAT", "ERROR", "STATS",
    };
    return kind >= 0 && kind < WIRE_KIND_COUNT ? names[kind] : "?";
}

/* ---------------------------------------------------------------- ownership */

static void *budget_alloc(void *data, size_t n)
{
    budget_t *b = data;
    if (n > b->max - b->used) return NULL; /* protobuf-c turns this into an unpack failure */
    /* 16 bytes of prefix keep the size for free and the block aligned for any field. */
    unsigned char *p = malloc(n + 16);
    if (!p) return NULL;
    memcpy(p, &n, sizeof(n));
    b->used += n;
    return p + 16;
}

static void budget_free(void *data, void *ptr)
{
    if (!ptr) return;
    budget_t *b = data;
    unsigned char *p = (unsigned char *)ptr - 16;
    size_t n;
    memcpy(&n, p, sizeof(n));
    b->used -= n;
    free(p);
}

static wire__msg_own_t *own_get(wire_msg_t *m)
{
    if (!m->own) {
        m->own = xcalloc(1, sizeof(*m->own));
        m->own->alloc = (ProtobufCAllocator){budget_alloc, budget_free, &m->own->budget};
    }
    return m->own;
}

void wire_msg_init(wire_msg_t *m, wire_kind_t kind)
{
    memset(m, 0, sizeof(*m));
    m->kind = kind;
}

void wire_msg_deinit(wire_msg_t *m)
{
    if (!m) return;
    wire__msg_own_t *o = m->own;
    if (o) {
        for (int i = 0; i < o->n_frames; i++) zmq_msg_close(&o->frames[i]);
        for (int i = 0; i < WIRE_MAX_TENSORS; i++) free(o->copies[i]);
        if (o->env) moemesh__envelope__free_unpacked(o->env, &o->alloc);
        free(o);
    }
    wire_msg_init(m, WIRE_KIND_NONE);
}

static void free_default(void *data, void *hint)
{
    (void)hint;
    free(data);
}

/* Expected bytes of a tensor; UINT64_MAX (matches nothing) when the shape cannot exist. */
static uint64_t tensor_bytes(int dtype, uint32_t rows, uint32_t cols)
{
    uint64_t rb = wire_dtype_row_bytes(dtype, cols);
    if (rb == 0 && cols != 0) return UINT64_MAX;
    if (rb != 0 && rows > UINT64_MAX / rb) return UINT64_MAX;
    return rb * rows;
}

int wire_msg_add_tensor(wire_msg_t *m, wire_dtype_t dtype, uint32_t rows, uint32_t cols,
                        void *data, size_t bytes, wire_free_cb *free_cb, void *hint)
{
    if (!free_cb) free_cb = free_default;
    int err = 0;
    if ((int)dtype < 0 || dtype >= WIRE_DTYPE_COUNT) err = WIRE_E_DTYPE;
    else if (cols != 0 && wire_dtype_row_bytes(dtype, cols) == 0) err = WIRE_E_DTYPE;
    else if (tensor_bytes(dtype, rows, cols) != bytes) err = WIRE_E_SIZE;
    else if (m->n_tensors >= WIRE_MAX_TENSORS) err = WIRE_E_FRAMES;
    if (err) {
        free_cb(data, hint);
        return err;
    }
    wire__msg_own_t *o = own_get(m);
    zmq_msg_t *f = &o->frames[o->n_frames];
    if (bytes == 0) {
        /* An empty frame needs no buffer; give the caller's back now. */
        free_cb(data, hint);
        zmq_msg_init(f);
    } else if (zmq_msg_init_data(f, data, bytes, free_cb, hint) != 0) {
        /* Only fails allocating its small control block: out of memory, as xmalloc does. */
        CHECK(!"zmq_msg_init_data failed");
    }
    o->n_frames++;
    m->tensors[m->n_tensors++] = (wire_tensor_t){dtype, rows, cols, zmq_msg_data(f), bytes};
    return 0;
}

int wire_msg_add_act(wire_msg_t *m, wire_dtype_t dtype, const float *x, uint32_t rows,
                     uint32_t cols)
{
    uint64_t bytes = tensor_bytes(dtype, rows, cols);
    if (dtype == WIRE_DTYPE_BYTES || bytes == UINT64_MAX) return WIRE_E_DTYPE;
    void *buf = xmalloc_aligned(64, bytes);
    int err = wire_act_pack(dtype, x, rows, cols, buf, bytes);
    if (err) {
        free(buf);
        return err;
    }
    return wire_msg_add_tensor(m, dtype, rows, cols, buf, bytes, NULL, NULL);
}

/* ---------------------------------------------------------------- checks */

static bool is_act_dtype(int dt) { return dt >= WIRE_DTYPE_F32 && dt < WIRE_DTYPE_COUNT; }

static int check_pairs(uint32_t n, const uint32_t *layer, const uint32_t *expert,
                       const wire_limits_t *lim)
{
    if (n > lim->max_pairs) return WIRE_E_LIMIT;
    if (n && (!layer || !expert)) return WIRE_E_FIELD;
    for (uint32_t i = 0; i < n; i++) {
        if (layer[i] >= lim->max_layer || expert[i] >= lim->max_expert_id) return WIRE_E_LIMIT;
    }
    return 0;
}

static int check_string(const char *s, const wire_limits_t *lim)
{
    return s && strlen(s) > lim->max_string ? WIRE_E_LIMIT : 0;
}

/* The activation tensor of FORWARD/RESULT: n_tokens rows of an activation dtype. */
static int check_act(const wire_msg_t *m, uint32_t n_tokens, const wire_limits_t *lim)
{
    if (m->n_tensors != 1) return WIRE_E_FRAMES;
    const wire_tensor_t *t = &m->tensors[0];
    if (!is_act_dtype(t->dtype)) return WIRE_E_DTYPE;
    if (t->rows != n_tokens) return WIRE_E_FIELD;
    if (t->cols == 0) return WIRE_E_FIELD;
    if (t->cols > lim->max_row_len) return WIRE_E_LIMIT;
    return 0;
}

/* Everything about a message that does not depend on protobuf: counts, ranges, shapes. The
 * tensors' byte sizes are already known to match their shapes. */
static int check_msg(const wire_msg_t *m, const wire_limits_t *lim)
{
    int err;
    switch (m->kind) {
    case WIRE_KIND_HELLO:
    case WIRE_KIND_WELCOME: {
        const wire_hello_t *h = &m->u.hello;
        if ((err = check_string(h->name, lim))) return err;
        if ((err = check_string(h->model, lim))) return err;
        if ((err = check_pairs(h->n_pairs, h->layer, h->expert, lim))) return err;
        return m->n_tensors ? WIRE_E_FRAMES : 0;
    }
    case WIRE_KIND_ASSIGN: {
        const wire_assign_t *a = &m->u.assign;
        if ((err = check_string(a->model, lim))) return err;
        if (a->n_layers > lim->max_layer || a->n_experts > lim->max_expert_id)
            return WIRE_E_LIMIT;
        if (a->n_embd > lim->max_row_len) return WIRE_E_LIMIT;
        if ((err = check_pairs(a->n_pairs, a->layer, a->expert, lim))) return err;
        return m->n_tensors ? WIRE_E_FRAMES : 0;
    }
    case WIRE_KIND_SHARD_CHUNK: {
        const wire_shard_chunk_t *c = &m->u.chunk;
        if ((err = check_string(c->tensor, lim))) return err;
        if (m->n_tensors != 1) return WIRE_E_FRAMES;
        const wire_tensor_t *t = &m->tensors[0];
        if (t->dtype != WIRE_DTYPE_BYTES) return WIRE_E_DTYPE;
        if (t->rows != 1) return WIRE_E_FIELD;
        if (t->cols > lim->max_chunk_bytes || c->total > lim->max_tensor_bytes)
            return WIRE_E_LIMIT;
        if (c->layer >= lim->max_layer || c->expert >= lim->max_expert_id) return WIRE_E_LIMIT;
        if ((int)c->kind < 0 || c->kind >= WIRE_SHARD_KIND_COUNT) return WIRE_E_FIELD;
        if (c->offset > c->total || t->cols > c->total - c->offset) return WIRE_E_FIELD;
        return 0;
    }
    case WIRE_KIND_FORWARD: {
        const wire_forward_t *f = &m->u.forward;
        if (f->n_tokens > lim->max_tokens) return WIRE_E_LIMIT;
        if (f->layer >= lim->max_layer) return WIRE_E_LIMIT;
        if (!is_act_dtype(f->result_dtype)) return WIRE_E_DTYPE;
        if (f->n_tokens && !f->n_sel) return WIRE_E_FIELD;
        if (f->n_total && (!f->expert || !f->gate)) return WIRE_E_FIELD;
        uint64_t sum = 0;
        for (uint32_t t = 0; t < f->n_tokens; t++) {
            if (f->n_sel[t] > lim->max_experts_per_tok) return WIRE_E_LIMIT;
            sum += f->n_sel[t];
        }
        if (sum != f->n_total) return WIRE_E_FIELD;
        for (uint32_t i = 0; i < f->n_total; i++) {
            if (f->expert[i] >= lim->max_expert_id) return WIRE_E_LIMIT;
            if (!isfinite(f->gate[i])) return WIRE_E_FIELD;
        }
        return check_act(m, f->n_tokens, lim);
    }
    case WIRE_KIND_RESULT:
        if (m->u.result.n_tokens > lim->max_tokens) return WIRE_E_LIMIT;
        if (m->u.result.layer >= lim->max_layer) return WIRE_E_LIMIT;
        return check_act(m, m->u.result.n_tokens, lim);
    case WIRE_KIND_ERROR:
        if ((err = check_string(m->u.error.message, lim))) return err;
        return m->n_tensors ? WIRE_E_FRAMES : 0;
    case WIRE_KIND_READY:
    case WIRE_KIND_HEARTBEAT:
    case WIRE_KIND_STATS: return m->n_tensors ? WIRE_E_FRAMES : 0;
    default: return WIRE_E_KIND;
    }
}

/* ---------------------------------------------------------------- C -> protobuf */

/* Stack storage for one header being packed: pointers in env refer to these and to the
 * caller's arrays, which protobuf-c only reads. */
typedef struct {
    Moemesh__Envelope env;
    Moemesh__Tensor tensors[WIRE_MAX_TENSORS];
    Moemesh__Tensor *tensor_ptrs[WIRE_MAX_TENSORS];
    union {
        Moemesh__Hello hello;
        Moemesh__Assign assign;
        Moemesh__ShardChunk chunk;
        Moemesh__Ready ready;
        Moemesh__Forward forward;
        Moemesh__Result result;
        Moemesh__Heartbeat heartbeat;
        Moemesh__Error error;
        Moemesh__Stats stats;
    } b;
} pb_out_t;

/* protobuf-c declares arrays and strings non-const but never writes them when packing. */
#define RO(p) ((void *)(uintptr_t)(p))

static void hello_to_pb(const wire_hello_t *h, Moemesh__Hello *p)
{
    moemesh__hello__init(p);
    p->name = RO(h->name ? h->name : "");
    p->has_cores = p->has_mem_bytes = p->has_dtypes = 1;
    p->cores = h->cores;
    p->mem_bytes = h->mem_bytes;
    p->dtypes = h->dtypes;
    p->n_layer = p->n_expert = h->n_pairs;
    p->layer = RO(h->layer);
    p->expert = RO(h->expert);
    p->model = RO(h->model ? h->model : "");
    p->has_capacity = h->capacity > 0;
    p->capacity = h->capacity;
}

static void to_pb(const wire_msg_t *m, pb_out_t *o)
{
    Moemesh__Envelope *e = &o->env;
    moemesh__envelope__init(e);
    e->version = WIRE_PROTO_VERSION;
    for (int i = 0; i < m->n_tensors; i++) {
        Moemesh__Tensor *t = &o->tensors[i];
        moemesh__tensor__init(t);
        t->has_dtype = t->has_rows = t->has_cols = 1;
        t->dtype = (Moemesh__Dtype)m->tensors[i].dtype;
        t->rows = m->tensors[i].rows;
        t->cols = m->tensors[i].cols;
        o->tensor_ptrs[i] = t;
    }
    e->n_tensors = (size_t)m->n_tensors;
    e->tensors = o->tensor_ptrs;

    switch (m->kind) {
    case WIRE_KIND_HELLO:
        hello_to_pb(&m->u.hello, &o->b.hello);
        e->body_case = MOEMESH__ENVELOPE__BODY_HELLO;
        e->hello = &o->b.hello;
        break;
    case WIRE_KIND_WELCOME:
        hello_to_pb(&m->u.hello, &o->b.hello);
        e->body_case = MOEMESH__ENVELOPE__BODY_WELCOME;
        e->welcome = &o->b.hello;
        break;
    case WIRE_KIND_ASSIGN: {
        const wire_assign_t *a = &m->u.assign;
        Moemesh__Assign *p = &o->b.assign;
        moemesh__assign__init(p);
        p->model = RO(a->model ? a->model : "");
        p->has_n_layers = p->has_n_experts = 1;
        p->n_layers = a->n_layers;
        p->n_experts = a->n_experts;
        p->n_layer = p->n_expert = a->n_pairs;
        p->layer = RO(a->layer);
        p->expert = RO(a->expert);
        p->has_n_embd = p->has_n_ff = p->has_bytes = 1;
        p->n_embd = a->n_embd;
        p->n_ff = a->n_ff;
        p->bytes = a->bytes;
        p->has_expert_act = a->expert_act != 0;
        p->expert_act = a->expert_act;
        e->body_case = MOEMESH__ENVELOPE__BODY_ASSIGN;
        e->assign = p;
        break;
    }
    case WIRE_KIND_SHARD_CHUNK: {
        const wire_shard_chunk_t *c = &m->u.chunk;
        Moemesh__ShardChunk *p = &o->b.chunk;
        moemesh__shard_chunk__init(p);
        p->tensor = RO(c->tensor ? c->tensor : "");
        p->has_layer = p->has_expert = p->has_kind = p->has_ggml_type = 1;
        p->has_offset = p->has_total = p->has_crc32c = 1;
        p->layer = c->layer;
        p->expert = c->expert;
        p->kind = (uint32_t)c->kind;
        p->ggml_type = c->ggml_type;
        p->offset = c->offset;
        p->total = c->total;
        p->crc32c = c->crc32c;
        e->body_case = MOEMESH__ENVELOPE__BODY_SHARD_CHUNK;
        e->shard_chunk = p;
        break;
    }
    case WIRE_KIND_READY: {
        Moemesh__Ready *p = &o->b.ready;
        moemesh__ready__init(p);
        p->has_n_experts = p->has_bytes = 1;
        p->n_experts = m->u.ready.n_experts;
        p->bytes = m->u.ready.bytes;
        e->body_case = MOEMESH__ENVELOPE__BODY_READY;
        e->ready = p;
        break;
    }
    case WIRE_KIND_FORWARD: {
        const wire_forward_t *f = &m->u.forward;
        Moemesh__Forward *p = &o->b.forward;
        moemesh__forward__init(p);
        p->has_request_id = p->has_layer = p->has_micro_batch = p->has_n_tokens = 1;
        p->has_result_dtype = 1;
        p->request_id = f->request_id;
        p->layer = f->layer;
        p->micro_batch = f->micro_batch;
        p->n_tokens = f->n_tokens;
        p->n_n_sel = f->n_tokens;
        p->n_sel = RO(f->n_sel);
        p->n_expert = p->n_gate = f->n_total;
        p->expert = RO(f->expert);
        p->gate = RO(f->gate);
        p->result_dtype = (Moemesh__Dtype)f->result_dtype;
        e->body_case = MOEMESH__ENVELOPE__BODY_FORWARD;
        e->forward = p;
        break;
    }
    case WIRE_KIND_RESULT: {
        const wire_result_t *r = &m->u.result;
        Moemesh__Result *p = &o->b.result;
        moemesh__result__init(p);
        p->has_request_id = p->has_layer = p->has_micro_batch = p->has_n_tokens = 1;
        p->has_queue_us = p->has_compute_us = 1;
        p->request_id = r->request_id;
        p->layer = r->layer;
        p->micro_batch = r->micro_batch;
        p->n_tokens = r->n_tokens;
        p->queue_us = r->queue_us;
        p->compute_us = r->compute_us;
        e->body_case = MOEMESH__ENVELOPE__BODY_RESULT;
        e->result = p;
        break;
    }
    case WIRE_KIND_HEARTBEAT: {
        Moemesh__Heartbeat *p = &o->b.heartbeat;
        moemesh__heartbeat__init(p);
        p->has_seq = p->has_time_us = p->has_inflight = 1;
        p->seq = m->u.heartbeat.seq;
        p->time_us = m->u.heartbeat.time_us;
        p->inflight = m->u.heartbeat.inflight;
        e->body_case = MOEMESH__ENVELOPE__BODY_HEARTBEAT;
        e->heartbeat = p;
        break;
    }
    case WIRE_KIND_ERROR: {
        Moemesh__Error *p = &o->b.error;
        moemesh__error__init(p);
        p->has_code = p->has_request_id = 1;
        p->code = m->u.error.code;
        p->message = RO(m->u.error.message ? m->u.error.message : "");
        p->request_id = m->u.error.request_id;
        e->body_case = MOEMESH__ENVELOPE__BODY_ERROR;
        e->error = p;
        break;
    }
    case WIRE_KIND_STATS: {
        const wire_stats_t *s = &m->u.stats;
        Moemesh__Stats *p = &o->b.stats;
        moemesh__stats__init(p);
        p->has_requests = p->has_tokens = p->has_bytes_in = p->has_bytes_out = 1;
        p->has_compute_us = p->has_queue_us = p->has_inflight = 1;
        p->requests = s->requests;
        p->tokens = s->tokens;
        p->bytes_in = s->bytes_in;
        p->bytes_out = s->bytes_out;
        p->compute_us = s->compute_us;
        p->queue_us = s->queue_us;
        p->inflight = s->inflight;
        e->body_case = MOEMESH__ENVELOPE__BODY_STATS;
        e->stats = p;
        break;
    }
    default: CHECK(!"to_pb: kind checked by check_msg");
    }
}

/* ---------------------------------------------------------------- protobuf -> C */

static const char *str_or_empty(const char *s) { return s ? s : ""; }

static int hello_from_pb(const Moemesh__Hello *p, wire_hello_t *h)
{
    if (p->n_layer != p->n_expert || p->n_layer > UINT32_MAX) return WIRE_E_FIELD;
    *h = (wire_hello_t){str_or_empty(p->name), p->cores, p->mem_bytes,
                        p->dtypes & ((1u << WIRE_DTYPE_COUNT) - 1), (uint32_t)p->n_layer,
                        p->layer, p->expert, str_or_empty(p->model), 0};
    /* Anything but a positive finite number means "not measured". */
    if (p->has_capacity && p->capacity > 0 && p->capacity < 1e30f) h->capacity = p->capacity;
    return 0;
}

/* Fills m's kind and body from the unpacked header; presence and array-length checks only,
 * ranges are check_msg's. */
static int from_pb(const Moemesh__Envelope *e, wire_msg_t *m)
{
    switch (e->body_case) {
    case MOEMESH__ENVELOPE__BODY_HELLO:
        m->kind = WIRE_KIND_HELLO;
        return hello_from_pb(e->hello, &m->u.hello);
    case MOEMESH__ENVELOPE__BODY_WELCOME:
        m->kind = WIRE_KIND_WELCOME;
        return hello_from_pb(e->welcome, &m->u.hello);
    case MOEMESH__ENVELOPE__BODY_ASSIGN: {
        const Moemesh__Assign *p = e->assign;
        m->kind = WIRE_KIND_ASSIGN;
        if (p->n_layer != p->n_expert || p->n_layer > UINT32_MAX) return WIRE_E_FIELD;
        m->u.assign = (wire_assign_t){str_or_empty(p->model), p->n_layers, p->n_experts,
                                      (uint32_t)p->n_layer, p->layer, p->expert,
                                      p->n_embd, p->n_ff, p->bytes, p->expert_act};
        return p->expert_act < WIRE_EXPERT_ACT_COUNT ? 0 : WIRE_E_FIELD;
    }
    case MOEMESH__ENVELOPE__BODY_SHARD_CHUNK: {
        const Moemesh__ShardChunk *p = e->shard_chunk;
        m->kind = WIRE_KIND_SHARD_CHUNK;
        if (!p->has_layer || !p->has_expert || !p->has_kind || !p->has_offset ||
            !p->has_total || !p->has_crc32c)
            return WIRE_E_FIELD;
        m->u.chunk = (wire_shard_chunk_t){str_or_empty(p->tensor), p->layer, p->expert,
                                          (wire_shard_kind_t)p->kind, p->ggml_type, p->offset,
                                          p->total, p->crc32c};
        /* A kind beyond the enum must not reach a switch as a valid value. */
        if (p->kind >= WIRE_SHARD_KIND_COUNT) return WIRE_E_FIELD;
        return 0;
    }
    case MOEMESH__ENVELOPE__BODY_READY:
        m->kind = WIRE_KIND_READY;
        m->u.ready = (wire_ready_t){e->ready->n_experts, e->ready->bytes};
        return 0;
    case MOEMESH__ENVELOPE__BODY_FORWARD: {
        const Moemesh__Forward *p = e->forward;
        m->kind = WIRE_KIND_FORWARD;
        m->u.forward.request_id = p->request_id;
        if (!p->has_request_id || !p->has_layer || !p->has_n_tokens || !p->has_result_dtype)
            return WIRE_E_FIELD;
        if (p->n_n_sel != p->n_tokens) return WIRE_E_FIELD;
        if (p->n_expert != p->n_gate || p->n_expert > UINT32_MAX) return WIRE_E_FIELD;
        m->u.forward = (wire_forward_t){p->request_id, p->layer, p->micro_batch, p->n_tokens,
                                        p->n_sel, (uint32_t)p->n_expert, p->expert, p->gate,
                                        (wire_dtype_t)p->result_dtype};
        if (!is_act_dtype(p->result_dtype)) return WIRE_E_DTYPE;
        return 0;
    }
    case MOEMESH__ENVELOPE__BODY_RESULT: {
        const Moemesh__Result *p = e->result;
        m->kind = WIRE_KIND_RESULT;
        m->u.result.request_id = p->request_id;
        if (!p->has_request_id || !p->has_n_tokens) return WIRE_E_FIELD;
        m->u.result = (wire_result_t){p->request_id, p->layer,    p->micro_batch,
                                      p->n_tokens,   p->queue_us, p->compute_us};
        return 0;
    }
    case MOEMESH__ENVELOPE__BODY_HEARTBEAT:
        m->kind = WIRE_KIND_HEARTBEAT;
        m->u.heartbeat = (wire_heartbeat_t){e->heartbeat->seq, e->heartbeat->time_us,
                                            e->heartbeat->inflight};
        return 0;
    case MOEMESH__ENVELOPE__BODY_ERROR:
        m->kind = WIRE_KIND_ERROR;
        if (!e->error->has_code) return WIRE_E_FIELD;
        m->u.error = (wire_error_t){e->error->code, str_or_empty(e->error->message),
                                    e->error->request_id};
        return 0;
    case MOEMESH__ENVELOPE__BODY_STATS: {
        const Moemesh__Stats *p = e->stats;
        m->kind = WIRE_KIND_STATS;
        m->u.stats = (wire_stats_t){p->requests,   p->tokens,   p->bytes_in, p->bytes_out,
                                    p->compute_us, p->queue_us, p->inflight};
        return 0;
    }
    default: return WIRE_E_KIND;
    }
}

/* ---------------------------------------------------------------- send / recv */

static bool is_router(void *sock)
{
    int type = 0;
    size_t len = sizeof(type);
    return zmq_getsockopt(sock, ZMQ_TYPE, &type, &len) == 0 && type == ZMQ_ROUTER;
}

int wire_msg_send(void *sock, wire_msg_t *m)
{
    int err = check_msg(m, &unlimited);
    bool router = is_router(sock);
    if (!err && router && m->route.len == 0) err = WIRE_E_ROUTE;
    if (err) {
        wire_msg_deinit(m);
        return err;
    }

    pb_out_t pb;
    to_pb(m, &pb);
    zmq_msg_t hdr;
    size_t hdr_len = moemesh__envelope__get_packed_size(&pb.env);
    CHECK(zmq_msg_init_size(&hdr, hdr_len) == 0);
    CHECK(moemesh__envelope__pack(&pb.env, zmq_msg_data(&hdr)) == hdr_len);

    /* ZeroMQ delivers multipart messages atomically, and once the first frame is queued the
     * rest are too (the HWM is checked at message boundaries), so a failure is almost always
     * at the first frame, and nothing reaches the peer. */
    int rc = 0;
    if (router) rc = zmq_send(sock, m->route.id, m->route.len, ZMQ_SNDMORE);
    if (rc >= 0) rc = zmq_msg_send(&hdr, sock, m->n_tensors ? ZMQ_SNDMORE : 0);
    for (int i = 0; rc >= 0 && i < m->n_tensors; i++)
        rc = zmq_msg_send(&m->own->frames[i], sock, i + 1 < m->n_tensors ? ZMQ_SNDMORE : 0);
    err = rc < 0 ? -zmq_errno() : 0;
    zmq_msg_close(&hdr);
    wire_msg_deinit(m); /* closes the frames not sent; sent ones are already empty */
    return err;
}

/* Receives the rest of a multipart message and drops it, so the next recv starts at a
 * message boundary. Each part is bounded by ZMQ_MAXMSGSIZE and freed at once. */
static void drain(void *sock)
{
    int more = 1;
    size_t len = sizeof(more);
    while (zmq_getsockopt(sock, ZMQ_RCVMORE, &more, &len) == 0 && more) {
        zmq_msg_t f;
        zmq_msg_init(&f);
        int rc = zmq_msg_recv(&f, sock, 0);
        zmq_msg_close(&f);
        if (rc < 0) break;
    }
}

static bool rcvmore(void *sock)
{
    int more = 0;
    size_t len = sizeof(more);
    return zmq_getsockopt(sock, ZMQ_RCVMORE, &more, &len) == 0 && more;
}

static size_t dtype_align(int dt)
{
    /* f32 is read as float; f16/bf16 and q8_0's fp16 scales as uint16_t. */
    return dt == WIRE_DTYPE_F32 ? 4 : dt == WIRE_DTYPE_BYTES ? 1 : 2;
}

/* Checks the tensor descriptors against the frames and points m->tensors at the data. */
static int bind_tensors(const Moemesh__Envelope *e, wire_msg_t *m)
{
    wire__msg_own_t *o = m->own;
    if (e->n_tensors != (size_t)o->n_frames) return WIRE_E_FRAMES;
    for (int i = 0; i < o->n_frames; i++) {
        const Moemesh__Tensor *t = e->tensors[i];
        if (!t->has_dtype || !t->has_rows || !t->has_cols) return WIRE_E_FIELD;
        int dt = (int)t->dtype;
        if (dt < 0 || dt >= WIRE_DTYPE_COUNT) return WIRE_E_DTYPE;
        if (t->cols != 0 && wire_dtype_row_bytes(dt, t->cols) == 0) return WIRE_E_DTYPE;
        size_t got = zmq_msg_size(&o->frames[i]);
        if (tensor_bytes(dt, t->rows, t->cols) != got) return WIRE_E_SIZE;
        const void *data = zmq_msg_data(&o->frames[i]);
        /* ZeroMQ may deliver a frame at any offset inside its receive buffer. */
        if ((uintptr_t)data % dtype_align(dt) != 0) {
            o->copies[i] = xmalloc_aligned(64, got);
            memcpy(o->copies[i], data, got);
            data = o->copies[i];
        }
        m->tensors[i] = (wire_tensor_t){(wire_dtype_t)dt, t->rows, t->cols, data, got};
    }
    m->n_tensors = o->n_frames;
    return 0;
}

/* Reads every frame of one message: identity (ROUTER), header, tensors. Frames beyond what
 * a message can hold are drained and reported. */
static int recv_frames(void *sock, const wire_limits_t *lim, wire_msg_t *m, zmq_msg_t *hdr)
{
    if (is_router(sock)) {
        zmq_msg_t id;
        zmq_msg_init(&id);
        if (zmq_msg_recv(&id, sock, 0) < 0) {
            zmq_msg_close(&id);
            return -zmq_errno();
        }
        size_t n = zmq_msg_size(&id);
        if (n >= 1 && n <= sizeof(m->route.id)) {
            m->route.len = (uint8_t)n;
            memcpy(m->route.id, zmq_msg_data(&id), n);
        }
        zmq_msg_close(&id);
        if (m->route.len == 0) {
            drain(sock);
            return WIRE_E_ROUTE;
        }
        if (!rcvmore(sock)) return WIRE_E_FRAMES;
        if (zmq_msg_recv(hdr, sock, 0) < 0) return -zmq_errno();
    } else if (zmq_msg_recv(hdr, sock, 0) < 0) {
        return -zmq_errno();
    }

    wire__msg_own_t *o = own_get(m);
    int err = 0;
    while (rcvmore(sock)) {
        if (o->n_frames == WIRE_MAX_TENSORS) {
            drain(sock);
            return WIRE_E_FRAMES;
        }
        zmq_msg_t *f = &o->frames[o->n_frames];
        zmq_msg_init(f);
        o->n_frames++;
        if (zmq_msg_recv(f, sock, 0) < 0) return -zmq_errno();
        if (zmq_msg_size(f) > lim->max_frame_bytes) err = WIRE_E_LIMIT;
    }
    if (!err && zmq_msg_size(hdr) > lim->max_header_bytes) err = WIRE_E_LIMIT;
    return err;
}

int wire_msg_recv(void *sock, const wire_limits_t *lim, wire_msg_t *out)
{
    wire_limits_t def;
    if (!lim) {
        def = wire_limits_default();
        lim = &def;
    }
    wire_msg_init(out, WIRE_KIND_NONE);
    zmq_msg_t hdr;
    zmq_msg_init(&hdr);
    int err = recv_frames(sock, lim, out, &hdr);
    if (err == -EAGAIN && out->route.len == 0 && !out->own) {
        zmq_msg_close(&hdr);
        return err; /* nothing arrived: not a bad message */
    }

    Moemesh__Envelope *e = NULL;
    if (!err) {
        wire__msg_own_t *o = own_get(out);
        size_t n = zmq_msg_size(&hdr);
        o->budget.max = n * BUDGET_PER_HEADER_BYTE + BUDGET_BASE;
        e = moemesh__envelope__unpack(&o->alloc, n, zmq_msg_data(&hdr));
        o->env = e;
        if (!e) err = WIRE_E_PROTO;
    }
    zmq_msg_close(&hdr);
    /* The Error body is frozen across versions, so a peer refusing our version is heard. */
    if (!err && e->version != WIRE_PROTO_VERSION && e->body_case != MOEMESH__ENVELOPE__BODY_ERROR)
        err = WIRE_E_VERSION;
    if (!err) err = from_pb(e, out);
    if (!err) err = bind_tensors(e, out);
    if (!err) err = check_msg(out, lim);
    if (err) {
        /* Keep what an ERROR reply needs: the sender and the request it was about. */
        wire_route_t route = out->route;
        uint64_t request_id = out->kind == WIRE_KIND_FORWARD  ? out->u.forward.request_id
                              : out->kind == WIRE_KIND_RESULT ? out->u.result.request_id
                                                              : 0;
        wire_msg_deinit(out);
        out->route = route;
        out->u.error.code = err;
        out->u.error.request_id = request_id;
    }
    return err;
}
