/* `moemesh-model inspect FILE [--json]`: what a GGUF file holds, for people (text) and scripts
 * (one JSON object): architecture and every `<arch>.*` hyper-parameter, a tokenizer summary,
 * the tensor table, total and per-token active parameters, and expert vs other weight bytes.
 * Works on any file the reader accepts, vocab-only and dense ones included: nothing here
 * assumes a key or tensor exists.
 */
#include "model/model.h"
#include "wire/wire.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *type_name(kern_type_t t)
{
    const kern_type_info_t *ti = kern_type_info((int)t);
    return ti ? ti->name : "?";
}

/* ---- text ---- */

static void print_scalar(FILE *f, const model_gguf_value_t *v)
{
    switch (v->type) {
    case MODEL_GGUF_FLOAT32: case MODEL_GGUF_FLOAT64: fprintf(f, "%g", v->f); break;
    case MODEL_GGUF_BOOL: fputs(v->b ? "true" : "false", f); break;
    case MODEL_GGUF_STRING:
        fprintf(f, "\"%.60s%s\"", v->str.s, v->str.len > 60 ? "..." : "");
        break;
    case MODEL_GGUF_INT8: case MODEL_GGUF_INT16: case MODEL_GGUF_INT32: case MODEL_GGUF_INT64:
        fprintf(f, "%lld", (long long)v->i);
        break;
    case MODEL_GGUF_ARRAY:
        fprintf(f, "[%llu x %s]", (unsigned long long)v->arr.n, model_gguf_type_name(v->arr.type));
        break;
    default: fprintf(f, "%llu", (unsigned long long)v->u); break;
    }
}

static void print_value(FILE *f, const model_gguf_value_t *v)
{
    print_scalar(f, v);
    if (v->type != MODEL_GGUF_ARRAY || v->arr.type == MODEL_GGUF_ARRAY) return;
    fputs(" ", f);
    for (uint64_t i = 0; i < v->arr.n && i < 8; i++) {
        fputs(i ? ", " : "", f);
        print_scalar(f, &v->arr.v[i]);
    }
    if (v->arr.n > 8) fputs(", ...", f);
}

/* The text of token id from the vocabulary, or NULL. */
static const char *token_text(const model_gguf_t *g, int64_t id)
{
    const model_gguf_value_t *t = model_gguf_get_arr(g, "tokenizer.ggml.tokens", MODEL_GGUF_STRING);
    return t && id >= 0 && (uint64_t)id < t->arr.n ? t->arr.v[id].str.s : NULL;
}

static uint64_t arr_len(const model_gguf_t *g, const char *key)
{
    const model_gguf_value_t *a = model_gguf_get_arr(g, key, -1);
    return a ? a->arr.n : 0;
}

static void print_shape(FILE *f, const model_tensor_t *t)
{
    char buf[96];
    int n = 0;
    for (int d = 0; d < t->n_dims; d++)
        n += snprintf(buf + n, sizeof(buf) - (size_t)n, "%s%lld", d ? ", " : "[",
                      (long long)t->ne[d]);
    snprintf(buf + n, sizeof(buf) - (size_t)n, "]");
    fprintf(f, "%-22s", buf);
}

static bool is_arch_key(const char *key, const char *arch)
{
    size_t n = strlen(arch);
    return n && strncmp(key, arch, n) == 0 && key[n] == '.';
}

