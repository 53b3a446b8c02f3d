/* Architectures: reads a model's hyper-parameters from GGUF metadata and binds every layer's
 * tensors, checking each shape and type against those hyper-parameters so the forward pass can
 * trust them. Nothing is guessed from tensor names alone; where metadata is optional (head size,
 * rope dims, expert width) the tensor shapes decide and must agree with what metadata says.
 */
#include "model/model.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "wire/wire.h"

static const char *arch_names[MODEL_ARCH_COUNT] = {"llama", "qwen2moe", "qwen3moe", "olmoe",
                                                   "deepseek2", "glm4moe", "gpt-oss"};

const char *model_arch_name(model_arch_t a) { return a < MODEL_ARCH_COUNT ? arch_names[a] : "?"; }
const char *model_arch_supported(void) { return "llama (dense or Mixtral), qwen2moe, qwen3moe, olmoe, deepseek2, glm4moe, gpt-oss"; }

static void progress(uint64_t done, uint64_t total)
{
    int pct = total ? (int)(done * 100 / total) : 100;
    char bar[41];
    for (int i = 0; i < 40; i++) bar[i] = i < pct * 40 / 100 ? '#' : '.';
    bar[40] = 0;
    fprintf(stderr, "\rloading [%s] %3d%% %.1f/%.1f GiB", bar, pct, done / 1073741824.0,
            total / 1073741824.0);
}

uint64_t model_prefault(const model_t *m, bool with_experts)
{
    const model_gguf_t *g = m->gguf;
    uint64_t total = 0, done = 0;
    const int n = model_gguf_tensor_count(g);
    for (int i = 0; i < n; i++) {
        const model_tensor_t *t = model_gguf_tensor(g, i);
        if (with_experts || !strstr(t->name, "_exps.")) total += t->nbytes;
    }
    const bool bar = total >= (256u << 20) && isatty(STDERR_FILENO);
    const long page = sysconf(_SC_PAGESIZE) > 0 ? sysconf(_SC_PAGESIZE) : 4096;
    volatile uint8_t sink = 0;
    uint64_t next_report = 0;
    for (int i = 0; i < n; i++) {
        const model_tensor_t *t = model_gguf_tensor(g, i);
        if (!with_experts && strstr(t->name, "_exps.")) continue;
        const volatile uint8_t *p = t->data;
        for (size_t off = 0; off < t->nbytes; off += (size_t)page) sink ^= p[off];
        done += t->nbytes;
        if (bar && done >= next_report) {
            progress(done, total);
            next_report = done + total / 100;
        }
    }
    if (bar) {
        progress(total, total);
        fputc('\n', stderr);
    }
    (void)sink;
    return done;
}

void model_fingerprint(const model_gguf_t *g, char *out, size_t cap)
{
    /* The header names every tensor with its type, shape and offset, and the file size pins
     * the data length: enough to tell files apart without reading gigabytes of weights. */
    /* A vocab-only file may end before its (empty) data section: clamp to the file. */
    uint64_t n = model_gguf_data_offset(g);
    if (n > model_gguf_file_size(g)) n = model_gguf_file_size(g);
    uint32_t crc = wire_crc32c(0, model_gguf_bytes(g), (size_t)n);
    snprintf(out, cap, "%08x-%zu", crc, model_gguf_file_size(g));
}

size_t model_expert_stride(const model_tensor_t *t)
{
    return kern_row_bytes(t->type, t->ne[0]) * (size_t)t->ne[1];
}

/* Loader state: the file for messages, the arch prefix for keys. */
typedef struct {
    const model_gguf_t *g;
    const char *path;
    const char *arch;
    int err;
} loader_t;

static bool get_int(loader_t *L, const char *suffix, int64_t *out, bool required)
{
    char key[160];
    snprintf(key, sizeof(key), "%s.%s", L->arch, suffix);
    if (model_gguf_get_int(L->g, key, out)) {
        if (*out < 0 || *out > (1 << 30)) {
            LOG_ERR("%s: %s = %lld is out of range", L->path, key, (long long)*out);
            L->err = MODEL_E_ARCH;
            return false;
        }
        return true;
    }
    if (required) {
        LOG_ERR("%s: missing or non-integer metadata %s", L->path, key);
        L->err = MODEL_E_ARCH;
    }
    return false;
}

