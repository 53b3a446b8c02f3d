/* model — everything about a model file that is not arithmetic: the GGUF container (reader and
 * writer), architectures and their hyper-parameters, the tokenizer and chat templates, and the
 * memory planner that says how experts spread over machines. Sits on kernels/ and wire/.
 */
#ifndef MOEMESH_MODEL_H
#define MOEMESH_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels/kern.h"

/* ---- errors: project codes below -1000, named by model_strerror ---- */
enum {
    MODEL_E_MAGIC = -1001,     /* not a GGUF file */
    MODEL_E_VERSION = -1002,   /* GGUF version other than 2 or 3 */
    MODEL_E_TRUNCATED = -1003, /* a field, string, array or tensor runs past the end */
    MODEL_E_LIMIT = -1004,     /* a count, length or dimension beyond what the file can hold */
    MODEL_E_TYPE = -1005,      /* unknown metadata value type or tensor type */
    MODEL_E_LAYOUT = -1006,    /* misaligned or overlapping tensor data, bad alignment value */
    MODEL_E_DUPLICATE = -1007, /* two keys or two tensors with one name */
    MODEL_E_ARCH = -1008,      /* unsupported architecture or missing/inconsistent tensor */
    MODEL_E_VOCAB = -1009,     /* unsupported or inconsistent tokenizer metadata */
};
/* Text for a model error code or a negated errno (static string). */
const char *model_strerror(int err);

/* ---- GGUF reader (model/gguf.c) ----
 * Memory-maps a GGUF v2/v3 file, validates everything before use, and exposes metadata as
 * typed values and tensors as views into the mapping. Every problem is logged once with the
 * file name and becomes an error code; nothing from the file can cause a crash or an
 * allocation larger than a small multiple of the file's size. */
typedef enum {
    MODEL_GGUF_UINT8 = 0,
    MODEL_GGUF_INT8 = 1,
    MODEL_GGUF_UINT16 = 2,
    MODEL_GGUF_INT16 = 3,
    MODEL_GGUF_UINT32 = 4,
    MODEL_GGUF_INT32 = 5,
    MODEL_GGUF_FLOAT32 = 6,
    MODEL_GGUF_BOOL = 7,
    MODEL_GGUF_STRING = 8,
    MODEL_GGUF_ARRAY = 9,
    MODEL_GGUF_UINT64 = 10,
    MODEL_GGUF_INT64 = 11,
    MODEL_GGUF_FLOAT64 = 12,
    MODEL_GGUF_TYPE_COUNT
} model_gguf_type_t;

typedef struct model_gguf_value model_gguf_value_t;
struct model_gguf_value {
    model_gguf_type_t type;
    union {
        uint64_t u;  /* UINT8..UINT64 */
        int64_t i;   /* INT8..INT64 */
        double f;    /* FLOAT32, FLOAT64 */
        bool b;      /* BOOL */
        struct {
            const char *s; /* NUL-terminated copy; may contain NULs before len */
            uint64_t len;  /* bytes, without the terminator */
        } str;
        struct {
            model_gguf_type_t type; /* element type (ARRAY for nested arrays) */
            uint64_t n;             /* element count */
            model_gguf_value_t *v;  /* (n) elements */
        } arr;
    };
};

typedef struct {
    const char *key;
    model_gguf_value_t val;
} model_gguf_kv_t;

typedef struct {
    const char *name;   /* NUL-terminated */
    kern_type_t type;
    int n_dims;         /* 1..4 */
    int64_t ne[4];      /* ne[0] = elements per row; unused dimensions are 1 */
    uint64_t offset;    /* bytes from the start of the data section */
    size_t nbytes;
    const void *data;   /* inside the mapping; valid until model_gguf_free */
} model_tensor_t;

typedef struct model_gguf model_gguf_t;

/* Opens and validates path; on success *out owns the mapping. Returns 0 or an error code
 * (MODEL_E_* or -errno), with the reason logged naming the file. */
int model_gguf_open(const char *path, model_gguf_t **out);
/* The same on a caller-owned buffer that must outlive the result (fuzzing, tests); name is
 * used in messages. */
int model_gguf_open_mem(const void *buf, size_t len, const char *name, model_gguf_t **out);
void model_gguf_free(model_gguf_t *g); /* NULL-safe */

const char *model_gguf_path(const model_gguf_t *g);
uint32_t model_gguf_version(const model_gguf_t *g);
uint64_t model_gguf_alignment(const model_gguf_t *g);
uint64_t model_gguf_data_offset(const model_gguf_t *g); /* file offset of the data section */
size_t model_gguf_file_size(const model_gguf_t *g);
/* The whole file (model_gguf_file_size bytes); valid until model_gguf_free. */
const void *model_gguf_bytes(const model_gguf_t *g);

