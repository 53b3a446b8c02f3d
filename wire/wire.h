/* wire — what every moemesh process shares below the model: logging, checked allocation and
 * bug assertions today; the protobuf-c wire protocol and ZeroMQ framing join it with expert
 * parallelism. Nothing here depends on model/, kernels/ or the programs above it.
 */
#ifndef MOEMESH_WIRE_H
#define MOEMESH_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- logging (wire/log.c) ----
 * One line per event on stderr, written with a single write(2) so threads never interleave:
 * `2026-08-21T10:04:05.123Z W coord on_request: message`. */
typedef enum {
    WIRE_LOG_ERROR = 0,
    WIRE_LOG_WARN,
    WIRE_LOG_INFO,
    WIRE_LOG_DEBUG,
    WIRE_LOG_COUNT
} wire_log_level_t;

extern int wire__log_level; /* read by the macros; set with wire_log_set_level */

/* Sets the least important level printed (default WIRE_LOG_INFO). */
void wire_log_set_level(wire_log_level_t level);
/* Parses "error|warn|info|debug"; returns 0 or -EINVAL leaving the level unchanged. */
int wire_log_set_level_name(const char *name);
/* Names this process in every line ("coord", "xnode-3"); the string is copied (max 31 bytes). */
void wire_log_set_role(const char *role);
/* Formats and writes one line; use the LOG_* macros, which test the level first. */
void wire_log_write(wire_log_level_t level, const char *func, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define WIRE__LOG(lvl, ...)                                                                        \
    do {                                                                                           \
        if ((int)(lvl) <= wire__log_level) wire_log_write((lvl), __func__, __VA_ARGS__);           \
    } while (0)
#define LOG_ERR(...)   WIRE__LOG(WIRE_LOG_ERROR, __VA_ARGS__)
#define LOG_WARN(...)  WIRE__LOG(WIRE_LOG_WARN, __VA_ARGS__)
#define LOG_INFO(...)  WIRE__LOG(WIRE_LOG_INFO, __VA_ARGS__)
#define LOG_DEBUG(...) WIRE__LOG(WIRE_LOG_DEBUG, __VA_ARGS__)

/* ---- bug assertions ----
 * Always compiled in; for broken invariants only. Outside input never reaches CHECK. */
#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) wire__check_failed(__FILE__, __LINE__, #cond);                                \
    } while (0)
_Noreturn void wire__check_failed(const char *file, int line, const char *what);

/* ---- allocation (wire/alloc.c) ----
 * Out of memory aborts here, so no call chain carries -ENOMEM. Sizes that come from outside
 * input must be validated before they reach these. xmalloc_aligned memory is freed with free(). */
void *xmalloc(size_t n);
void *xcalloc(size_t count, size_t size);
void *xrealloc(void *p, size_t n);
void *xmalloc_aligned(size_t align, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);

/* ---- errors ----
 * Fallible functions return 0 or a negated errno; this names either (static string). */
const char *wire_strerror(int err);

/* Seconds from a monotonic clock, for timings. */
double wire_now(void);

/* ======================================================================================
 * Expert-parallel protocol (wire/err.c, act.c, msg.c, sock.c, curve.c, zap.c).
 * Messages are ZeroMQ multipart: a protobuf header frame, then raw tensor frames; the schema
 * and the message flow are described at the top of wire/proto/moemesh.proto.
 * ====================================================================================== */

/* ---- error codes (wire/err.c) ----
 * Project codes live in [WIRE_E_FIRST, WIRE_E_LAST], far below any negated errno;
 * wire_strerror names them as well as errnos. A message that fails validation yields one of
 * these; the receiver answers ERROR with the code and the socket stays usable. */