static bool get_float(loader_t *L, const char *suffix, float *out)
{
    char key[160];
    double v;
    snprintf(key, sizeof(key), "%s.%s", L->arch, suffix);
    if (!model_gguf_get_float(L->g, key, &v)) return false;
    *out = (float)v;
    return true;
}

/* Finds a tensor and checks its dimensions (ne0..ne2; 0 = do not check, dims beyond n_dims
 * must be 1). Returns NULL and sets L->err when missing (if required) or mis-shaped. */
static const model_tensor_t *bind(loader_t *L, const char *name, bool required, int64_t ne0,
                                  int64_t ne1, int64_t ne2, bool f32_only)
{
    const model_tensor_t *t = model_gguf_find_tensor(L->g, name);
    if (!t) {
        if (required) {
            LOG_ERR("%s: missing tensor %s", L->path, name);
            L->err = MODEL_E_ARCH;
        }
        return NULL;
    }
    int64_t want[3] = {ne0, ne1, ne2};
    for (int i = 0; i < 3; i++) {
        int64_t w = want[i] ? want[i] : t->ne[i];
        if (t->ne[i] != w || (i == 2 && ne2 == 0 && t->ne[2] != 1) || t->ne[3] != 1) {
            LOG_ERR("%s: tensor %s has shape [%lld, %lld, %lld, %lld], expected [%lld, %lld, %lld]",
                    L->path, name, (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2],
                    (long long)t->ne[3], (long long)ne0, (long long)ne1, (long long)ne2);
            L->err = MODEL_E_ARCH;
            return NULL;
        }
    }
    const kern_type_info_t *ti = kern_type_info(t->type);
    if (!ti || !ti->compute || (f32_only && t->type != KERN_F32)) {
        LOG_ERR("%s: tensor %s has type %s, which %s", L->path, name, ti ? ti->name : "?",
                f32_only ? "must be F32 here" : "this build cannot compute with");
        L->err = MODEL_E_ARCH;
        return NULL;
    }
    return t;
}

static const model_tensor_t *bind_l(loader_t *L, int il, const char *what, bool required,
                                    int64_t ne0, int64_t ne1, int64_t ne2, bool f32_only)
{
    char name[96];
    snprintf(name, sizeof(name), "blk.%d.%s", il, what);
    return bind(L, name, required, ne0, ne1, ne2, f32_only);
}

/* rope.scaling.*: none, linear (a frequency scale) or YaRN with ggml's defaults for what the
 * file leaves out (extrapolation mix 1, beta_fast 32, beta_slow 1, attention factor 1). */
static int read_rope_scaling(loader_t *L, model_hparams_t *hp)
{
    char key[160];
    snprintf(key, sizeof(key), "%s.rope.scaling.type", L->arch);
    const char *scaling = model_gguf_get_str(L->g, key);
    float factor = 0.0f;
    bool have = get_float(L, "rope.scaling.factor", &factor) ||
                get_float(L, "rope.scale_linear", &factor);
    if (scaling && strcmp(scaling, "none") != 0 && strcmp(scaling, "linear") != 0 &&
        strcmp(scaling, "yarn") != 0) {
        LOG_ERR("%s: rope scaling '%s' is not supported (none, linear, yarn)", L->path, scaling);
        return MODEL_E_ARCH;
    }
    if (scaling && strcmp(scaling, "none") == 0) return 0;
    if (have && !(factor > 0.0f && factor < 1e6f)) {
        if (factor == 0.0f) return 0; /* converters write 0 for "no scaling" */
        LOG_ERR("%s: rope scaling factor %g is out of range", L->path, factor);
        return MODEL_E_ARCH;
    }
    if (have) hp->rope_scale = 1.0f / factor;
    if (!scaling || strcmp(scaling, "yarn") != 0) return 0;
    int64_t v;
    hp->rope_yarn = true;
    hp->n_ctx_orig = hp->n_ctx_train;
    if (get_int(L, "rope.scaling.original_context_length", &v, false) && v > 0)
        hp->n_ctx_orig = (int)v;
    hp->yarn_ext_factor = 1.0f;
    hp->yarn_attn_factor = 1.0f;
    hp->yarn_beta_fast = 32.0f;
    hp->yarn_beta_slow = 1.0f;
    get_float(L, "rope.scaling.yarn_ext_factor", &hp->yarn_ext_factor);
    get_float(L, "rope.scaling.yarn_beta_fast", &hp->yarn_beta_fast);
    get_float(L, "rope.scaling.yarn_beta_slow", &hp->yarn_beta_slow);
    /* llama.cpp's converter stores 0.1 * mscale_all_dim and its loader divides the 0.1 back
     * out; with a multiplier the rotated part keeps magnitude 1 (DeepSeek's mscale ratio),
     * without one ggml's default YaRN magnitude 1 + 0.1 ln(factor) applies. */
    if (get_float(L, "rope.scaling.yarn_log_multiplier", &hp->yarn_log_mul))
        hp->yarn_log_mul /= 0.1f;
    if (hp->yarn_log_mul == 0.0f && hp->rope_scale < 1.0f)
        hp->yarn_attn_factor = 1.0f + 0.1f * logf(1.0f / hp->rope_scale);
    if (!get_float(L, "rope.scaling.yarn_attn_factor", &hp->yarn_attn_factor))
        get_float(L, "rope.scaling.attn_factor", &hp->yarn_attn_factor);
    if (!(hp->yarn_ext_factor >= 0.0f && hp->yarn_ext_factor <= 1.0f) ||
        !(hp->yarn_attn_factor > 0.0f && hp->yarn_attn_factor < 100.0f) ||
        !(hp->yarn_beta_fast > 0.0f && hp->yarn_beta_slow > 0.0f) ||
        !(hp->yarn_log_mul >= 0.0f && hp->yarn_log_mul < 1000.0f)) {
        LOG_ERR("%s: YaRN parameters out of range (ext %g, attn %g, beta %g/%g, log mul %g)",
                L->path, hp->yarn_ext_factor, hp->yarn_attn_factor, hp->yarn_beta_fast,
                hp->yarn_beta_slow, hp->yarn_log_mul);
        return MODEL_E_ARCH;
    }
    return 0;
}