int model_gguf_kv_count(const model_gguf_t *g);
const model_gguf_kv_t *model_gguf_kv(const model_gguf_t *g, int i); /* borrowed */
/* Value of key, or NULL when absent. Borrowed, valid until model_gguf_free. */
const model_gguf_value_t *model_gguf_get(const model_gguf_t *g, const char *key);

/* Typed accessors. Each returns false (leaving *out alone) when the key is absent or of an
 * incompatible type: any integer type converts to an integer in range, floats convert from
 * FLOAT32/FLOAT64 and integers. */
bool model_gguf_get_int(const model_gguf_t *g, const char *key, int64_t *out);
bool model_gguf_get_float(const model_gguf_t *g, const char *key, double *out);
bool model_gguf_get_bool(const model_gguf_t *g, const char *key, bool *out);
/* String value or NULL (absent or not a string). Borrowed. */
const char *model_gguf_get_str(const model_gguf_t *g, const char *key);
/* Array value whose elements have type elem (or any type when elem < 0), or NULL. */
const model_gguf_value_t *model_gguf_get_arr(const model_gguf_t *g, const char *key, int elem);
/* Scalar conversions of one value (an array element, say); same rules as above. */
bool model_gguf_value_int(const model_gguf_value_t *v, int64_t *out);
bool model_gguf_value_float(const model_gguf_value_t *v, double *out);
const char *model_gguf_type_name(model_gguf_type_t t);

int model_gguf_tensor_count(const model_gguf_t *g);
const model_tensor_t *model_gguf_tensor(const model_gguf_t *g, int i); /* borrowed */
const model_tensor_t *model_gguf_find_tensor(const model_gguf_t *g, const char *name);

/* ---- GGUF writer (model/gguf_write.c) ----
 * Builds a GGUF v3 file the way llama.cpp's gguf writer lays it out: metadata in the order it
 * was set, tensor infos in the order added, data section and every tensor's data aligned to
 * general.alignment (32 unless set as a u32 power of two), zero padding after each tensor.
 * Tensor bytes are either copied in at add time (small tensors) or pulled from a callback at
 * write time in whole rows, so a multi-gigabyte model is written with bounded memory. */
typedef struct model_gguf_writer model_gguf_writer_t;

model_gguf_writer_t *model_gguf_writer_new(void);
void model_gguf_writer_free(model_gguf_writer_t *w); /* NULL-safe */

/* Metadata setters: key and values are copied; setting a key again replaces its value in place.
 * set_arr takes n elements packed as the file stores them (uint32_t for UINT32, float for
 * FLOAT32, one byte per BOOL...), elem one of the numeric types or BOOL. set_value copies any
 * value, nested arrays included (e.g. one read with model_gguf_get). */
void model_gguf_writer_set_u32(model_gguf_writer_t *w, const char *key, uint32_t v);
void model_gguf_writer_set_i32(model_gguf_writer_t *w, const char *key, int32_t v);
void model_gguf_writer_set_u64(model_gguf_writer_t *w, const char *key, uint64_t v);
void model_gguf_writer_set_f32(model_gguf_writer_t *w, const char *key, float v);
void model_gguf_writer_set_bool(model_gguf_writer_t *w, const char *key, bool v);
void model_gguf_writer_set_str(model_gguf_writer_t *w, const char *key, const char *v);
void model_gguf_writer_set_arr(model_gguf_writer_t *w, const char *key, model_gguf_type_t elem,
                               const void *data, size_t n);
void model_gguf_writer_set_arr_str(model_gguf_writer_t *w, const char *key,
                                   const char *const *v, size_t n);
void model_gguf_writer_set_value(model_gguf_writer_t *w, const char *key,
                                 const model_gguf_value_t *v);

/* Declares a tensor whose bytes the fill callback of model_gguf_writer_write provides.
 * ne: n_dims (1..4) sizes, ne[0] a multiple of type's block. Returns its index (0, 1, ...) or
 * MODEL_E_TYPE (unknown type), MODEL_E_LIMIT (bad dims, overflow), MODEL_E_LAYOUT (ne[0] not
 * whole blocks), MODEL_E_DUPLICATE (name taken). Nothing is logged. */
int model_gguf_writer_add_tensor(model_gguf_writer_t *w, const char *name, kern_type_t type,
                                 int n_dims, const int64_t *ne);
/* The same with its kern_row_bytes(type, ne[0]) * ne[1] * ne[2] * ne[3] bytes copied now. */
int model_gguf_writer_add_tensor_data(model_gguf_writer_t *w, const char *name,
                                      kern_type_t type, int n_dims, const int64_t *ne,
                                      const void *data);