enum {
    WIRE_E_FIRST = -10099,
    WIRE_E_PROTO = WIRE_E_FIRST, /* header frame is not a valid protobuf Envelope */
    WIRE_E_VERSION,              /* peer speaks another protocol version */
    WIRE_E_KIND,                 /* unknown or missing message kind */
    WIRE_E_FRAMES,               /* frame count differs from what the header declares */
    WIRE_E_SIZE,                 /* tensor frame bytes differ from its declared shape */
    WIRE_E_LIMIT,                /* a count, size or shape exceeds the configured limits */
    WIRE_E_FIELD,                /* a field is missing or inconsistent with another */
    WIRE_E_DTYPE,                /* unknown dtype, or one this shape cannot use (q8_0) */
    WIRE_E_ROUTE,                /* ROUTER message without a usable routing identity */
    WIRE_E_CHECKSUM,             /* shard data does not match its CRC-32C */
    WIRE_E_LAST = WIRE_E_CHECKSUM
};

#define WIRE_PROTO_VERSION 1

/* ---- dtypes and activation codecs (wire/act.c) ----
 * How a tensor frame encodes its elements. Activations are f32 in memory; on the wire they
 * may be rounded to f16/bf16 (2 bytes) or q8_0 (34 bytes per 32, ~1.06 bytes per element). */
typedef enum {
    WIRE_DTYPE_BYTES = 0, /* opaque bytes (shard data); a row of n is n bytes */
    WIRE_DTYPE_F32,
    WIRE_DTYPE_F16,
    WIRE_DTYPE_BF16,
    WIRE_DTYPE_Q8_0, /* row length a multiple of 32 */
    WIRE_DTYPE_COUNT
} wire_dtype_t;

/* "f32", "q8_0"...; "?" for values out of range. */
const char *wire_dtype_name(int dt);
/* Parses a dtype name; returns 0 or -EINVAL. */
int wire_dtype_parse(const char *name, wire_dtype_t *out);
/* Bytes of one row of n elements of dt; 0 when dt is unknown or cannot encode n elements
 * (q8_0 with n not a multiple of 32) or the size would not fit in 2^62. */
uint64_t wire_dtype_row_bytes(int dt, uint64_t n);
/* dst (n_rows rows of dt) = x (n_rows, row_len). dst_bytes must be exactly
 * n_rows * wire_dtype_row_bytes(dt, row_len). Returns 0, WIRE_E_DTYPE (BYTES, or q8_0 with
 * row_len % 32), WIRE_E_SIZE, or -ERANGE when a value is not finite or beyond what f16/q8_0
 * can hold (|x| > 65504, or 65504 * 127 for q8_0): an inf on the wire would poison a sequence. */
int wire_act_pack(wire_dtype_t dt, const float *x, uint32_t n_rows, uint32_t row_len, void *dst,
                  size_t dst_bytes);
/* x (n_rows, row_len) = src (n_rows rows of dt) as f32; src_bytes must match exactly, src
 * aligned for dt (wire_msg_recv guarantees it). Returns 0, WIRE_E_DTYPE or WIRE_E_SIZE. */
int wire_act_unpack(wire_dtype_t dt, const void *src, size_t src_bytes, uint32_t n_rows,
                    uint32_t row_len, float *x);

/* ---- CRC-32C (wire/crc32c.c) ----
 * Castagnoli CRC (iSCSI, ext4): crc = wire_crc32c(0, p, n) for a whole buffer, or feed chunks
 * in order with the previous value. Table-driven, no SSE4.2 requirement. */
uint32_t wire_crc32c(uint32_t crc, const void *data, size_t n);

/* ---- limits (wire/msg.c) ----
 * Everything a peer can make us hold or loop over is bounded by these, checked before use. */
typedef struct {
    uint32_t max_header_bytes;    /* frame 0 (protobuf) */
    uint64_t max_frame_bytes;     /* any frame; also set as ZMQ_MAXMSGSIZE by wire/sock.c */
    uint32_t max_tokens;          /* tokens per FORWARD/RESULT */
    uint32_t max_experts_per_tok; /* experts of one token on one node */
    uint32_t max_expert_id;       /* expert ids are < this */
    uint32_t max_layer;           /* layer ids are < this */
    uint32_t max_row_len;         /* elements per activation row */
    uint32_t max_pairs;           /* (layer, expert) pairs in HELLO/WELCOME/ASSIGN */
    uint32_t max_chunk_bytes;     /* shard bytes in one SHARD_CHUNK */
    uint64_t max_tensor_bytes;    /* total of one shard tensor */
    uint32_t max_string;          /* bytes of any string field */
} wire_limits_t;

