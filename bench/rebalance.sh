#!/bin/sh
# Live re-placement, before and after, in one run: three expert nodes of really unequal speed
# (one thread each, capped by cgroup-v1 CPU quotas at 40 %, 20 % and 10 % of a core, declared
# to the coordinator as --node-cap 4,2,1; low enough that a loaded 2-core host still gives
# each node its whole quota, so the 4:2:1 is real), a model with skewed routing (moemesh-model gen
# --router-skew), the capacity-aware placement of an even load at start-up; a workload (rounds
# of PAR concurrent completions with long prompts), then POST /admin/rebalance (the placement
# for the load just seen, moved while serving), then the same workload again. Prints the
# imbalance the move planned (step time over a perfect split's), the tokens/s of both phases
# and their ratio. Needs root (cgroups), curl, bc, and `make` done. Ports 2741x..; logs in $OUT.
#
#   bench/rebalance.sh [ROUNDS [PAR]]        (defaults 6 rounds of 4)
# Environment: MAXTOK completion tokens per request (32), REPEAT prompt sentences (6, about 20
# tokens each), FF the experts' feed-forward width (2048), B the programs' folder, OUT logs.
# MAXTOK=1 REPEAT=12 makes prompt processing dominate: the expert nodes' compute, which the
# placement balances, is then most of a step; with long decodes the per-call latency of the
# throttled nodes (which placement does not model) weighs as much.
set -eu
ROUNDS=${1:-6}
PAR=${2:-4}
B=${B:-build/bin}
OUT=${OUT:-/tmp/moemesh-rebalance-$$}
CG=/sys/fs/cgroup/cpu/moemesh-rebalance-$$
mkdir -p "$OUT"
PIDS=""
cleanup() {
    for p in $PIDS; do kill "$p" 2>/dev/null || true; done
    sleep 0.3
    for q in 40 20 10; do rmdir "$CG-$q" 2>/dev/null || true; done
}
trap cleanup EXIT INT TERM

MODEL=$OUT/skew.gguf
"$B/moemesh-model" gen --arch qwen3moe --layers 8 --dim 256 --heads 8 --kv-heads 4 --experts 8 \
    --top-k 2 --expert-ff ${FF:-2048} --vocab 512 --type q8_0 --router-skew 3 -o "$MODEL" >/dev/null 2>&1

i=0
EPS=""
for q in 40 20 10; do
    mkdir -p "$CG-$q"
    echo 10000 > "$CG-$q/cpu.cfs_period_us" # short periods: a slow CPU, not a stalling one
    echo $((q * 100)) > "$CG-$q/cpu.cfs_quota_us"
    port=$((27410 + i))
    sh -c "echo \$\$ > $CG-$q/cgroup.procs; exec $B/moemesh-expert -t 1 -l tcp://127.0.0.1:$port" \
        >"$OUT/node$i.out" 2>"$OUT/node$i.log" &
    PIDS="$PIDS $!"
    EPS="$EPS --expert-node 127.0.0.1:$port"
    i=$((i + 1))
done
HTTP=27419
# shellcheck disable=SC2086
"$B/moemesh-coordinator" serve -m "$MODEL" --port $HTTP -np "$PAR" -t 1 --node-cap 4,2,1 \
    $EPS >"$OUT/coord.out" 2>"$OUT/coord.log" &
PIDS="$PIDS $!"
for _ in $(seq 100); do
    curl -sf "127.0.0.1:$HTTP/health" >/dev/null 2>&1 && break
    sleep 0.2
done

PROMPT=$(printf 'Once upon a time there was a little robot who liked to count the stars. %.0s' \
    $(seq "${REPEAT:-6}"))
BODY="{\"prompt\":\"$PROMPT\",\"max_tokens\":${MAXTOK:-32},\"temperature\":0}"

# Runs the workload; prints "tokens seconds".
phase() {
    t0=$(date +%s.%N)
    tok=0
    for _ in $(seq "$ROUNDS"); do
        cur=""
        for k in $(seq "$PAR"); do
            curl -s "127.0.0.1:$HTTP/v1/completions" -d "$BODY" >"$OUT/r$k.json" &
            cur="$cur $!"
        done
        # shellcheck disable=SC2086
        wait $cur # not the servers
        for k in $(seq "$PAR"); do
            n=$(sed -n 's/.*"total_tokens":\([0-9]*\).*/\1/p' "$OUT/r$k.json")
            tok=$((tok + ${n:-0}))
        done
    done
    t1=$(date +%s.%N)
    echo "$tok $(echo "$t1 - $t0" | bc -l)"
}

phase >/dev/null # warm-up (and load for the plan)
set -- $(phase)
TA=$1 SA=$2
R=$(curl -s -XPOST "127.0.0.1:$HTTP/admin/rebalance")
echo "rebalance: $R"
for _ in $(seq 600); do
    curl -s "127.0.0.1:$HTTP/metrics" | grep -q '^moemesh:rebalance_running 0' && break
    sleep 0.1
done
set -- $(phase)
TB=$1 SB=$2
curl -s "127.0.0.1:$HTTP/metrics" | grep '^moemesh:rebalance\|^moemesh:node_experts'
echo "before: $TA tokens in $SA s = $(echo "$TA / $SA" | bc -l | cut -c1-7) tokens/s"
echo "after:  $TB tokens in $SB s = $(echo "$TB / $SB" | bc -l | cut -c1-7) tokens/s"
echo "ratio after/before: $(echo "($TB / $SB) / ($TA / $SA)" | bc -l | cut -c1-6)"