/* Asked for the bytes of tensor (its index) from byte offset off (bytes into the tensor),
 * len bytes, always whole rows, in order. Fills buf (len) and returns 0, or a negative code
 * that aborts the write and is returned by it. */
typedef int (*model_gguf_fill_cb)(void *arg, int tensor, uint64_t off, void *buf, size_t len);
/* Writes the file to path (through path.part, renamed on success, removed on failure). fill
 * may be NULL when every tensor was added with data. Returns 0, -errno (I/O, logged with the
 * path), MODEL_E_LAYOUT (bad general.alignment) or the fill callback's code. */
int model_gguf_writer_write(model_gguf_writer_t *w, const char *path, model_gguf_fill_cb fill,
                            void *arg);

/* ---- llama2.c upcycling (model/upcycle.c, model/cli_upcycle.c; owner: demo) ----
 * Converts a llama2.c legacy (version 0) checkpoint and its tokenizer.bin into a GGUF in
 * llama.cpp's `llama` layout: dense as llama.cpp's llama2c converter writes it, or a Mixtral-
 * style MoE whose experts are copies of the dense FFN with expert e's down projection scaled by
 * scales[e], plus a seeded random F32 router (sd 2/sqrt(dim)). */
typedef struct {
    int n_experts;          /* 0: write the dense model */
    int n_used;             /* experts per token, 1..n_experts (ignored when dense) */
    uint64_t seed;          /* router generator seed */
    const double *scales;   /* (n_experts) down-projection factors; NULL: the defaults */
    const char *name;       /* general.name; NULL: "llama" dense, "<checkpoint stem>-moe" MoE */
    int64_t context_length; /* llama.context_length; 0: the checkpoint's seq_len */
} model_upcycle_params_t;

/* 4 experts, top 2, seed 1, default scales, default name and context. */
model_upcycle_params_t model_upcycle_params_default(void);
/* Default down-projection factor of expert e of n: 0.9/0.97/1.03/1.1 for n = 4, otherwise
 * spread evenly over [0.9, 1.1] (1.0 for n = 1). */
double model_upcycle_default_scale(int e, int n);
/* Writes out from checkpoint and tokenizer. Returns 0 or, with the reason logged naming the
 * file: -errno (I/O), -EINVAL (bad parameters), MODEL_E_VERSION (a llama2.c version-1+ export),
 * MODEL_E_LIMIT (header values absurd or inconsistent), MODEL_E_TRUNCATED (file shorter than
 * its header says), MODEL_E_LAYOUT (file longer than its header says), MODEL_E_VOCAB (tokenizer
 * malformed or not matching the checkpoint's vocabulary). No output file is left on failure. */
int model_upcycle(const char *checkpoint, const char *tokenizer, const char *out,
                  const model_upcycle_params_t *p);
/* `moemesh-model upcycle ...`: argv[0] is "upcycle". Returns the process exit code: 0 done,
 * 1 conversion failed (reason logged), 2 usage error (usage printed to stderr). */
int model_cli_upcycle(int argc, char **argv);

/* ---- memory planner (model/plan.c) ----
 * Accounts a model's weights (routed experts apart from everything else) and spreads the
 * routed experts of every MoE layer over expert nodes, balanced by bytes within each node's
 * memory. The coordinator keeps the rest (embeddings, attention, routers, shared experts,
 * norms, head) and the KV cache. */
typedef struct {
    const char *arch;         /* general.architecture; borrowed from the gguf */
    int n_layers;             /* <arch>.block_count (0 when absent) */
    int n_expert;             /* routed experts per MoE layer; 0 for a dense model */
    int n_expert_used;        /* top-k */
    int64_t n_ctx;            /* <arch>.context_length (0 when absent) */
    uint64_t kv_bytes_per_token; /* f16 K and V over all layers (MLA: latent + rope part) */
    int kv_latent;            /* MLA (deepseek2): values cached per token and layer
                                 (kv_lora_rank + rope dims); 0 for ordinary K/V heads */
    uint64_t shared_bytes;    /* shared-expert weights (`*_shexp`), part of the non-expert */
    uint64_t total_params, expert_params; /* elements; expert = routed `*_exps` tensors */
    uint64_t active_params;   /* non-expert + expert * n_expert_used / n_expert */
    uint64_t total_bytes, expert_bytes;
} model_weights_t;

/* Fills *out from g's metadata and tensors. Never fails: missing keys give zeros. */
void model_weights_info(const model_gguf_t *g, model_weights_t *out);