/* Defaults sized for today's MoE models (row 8192, 256 experts, 128 layers, 1 MiB chunks,
 * 2048 tokens per FORWARD); max_frame_bytes covers 2048 f32 rows of 8192 plus slack. */
wire_limits_t wire_limits_default(void);

/* ---- messages (wire/msg.c) ---- */
typedef enum {
    WIRE_KIND_NONE = 0,
    WIRE_KIND_HELLO,
    WIRE_KIND_WELCOME,
    WIRE_KIND_ASSIGN,
    WIRE_KIND_SHARD_CHUNK,
    WIRE_KIND_READY,
    WIRE_KIND_FORWARD,
    WIRE_KIND_RESULT,
    WIRE_KIND_HEARTBEAT,
    WIRE_KIND_ERROR,
    WIRE_KIND_STATS,
    WIRE_KIND_COUNT
} wire_kind_t;

/* "FORWARD"...; "?" out of range. */
const char *wire_kind_name(int kind);

/* Array and string fields below are borrowed: on send, from the caller for the duration of
 * wire_msg_send; on receive, from the message until wire_msg_deinit. */

/* HELLO (coordinator -> node) and WELCOME (node -> coordinator): who the sender is. */
typedef struct {
    const char *name;         /* NUL-terminated; NULL sends "" */
    uint32_t cores;
    uint64_t mem_bytes;
    uint32_t dtypes;          /* bit (1u << wire_dtype_t) per accepted activation dtype */
    uint32_t n_pairs;
    const uint32_t *layer;    /* (n_pairs): (layer[i], expert[i]) held now */
    const uint32_t *expert;   /* (n_pairs) */
    const char *model;        /* model_fingerprint of the pairs' model; NULL sends "" */
    float capacity;           /* WELCOME: (token, expert) pairs/s on the reference expert
                                 below, measured at start-up; 0: not measured (not sent) */
} wire_hello_t;
/* The reference expert of wire_hello_t.capacity: q8_0 weights, this shape, this many tokens per
 * call. A node's capacity for another shape scales by the multiply-adds per pair (about
 * n_embd * n_ff). */
#define WIRE_CAPACITY_REF_EMBD 1024
#define WIRE_CAPACITY_REF_FF 512
#define WIRE_CAPACITY_REF_TOKENS 8

typedef struct {
    const char *model;        /* model name or file hash */
    uint32_t n_layers, n_experts;
    uint32_t n_pairs;
    const uint32_t *layer;    /* (n_pairs) */
    const uint32_t *expert;   /* (n_pairs) */
    uint32_t n_embd, n_ff;    /* expert shapes (activation row, expert width); 0: not sent */
    uint64_t bytes;           /* weight bytes of the assigned pairs; 0: not sent */
    uint32_t expert_act;      /* wire_expert_act_t; 0 (SwiGLU) is not sent */
} wire_assign_t;

typedef enum {
    WIRE_EXPERT_ACT_SWIGLU = 0,
    WIRE_EXPERT_ACT_SWIGLU_OAI = 1, /* gpt-oss: clamped swiglu_oai, per-expert bias slices */
    WIRE_EXPERT_ACT_COUNT
} wire_expert_act_t;

typedef enum {
    WIRE_SHARD_GATE = 0,
    WIRE_SHARD_UP,
    WIRE_SHARD_DOWN,
    /* gpt-oss only (WIRE_EXPERT_ACT_SWIGLU_OAI): one F32 row per expert, (n_ff), (n_ff),
     * (n_embd), added after the gate, up and down products */
    WIRE_SHARD_GATE_BIAS,
    WIRE_SHARD_UP_BIAS,
    WIRE_SHARD_DOWN_BIAS,
    WIRE_SHARD_KIND_COUNT
} wire_shard_kind_t;

