/* `moemesh-model gen`: parses the generator's options into model_gen_params_t and calls
 * model_gen_write (model/gen.c). Every number is range-checked there; here only its syntax. */
#include "model/model.h"
#include "wire/wire.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int usage(void)
{
    fprintf(stderr,
            "usage: moemesh-model gen --arch qwen3moe|qwen2moe|llama|olmoe|deepseek2|glm4moe|gpt-oss\n"
            "         --layers L --dim D\n"
            "         --heads H --kv-heads K [--head-dim HD] --experts E --top-k K\n"
            "         --expert-ff F [--shared-ff S] --vocab V\n"
            "         --type f32|f16|bf16|q8_0|q4_0|q4_1|q5_0|q5_1|q4_k|q5_k|q6_k|q4_k_m\n"
            "         [--seed S] [--ctx C] [--name NAME] [--threads N] [--router-skew S]\n"
            "         [--random-blocks]\n"
            "         -o FILE\n"
            "  Deterministic random-weight MoE model; --shared-ff only (and always) for "
            "qwen2moe.\n"
            "  deepseek2 / glm4moe: [--dense-layers N --dense-ff F] [--shared-experts N]\n"
            "         [--gating 1|2 (softmax|sigmoid+bias)] [--groups G --groups-used U]\n"
            "         [--expert-scale S] [--expert-norm 0|1] [--rope-dim R]\n"
            "         [--yarn-factor F [--yarn-log-mul M]]\n"
            "  deepseek2 only: --kv-lora-rank R [--q-lora-rank Q] [--v-head-dim V]\n"
            "  gpt-oss: [--sliding-window W (default 128)] [--yarn-factor F]; experts MXFP4,\n"
            "         --type for the other matrices\n"
            "  --router-skew S (0..20): uneven routing, expert (l mod E) of layer l hottest.\n"
            "  --random-blocks: quantized matrices as random but valid blocks written directly\n"
            "         (finite scales of realistic size, random quants) instead of quantizing\n"
            "         float rows: a speed-test file of any size at disk speed (speed depends on\n"
            "         shapes and types only; outputs are noise). Not with --router-skew.\n");
    return 2;
}

static bool parse_i64(const char *s, int64_t *out)
{
    char *end;
    long long v = strtoll(s, &end, 10);
    if (end == s || *end) return false;
    *out = v;
    return true;
}

int model_cli_gen(int argc, char **argv)
{
    model_gen_params_t p = {0};
    const char *out = NULL;
    int64_t v;
    static const struct {
        const char *flag;
        size_t offset;
    } ints[] = {
        {"--layers", offsetof(model_gen_params_t, n_layers)},
        {"--dim", offsetof(model_gen_params_t, n_embd)},
        {"--heads", offsetof(model_gen_params_t, n_head)},
        {"--kv-heads", offsetof(model_gen_params_t, n_head_kv)},
        {"--head-dim", offsetof(model_gen_params_t, head_dim)},
        {"--experts", offsetof(model_gen_params_t, n_expert)},
        {"--top-k", offsetof(model_gen_params_t, n_expert_used)},
        {"--expert-ff", offsetof(model_gen_params_t, expert_ff)},
        {"--shared-ff", offsetof(model_gen_params_t, shared_ff)},
        {"--vocab", offsetof(model_gen_params_t, n_vocab)},
        {"--threads", offsetof(model_gen_params_t, n_threads)},
        {"--dense-layers", offsetof(model_gen_params_t, n_dense_lead)},
        {"--dense-ff", offsetof(model_gen_params_t, dense_ff)},
        {"--shared-experts", offsetof(model_gen_params_t, n_shared)},
        {"--gating", offsetof(model_gen_params_t, gating)},
        {"--groups", offsetof(model_gen_params_t, n_groups)},
        {"--groups-used", offsetof(model_gen_params_t, n_group_used)},
        {"--rope-dim", offsetof(model_gen_params_t, rope_dim)},
        {"--kv-lora-rank", offsetof(model_gen_params_t, kv_lora_rank)},
        {"--q-lora-rank", offsetof(model_gen_params_t, q_lora_rank)},
        {"--v-head-dim", offsetof(model_gen_params_t, v_head_dim)},
        {"--sliding-window", offsetof(model_gen_params_t, sliding_window)},
    };
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--random-blocks") == 0) { /* the one flag without a value */
            p.random_blocks = true;
            continue;
        }
        if (i + 1 >= argc) return usage();
        const char *flag = argv[i], *val = argv[++i];
        bool done = false;
        for (size_t k = 0; k < sizeof(ints) / sizeof(ints[0]) && !done; k++) {
            if (strcmp(flag, ints[k].flag) != 0) continue;
            if (!parse_i64(val, &v) || v < 0 || v > (1 << 30)) {
                fprintf(stderr, "moemesh-model gen: %s wants a non-negative integer, got '%s'\n",
                        flag, val);
                return 2;
            }
            *(int *)((char *)&p + ints[k].offset) = (int)v;
            done = true;
        }
        if (done) continue;
        if (strcmp(flag, "--arch") == 0) {
            p.arch = val;
        } else if (strcmp(flag, "--name") == 0) {
            p.name = val;
        } else if (strcmp(flag, "-o") == 0) {
            out = val;
        } else if (strcmp(flag, "--type") == 0) {
            int t = model_gen_type_from_name(val);
            if (t < 0) {
                fprintf(stderr, "moemesh-model gen: unknown --type '%s'\n", val);
                return usage();
            }
            p.type = (kern_type_t)t;
        } else if (strcmp(flag, "--expert-norm") == 0 && parse_i64(val, &v) && v >= 0 && v <= 1) {
            p.expert_norm = v == 1;
        } else if ((strcmp(flag, "--expert-scale") == 0 || strcmp(flag, "--yarn-factor") == 0 ||
                    strcmp(flag, "--yarn-log-mul") == 0)) {
            char *end;
            float f = strtof(val, &end);
            if (end == val || *end) return usage();
            *(flag[2] == 'e' ? &p.expert_scale : flag[7] == 'f' ? &p.yarn_factor
                                                                : &p.yarn_log_mul) = f;
        } else if (strcmp(flag, "--seed") == 0 && parse_i64(val, &v)) {
            p.seed = (uint64_t)v;
        } else if (strcmp(flag, "--router-skew") == 0) {
            char *end;
            p.router_skew = strtod(val, &end);
            if (end == val || *end || !(p.router_skew >= 0 && p.router_skew <= 20)) {
                fprintf(stderr, "moemesh-model gen: --router-skew wants 0..20, got '%s'\n", val);
                return 2;
            }
        } else if (strcmp(flag, "--ctx") == 0 && parse_i64(val, &v) && v > 0) {
            p.n_ctx = v;
        } else {
            return usage();
        }
    }
    if (!out || !p.arch) return usage();
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int err = model_gen_write(&p, out);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (err) {
        fprintf(stderr, "moemesh-model gen: %s: %s\n", out, model_strerror(err));
        return 1;
    }
    fprintf(stderr, "moemesh-model gen: wrote %s in %.1f s\n", out,
            (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec));
    return 0;
}