typedef struct {
    int n_nodes;
    int n_layers, n_expert;
    int replicas;            /* owners of every placed (layer, expert) pair, 1..n_nodes */
    int *owner;              /* (n_layers, n_expert) primary node serving expert e of layer l
                                (owners[.., 0]); -1 when layer l has no routed experts */
    int *owners;             /* (n_layers, n_expert, replicas) the distinct nodes holding expert e
                                of layer l, primary first; all -1 when layer l has none */
    uint64_t *expert_bytes;  /* (n_layers, n_expert) bytes of one copy of expert e of layer l */
    uint64_t *node_bytes;    /* (n_nodes) expert bytes each node holds, replicas included */
    int *node_experts;       /* (n_nodes) number of (layer, expert) pairs each node holds */
    uint64_t coord_weight_bytes; /* everything that is not a routed expert */
    uint64_t coord_kv_bytes;     /* f16 KV cache for n_ctx tokens */
    int64_t n_ctx;
    int *copies;             /* (n_layers, n_expert) owners actually used, 1..replicas: the
                                first copies[i] entries of owners are nodes, the rest -1
                                (model_plan_new_r fills every slot; a balanced plan copies only
                                hot experts) */
    double *share;           /* (n_layers, n_expert, replicas) fraction of the pair's tokens each
                                copy is expected to serve (sums to 1 over the used copies; the
                                plain plans give the primary 1, as calls go to it alone) */
} model_plan_t;

/* Plans n_nodes (>= 1) expert nodes for g, one copy of every expert: model_plan_new_r with
 * replicas = 1. node_mem: (n_nodes) bytes each node may use for experts, or NULL for no limit.
 * n_ctx: tokens of KV cache (<= 0: the model's context length). Returns 0 and *out (owned;
 * model_plan_free), or -EINVAL (bad arguments) or -ENOSPC (the experts do not fit; the reason
 * is logged with the sizes involved). */
int model_plan_new(const model_gguf_t *g, int n_nodes, const uint64_t *node_mem, int64_t n_ctx,
                   model_plan_t **out);
/* As model_plan_new, with every (layer, expert) pair on `replicas` distinct nodes (1 <=
 * replicas <= n_nodes, else -EINVAL with the reason logged), each copy counted against its
 * node's memory. Deterministic: the same arguments give the same plan. */
int model_plan_new_r(const model_gguf_t *g, int n_nodes, const uint64_t *node_mem, int64_t n_ctx,
                     int replicas, model_plan_t **out);
void model_plan_free(model_plan_t *p); /* NULL-safe */

/* Capacity- and load-aware placement (EPLB-style): hot experts get several copies, cold ones
 * are packed, so that every layer's largest node time (load / capacity) is as small as the
 * greedy can make it, within each node's memory. Deterministic. */
typedef struct {
    int n_nodes, n_layers, n_expert;
    const uint64_t *expert_bytes; /* (n_layers, n_expert) one copy's bytes; a layer whose
                                     bytes are all 0 has no routed experts and is skipped */
    const double *load;           /* (n_layers, n_expert) tokens (any unit: each layer is
                                     normalised); NULL or a layer summing to 0: uniform */
    const uint64_t *node_mem;     /* (n_nodes) bytes for experts; NULL: unlimited */
    const double *node_cap;       /* (n_nodes) tokens/s for one expert's shape; NULL or
                                     entries <= 0: all equal */
    int max_replicas;             /* copies allowed per expert, 1..n_nodes */
} model_balance_t;

/* Places the pairs of b (see above): for every layer, each expert is cut into 1..max_replicas
 * equal shares on distinct nodes, shares are dealt largest first to the node whose time
 * (load / capacity) grows least, then the busiest node's largest replicable expert gets one
 * more copy while that lowers the layer's largest time and memory is left for the layers still
 * to place. Returns 0 and *out (owned; its coordinator fields are 0), -EINVAL (bad arguments)
 * or -ENOSPC (the single copies do not fit; logged). */
int model_plan_balance(const model_balance_t *b, model_plan_t **out);
/* model_plan_balance for g's routed experts (bytes as model_plan_new_r counts them); load may
 * be NULL (uniform). n_ctx as in model_plan_new. */
int model_plan_new_load(const model_gguf_t *g, int n_nodes, const uint64_t *node_mem,
                        const double *node_cap, const double *load, int max_replicas,
                        int64_t n_ctx, model_plan_t **out);
/* Re-splits the tokens of every expert with several copies between them for load (as in
 * model_balance_t) so their nodes' times come out as equal as the rest allows: the split a
 * queue-depth chooser (coord_load_choose) converges to on that load. Owners and copies stay;
 * only p->share changes. */