/* Router variants of deepseek2 and glm4moe, with llama.cpp's defaults for absent keys; the other
 * architectures keep softmax, no scale, no groups. */
static int read_router(loader_t *L, model_hparams_t *hp)
{
    int64_t v;
    bool b;
    char key[160];
    hp->gating = MODEL_GATING_SOFTMAX;
    hp->expert_scale = 1.0f;
    hp->n_expert_groups = 1;
    hp->n_group_used = 1;
    /* llama.cpp reads these keys only for the architectures that define them. */
    if (hp->arch != MODEL_ARCH_DEEPSEEK2 && hp->arch != MODEL_ARCH_GLM4MOE) return 0;
    if (hp->arch == MODEL_ARCH_GLM4MOE) hp->gating = MODEL_GATING_SIGMOID;
    if (get_int(L, "expert_gating_func", &v, false)) {
        if (v != MODEL_GATING_SOFTMAX && v != MODEL_GATING_SIGMOID) {
            LOG_ERR("%s: %s.expert_gating_func = %lld is not supported (1 softmax, 2 sigmoid)",
                    L->path, L->arch, (long long)v);
            return MODEL_E_ARCH;
        }
        hp->gating = (int)v;
    }
    snprintf(key, sizeof(key), "%s.expert_weights_norm", L->arch);
    if (model_gguf_get_bool(L->g, key, &b)) hp->expert_norm = b;
    else if (hp->arch == MODEL_ARCH_DEEPSEEK2 || hp->arch == MODEL_ARCH_GLM4MOE)
        hp->expert_norm = false; /* llama.cpp's default when the key is absent */
    if (get_float(L, "expert_weights_scale", &hp->expert_scale) &&
        !(hp->expert_scale > 0.0f && hp->expert_scale < 1e4f)) {
        LOG_ERR("%s: %s.expert_weights_scale = %g is out of range", L->path, L->arch,
                hp->expert_scale);
        return MODEL_E_ARCH;
    }
    if (get_int(L, "leading_dense_block_count", &v, false)) hp->n_layer_dense_lead = (int)v;
    if (get_int(L, "expert_shared_count", &v, false)) hp->n_expert_shared = (int)v;
    if (get_int(L, "expert_group_count", &v, false) && v > 0) hp->n_expert_groups = (int)v;
    if (get_int(L, "expert_group_used_count", &v, false) && v > 0) hp->n_group_used = (int)v;
    if (L->err) return L->err;
    if (hp->n_expert > 4096) {
        LOG_ERR("%s: %d experts per layer (at most 4096 supported)", L->path, hp->n_expert);
        return MODEL_E_ARCH;
    }
    if (hp->n_layer_dense_lead > hp->n_layer ||
        (hp->n_expert > 0 && hp->n_expert % hp->n_expert_groups != 0) ||
        hp->n_group_used > hp->n_expert_groups ||
        (hp->n_expert_groups > 1 &&
         (hp->n_expert / hp->n_expert_groups < 2 ||
          hp->n_group_used * (hp->n_expert / hp->n_expert_groups) < hp->n_expert_used))) {
        LOG_ERR("%s: inconsistent routing: %d experts, top %d, %d groups (%d used), %d leading "
                "dense of %d layers",
                L->path, hp->n_expert, hp->n_expert_used, hp->n_expert_groups, hp->n_group_used,
                hp->n_layer_dense_lead, hp->n_layer);
        return MODEL_E_ARCH;
    }
    return 0;
}

