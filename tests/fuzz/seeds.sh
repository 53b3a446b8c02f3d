#!/bin/sh
# Regenerates the committed seed corpora in tests/fuzz/corpus/ (run from the repository root
# after `make all fuzz-build`). Seeds are small on purpose: whole tiny inputs of every kind plus
# truncations of real ones, so libFuzzer starts from the formats' structure, not from noise.
set -eu
C=tests/fuzz/corpus
rm -rf $C && mkdir -p $C/gguf $C/wire $C/http $C/tok
tmp=$(mktemp -d) && trap 'rm -rf "$tmp"' EXIT

# gguf: tiny generated models of three architectures, their halves, and the first bytes of
# real files (header and metadata only: the reader must fail cleanly on every cut).
for a in qwen3moe qwen2moe llama; do
    s=""; [ $a = qwen2moe ] && s="--shared-ff 32"
    build/bin/moemesh-model gen --arch $a --layers 1 --dim 32 --heads 2 --kv-heads 1 \
        --experts 2 --top-k 1 --expert-ff 32 $s --vocab 300 --type q8_0 --ctx 32 \
        -o $C/gguf/$a.gguf >/dev/null 2>&1
    n=$(wc -c < $C/gguf/$a.gguf)
    head -c $((n / 2)) $C/gguf/$a.gguf > $C/gguf/$a-half.gguf
done
for f in ../shared/golden/deepseek2-tiny-f32.gguf ../shared/golden/olmoe-tiny-f32.gguf \
         ../shared/tokenizer/ggml-vocab-llama-spm.gguf; do
    b=$(basename $f .gguf)
    head -c 600 $f > $C/gguf/$b-600.gguf
    head -c 4096 $f > $C/gguf/$b-4k.gguf
done

# wire: one message of each kind, as wire_msg_send frames it.
FUZZ_WIRE_SEEDS=$C/wire build/fuzz/fuzz_wire >/dev/null 2>&1

# http: requests every route accepts, and a few the parser must refuse.
r() { printf "$2" > $C/http/$1; }
r health 'GET /health HTTP/1.1\r\nHost: x\r\n\r\n'
r models 'GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer fuzz-key\r\n\r\n'
r metrics 'GET /metrics HTTP/1.1\r\nAuthorization: Bearer fuzz-key\r\n\r\n'
body='{"prompt":"Once upon a time","max_tokens":2,"temperature":0,"stop":["x"],"logprobs":2}'
r completions "POST /v1/completions HTTP/1.1\r\nAuthorization: Bearer fuzz-key\r\nContent-Type: application/json\r\nContent-Length: ${#body}\r\n\r\n$body"
body='{"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":[{"type":"text","text":"Hi"}]}],"max_tokens":2,"stream":true,"seed":1,"top_p":0.9}'
r chat "POST /v1/chat/completions HTTP/1.1\r\nAuthorization: Bearer fuzz-key\r\nContent-Length: ${#body}\r\n\r\n$body"
body='{"content":"Hello <s> world","add_special":true,"with_pieces":true}'
r tokenize "POST /tokenize HTTP/1.1\r\nAuthorization: Bearer fuzz-key\r\nContent-Length: ${#body}\r\n\r\n$body"
body='{"tokens":[1,200,300,5]}'
r detokenize "POST /detokenize HTTP/1.1\r\nAuthorization: Bearer fuzz-key\r\nContent-Length: ${#body}\r\n\r\n$body"
r chunked 'POST /tokenize HTTP/1.1\r\nAuthorization: Bearer fuzz-key\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n5\r\n{"con\r\n9\r\ntent":"a"\r\n1\r\n}\r\n0\r\n\r\n'
r pipelined 'GET /health HTTP/1.1\r\n\r\nOPTIONS /v1/models HTTP/1.1\r\nOrigin: http://a\r\n\r\nGET /nope HTTP/1.0\r\n\r\n'
r badjson 'POST /v1/completions HTTP/1.1\r\nAuthorization: Bearer fuzz-key\r\nContent-Length: 12\r\n\r\n{"prompt":[1'
r noauth 'POST /v1/completions HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}'
r badline 'GET /health HTTP/9.9 junk\r\n\r\n'

# tok: test strings of the vocabularies' reference files; the first byte picks the
# vocabulary (mod 5) and the flags (0x10 BOS, 0x20 special).
python3 - "$C/tok" <<'PY'
import sys, glob
out = sys.argv[1]
sep = b"\n__ggml_vocab_test__\n"
k = 0
for i, f in enumerate(sorted(glob.glob("../shared/tokenizer/*.inp"))):
    cases = [c for c in open(f, "rb").read().split(sep) if c][:12]
    for j, c in enumerate(cases):
        sel = bytes([(k % 5) | (0x30 if j % 3 == 0 else 0)])
        open(f"{out}/case-{k:03d}", "wb").write(sel + c[:256])
        k += 1
open(f"{out}/special", "wb").write(b"\x21<s>[INST] hi [/INST]</s><|endoftext|><|im_start|>")
PY
du -sh $C/*
