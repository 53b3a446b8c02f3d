/* `moemesh-model upcycle`: the command-line face of model_upcycle. Lives in the library rather
 * than in main.c so its argument handling is tested; main.c only dispatches to it.
 *
 * Every number is parsed strictly (whole argument, in range), so a typo is a usage error rather
 * than a silently different model.
 */
#include "model/model.h"
#include "wire/wire.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_SCALES 256

static void usage(void)
{
    fprintf(stderr,
            "usage: moemesh-model upcycle CHECKPOINT.bin TOKENIZER.bin -o OUT.gguf [options]\n"
            "  Converts a llama2.c legacy checkpoint and its tokenizer into a GGUF (arch llama).\n"
            "  --experts E    experts, each a copy of the dense FFN (default 4; 0: dense model)\n"
            "  --top-k K      experts used per token (default 2, at most E)\n"
            "  --seed S       seed of the random router (default 1)\n"
            "  --scales a,b,..  E factors for the experts' down projections\n"
            "                 (default 0.9,0.97,1.03,1.1 for E=4, else spread over [0.9, 1.1])\n"
            "  --name NAME    general.name (default: llama dense, CHECKPOINT-moe for MoE)\n"
            "  --ctx N        llama.context_length (default: the checkpoint's seq_len)\n");
}

static bool parse_i64(const char *s, int64_t lo, int64_t hi, int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) return false;
    *out = v;
    return true;
}

static bool parse_u64(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    if (*s == '-') return false; /* strtoull would wrap it */
    unsigned long long v = strtoull(s, &end, 0);
    if (errno || end == s || *end) return false;
    *out = v;
    return true;
}

/* Parses "a,b,c" into scales; returns the count or -1 on a malformed list. */
static int parse_scales(const char *s, double *scales)
{
    int n = 0;
    for (;;) {
        char *end;
        errno = 0;
        double v = strtod(s, &end);
        if (errno || end == s || n == MAX_SCALES) return -1;
        scales[n++] = v;
        if (*end == 0) return n;
        if (*end != ',') return -1;
        s = end + 1;
    }
}

int model_cli_upcycle(int argc, char **argv)
{
    model_upcycle_params_t p = model_upcycle_params_default();
    const char *pos[2] = {NULL, NULL}, *out = NULL;
    double scales[MAX_SCALES];
    int n_scales = -1, n_pos = 0;
    bool top_k_set = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int64_t n;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage();
            return 0;
        }
        if (a[0] != '-' || a[1] == 0) {
            if (n_pos == 2) {
                fprintf(stderr, "upcycle: unexpected argument '%s'\n", a);
                goto bad;
            }
            pos[n_pos++] = a;
            continue;
        }
        if (!v) {
            fprintf(stderr, "upcycle: %s needs a value\n", a);
            goto bad;
        }
        i++;
        if (strcmp(a, "-o") == 0) {
            out = v;
        } else if (strcmp(a, "--experts") == 0 && parse_i64(v, 0, 256, &n)) {
            p.n_experts = (int)n;
        } else if (strcmp(a, "--top-k") == 0 && parse_i64(v, 1, 256, &n)) {
            p.n_used = (int)n;
            top_k_set = true;
        } else if (strcmp(a, "--seed") == 0 && parse_u64(v, &p.seed)) {
        } else if (strcmp(a, "--scales") == 0 && (n_scales = parse_scales(v, scales)) > 0) {
        } else if (strcmp(a, "--name") == 0) {
            p.name = v;
        } else if (strcmp(a, "--ctx") == 0 && parse_i64(v, 1, UINT32_MAX, &n)) {
            p.context_length = n;
        } else {
            fprintf(stderr, "upcycle: unknown option or bad value: %s %s\n", a, v);
            goto bad;
        }
    }
    if (n_pos != 2 || !out) {
        fprintf(stderr, "upcycle: need CHECKPOINT.bin, TOKENIZER.bin and -o OUT.gguf\n");
        goto bad;
    }
    /* A single expert can only be used alone; asking for the default 2 would be an error. */
    if (!top_k_set && p.n_used > p.n_experts) p.n_used = p.n_experts;
    if (n_scales >= 0) {
        if (n_scales != p.n_experts) {
            fprintf(stderr, "upcycle: %d scales given for %d experts\n", n_scales, p.n_experts);
            goto bad;
        }
        p.scales = scales;
    }
    int rc = model_upcycle(pos[0], pos[1], out, &p);
    if (rc) {
        fprintf(stderr, "upcycle: failed: %s\n", model_strerror(rc));
        return 1;
    }
    return 0;
bad:
    usage();
    return 2;
}