/* One chunk of one expert tensor; the data is tensor 0 (BYTES, 1 row of chunk bytes). */
typedef struct {
    const char *tensor;       /* GGUF tensor name */
    uint32_t layer, expert;
    wire_shard_kind_t kind;
    uint32_t ggml_type;
    uint64_t offset;          /* bytes before this chunk; offset + chunk <= total */
    uint64_t total;           /* bytes of the whole tensor */
    uint32_t crc32c;          /* wire_crc32c of the whole tensor */
} wire_shard_chunk_t;

typedef struct {
    uint32_t n_experts;       /* experts loaded */
    uint64_t bytes;           /* weight bytes held */
} wire_ready_t;

/* The routed-expert step for n_tokens tokens; activations are tensor 0 (n_tokens, row_len). */
typedef struct {
    uint64_t request_id;
    uint32_t layer, micro_batch;
    uint32_t n_tokens;
    const uint32_t *n_sel;    /* (n_tokens): experts selected for token t on this node */
    uint32_t n_total;         /* sum of n_sel */
    const uint32_t *expert;   /* (n_total) token by token */
    const float *gate;        /* (n_total) gate weight of each expert */
    wire_dtype_t result_dtype;
} wire_forward_t;

/* Tensor 0 (n_tokens, row_len): per token, sum over its experts here of gate * expert(x). */
typedef struct {
    uint64_t request_id;
    uint32_t layer, micro_batch;
    uint32_t n_tokens;
    uint32_t queue_us, compute_us;
} wire_result_t;

typedef struct {
    uint64_t seq;
    uint64_t time_us;         /* sender's monotonic clock */
    uint32_t inflight;
} wire_heartbeat_t;

typedef struct {
    int32_t code;             /* WIRE_E_* or a negated errno */
    const char *message;
    uint64_t request_id;      /* 0 when not about a request */
} wire_error_t;

typedef struct {
    uint64_t requests, tokens, bytes_in, bytes_out, compute_us, queue_us;
    uint32_t inflight;
} wire_stats_t;

#define WIRE_MAX_TENSORS 2 /* tensor frames one message may carry */

/* A view of one tensor frame: data is rows * wire_dtype_row_bytes(dtype, cols) bytes, aligned
 * for dtype; valid until wire_msg_deinit (received) or owned by the message (to send). */
typedef struct {
    wire_dtype_t dtype;
    uint32_t rows, cols;
    const void *data;
    size_t bytes;
} wire_tensor_t;

/* ROUTER routing identity (ZeroMQ identities are 1..255 bytes); len 0 on other sockets. */
typedef struct {
    uint8_t len;
    uint8_t id[255];
} wire_route_t;

typedef struct wire__msg_own wire__msg_own_t;

typedef struct {
    wire_kind_t kind;
    wire_route_t route;       /* set by recv on ROUTER; required by send on ROUTER */
    union {
        wire_hello_t hello;   /* HELLO and WELCOME */
        wire_assign_t assign;
        wire_shard_chunk_t chunk;
        wire_ready_t ready;
        wire_forward_t forward;
        wire_result_t result;
        wire_heartbeat_t heartbeat;
        wire_error_t error;
        wire_stats_t stats;
    } u;
    int n_tensors;
    wire_tensor_t tensors[WIRE_MAX_TENSORS];
    wire__msg_own_t *own;     /* frames, unpacked header, aligned copies; NULL when none */
} wire_msg_t;

/* Empties *m and sets its kind; every other field 0. Owns nothing yet. */
void wire_msg_init(wire_msg_t *m, wire_kind_t kind);
/* Releases the frames, header and copies m owns (received or attached, never sent) and
 * empties it. NULL-safe, idempotent. */
void wire_msg_deinit(wire_msg_t *m);

/* Frees a tensor buffer; runs on a ZeroMQ I/O thread, so it only frees. */
typedef void(wire_free_cb)(void *data, void *hint);

