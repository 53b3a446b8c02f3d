#!/bin/sh
# Demo: builds the 4-expert TinyStories MoE (build/demo/stories-moe.gguf) from the llama2.c files
# in models/ and asks the coordinator for a story. Usage: models/demo.sh BIN_DIR, where BIN_DIR
# holds the moemesh programs (`make demo` passes build/bin). The model is rebuilt only when it
# is missing or older than one of its inputs, so repeated runs start generating at once.
set -eu

if [ $# -ne 1 ]; then
    echo "usage: $0 BIN_DIR   (the folder with moemesh-model and moemesh-coordinator)" >&2
    exit 2
fi

# Resolve BIN_DIR before moving to the repository root, so a relative path keeps working.
bin=$(cd "$1" 2>/dev/null && pwd) || {
    echo "demo: no such folder: $1" >&2
    exit 2
}
cd "$(dirname "$0")/.."

for prog in moemesh-model moemesh-coordinator; do
    if [ ! -x "$bin/$prog" ]; then
        echo "demo: $bin/$prog is missing; run 'make' first" >&2
        exit 1
    fi
done

ckpt=models/stories260K.bin
tok=models/tok512.bin
model=build/demo/stories-moe.gguf

# Out of date when missing, or when an input is newer (find -newer is POSIX; test -nt is not).
stale=no
if [ ! -f "$model" ]; then
    stale=yes
elif [ -n "$(find "$ckpt" "$tok" -newer "$model")" ]; then
    stale=yes
fi

if [ "$stale" = yes ]; then
    echo "demo: building $model (4 experts copied from the dense FFN, top-2 routing)"
    mkdir -p build/demo
    "$bin/moemesh-model" upcycle "$ckpt" "$tok" -o "$model" --experts 4 --top-k 2
else
    echo "demo: $model is up to date"
fi

echo "demo: generating 200 tokens from \"Once upon a time\" (seed 42; any other seed tells another story)"
exec "$bin/moemesh-coordinator" run -m "$model" -p "Once upon a time" -n 200 --seed 42