/* deepseek2's attention sizes. Files from llama.cpp's current converter describe the absorbed
 * form (key_length = kv_lora + rope, value_length = kv_lora, one kv head) and put the
 * decompressed per-head sizes in *_mla; older files give the decompressed sizes directly. */
static int read_mla(loader_t *L, model_hparams_t *hp)
{
    int64_t v;
    if (get_int(L, "attention.kv_lora_rank", &v, true)) hp->kv_lora_rank = (int)v;
    if (get_int(L, "attention.q_lora_rank", &v, false)) hp->q_lora_rank = (int)v;
    if (L->err) return L->err;
    hp->mla_head_k = hp->head_dim;
    hp->mla_head_v = hp->head_dim_v;
    if (get_int(L, "attention.key_length_mla", &v, false)) hp->mla_head_k = (int)v;
    if (get_int(L, "attention.value_length_mla", &v, false)) hp->mla_head_v = (int)v;
    if (hp->kv_lora_rank < 1 || hp->n_rot < 2 || hp->mla_head_k <= hp->n_rot ||
        hp->mla_head_v < 1 || hp->n_rot % 2 != 0) {
        LOG_ERR("%s: bad MLA sizes: kv_lora_rank %d, q_lora_rank %d, rope dims %d, q/k head %d, "
                "v head %d",
                L->path, hp->kv_lora_rank, hp->q_lora_rank, hp->n_rot, hp->mla_head_k,
                hp->mla_head_v);
        return MODEL_E_ARCH;
    }
    return 0;
}

/* glm4moe: the last nextn_predict_layers blocks are multi-token-prediction heads llama.cpp does
 * not run for plain decoding; they are left out of the layer count. */
static int read_glm4moe(loader_t *L, model_hparams_t *hp)
{
    int64_t v;
    char key[160];
    snprintf(key, sizeof(key), "%s.rope.dimension_sections", L->arch);
    const model_gguf_value_t *sec = model_gguf_get_arr(L->g, key, -1);
    for (uint64_t i = 0; sec && i < sec->arr.n; i++) {
        int64_t x;
        if (model_gguf_value_int(&sec->arr.v[i], &x) && x != 0) {
            LOG_ERR("%s: multimodal RoPE sections (%s) are not supported", L->path, key);
            return MODEL_E_ARCH;
        }
    }
    if (get_int(L, "nextn_predict_layers", &v, false)) {
        if (v >= hp->n_layer) {
            LOG_ERR("%s: nextn_predict_layers %lld leaves no layers of %d", L->path,
                    (long long)v, hp->n_layer);
            return MODEL_E_ARCH;
        }
        hp->n_layer -= (int)v;
    }
    if (hp->n_layer_dense_lead > hp->n_layer) hp->n_layer_dense_lead = hp->n_layer;
    return 0;
}

/* gpt-oss: llama.cpp's openai-moe graph fixes what the file does not say: softmax over the
 * top-k router logits (no renormalisation), every other layer on a sliding window of
 * attention.sliding_window positions (even layers), NEOX RoPE. A file that claims other gating
 * is refused rather than run differently from llama.cpp. */
