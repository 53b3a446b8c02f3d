#!/bin/sh
# Demo: builds the 4-expert TinyStories MoE (build/demo/stories-moe.gguf) from the llama2.c files
# in models/, starts two expert nodes on 127.0.0.1 (ephemeral ports, logs in
# build/demo/node-*.log) and asks the coordinator for a story whose routed experts run on those
# nodes; the coordinator then says which node served which experts, the round-trip times and the
# bytes on the wire. Usage: models/demo.sh BIN_DIR, where BIN_DIR holds the moemesh programs
# (`make demo` passes build/bin). The model is rebuilt only when it is missing or older than one
# of its inputs, so repeated runs start generating at once. The nodes are killed on exit.
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

for prog in moemesh-model moemesh-coordinator moemesh-expert; do
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

# Two expert nodes in the background; each prints "listening on tcp://127.0.0.1:PORT" on stdout
# once bound. Killed whatever way this script ends.
pids=
cleanup() {
    for p in $pids; do kill "$p" 2>/dev/null || true; done
    for p in $pids; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

endpoints=
for i in 0 1; do
    rm -f "build/demo/node-$i.addr"
    "$bin/moemesh-expert" -l 'tcp://127.0.0.1:*' --name "demo-node-$i" \
        >"build/demo/node-$i.addr" 2>"build/demo/node-$i.log" &
    pids="$pids $!"
    # Wait up to 10 s for the "listening on" line.
    ep=
    tries=0
    while [ -z "$ep" ]; do
        ep=$(sed -n 's/^listening on \(tcp:[^ ]*\).*/\1/p' "build/demo/node-$i.addr" 2>/dev/null)
        [ -n "$ep" ] && break
        tries=$((tries + 1))
        if [ "$tries" -gt 100 ] || ! kill -0 "$!" 2>/dev/null; then
            echo "demo: expert node $i did not start; its log (build/demo/node-$i.log):" >&2
            cat "build/demo/node-$i.log" >&2
            exit 1
        fi
        sleep 0.1
    done
    echo "demo: expert node $i listening on $ep (log: build/demo/node-$i.log)"
    endpoints="$endpoints --expert-node $ep"
done

echo "demo: generating 200 tokens from \"Once upon a time\" through the two nodes (seed 42; any other seed tells another story)"
# shellcheck disable=SC2086 # endpoints is a list of flags
"$bin/moemesh-coordinator" run -m "$model" -p "Once upon a time" -n 200 --seed 42 $endpoints