/* Attaches data (rows, cols of dtype, bytes exactly rows * row_bytes) as the next tensor frame,
 * zero-copy. Always consumes data: it is handed to free_cb(data, hint) when ZeroMQ is done with
 * it, or at once on failure (free_cb NULL: free(), for xmalloc/xmalloc_aligned buffers). Returns
 * 0, WIRE_E_DTYPE, WIRE_E_SIZE, or WIRE_E_FRAMES when WIRE_MAX_TENSORS are attached already. */
int wire_msg_add_tensor(wire_msg_t *m, wire_dtype_t dtype, uint32_t rows, uint32_t cols,
                        void *data, size_t bytes, wire_free_cb *free_cb, void *hint);
/* Packs x (rows, cols) as dtype into a new buffer and attaches it (wire_act_pack's errors). */
int wire_msg_add_act(wire_msg_t *m, wire_dtype_t dtype, const float *x, uint32_t rows,
                     uint32_t cols);

/* Sends m on sock (DEALER, ROUTER — addressed by m->route — or PAIR): identity, header frame,
 * tensor frames. Always consumes m: on return m is closed, whatever happened, and unsent frames
 * are released. Blocks as the socket's ZMQ_SNDTIMEO says. The message is checked for
 * consistency first (the receiver's checks without limits). Returns 0, a WIRE_E_* for an
 * inconsistent message, -EAGAIN (HWM reached or timeout), -EHOSTUNREACH (ROUTER: unknown
 * peer), or another negated zmq errno. */
int wire_msg_send(void *sock, wire_msg_t *m);

/* Receives one message into *out (overwritten: need not be initialised, must own nothing): reads
 * every frame of the multipart message, then validates the header and each frame against it
 * and lim (NULL: defaults). Blocks as ZMQ_RCVTIMEO says (0: non-blocking). On 0, *out owns the
 * frames; tensors are in place unless misaligned for their dtype (then copied); release with
 * wire_msg_deinit. On error *out owns nothing, kind is WIRE_KIND_NONE, and it holds what an
 * ERROR reply needs: out->route (ROUTER: the sender), out->u.error.code (the error) and
 * out->u.error.request_id (when the header got that far, else 0). The whole multipart message
 * has been consumed either way, so the socket is ready for the next one.
 * Returns 0, a WIRE_E_* code, -EAGAIN (nothing within the timeout) or another zmq errno. */
int wire_msg_recv(void *sock, const wire_limits_t *lim, wire_msg_t *out);

/* ---- sockets (wire/sock.c) ----
 * Sockets with the options this protocol relies on (reasons in sock.c), neither bound nor
 * connected, so CURVE can be set up first. NULL on failure, reason logged. */
/* The node side: a ROUTER with ZMQ_ROUTER_MANDATORY. */
void *wire_sock_node_new(void *ctx, const wire_limits_t *lim);
/* The coordinator side: one DEALER per node, ZMQ_IMMEDIATE. */
void *wire_sock_coord_new(void *ctx, const wire_limits_t *lim);
/* Binds sock to endpoint and writes the resolved endpoint (ephemeral port filled in) to out
 * (out_len bytes, may be NULL). Returns 0 or a negated errno. */
int wire_sock_bind(void *sock, const char *endpoint, char *out, size_t out_len);
/* Closes sock (linger as set at creation). NULL-safe. */
void wire_sock_close(void *sock);

/* ---- CURVE keys (wire/curve.c) ----
 * Keys are Z85 text (40 characters). A key pair in directory dir is dir/name.pub (0644) and
 * dir/name.key (0400, refused if group/world can read it). */
typedef struct {
    char public_z85[41];
    char secret_z85[41]; /* "" when only the public key was loaded */
} wire_keypair_t;

/* Generates a key pair into dir/name.{pub,key}; never overwrites (-EEXIST). 0 or -errno. */
int wire_curve_keygen(const char *dir, const char *name);
/* Loads dir/name.pub and, when with_secret, dir/name.key. 0, -errno, or -EINVAL for bad
 * contents, -EPERM for a secret readable by group or others. */