void model_plan_split(model_plan_t *p, const double *load, const double *node_cap);
/* Expected time of node n for layer l under plan p: sum over the copies n holds of
 * share * load[l][e], divided by node_cap[n] (NULL: 1). load as in model_balance_t. */
double model_plan_node_time(const model_plan_t *p, int layer, int node, const double *load,
                            const double *node_cap);
/* Imbalance factor of layer l: the largest node time over the time of a perfect split,
 * sum(load) / sum(cap) (with equal capacities: max node load / mean node load). 1 is perfect;
 * 0 when the layer has no load or no experts. */
double model_plan_imbalance(const model_plan_t *p, int layer, const double *load,
                            const double *node_cap);

/* ---- synthetic model generator (model/gen.c) ----
 * Deterministic random-weight MoE models in the layouts llama.cpp loads (metadata keys, tensor
 * names, shapes and types as its converters write them), with an embedded byte-level BPE
 * vocabulary learned from a built-in English text. Tensors are generated and quantized row by
 * row while being written, so memory stays bounded whatever the model size. */
typedef struct {
    const char *arch;   /* "qwen3moe", "qwen2moe", "llama" (Mixtral layout), "olmoe",
                           "deepseek2", "glm4moe" or "gpt-oss" */
    const char *name;   /* general.name; NULL: "<arch>-synthetic" */
    int n_layers, n_embd, n_head, n_head_kv;
    int head_dim;       /* 0: n_embd / n_head */
    int n_expert, n_expert_used, expert_ff;
    int shared_ff;      /* shared expert width: qwen2moe (required), deepseek2 / glm4moe
                           (n_shared * expert_ff when 0 and n_shared > 0) */
    int n_vocab;        /* >= 256 bytes + the architecture's special tokens */
    kern_type_t type;   /* type of every matrix; norms, biases and routers are F32 */
    uint64_t seed;
    int64_t n_ctx;      /* <arch>.context_length; 0: 4096 */
    int n_threads;      /* threads generating and quantizing rows (0 or 1: the caller's only);
                           the bytes do not depend on it */
    /* deepseek2 and glm4moe only (must stay zero for the other architectures) */
    int n_dense_lead;   /* leading blocks with a dense FFN of width dense_ff */
    int dense_ff;       /* dense FFN width (0: 4 * expert_ff) */
    int n_shared;       /* shared experts: one SwiGLU FFN of n_shared * expert_ff (shared_ff) */
    float expert_scale; /* expert_weights_scale (0: not written, i.e. 1) */
    bool expert_norm;   /* expert_weights_norm */
    int gating;         /* MODEL_GATING_*; 0: softmax for deepseek2, sigmoid for glm4moe.
                           Sigmoid models get an exp_probs_b selection bias. */
    int n_groups, n_group_used; /* group-limited routing (0: one group) */
    int rope_dim;       /* rotated dims per head (0: head_dim / 2); deepseek2's decoupled part */
    int kv_lora_rank;   /* deepseek2: latent size (required) */
    int q_lora_rank;    /* deepseek2: 0 = attn_q, else attn_q_a/attn_q_a_norm/attn_q_b */
    int v_head_dim;     /* deepseek2: value head size (0: head_dim - rope_dim) */
    float yarn_factor;  /* > 1: YaRN RoPE scaling, original context n_ctx / factor */
    float yarn_log_mul; /* deepseek2's mscale_all_dim (written times 0.1, as the converter does) */
    int sliding_window; /* gpt-oss: attention.sliding_window (0: 128); its experts are always
                           MXFP4 (real checkpoints' type), everything else type */
    double router_skew; /* 0..20, 0: plain (same bytes as without it). S > 0 biases routing:
                           layer l's expert e gets about S * (1 - ((e - l) mod E) / (E - 1))
                           added to its router logit (through a constant feature added to every
                           token embedding), so expert l mod E is the hottest */
    bool random_blocks; /* quantized tensors as random but valid blocks written directly
                           (finite scales in the range quantizing the float rows gives, random
                           quants): files for speed measurements at disk speed; the float
                           tensors (norms, routers) are as without it. Not with router_skew */
} model_gen_params_t;

/* The matrix type named "f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q4_k",
 * "q5_k" or "q6_k" (case-insensitive), or -1. */
int model_gen_type_from_name(const char *name);
/* Writes the model p describes to path. Returns 0, -EINVAL (parameters that do not make a
 * model of that architecture, e.g. a row length that is not whole blocks of the type; the reason
 * is logged) or the writer's error. Same parameters give the same bytes. */
int model_gen_write(const model_gen_params_t *p, const char *path);

/* ---- moemesh-model subcommands (model/cli*.c) ----
 * Each takes the arguments after the command name (argv[0] is the command) and returns the
 * process exit status: 0 success, 1 failure (reported on stderr), 2 usage error. */
