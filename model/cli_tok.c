/* cli_tok.c — `moemesh-model tokenize` and `moemesh-model detokenize`: the tokenizer of a GGUF
 * file on standard input, for checking prompts against llama.cpp by hand and for timing.
 *
 *   tokenize FILE.gguf [--ids-only] [--special] [--bos]   UTF-8 (any bytes) on stdin;
 *       prints "id 'piece'" per line, or the ids space-separated on one line with --ids-only.
 *   detokenize FILE.gguf [--special] [ID ...]             ids from the arguments or stdin;
 *       prints the text (streamed through model_detok, so it is byte-exact).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/tok-int.h"
#include "wire/wire.h"

static model_tok_t *open_tok(const char *path)
{
    model_gguf_t *g = NULL;
    int rc = model_gguf_open(path, &g);
    if (rc) {
        fprintf(stderr, "moemesh-model: %s: %s\n", path, model_strerror(rc));
        return NULL;
    }
    model_tok_t *t = NULL;
    rc = model_tok_new(g, &t);
    model_gguf_free(g);
    if (rc) fprintf(stderr, "moemesh-model: %s: no usable tokenizer: %s\n", path,
                    model_strerror(rc));
    return t;
}

/* All of stdin; *len bytes. */
static char *read_all(FILE *f, size_t *len)
{
    size_t cap = 1 << 16, n = 0;
    char *b = xmalloc(cap);
    size_t k;
    while ((k = fread(b + n, 1, cap - n, f)) > 0) {
        n += k;
        if (n == cap) b = xrealloc(b, cap *= 2);
    }
    *len = n;
    return b;
}

/* Prints s quoted, with non-printable bytes escaped, so every piece is visible on one line. */
static void print_quoted(const char *s, int n)
{
    putchar('\'');
    for (int i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\n') fputs("\\n", stdout);
        else if (c == '\t') fputs("\\t", stdout);
        else if (c == '\\' || c == '\'') printf("\\%c", c);
        else if (c < 0x20 || c == 0x7F) printf("\\x%02x", c);
        else putchar(c);
    }
    putchar('\'');
}

int model_cli_tokenize(int argc, char **argv)
{
    const char *path = NULL;
    bool ids_only = false, special = false, bos = false;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--ids-only") == 0) ids_only = true;
        else if (strcmp(argv[i], "--special") == 0) special = true;
        else if (strcmp(argv[i], "--bos") == 0) bos = true;
        else if (argv[i][0] != '-' && !path) path = argv[i];
        else {
            fprintf(stderr, "moemesh-model tokenize: unknown argument '%s'\n", argv[i]);
            return 2;
        }
    }
    if (!path) {
        fprintf(stderr, "usage: moemesh-model tokenize FILE.gguf [--ids-only] [--special] "
                        "[--bos] < text\n");
        return 2;
    }
    model_tok_t *t = open_tok(path);
    if (!t) return 1;
    size_t len;
    char *text = read_all(stdin, &len);
    int64_t n = model_tok_encode(t, text, len, bos, special, NULL, 0);
    int32_t *ids = n > 0 ? xmalloc((size_t)n * sizeof(*ids)) : NULL;
    if (n > 0) n = model_tok_encode(t, text, len, bos, special, ids, n);
    if (n < 0) {
        fprintf(stderr, "moemesh-model tokenize: %s\n", model_strerror((int)n));
    } else if (ids_only) {
        for (int64_t i = 0; i < n; i++) printf(i ? " %d" : "%d", ids[i]);
        putchar('\n');
    } else {
        char piece[1024];
        for (int64_t i = 0; i < n; i++) {
            int k = model_tok_piece(t, ids[i], true, piece, sizeof(piece));
            printf("%6d ", ids[i]);
            print_quoted(piece, k < (int)sizeof(piece) ? k : (int)sizeof(piece));
            putchar('\n');
        }
    }
    free(ids);
    free(text);
    model_tok_free(t);
    return n < 0 ? 1 : 0;
}

static int put_id(model_detok_t *d, const char *s)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (end == s || *end || errno || v < INT32_MIN || v > INT32_MAX) {
        fprintf(stderr, "moemesh-model detokenize: '%s' is not a token id\n", s);
        return -EINVAL;
    }
    const char *out;
    size_t n;
    if (model_detok_push(d, (int32_t)v, &out, &n)) {
        fprintf(stderr, "moemesh-model detokenize: %ld is outside the vocabulary\n", v);
        return -EINVAL;
    }
    fwrite(out, 1, n, stdout);
    return 0;
}

int model_cli_detokenize(int argc, char **argv)
{
    const char *path = NULL;
    bool special = false;
    int first_id = argc;
    for (int i = 1; i < argc && first_id == argc; i++) {
        if (strcmp(argv[i], "--special") == 0) special = true;
        else if (!path && argv[i][0] != '-') path = argv[i];
        else first_id = i;
    }
    if (!path) {
        fprintf(stderr, "usage: moemesh-model detokenize FILE.gguf [--special] [ID ...]\n");
        return 2;
    }
    model_tok_t *t = open_tok(path);
    if (!t) return 1;
    model_detok_t *d = model_detok_new(t, special ? MODEL_DETOK_SPECIAL : 0);
    int rc = 0;
    if (first_id < argc) {
        for (int i = first_id; i < argc && rc == 0; i++) rc = put_id(d, argv[i]);
    } else {
        size_t len;
        char *in = read_all(stdin, &len);
        in = xrealloc(in, len + 1);
        in[len] = 0;
        for (char *tok = strtok(in, " \t\r\n,"); tok && rc == 0; tok = strtok(NULL, " \t\r\n,"))
            rc = put_id(d, tok);
        free(in);
    }
    const char *out;
    size_t n;
    model_detok_flush(d, &out, &n);
    fwrite(out, 1, n, stdout);
    model_detok_free(d);
    model_tok_free(t);
    return rc ? 1 : 0;
}
