#!/usr/bin/env bash
# bench/speed.sh: issue 10's single-machine speed table, reproducible in one command.
#
# Writes (once, with random but valid quantized blocks, which is all speed depends on) the
# issue's test shape: qwen3moe with Qwen3-30B-A3B's per-layer shape at half the depth (24
# layers, dim 2048, 32/4 heads of 128, 40 experts top-8 of width 768, vocabulary 151936), once
# all Q8_0 (5.97 GB) and once in llama.cpp's Q4_K_M mix (3.4 GB). Then runs
# `moemesh-bench model` (llama-bench's pp512 / tg128) on both, for each thread count, and
# prints our figures beside llama.cpp's reference figures from the issue (Q8_0 only: the issue
# gives none for Q4_K_M).
#
#   bench/speed.sh [--dir DIR (/tmp/moemesh-speed)] [--runs R (5)] [--threads 1,2]
#                  [--types q8_0,q4_k_m] [--bin DIR (build/bin)]
#
# Needs ~10 GB free in DIR the first time; the files are kept for the next run. Speed figures
# are only worth a quiet machine: the script prints the load average it started under.
set -euo pipefail

dir=/tmp/moemesh-speed runs=5 threads=1,2 types=q8_0,q4_k_m bin=build/bin
while [ $# -gt 0 ]; do
    case "$1" in
    --dir) dir=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --types) types=$2; shift 2 ;;
    --bin) bin=$2; shift 2 ;;
    *) echo "usage: $0 [--dir DIR] [--runs R] [--threads 1,2] [--types q8_0,q4_k_m] [--bin DIR]" >&2
       exit 2 ;;
    esac
done
mkdir -p "$dir"

# llama.cpp's figures from the issue (llama-bench, CPU build with native flags, this machine
# kind, the Q8_0 file): pp512 and tg128 tok/s by thread count.
ref_pp() { case "$1" in 1) echo 30.6 ;; 2) echo 58.1 ;; *) echo - ;; esac; }
ref_tg() { case "$1" in 1) echo 13.5 ;; 2) echo 18.8 ;; *) echo - ;; esac; } # 2: mid of 17.6-20.0

shape=(--arch qwen3moe --layers 24 --dim 2048 --heads 32 --kv-heads 4 --head-dim 128
       --experts 40 --top-k 8 --expert-ff 768 --vocab 151936)

echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
for type in ${types//,/ }; do
    f="$dir/qwen3moe-a3b-half-$type.gguf"
    if [ ! -s "$f" ]; then
        echo "writing $f (random blocks)..."
        "$bin/moemesh-model" gen "${shape[@]}" --type "$type" --random-blocks -o "$f.part"
        mv "$f.part" "$f"
    fi
    echo
    echo "## $type ($f)"
    echo "| threads | pp512 tok/s | llama.cpp | ratio | tg128 tok/s | llama.cpp | ratio | of floor |"
    echo "|---|---|---|---|---|---|---|---|"
    for t in ${threads//,/ }; do
        line=$("$bin/moemesh-bench" model -m "$f" -t "$t" -p 512 -n 128 -r "$runs" --json)
        read -r pp tg fl < <(python3 -c 'import json,sys; j=json.loads(sys.argv[1]); print(j["pp"], j["tg"], j["tg_of_floor"])' "$line")
        rp=- rt=- qp=- qt=-
        if [ "$type" = q8_0 ]; then
            rp=$(ref_pp "$t") rt=$(ref_tg "$t")
            [ "$rp" != - ] && qp=$(python3 -c "print(f'{$pp/$rp:.2f}x')")
            [ "$rt" != - ] && qt=$(python3 -c "print(f'{$tg/$rt:.2f}x')")
        fi
        printf '| %s | %.1f | %s | %s | %.1f | %s | %s | %.0f%% |\n' "$t" "$pp" "$rp" "$qp" "$tg" "$rt" \
            "$qt" "$(python3 -c "print($fl*100)")"
    done
done
echo
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