int model_cli_inspect(int argc, char **argv);
int model_cli_plan(int argc, char **argv);
int model_cli_gen(int argc, char **argv);

/* ---- tokenizer (model/tok*.c) ----
 * Built from a GGUF file's tokenizer.* metadata: SentencePiece (`llama`) and byte-level BPE
 * (`gpt2`, with the pre-tokenizer named by tokenizer.ggml.pre). Matches llama.cpp's
 * tokenization exactly. Read-only after creation: one tokenizer may serve many threads. */
typedef struct model_tok model_tok_t;

/* Builds the tokenizer of g (g may be freed afterwards). 0 or MODEL_E_VOCAB / other code,
 * reason logged (e.g. an unknown tokenizer.ggml.pre, listing the supported ones). */
int model_tok_new(const model_gguf_t *g, model_tok_t **out);
void model_tok_free(model_tok_t *t); /* NULL-safe */

int32_t model_tok_n_vocab(const model_tok_t *t);
int32_t model_tok_bos(const model_tok_t *t); /* -1 when the vocabulary has none */
int32_t model_tok_eos(const model_tok_t *t); /* -1 when none */
/* Whether encoding adds BOS, as llama.cpp decides it (tokenizer.ggml.add_bos_token, else the
 * tokenizer type's default). */
bool model_tok_wants_bos(const model_tok_t *t);
/* True for ids that end generation (EOS, EOT, end-of-turn tokens of chat vocabularies). */
bool model_tok_is_eog(const model_tok_t *t, int32_t id);

/* Tokenizes len bytes of UTF-8 text into ids (cap entries). add_bos: prepend BOS when the model
 * has one; parse_special: text of special tokens becomes those tokens. Returns the number of
 * ids the text needs (call again with a larger cap when it exceeds cap) or a negative error. */
int64_t model_tok_encode(const model_tok_t *t, const char *text, size_t len, bool add_bos,
                         bool parse_special, int32_t *ids, int64_t cap);
/* The bytes token id stands for (SentencePiece "▁" as space, byte tokens as their byte,
 * byte-level BPE mapped back to bytes); control tokens give "" unless special is true.
 * Writes up to cap bytes (no terminator); returns the length needed, or -EINVAL for a bad id. */
int model_tok_piece(const model_tok_t *t, int32_t id, bool special, char *buf, int cap);

/* ---- architectures (model/arch.c) ----
 * A loaded model: the GGUF mapping, hyper-parameters read from metadata (never guessed from
 * names), and each layer's tensors bound and shape-checked. Supported: llama (dense, or with
 * experts as Mixtral), qwen2moe, qwen3moe, olmoe. */
typedef enum {
    MODEL_ARCH_LLAMA = 0,
    MODEL_ARCH_QWEN2MOE,
    MODEL_ARCH_QWEN3MOE,
    MODEL_ARCH_OLMOE,
    MODEL_ARCH_DEEPSEEK2,   /* DeepSeek-V2/V2-Lite/V3/R1, Kimi K2: MLA, shared experts */
    MODEL_ARCH_GLM4MOE,     /* GLM-4.5 / 4.5-Air: partial RoPE, sigmoid grouped router */
    MODEL_ARCH_GPTOSS,      /* gpt-oss-20b/120b: sinks, alternating sliding window, biases,
                               MXFP4 experts with swiglu_oai, softmax over the top-k logits */
    MODEL_ARCH_COUNT
} model_arch_t;