int wire_curve_load(const char *dir, const char *name, bool with_secret, wire_keypair_t *kp);
/* Makes sock a CURVE server with kp (secret needed). Call before bind. 0 or -errno. */
int wire_curve_server_setup(void *sock, const wire_keypair_t *kp);
/* Makes sock a CURVE client with kp, trusting server_public_z85. Call before connect. */
int wire_curve_client_setup(void *sock, const wire_keypair_t *kp, const char *server_public_z85);
/* Overwrites the secret so it does not linger in memory. */
void wire_keypair_wipe(wire_keypair_t *kp);

/* ---- ZAP handler (wire/zap.c) ----
 * Authenticates CURVE clients for every socket of one ZeroMQ context: a thread answering
 * inproc://zeromq.zap.01 that accepts only public keys in an allowed set. Create it before
 * binding any CURVE server socket of that context (without a handler ZeroMQ accepts any key). */
typedef struct wire_zap wire_zap_t;
/* allowed: n Z85 public keys (copied). NULL on failure (bad key, endpoint taken), logged. */
wire_zap_t *wire_zap_new(void *ctx, const char *const *allowed, int n);
/* Handshakes accepted and denied so far (read from any thread). */
void wire_zap_counts(const wire_zap_t *zap, uint64_t *accepted, uint64_t *denied);
/* Stops the thread, unbinds the endpoint, frees. NULL-safe. Call before zmq_ctx_term. */
void wire_zap_free(wire_zap_t *zap);

/* ---- network emulation relay (wire/proxy.c) ----
 * A TCP relay on a caller's libuv loop that makes loopback look like a slower network (the
 * kernels here lack netem): every connection accepted on the listen address gets its own
 * connection to the target, and bytes each way leave after a one-way delay (optional jitter) and
 * no faster than a rate cap. Byte order is kept (a chunk never leaves before the one read ahead
 * of it) and so is back-pressure (reading stops while a direction holds ~1 MiB). EOF is passed
 * on as a half-close once the bytes before it have left; a connection closes when both
 * directions have ended, or at once on any error. Everything runs on the loop's thread; the
 * process must ignore SIGPIPE (a peer that resets would otherwise kill it). */
typedef struct {
    const char *listen_host; /* numeric address or name, resolved once by wire_proxy_new */
    int listen_port;         /* 0: ephemeral, read it back with wire_proxy_port */
    const char *target_host;
    int target_port;
    double delay_ms;         /* one-way delay added in each direction, >= 0 */
    double jitter_ms;        /* a chunk's delay is delay_ms + U(-jitter_ms, jitter_ms), >= 0 */
    double rate_mbit;        /* cap per direction in 10^6 bit/s; 0: none */
    uint64_t seed;           /* of the jitter PRNG */
} wire_proxy_config_t;

typedef struct {
    uint64_t to_target;      /* bytes written to target connections */
    uint64_t to_client;      /* bytes written to accepted connections */
    uint64_t accepted;       /* connections accepted so far */
    uint64_t open;           /* connections not yet fully closed */
} wire_proxy_stats_t;

typedef struct wire_proxy wire_proxy_t;
typedef void(wire_proxy_close_cb)(void *arg);
struct uv_loop_s;

/* Resolves both addresses, binds and listens on loop (not yet running is fine). NULL on failure,
 * reason logged; a listener already made is then closing, so run the loop once more before
 * uv_loop_close. The config's strings are copied. */
wire_proxy_t *wire_proxy_new(struct uv_loop_s *loop, const wire_proxy_config_t *cfg);
/* The port really listened on (the ephemeral one when listen_port was 0). */
int wire_proxy_port(const wire_proxy_t *px);
/* Counters so far; bytes count when written to the kernel. */
wire_proxy_stats_t wire_proxy_stats(const wire_proxy_t *px);
/* Stops listening and closes every connection at once (queued bytes are dropped). Consumes px:
 * it is freed when its last handle has closed, then cb(arg) runs (cb may be NULL). */
void wire_proxy_close(wire_proxy_t *px, wire_proxy_close_cb *cb, void *arg);

#endif