static int read_gptoss(loader_t *L, model_hparams_t *hp)
{
    int64_t v;
    hp->gating = MODEL_GATING_SOFTMAX_WEIGHT;
    hp->expert_norm = false;
    if (get_int(L, "expert_gating_func", &v, false) && v != MODEL_GATING_SOFTMAX_WEIGHT) {
        LOG_ERR("%s: %s.expert_gating_func = %lld is not gpt-oss's (3, softmax over the top-k)",
                L->path, L->arch, (long long)v);
        return MODEL_E_ARCH;
    }
    if (!get_int(L, "attention.sliding_window", &v, true)) return MODEL_E_ARCH;
    if (v < 1) {
        LOG_ERR("%s: %s.attention.sliding_window = %lld must be >= 1", L->path, L->arch,
                (long long)v);
        return MODEL_E_ARCH;
    }
    hp->n_swa = (int)v;
    hp->swa_pattern = 2;
    if (hp->n_expert > 4096 || (hp->n_ff != 0 && hp->n_ff_exp != 0 && hp->n_ff != hp->n_ff_exp)) {
        /* feed_forward_length is the expert width in gpt-oss files; a different value would
         * mean a dense part this loader does not know. */
        LOG_ERR("%s: %d experts, feed_forward_length %d vs expert width %d: not a gpt-oss "
                "layout this build knows", L->path, hp->n_expert, hp->n_ff, hp->n_ff_exp);
        return MODEL_E_ARCH;
    }
    hp->n_ff = 0; /* every layer is MoE */
    return 0;
}

static int read_hparams(loader_t *L, model_hparams_t *hp)
{
    int64_t v;
    hp->arch_name = L->arch;
    hp->arch = MODEL_ARCH_COUNT;
    for (int a = 0; a < MODEL_ARCH_COUNT; a++)
        if (strcmp(L->arch, arch_names[a]) == 0) hp->arch = (model_arch_t)a;
    if (hp->arch == MODEL_ARCH_COUNT) {
        LOG_ERR("%s: architecture '%s' is not supported (supported: %s)", L->path, L->arch,
                model_arch_supported());
        return MODEL_E_ARCH;
    }
    if (get_int(L, "block_count", &v, true)) hp->n_layer = (int)v;
    if (get_int(L, "embedding_length", &v, true)) hp->n_embd = (int)v;
    if (get_int(L, "attention.head_count", &v, true)) hp->n_head = (int)v;
    hp->n_head_kv = hp->n_head;
    if (get_int(L, "attention.head_count_kv", &v, false)) hp->n_head_kv = (int)v;
    if (L->err) return L->err;
    if (hp->n_layer < 1 || hp->n_embd < 1 || hp->n_head < 1 || hp->n_head_kv < 1 ||
        hp->n_head % hp->n_head_kv != 0) {
        LOG_ERR("%s: inconsistent sizes: %d layers, dim %d, %d heads, %d kv heads", L->path,
                hp->n_layer, hp->n_embd, hp->n_head, hp->n_head_kv);
        return MODEL_E_ARCH;
    }
    hp->head_dim = hp->n_embd / hp->n_head;
    if (get_int(L, "attention.key_length", &v, false)) hp->head_dim = (int)v;
    hp->head_dim_v = hp->head_dim;
    if (get_int(L, "attention.value_length", &v, false)) hp->head_dim_v = (int)v;
    hp->n_rot = hp->head_dim;
    if (get_int(L, "rope.dimension_count", &v, false)) hp->n_rot = (int)v;
    if (hp->head_dim < 1 || hp->head_dim_v < 1 || hp->n_rot < 0 || hp->n_rot > hp->head_dim ||
        hp->n_rot % 2 != 0) {
        LOG_ERR("%s: bad head sizes (key %d, value %d, rope dims %d)", L->path, hp->head_dim,
                hp->head_dim_v, hp->n_rot);
        return MODEL_E_ARCH;
    }
    hp->n_ctx_train = 4096;
    if (get_int(L, "context_length", &v, false) && v > 0) hp->n_ctx_train = (int)v;
    if (get_int(L, "feed_forward_length", &v, false)) hp->n_ff = (int)v;
    if (get_int(L, "expert_count", &v, false)) hp->n_expert = (int)v;
    if (get_int(L, "expert_used_count", &v, false)) hp->n_expert_used = (int)v;
    if (get_int(L, "expert_feed_forward_length", &v, false)) hp->n_ff_exp = (int)v;
    if (get_int(L, "expert_shared_feed_forward_length", &v, false)) hp->n_ff_shexp = (int)v;
    if (hp->n_expert > 0 && (hp->n_expert_used < 1 || hp->n_expert_used > hp->n_expert)) {
        LOG_ERR("%s: expert_used_count %d is not in 1..%d", L->path, hp->n_expert_used,
                hp->n_expert);
        return MODEL_E_ARCH;
    }
    hp->rms_eps = 1e-5f;
    get_float(L, "attention.layer_norm_rms_epsilon", &hp->rms_eps);
    hp->rope_base = 10000.0f;
    get_float(L, "rope.freq_base", &hp->rope_base);
    hp->rope_scale = 1.0f;
    if (read_rope_scaling(L, hp) != 0) return MODEL_E_ARCH;
    /* deepseek2 rotates adjacent pairs like llama; the others NEOX halves. */
    hp->rope_neox = hp->arch != MODEL_ARCH_LLAMA && hp->arch != MODEL_ARCH_DEEPSEEK2;
    /* Gating as llama.cpp builds each architecture: Mixtral and Qwen3-MoE renormalise the
     * top-k softmax weights; Qwen2-MoE and OLMoE use them as they are. */
    hp->expert_norm = hp->arch == MODEL_ARCH_LLAMA || hp->arch == MODEL_ARCH_QWEN3MOE;
    hp->qk_norm = hp->arch == MODEL_ARCH_QWEN3MOE ? 1 : hp->arch == MODEL_ARCH_OLMOE ? 2 : 0;
    if (hp->arch != MODEL_ARCH_LLAMA && hp->n_expert == 0) {
        LOG_ERR("%s: %s model without expert_count", L->path, L->arch);
        return MODEL_E_ARCH;
    }
    if (read_router(L, hp) != 0) return MODEL_E_ARCH;
    if (hp->arch == MODEL_ARCH_DEEPSEEK2 && read_mla(L, hp) != 0) return MODEL_E_ARCH;
    if (hp->arch == MODEL_ARCH_GLM4MOE && read_glm4moe(L, hp) != 0) return MODEL_E_ARCH;
    if (hp->arch == MODEL_ARCH_GPTOSS && read_gptoss(L, hp) != 0) return MODEL_E_ARCH;
    return 0;
}

