/* libFuzzer target: the GGUF reader (model/gguf.c) on arbitrary bytes held in memory, then what
 * the programs do next with a file that opened: every metadata and tensor accessor, the
 * tokenizer built from its metadata, and the model loader's architecture checks. Any input
 * must give a clean error code, never a crash, a read outside the buffer or a leak.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"
#include "wire/wire.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    wire__log_level = -1; /* every input is an error case: the messages would drown the output */
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* An exact-size copy, so a read past the end is ASan's to see, not the fuzzer's slack. */
    void *buf = malloc(size ? size : 1);
    memcpy(buf, data, size);
    model_gguf_t *g = NULL;
    if (model_gguf_open_mem(buf, size, "fuzz", &g) == 0) {
        int n = model_gguf_kv_count(g);
        for (int i = 0; i < n; i++) {
            const model_gguf_kv_t *kv = model_gguf_kv(g, i);
            int64_t iv;
            double fv;
            bool bv;
            model_gguf_get_int(g, kv->key, &iv);
            model_gguf_get_float(g, kv->key, &fv);
            model_gguf_get_bool(g, kv->key, &bv);
            model_gguf_get_str(g, kv->key);
            model_gguf_get_arr(g, kv->key, -1);
        }
        for (int i = 0; i < model_gguf_tensor_count(g); i++) {
            const model_tensor_t *t = model_gguf_tensor(g, i);
            if (t->nbytes) {
                /* The reader promises every tensor lies inside the buffer: touch both ends. */
                volatile uint8_t x = ((const uint8_t *)t->data)[0];
                x = ((const uint8_t *)t->data)[t->nbytes - 1];
                (void)x;
            }
            model_gguf_find_tensor(g, t->name);
        }
        char fp[64];
        model_fingerprint(g, fp, sizeof(fp));
        model_tok_t *tok = NULL;
        if (model_tok_new(g, &tok) == 0) {
            int32_t ids[64];
            model_tok_encode(tok, "Hello world <s>", 15, true, true, ids, 64);
            model_tok_free(tok);
        }
        model_t *m = NULL;
        if (model_load_gguf(&g, &m) == 0) model_free(m);
        model_gguf_free(g); /* NULL when the loader took it */
    }
    free(buf);
    return 0;
}
