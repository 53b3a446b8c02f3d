/* libFuzzer target: the tokenizers (model/tok*.c) and the streaming detokenizer on arbitrary
 * bytes, with real vocabularies: the four of ../shared/tokenizer (SentencePiece with and
 * without byte fallback, byte-level BPE with the gpt-2 and deepseek-llm pre-tokenizers) and the
 * qwen2 pre-tokenizer of a golden model. The first input byte picks the vocabulary and the
 * flags, the rest is the text. Checks, besides memory safety: every id is inside the
 * vocabulary, the count is the same with a small and a large output buffer, and the ids
 * detokenize without error.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"
#include "wire/wire.h"

/* Relative to the repository root, where make runs the fuzzers. */
static const char *const vocab_files[] = {
    "../shared/tokenizer/ggml-vocab-llama-spm.gguf",
    "../shared/tokenizer/ggml-vocab-phi-3.gguf",
    "../shared/tokenizer/ggml-vocab-gpt-2.gguf",
    "../shared/tokenizer/ggml-vocab-deepseek-llm.gguf",
    "../shared/golden/qwen3moe-tiny-f32.gguf",
};
#define N_VOCAB (int)(sizeof(vocab_files) / sizeof(vocab_files[0]))
static model_tok_t *toks[N_VOCAB];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    for (int i = 0; i < N_VOCAB; i++) {
        model_gguf_t *g = NULL;
        if (model_gguf_open(vocab_files[i], &g) != 0 || model_tok_new(g, &toks[i]) != 0) {
            fprintf(stderr, "fuzz_tok: cannot build the tokenizer of %s\n", vocab_files[i]);
            abort();
        }
        model_gguf_free(g);
    }
    wire__log_level = -1; /* errors are expected outcomes here, not news */
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    const model_tok_t *t = toks[data[0] % N_VOCAB];
    bool bos = data[0] & 0x10, special = data[0] & 0x20;
    size_t len = size - 1;
    char *text = malloc(len ? len : 1); /* exact size: overreads are ASan's to see */
    memcpy(text, data + 1, len);

    int32_t small[4];
    int64_t n = model_tok_encode(t, text, len, bos, special, small, 4);
    if (n >= 0) {
        int32_t *ids = malloc(sizeof(int32_t) * (size_t)(n ? n : 1));
        int64_t n2 = model_tok_encode(t, text, len, bos, special, ids, n);
        if (n2 != n) abort(); /* the count must not depend on the buffer */
        model_detok_t *d = model_detok_new(t, special ? MODEL_DETOK_SPECIAL : 0);
        for (int64_t i = 0; i < n; i++) {
            if (ids[i] < 0 || ids[i] >= model_tok_n_vocab(t)) abort();
            const char *out;
            size_t k;
            if (model_detok_push(d, ids[i], &out, &k) != 0) abort();
            char piece[8];
            model_tok_piece(t, ids[i], special, piece, (int)sizeof(piece));
        }
        const char *out;
        size_t k;
        model_detok_flush(d, &out, &k);
        model_detok_free(d);
        free(ids);
    }
    free(text);
    return 0;
}