/* deepseek2's attention tensors: q directly or through its low-rank pair, the joint latent +
 * rope projection, and the per-head absorbed halves of kv_b (attn_k_b, attn_v_b). */
static int bind_mla(loader_t *L, const model_hparams_t *hp, int il, model_layer_t *ly)
{
    const int64_t E = hp->n_embd, H = hp->n_head, R = hp->kv_lora_rank;
    const int64_t qk = (int64_t)H * hp->mla_head_k, nope = hp->mla_head_k - hp->n_rot;
    if (hp->q_lora_rank > 0) {
        ly->wq_a = bind_l(L, il, "attn_q_a.weight", true, E, hp->q_lora_rank, 0, false);
        ly->q_a_norm = bind_l(L, il, "attn_q_a_norm.weight", true, hp->q_lora_rank, 1, 0, true);
        ly->wq_b = bind_l(L, il, "attn_q_b.weight", true, hp->q_lora_rank, qk, 0, false);
    } else {
        ly->wq = bind_l(L, il, "attn_q.weight", true, E, qk, 0, false);
    }
    ly->wkv_a_mqa = bind_l(L, il, "attn_kv_a_mqa.weight", true, E, R + hp->n_rot, 0, false);
    ly->kv_a_norm = bind_l(L, il, "attn_kv_a_norm.weight", true, R, 1, 0, true);
    if (L->err) return L->err;
    char name[96];
    snprintf(name, sizeof(name), "blk.%d.attn_k_b.weight", il);
    if (!model_gguf_find_tensor(L->g, name)) {
        /* Older conversions keep the joint decompression matrix; mla.c absorbs it the same
         * way, reading its key rows transposed. */
        ly->wkv_b = bind_l(L, il, "attn_kv_b.weight", true, R, H * (nope + hp->mla_head_v), 0,
                           false);
    } else {
        ly->wk_b = bind_l(L, il, "attn_k_b.weight", true, nope, R, H, false);
        ly->wv_b = bind_l(L, il, "attn_v_b.weight", true, R, hp->mla_head_v, H, false);
    }
    ly->wo = bind_l(L, il, "attn_output.weight", true, H * hp->mla_head_v, E, 0, false);
    return L->err;
}