typedef struct {
    model_arch_t arch;
    const char *arch_name;  /* general.architecture, borrowed from the GGUF */
    int n_layer;
    int n_embd;
    int n_head;
    int n_head_kv;
    int head_dim;           /* key/query head size */
    int head_dim_v;         /* value head size */
    int n_ctx_train;        /* context length the model was trained for */
    int n_vocab;
    int n_ff;               /* dense FFN width (0 when every layer is MoE) */
    int n_expert;           /* routed experts per layer (0: dense model) */
    int n_expert_used;      /* top-k */
    int n_ff_exp;           /* routed expert width */
    int n_ff_shexp;         /* shared expert width (0: none) */
    int n_rot;              /* rotated dims per head */
    bool rope_neox;         /* pairs (i, i + n_rot/2) instead of (2i, 2i+1) */
    float rope_base;
    float rope_scale;       /* frequency scale (1 / linear scaling factor) */
    float rms_eps;
    bool expert_norm;       /* renormalise the top-k gate weights to sum 1 */
    int qk_norm;            /* 0 none, 1 per head (qwen3moe), 2 over all heads (olmoe) */

    /* Router variants (every MoE architecture; the defaults reproduce the ones above). */
    int gating;             /* MODEL_GATING_SOFTMAX (default) or MODEL_GATING_SIGMOID */
    float expert_scale;     /* routed weights multiplied by this after normalisation (1) */
    int n_expert_groups;    /* > 1: group-limited top-k over this many equal groups */
    int n_group_used;       /* groups kept per token (1..n_expert_groups) */
    int n_layer_dense_lead; /* the first layers have a dense FFN instead of experts */
    int n_expert_shared;    /* shared experts folded into the *_shexp FFN (0: none) */

    /* Multi-head latent attention (deepseek2); kv_lora_rank == 0 for every other arch. The
     * cache holds kv_lora_rank + n_rot values per token and layer: the normalised latent and
     * the one rotated key part all heads share. */
    int kv_lora_rank;
    int q_lora_rank;        /* 0: q = attn_q x; else attn_q_b(norm(attn_q_a x)) */
    int mla_head_k;         /* per-head q/k size after decompression: nope + n_rot */
    int mla_head_v;         /* per-head value size after decompression */

    /* YaRN RoPE (rope.scaling.type "yarn"), as ggml's rope applies it; rope_yarn false for
     * plain or linear RoPE. */
    bool rope_yarn;
    int n_ctx_orig;         /* rope.scaling.original_context_length */
    float yarn_ext_factor;  /* ramp mix weight (1 with YaRN) */
    float yarn_attn_factor; /* magnitude of the rotated part (1 unless the file says) */
    float yarn_beta_fast, yarn_beta_slow;
    float yarn_log_mul;     /* deepseek2's mscale_all_dim: the file's
                               rope.scaling.yarn_log_multiplier / 0.1, as llama.cpp reads it */

    /* gpt-oss: sliding-window attention on alternating layers (llama.cpp's pattern 2: layer
     * il uses the window when il % swa_pattern < swa_pattern - 1, i.e. the even layers), a
     * position attends to the n_swa latest positions, itself included. n_swa 0: none. */
    int n_swa;
    int swa_pattern;
} model_hparams_t;

/* SOFTMAX_WEIGHT (gpt-oss): top-k on the raw logits, softmax over the k selected. */
enum { MODEL_GATING_SOFTMAX = 1, MODEL_GATING_SIGMOID = 2, MODEL_GATING_SOFTMAX_WEIGHT = 3 };
/* Whether layer il of a model with these hyper-parameters uses the sliding window. */
static inline bool model_layer_is_swa(const model_hparams_t *hp, int il)
{
    return hp->n_swa > 0 && hp->swa_pattern > 1 && il % hp->swa_pattern < hp->swa_pattern - 1;
}

/* One layer's tensors; NULL where the architecture or layer has none. */
typedef struct {
    const model_tensor_t *attn_norm, *wq, *wk, *wv, *wo, *bq, *bk, *bv, *q_norm, *k_norm;
    const model_tensor_t *ffn_norm;
    const model_tensor_t *ffn_gate, *ffn_up, *ffn_down;          /* dense FFN */
    const model_tensor_t *gate_inp;                             /* router (n_embd, n_expert) */
    const model_tensor_t *gate_exps, *up_exps, *down_exps;      /* (.., .., n_expert) */
    const model_tensor_t *gate_inp_shexp;                       /* shared expert gate (n_embd) */
    const model_tensor_t *gate_shexp, *up_shexp, *down_shexp;
    const model_tensor_t *exp_probs_b;   /* (n_expert) F32 selection bias, or NULL */
    /* multi-head latent attention (deepseek2); wq is NULL when q is low-rank */
    const model_tensor_t *wq_a, *q_a_norm, *wq_b;   /* (n_embd, q_lora), (q_lora), (q_lora, H*k) */
    const model_tensor_t *wkv_a_mqa, *kv_a_norm;    /* (n_embd, kv_lora + n_rot), (kv_lora) */
    const model_tensor_t *wk_b;                     /* (nope, kv_lora, H): q_nope -> latent */
    const model_tensor_t *wv_b;                     /* (kv_lora, v, H): latent -> head output */
    const model_tensor_t *wkv_b; /* files converted before llama.cpp split it (2025): (kv_lora,
                                    H * (nope + v)), per head nope key rows then v value rows;
                                    wk_b and wv_b are NULL then */
    /* gpt-oss */
    const model_tensor_t *bo;            /* (n_embd) attention output bias */
    const model_tensor_t *attn_sinks;    /* (n_head) per-head sink logits, F32 */
    const model_tensor_t *gate_inp_b;    /* (n_expert) router bias */
    const model_tensor_t *gate_exps_b, *up_exps_b;  /* (n_ff_exp, n_expert) F32 */
    const model_tensor_t *down_exps_b;              /* (n_embd, n_expert) F32 */
} model_layer_t;