static void print_text(FILE *f, const model_gguf_t *g)
{
    model_weights_t w;
    model_weights_info(g, &w);
    const char *name = model_gguf_get_str(g, "general.name");
    fprintf(f, "file          %s\n", model_gguf_path(g));
    fprintf(f, "gguf          v%u, %d kvs, %d tensors, alignment %llu, data at %llu, %zu bytes\n",
            model_gguf_version(g), model_gguf_kv_count(g), model_gguf_tensor_count(g),
            (unsigned long long)model_gguf_alignment(g),
            (unsigned long long)model_gguf_data_offset(g), model_gguf_file_size(g));
    fprintf(f, "architecture  %s", *w.arch ? w.arch : "(none)");
    if (name) fprintf(f, " (%s)", name);
    int64_t ft;
    if (model_gguf_get_int(g, "general.file_type", &ft))
        fprintf(f, ", file type %lld", (long long)ft);
    fputs("\nhyper-parameters\n", f);
    for (int i = 0; i < model_gguf_kv_count(g); i++) {
        const model_gguf_kv_t *kv = model_gguf_kv(g, i);
        if (!is_arch_key(kv->key, w.arch)) continue;
        fprintf(f, "  %-44s ", kv->key + strlen(w.arch) + 1);
        print_value(f, &kv->val);
        fputc('\n', f);
    }

    const char *tm = model_gguf_get_str(g, "tokenizer.ggml.model");
    fprintf(f, "tokenizer     ");
    if (!tm) {
        fputs("(none)\n", f);
    } else {
        const char *pre = model_gguf_get_str(g, "tokenizer.ggml.pre");
        fprintf(f, "%s, pre %s, %llu tokens, %llu merges", tm, pre ? pre : "(none)",
                (unsigned long long)arr_len(g, "tokenizer.ggml.tokens"),
                (unsigned long long)arr_len(g, "tokenizer.ggml.merges"));
        static const char *const ids[] = {"bos", "eos"};
        for (int k = 0; k < 2; k++) {
            char key[64];
            snprintf(key, sizeof(key), "tokenizer.ggml.%s_token_id", ids[k]);
            int64_t id;
            if (!model_gguf_get_int(g, key, &id)) continue;
            const char *txt = token_text(g, id);
            fprintf(f, ", %s %lld \"%s\"", ids[k], (long long)id, txt ? txt : "?");
        }
        fputc('\n', f);
    }

    if (model_gguf_tensor_count(g) > 0) {
        fprintf(f, "tensors\n  %-36s %-5s %-22s %14s\n", "name", "type", "shape", "bytes");
        for (int i = 0; i < model_gguf_tensor_count(g); i++) {
            const model_tensor_t *t = model_gguf_tensor(g, i);
            fprintf(f, "  %-36s %-5s ", t->name, type_name(t->type));
            print_shape(f, t);
            fprintf(f, " %14zu\n", t->nbytes);
        }
    }
    fprintf(f, "parameters    total %llu, active per token %llu",
            (unsigned long long)w.total_params, (unsigned long long)w.active_params);
    if (w.n_expert) fprintf(f, " (%d of %d experts)", w.n_expert_used, w.n_expert);
    fprintf(f, "\nweights       %llu bytes: routed experts %llu (%.1f%%), other %llu\n",
            (unsigned long long)w.total_bytes, (unsigned long long)w.expert_bytes,
            w.total_bytes ? 100.0 * (double)w.expert_bytes / (double)w.total_bytes : 0.0,
            (unsigned long long)(w.total_bytes - w.expert_bytes));
    if (w.shared_bytes)
        fprintf(f, "shared        %llu bytes of shared experts (on the coordinator)\n",
                (unsigned long long)w.shared_bytes);
    if (w.kv_latent)
        fprintf(f, "kv cache      %llu bytes per token (f16): MLA, %d cached values per token "
                "and layer (latent + rope part)\n",
                (unsigned long long)w.kv_bytes_per_token, w.kv_latent);
    else if (w.kv_bytes_per_token)
        fprintf(f, "kv cache      %llu bytes per token (f16 K and V)\n",
                (unsigned long long)w.kv_bytes_per_token);
}

/* ---- JSON ---- */

/* jansson refuses invalid UTF-8; file strings may hold any bytes, so those become U+FFFD. */
static json_t *jstr(const char *s, size_t len)
{
    json_t *j = json_stringn(s, len);
    if (j) return j;
    char *clean = xmalloc(len * 3 + 1);
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c < 0x80) {
            clean[n++] = (char)c;
        } else {
            memcpy(clean + n, "\xef\xbf\xbd", 3);
            n += 3;
        }
    }
    j = json_stringn(clean, n);
    free(clean);
    return j;
}

static json_t *jvalue(const model_gguf_value_t *v)
{
    switch (v->type) {
    case MODEL_GGUF_FLOAT32: case MODEL_GGUF_FLOAT64: return json_real(v->f);
    case MODEL_GGUF_BOOL: return json_boolean(v->b);
    case MODEL_GGUF_STRING: return jstr(v->str.s, (size_t)v->str.len);
    case MODEL_GGUF_INT8: case MODEL_GGUF_INT16: case MODEL_GGUF_INT32: case MODEL_GGUF_INT64:
        return json_integer(v->i);
    case MODEL_GGUF_ARRAY: {
        json_t *a = json_array();
        for (uint64_t i = 0; i < v->arr.n; i++) json_array_append_new(a, jvalue(&v->arr.v[i]));
        return a;
    }
    default:
        return v->u > INT64_MAX ? json_real((double)v->u) : json_integer((json_int_t)v->u);
    }
}