static int bind_layer(loader_t *L, model_hparams_t *hp, int il, model_layer_t *ly)
{
    const int64_t E = hp->n_embd, q = (int64_t)hp->n_head * hp->head_dim;
    const int64_t kv = (int64_t)hp->n_head_kv * hp->head_dim;
    const int64_t vv = (int64_t)hp->n_head_kv * hp->head_dim_v;
    ly->attn_norm = bind_l(L, il, "attn_norm.weight", true, E, 1, 0, true);
    if (hp->arch == MODEL_ARCH_DEEPSEEK2) {
        if (bind_mla(L, hp, il, ly) != 0) return L->err;
        goto ffn;
    }
    ly->wq = bind_l(L, il, "attn_q.weight", true, E, q, 0, false);
    ly->wk = bind_l(L, il, "attn_k.weight", true, E, kv, 0, false);
    ly->wv = bind_l(L, il, "attn_v.weight", true, E, vv, 0, false);
    ly->wo = bind_l(L, il, "attn_output.weight", true, (int64_t)hp->n_head * hp->head_dim_v, E, 0,
                    false);
    const bool oss = hp->arch == MODEL_ARCH_GPTOSS;
    bool bias = hp->arch == MODEL_ARCH_QWEN2MOE || oss;
    ly->bq = bind_l(L, il, "attn_q.bias", bias, q, 1, 0, true);
    ly->bk = bind_l(L, il, "attn_k.bias", bias, kv, 1, 0, true);
    ly->bv = bind_l(L, il, "attn_v.bias", bias, vv, 1, 0, true);
    if (oss) {
        ly->bo = bind_l(L, il, "attn_output.bias", true, E, 1, 0, true);
        ly->attn_sinks = bind_l(L, il, "attn_sinks.weight", true, hp->n_head, 1, 0, true);
    }
    if (hp->arch == MODEL_ARCH_GLM4MOE) {
        /* GLM-4.5 may carry per-head q/k norms (use_qk_norm); every layer or none. */
        char qn[96];
        snprintf(qn, sizeof(qn), "blk.0.attn_q_norm.weight");
        if (model_gguf_find_tensor(L->g, qn)) hp->qk_norm = 1;
    }
    if (hp->qk_norm == 1) {
        ly->q_norm = bind_l(L, il, "attn_q_norm.weight", true, hp->head_dim, 1, 0, true);
        ly->k_norm = bind_l(L, il, "attn_k_norm.weight", true, hp->head_dim, 1, 0, true);
    } else if (hp->qk_norm == 2) {
        ly->q_norm = bind_l(L, il, "attn_q_norm.weight", true, q, 1, 0, true);
        ly->k_norm = bind_l(L, il, "attn_k_norm.weight", true, kv, 1, 0, true);
    }
ffn:
    /* GLM-4.5 names its pre-FFN norm after the attention ("post_attention_norm"). */
    ly->ffn_norm = bind_l(L, il,
                          hp->arch == MODEL_ARCH_GLM4MOE || hp->arch == MODEL_ARCH_GPTOSS
                              ? "post_attention_norm.weight"
                                                         : "ffn_norm.weight",
                          true, E, 1, 0, true);
    if (L->err) return L->err;

    char name[96];
    snprintf(name, sizeof(name), "blk.%d.ffn_gate_inp.weight", il);
    if (hp->n_expert == 0 || il < hp->n_layer_dense_lead ||
        !model_gguf_find_tensor(L->g, name)) {
        /* A dense layer: the whole model when it has no experts, deepseek2's and glm4moe's
         * leading blocks, a Mixtral-style llama file's layers without a router. */
        if (hp->n_expert > 0 && hp->arch != MODEL_ARCH_LLAMA && il >= hp->n_layer_dense_lead) {
            LOG_ERR("%s: missing tensor %s", L->path, name);
            return MODEL_E_ARCH;
        }
        ly->ffn_gate = bind_l(L, il, "ffn_gate.weight", true, E, 0, 0, false);
        int64_t ff = ly->ffn_gate ? ly->ffn_gate->ne[1] : 0;
        ly->ffn_up = bind_l(L, il, "ffn_up.weight", true, E, ff, 0, false);
        ly->ffn_down = bind_l(L, il, "ffn_down.weight", true, ff, E, 0, false);
        return L->err;
    }
    ly->gate_inp = bind_l(L, il, "ffn_gate_inp.weight", true, E, hp->n_expert, 0, false);
    ly->gate_exps = bind_l(L, il, "ffn_gate_exps.weight", true, E, hp->n_ff_exp, hp->n_expert,
                           false);
    if (ly->gate_exps && hp->n_ff_exp == 0) hp->n_ff_exp = (int)ly->gate_exps->ne[1];
    ly->up_exps = bind_l(L, il, "ffn_up_exps.weight", true, E, hp->n_ff_exp, hp->n_expert, false);
    ly->down_exps = bind_l(L, il, "ffn_down_exps.weight", true, hp->n_ff_exp, E, hp->n_expert,
                           false);
    if (hp->arch == MODEL_ARCH_GPTOSS) {
        const int64_t F = hp->n_ff_exp, N = hp->n_expert;
        ly->gate_inp_b = bind_l(L, il, "ffn_gate_inp.bias", true, N, 1, 0, true);
        ly->gate_exps_b = bind_l(L, il, "ffn_gate_exps.bias", true, F, N, 0, true);
        ly->up_exps_b = bind_l(L, il, "ffn_up_exps.bias", true, F, N, 0, true);
        ly->down_exps_b = bind_l(L, il, "ffn_down_exps.bias", true, E, N, 0, true);
        return L->err;
    }
    snprintf(name, sizeof(name), "blk.%d.exp_probs_b.bias", il);
    ly->exp_probs_b = bind(L, name, hp->arch == MODEL_ARCH_GLM4MOE, hp->n_expert, 1, 0, true);
    bool shexp = hp->arch == MODEL_ARCH_QWEN2MOE || hp->n_expert_shared > 0;
    ly->gate_shexp = bind_l(L, il, "ffn_gate_shexp.weight", shexp, E, hp->n_ff_shexp, 0, false);
    if (ly->gate_shexp) {
        if (hp->n_ff_shexp == 0) hp->n_ff_shexp = (int)ly->gate_shexp->ne[1];
        ly->up_shexp = bind_l(L, il, "ffn_up_shexp.weight", true, E, hp->n_ff_shexp, 0, false);
        ly->down_shexp = bind_l(L, il, "ffn_down_shexp.weight", true, hp->n_ff_shexp, E, 0, false);
        ly->gate_inp_shexp = bind_l(L, il, "ffn_gate_inp_shexp.weight", false, E, 1, 0, false);
    }
    return L->err;
}