typedef struct {
    model_gguf_t *gguf;             /* owned */
    model_hparams_t hp;
    const model_tensor_t *tok_embd; /* (n_embd, n_vocab) */
    const model_tensor_t *output_norm;
    const model_tensor_t *output;   /* tok_embd when the file ties them */
    model_layer_t *layers;          /* (n_layer), owned */
} model_t;

/* Loads and checks path; *out owns the mapping. 0 or an error code, reason logged. */
int model_load(const char *path, model_t **out);
/* The same on an already open GGUF, which the model takes over (*gp is NULL afterwards,
 * also on failure, when it has been freed). */
int model_load_gguf(model_gguf_t **gp, model_t **out);
void model_free(model_t *m); /* NULL-safe */
const char *model_arch_name(model_arch_t a);
/* Comma-separated names of the supported architectures, for messages. */
const char *model_arch_supported(void);
/* Reads one byte of every page of the model's tensors (routed experts only when with_experts)
 * so the first forward pass does not stall on page faults; shows a progress bar on stderr when
 * it is a terminal and the tensors are large. Returns the bytes touched. */
uint64_t model_prefault(const model_t *m, bool with_experts);
/* A stable identity of a model file for the cluster: "<hex crc32c of the GGUF header (every
 * byte before the data section)>-<file size>". Two files with equal fingerprints hold the same
 * tensors at the same offsets. Writes a NUL-terminated string into out (cap >= 40). */
void model_fingerprint(const model_gguf_t *g, char *out, size_t cap);
/* Bytes of one expert's slice of a 3-D expert tensor (row bytes times rows per expert). */
size_t model_expert_stride(const model_tensor_t *t);
/* ---- streaming detokenizer (model/detok.c) ----
 * Turns generated ids into text as they arrive. A token can end in the middle of a UTF-8
 * character (byte-fallback and byte-level tokens); those bytes are held back until the character
 * completes, so every chunk handed out is whole UTF-8 unless the model itself emits invalid
 * bytes (which are passed through once they can no longer complete). */
typedef struct model_detok model_detok_t;
enum {
    MODEL_DETOK_SPECIAL = 1,      /* render control tokens' text instead of nothing */
    MODEL_DETOK_STRIP_SPACE = 2,  /* drop the leading space of the first piece when the
                                     vocabulary adds one while encoding (SentencePiece), as
                                     llama.cpp's detokenize does */
};
/* t is borrowed and must outlive the detokenizer. */
model_detok_t *model_detok_new(const model_tok_t *t, unsigned flags);
void model_detok_free(model_detok_t *d); /* NULL-safe */
/* Appends token id. *out / *n receive the bytes now complete (possibly none), valid until the
 * next call on d. 0 or -EINVAL for an id outside the vocabulary (nothing consumed). */
int model_detok_push(model_detok_t *d, int32_t id, const char **out, size_t *n);
/* Hands out whatever is held back (an incomplete character at the end of generation) and
 * starts over; same lifetime as push. */
void model_detok_flush(model_detok_t *d, const char **out, size_t *n);

/* ---- chat templates (model/chat.c) ----
 * llama.cpp's built-in formats, chosen by name or recognised from markers in a GGUF's
 * tokenizer.chat_template (a Jinja text that is not interpreted). The output is text to encode
 * with parse_special = true; BOS is the tokenizer's business (model_tok_wants_bos). */
typedef struct {
    const char *role;    /* "system", "user", "assistant", ... */
    const char *content;
} model_chat_msg_t;
/* Built-in template name for a Jinja template (or a name, returned as is), NULL when none
 * matches. Names: chatml, llama2, llama2-sys, mistral-v1, mistral-v3, mistral-v7, llama3,
 * tulu (OLMoE), phi3, deepseek2, deepseek3, zephyr, gpt-oss (harmony). Static string. */
const char *model_chat_detect(const char *tmpl);
/* Formats n messages with the template named, or detected from, tmpl (NULL means chatml);
 * add_assistant appends the opening of the assistant's turn. *out is a malloc'd NUL-terminated
 * string the caller frees. 0, or -ENOTSUP when no built-in template matches, -EINVAL for bad
 * arguments. */
int model_chat_apply(const char *tmpl, const model_chat_msg_t *msgs, int n, bool add_assistant,
                     char **out);

/* ---- tokenizer subcommands (model/cli_tok.c), argv[0] the command name; exit status ---- */
int model_cli_tokenize(int argc, char **argv);
int model_cli_detokenize(int argc, char **argv);

#endif