static void print_json(FILE *f, const model_gguf_t *g)
{
    model_weights_t w;
    model_weights_info(g, &w);
    json_t *o = json_object();
    json_object_set_new(o, "file", jstr(model_gguf_path(g), strlen(model_gguf_path(g))));
    json_object_set_new(o, "version", json_integer(model_gguf_version(g)));
    json_object_set_new(o, "alignment", json_integer((json_int_t)model_gguf_alignment(g)));
    json_object_set_new(o, "data_offset", json_integer((json_int_t)model_gguf_data_offset(g)));
    json_object_set_new(o, "file_size", json_integer((json_int_t)model_gguf_file_size(g)));
    json_object_set_new(o, "architecture", jstr(w.arch, strlen(w.arch)));

    json_t *general = json_object(), *hp = json_object();
    for (int i = 0; i < model_gguf_kv_count(g); i++) {
        const model_gguf_kv_t *kv = model_gguf_kv(g, i);
        if (is_arch_key(kv->key, w.arch))
            json_object_set_new(hp, kv->key + strlen(w.arch) + 1, jvalue(&kv->val));
        else if (strncmp(kv->key, "general.", 8) == 0)
            json_object_set_new(general, kv->key + 8, jvalue(&kv->val));
    }
    json_object_set_new(o, "general", general);
    json_object_set_new(o, "hparams", hp);

    const char *tm = model_gguf_get_str(g, "tokenizer.ggml.model");
    if (tm) {
        json_t *t = json_object();
        json_object_set_new(t, "model", jstr(tm, strlen(tm)));
        const char *pre = model_gguf_get_str(g, "tokenizer.ggml.pre");
        json_object_set_new(t, "pre", pre ? jstr(pre, strlen(pre)) : json_null());
        json_object_set_new(t, "vocab_size",
                            json_integer((json_int_t)arr_len(g, "tokenizer.ggml.tokens")));
        json_object_set_new(t, "merges",
                            json_integer((json_int_t)arr_len(g, "tokenizer.ggml.merges")));
        int64_t id;
        json_object_set_new(t, "bos", model_gguf_get_int(g, "tokenizer.ggml.bos_token_id", &id)
                                          ? json_integer(id) : json_null());
        json_object_set_new(t, "eos", model_gguf_get_int(g, "tokenizer.ggml.eos_token_id", &id)
                                          ? json_integer(id) : json_null());
        json_object_set_new(o, "tokenizer", t);
    } else {
        json_object_set_new(o, "tokenizer", json_null());
    }

    json_t *ts = json_array();
    for (int i = 0; i < model_gguf_tensor_count(g); i++) {
        const model_tensor_t *t = model_gguf_tensor(g, i);
        json_t *shape = json_array();
        for (int d = 0; d < t->n_dims; d++) json_array_append_new(shape, json_integer(t->ne[d]));
        json_t *jt = json_object();
        json_object_set_new(jt, "name", jstr(t->name, strlen(t->name)));
        json_object_set_new(jt, "type", json_string(type_name(t->type)));
        json_object_set_new(jt, "shape", shape);
        json_object_set_new(jt, "bytes", json_integer((json_int_t)t->nbytes));
        json_array_append_new(ts, jt);
    }
    json_object_set_new(o, "tensors", ts);

    json_t *p = json_object();
    json_object_set_new(p, "total", json_integer((json_int_t)w.total_params));
    json_object_set_new(p, "active", json_integer((json_int_t)w.active_params));
    json_object_set_new(p, "expert", json_integer((json_int_t)w.expert_params));
    json_object_set_new(p, "n_expert", json_integer(w.n_expert));
    json_object_set_new(p, "n_expert_used", json_integer(w.n_expert_used));
    json_object_set_new(o, "params", p);
    json_t *b = json_object();
    json_object_set_new(b, "total", json_integer((json_int_t)w.total_bytes));
    json_object_set_new(b, "expert", json_integer((json_int_t)w.expert_bytes));
    json_object_set_new(b, "shared_expert", json_integer((json_int_t)w.shared_bytes));
    json_object_set_new(b, "kv_per_token_f16", json_integer((json_int_t)w.kv_bytes_per_token));
    json_object_set_new(b, "non_expert",
                        json_integer((json_int_t)(w.total_bytes - w.expert_bytes)));
    json_object_set_new(o, "bytes", b);

    json_dumpf(o, f, JSON_INDENT(1) | JSON_PRESERVE_ORDER);
    fputc('\n', f);
    json_decref(o);
}

int model_cli_inspect(int argc, char **argv)
{
    const char *path = NULL;
    bool json = false;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0) {
            json = true;
        } else if (argv[i][0] == '-' || path) {
            fprintf(stderr, "usage: moemesh-model inspect FILE [--json]\n");
            return 2;
        } else {
            path = argv[i];
        }
    }
    if (!path) {
        fprintf(stderr, "usage: moemesh-model inspect FILE [--json]\n");
        return 2;
    }
    model_gguf_t *g;
    int err = model_gguf_open(path, &g);
    if (err) {
        fprintf(stderr, "moemesh-model inspect: %s: %s\n", path, model_strerror(err));
        return 1;
    }
    if (json) print_json(stdout, g);
    else print_text(stdout, g);
    model_gguf_free(g);
    return 0;
}