int model_load_gguf(model_gguf_t **gp, model_t **out)
{
    model_gguf_t *g = *gp;
    *gp = NULL;
    *out = NULL;
    model_t *m = xcalloc(1, sizeof(*m));
    m->gguf = g;
    loader_t L = {.g = g, .path = model_gguf_path(g)};
    L.arch = model_gguf_get_str(g, "general.architecture");
    int err;
    if (!L.arch) {
        LOG_ERR("%s: no general.architecture (supported: %s)", L.path, model_arch_supported());
        err = MODEL_E_ARCH;
        goto fail;
    }
    model_hparams_t *hp = &m->hp;
    if ((err = read_hparams(&L, hp)) != 0) goto fail;

    m->tok_embd = bind(&L, "token_embd.weight", true, hp->n_embd, 0, 0, false);
    if (!m->tok_embd) goto fail_l;
    hp->n_vocab = (int)m->tok_embd->ne[1];
    m->output_norm = bind(&L, "output_norm.weight", true, hp->n_embd, 1, 0, true);
    m->output = bind(&L, "output.weight", false, hp->n_embd, hp->n_vocab, 0, false);
    if (!m->output && !L.err) m->output = m->tok_embd; /* tied embeddings */
    if (L.err) goto fail_l;

    m->layers = xcalloc((size_t)hp->n_layer, sizeof(*m->layers));
    for (int il = 0; il < hp->n_layer; il++)
        if (bind_layer(&L, hp, il, &m->layers[il]) != 0) goto fail_l;
    *out = m;
    return 0;
fail_l:
    err = L.err ? L.err : MODEL_E_ARCH;
fail:
    model_free(m);
    return err;
}

int model_load(const char *path, model_t **out)
{
    model_gguf_t *g = NULL;
    *out = NULL;
    int err = model_gguf_open(path, &g);
    if (err) return err;
    return model_load_gguf(&g, out);
}

void model_free(model_t *m)
{
    if (!m) return;
    model_gguf_free(m->gguf);
    free(m->layers);
    free(m);
}
