/* Tests for model/inspect.c and model/cli_plan.c: the subcommands' output and exit statuses.
 * inspect --json must be one valid JSON object agreeing with the reader on every shared file. */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <glob.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model/model.h"
#include "wire/wire.h"

/* Runs a subcommand with stdout sent to a temporary file; returns its exit status and the
 * output in *out (malloc'd, NUL-terminated). */
static int run_captured(int (*cmd)(int, char **), int argc, char **argv, char **out)
{
    char path[64];
    snprintf(path, sizeof(path), "/tmp/moemesh-inspect-test-%d.out", (int)getpid());
    fflush(stdout);
    int saved = dup(1), fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0600);
    cr_assert(saved >= 0 && fd >= 0);
    dup2(fd, 1);
    close(fd);
    int rc = cmd(argc, argv);
    fflush(stdout);
    dup2(saved, 1);
    close(saved);
    FILE *f = fopen(path, "rb");
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    *out = malloc((size_t)n + 1);
    cr_assert_eq(fread(*out, 1, (size_t)n, f), (size_t)n);
    (*out)[n] = 0;
    fclose(f);
    unlink(path);
    return rc;
}

static void check_json(const char *path)
{
    char *argv[] = {"inspect", (char *)path, "--json", NULL}, *out;
    cr_assert_eq(run_captured(model_cli_inspect, 3, argv, &out), 0, "%s", path);
    json_error_t jerr;
    json_t *o = json_loads(out, 0, &jerr);
    cr_assert(o && json_is_object(o), "%s: %s", path, jerr.text);
    free(out);

    model_gguf_t *g;
    cr_assert_eq(model_gguf_open(path, &g), 0);
    cr_assert_str_eq(json_string_value(json_object_get(o, "architecture")),
                     model_gguf_get_str(g, "general.architecture"));
    json_t *ts = json_object_get(o, "tensors");
    cr_assert_eq(json_array_size(ts), (size_t)model_gguf_tensor_count(g));
    uint64_t total = 0;
    for (int i = 0; i < model_gguf_tensor_count(g); i++) {
        const model_tensor_t *t = model_gguf_tensor(g, i);
        json_t *jt = json_array_get(ts, (size_t)i);
        cr_assert_str_eq(json_string_value(json_object_get(jt, "name")), t->name);
        cr_assert_eq(json_integer_value(json_object_get(jt, "bytes")), (json_int_t)t->nbytes);
        cr_assert_eq(json_array_size(json_object_get(jt, "shape")), (size_t)t->n_dims);
        total += (uint64_t)(t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3]);
    }
    json_t *params = json_object_get(o, "params");
    cr_assert_eq(json_integer_value(json_object_get(params, "total")), (json_int_t)total);
    cr_assert_leq(json_integer_value(json_object_get(params, "active")), (json_int_t)total);
    json_t *tok = json_object_get(o, "tokenizer");
    const model_gguf_value_t *toks = model_gguf_get_arr(g, "tokenizer.ggml.tokens", -1);
    cr_assert_eq(json_integer_value(json_object_get(tok, "vocab_size")), (json_int_t)toks->arr.n);
    int64_t block_count;
    char key[96];
    snprintf(key, sizeof(key), "%s.block_count", model_gguf_get_str(g, "general.architecture"));
    if (model_gguf_get_int(g, key, &block_count))
        cr_assert_eq(json_integer_value(json_object_get(json_object_get(o, "hparams"),
                                                        "block_count")), block_count);
    model_gguf_free(g);
    json_decref(o);
}

Test(model_cli, inspect_json_agrees_with_the_reader_on_every_shared_file)
{
    static const char *const globs[] = {"../shared/golden/*.gguf",
                                        "../shared/models/llama2-tiny-random-gguf/*.gguf",
                                        "../shared/tokenizer/*.gguf"};
    int n = 0;
    for (int k = 0; k < 3; k++) {
        glob_t gl;
        cr_assert_eq(glob(globs[k], 0, NULL, &gl), 0);
        for (size_t i = 0; i < gl.gl_pathc; i++, n++) check_json(gl.gl_pathv[i]);
        globfree(&gl);
    }
    cr_assert_geq(n, 25);
}

Test(model_cli, inspect_text_and_usage)
{
    wire__log_level = -1;
    char *argv[] = {"inspect", "../shared/golden/qwen2moe-tiny-f32.gguf", NULL}, *out;
    cr_assert_eq(run_captured(model_cli_inspect, 2, argv, &out), 0);
    cr_assert(strstr(out, "architecture  qwen2moe"));
    cr_assert(strstr(out, "blk.3.ffn_down_shexp.weight"));
    cr_assert(strstr(out, "(2 of 8 experts)"));
    free(out);
    char *none[] = {"inspect", NULL};
    cr_assert_eq(run_captured(model_cli_inspect, 1, none, &out), 2);
    free(out);
    char *missing[] = {"inspect", "/nonexistent.gguf", NULL};
    cr_assert_eq(run_captured(model_cli_inspect, 2, missing, &out), 1);
    free(out);
}

Test(model_cli, plan_statuses)
{
    wire__log_level = -1;
    char *out;
    char *ok[] = {"plan", "../shared/golden/mixtral-tiny-q8_0.gguf", "--nodes", "3", NULL};
    cr_assert_eq(run_captured(model_cli_plan, 4, ok, &out), 0);
    cr_assert(strstr(out, "layer 3"));
    cr_assert(strstr(out, "node 2"));
    free(out);
    char *tight[] = {"plan", "../shared/golden/mixtral-tiny-q8_0.gguf", "--nodes", "2",
                     "--node-mem", "0.0001,0.0001", NULL};
    cr_assert_eq(run_captured(model_cli_plan, 6, tight, &out), 1);
    free(out);
    char *bad[] = {"plan", "../shared/golden/mixtral-tiny-q8_0.gguf", "--nodes", "2",
                   "--node-mem", "1,2,3", NULL};
    cr_assert_eq(run_captured(model_cli_plan, 6, bad, &out), 2);
    free(out);
    char *zero[] = {"plan", "../shared/golden/mixtral-tiny-q8_0.gguf", "--nodes", "0", NULL};
    cr_assert_eq(run_captured(model_cli_plan, 4, zero, &out), 2);
    free(out);
}
