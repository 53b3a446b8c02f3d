#!/bin/sh
# A cluster in a box: N expert "hosts" as network namespaces on one machine, each behind a link
# with its own bandwidth (tc tbf) and round-trip time (moemesh-bench proxy; netem is missing on
# these kernels), plus one coordinator namespace holding the bridge they hang off.
#
#   cluster.sh up N [--rtt MS] [--rate MBIT] [--model FILE] [--bin DIR] [--state DIR]
#                   [--threads T]
#   cluster.sh status [--state DIR]
#   cluster.sh down   [--state DIR]
#
# Layout, for a cluster id like mm4711 (from our pid, so parallel clusters never clash):
#
#   mm4711-c   coordinator namespace: bridge "br0" at 10.213.0.1/24, lo up; run the coordinator
#              here (`ip netns exec mm4711-c moemesh-coordinator ...`, or setns as the sweep does)
#   mm4711-nI  expert host I: "eth0" at 10.213.0.(10+I)/24, a veth into br0; the expert node
#              listens on 127.0.0.1:5556 and `moemesh-bench proxy` relays 10.213.0.(10+I):5555
#              to it, delaying each direction by RTT/2; tbf caps both ends of the veth at RATE
#
# Addresses exist only inside those namespaces; the root namespace only briefly holds each veth
# pair before both ends move. STATE (default /tmp/moemesh-cluster) gets cluster.env (what `down`
# removes), endpoints (one HOST:PORT per line, for --expert-nodes), and each process's log.
# `up` undoes itself on any failure or Ctrl-C; `down` is idempotent.
set -eu

usage() {
    sed -n '6,9p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

die() {
    echo "cluster.sh: $*" >&2
    exit 1
}

cmd=${1:-}
[ -n "$cmd" ] || usage
shift

n=0
rtt=0
rate=0
model=${MOEMESH_MODEL:-}
bin=
threads=1
state=/tmp/moemesh-cluster
if [ "$cmd" = up ]; then
    [ $# -ge 1 ] || usage
    n=$1
    shift
fi
while [ $# -gt 0 ]; do
    [ $# -ge 2 ] || usage
    case $1 in
    --rtt) rtt=$2 ;;
    --rate) rate=$2 ;;
    --model) model=$2 ;;
    --bin) bin=$2 ;;
    --state) state=$2 ;;
    --threads) threads=$2 ;;
    *) usage ;;
    esac
    shift 2
done

[ "$(id -u)" -eq 0 ] ||
    die "needs root (it creates network namespaces, veth links and tc qdiscs); run it with" \
        "sudo, or use 'moemesh-bench sweep --loopback' which needs no privileges"
command -v ip >/dev/null && command -v tc >/dev/null || die "needs ip and tc (Debian: iproute2)"

# Stops a process we started (by its pid from cluster.env): TERM, up to 5 s, then KILL.
stop_pid() {
    kill -TERM "$1" 2>/dev/null || return 0
    t=0
    while kill -0 "$1" 2>/dev/null && [ $t -lt 50 ]; do
        sleep 0.1
        t=$((t + 1))
    done
    kill -KILL "$1" 2>/dev/null || true
}

# Removes everything cluster.env names; safe to run twice and on a half-built cluster.
down() {
    [ -f "$state/cluster.env" ] || return 0
    # shellcheck disable=SC1091
    . "$state/cluster.env"
    for p in ${PIDS:-}; do stop_pid "$p"; done
    for ns in ${NAMESPACES:-}; do
        # Anything still inside a namespace we made was started by us (ip netns exec).
        for p in $(ip netns pids "$ns" 2>/dev/null); do stop_pid "$p"; done
        ip netns del "$ns" 2>/dev/null || true
    done
    for l in ${LINKS:-}; do ip link del "$l" 2>/dev/null || true; done
    rm -f "$state/cluster.env" "$state/endpoints"
}

status() {
    if [ ! -f "$state/cluster.env" ]; then
        echo "no cluster (state $state)"
        return 0
    fi
    # shellcheck disable=SC1091
    . "$state/cluster.env"
    echo "cluster $ID: $NODES nodes, RTT $RTT ms, rate ${RATE} Mbit/s (0: unlimited), state $state"
    for ns in $NAMESPACES; do
        if ip netns list | grep -q "^$ns\\b"; then
            echo "  $ns: $(ip netns exec "$ns" ip -4 -o addr show scope global |
                awk '{print $4}' | tr '\n' ' ')"
        else
            echo "  $ns: missing"
        fi
    done
    for p in $PIDS; do
        if kill -0 "$p" 2>/dev/null; then echo "  pid $p running"; else echo "  pid $p gone"; fi
    done
    echo "endpoints: $(tr '\n' ' ' <"$state/endpoints" 2>/dev/null)"
}

# Appends one NAME=value line to cluster.env, so a failure half-way still leaves a full record.
record() { printf '%s="%s"\n' "$1" "$2" >>"$state/cluster.env"; }

# tbf on dev's egress in namespace ns; burst of 10 ms of traffic, at least a few packets.
shape() {
    burst=$(awk -v r="$rate" 'BEGIN { b = r * 1e6 / 8 / 100; if (b < 16000) b = 16000; printf "%d", b }')
    ip netns exec "$1" tc qdisc add dev "$2" root tbf rate "${rate}mbit" burst "$burst" latency 100ms
}

# Waits up to 30 s for "listening on" in a log; the log's tail is the error otherwise.
wait_listening() {
    t=0
    until grep -q "listening on" "$1" 2>/dev/null; do
        t=$((t + 1))
        [ $t -le 300 ] || die "not listening after 30 s: $1: $(tail -n 2 "$1" 2>/dev/null)"
        sleep 0.1
    done
}

up() {
    case $n in '' | *[!0-9]*) die "N must be a number of nodes (1..64)" ;; esac
    [ "$n" -ge 1 ] && [ "$n" -le 64 ] || die "N must be 1..64"
    awk -v r="$rtt" -v b="$rate" 'BEGIN { exit !(r + 0 == r && r >= 0 && b + 0 == b && b >= 0) }' ||
        die "--rtt and --rate are numbers >= 0"
    [ -n "$model" ] && [ -r "$model" ] || die "--model FILE (or MOEMESH_MODEL) must name a GGUF"
    [ -n "$bin" ] || bin=$(cd "$(dirname "$0")/../../build/bin" 2>/dev/null && pwd) || true
    for p in moemesh-expert moemesh-bench; do
        [ -x "$bin/$p" ] || die "$bin/$p is missing: run make, or pass --bin DIR"
    done
    model=$(cd "$(dirname "$model")" && pwd)/$(basename "$model")
    bin=$(cd "$bin" && pwd)
    mkdir -p "$state"
    [ ! -f "$state/cluster.env" ] || die "a cluster is already up in $state: 'cluster.sh down' first"

    id=mm$$
    c=$id-c
    trap 'trap - EXIT INT TERM; echo "cluster.sh: up failed; removing what it made" >&2; down; exit 1' EXIT
    trap 'exit 130' INT TERM
    : >"$state/cluster.env"
    record ID "$id"
    record NODES "$n"
    record RTT "$rtt"
    record RATE "$rate"
    record NAMESPACES "$c"
    ns_list=$c
    pids=
    links=
    ip netns add "$c"
    ip -n "$c" link set lo up
    ip -n "$c" link add br0 type bridge
    ip -n "$c" addr add 10.213.0.1/24 dev br0
    ip -n "$c" link set br0 up
    : >"$state/endpoints"
    half=$(awk -v r="$rtt" 'BEGIN { printf "%g", r / 2 }')
    i=0
    while [ $i -lt "$n" ]; do
        ns=$id-n$i
        ns_list="$ns_list $ns"
        sed -i "s/^NAMESPACES=.*/NAMESPACES=\"$ns_list\"/" "$state/cluster.env"
        ip netns add "$ns"
        ip -n "$ns" link set lo up
        # Both ends are made in the root namespace and leave it at once; LINKS lets `down`
        # delete a pair stranded there by a failure between the two commands.
        links="$links ${id}a$i"
        record LINKS "$links"
        ip link add "${id}a$i" type veth peer name "${id}b$i"
        ip link set "${id}a$i" netns "$c"
        ip link set "${id}b$i" netns "$ns"
        ip -n "$c" link set "${id}a$i" master br0 up
        ip -n "$ns" link set "${id}b$i" name eth0
        addr=10.213.0.$((10 + i))
        ip -n "$ns" addr add "$addr/24" dev eth0
        ip -n "$ns" link set eth0 up
        if [ "$(awk -v b="$rate" 'BEGIN { print (b > 0) }')" = 1 ]; then
            shape "$c" "${id}a$i"
            shape "$ns" eth0
        fi
        ip netns exec "$ns" "$bin/moemesh-expert" -l tcp://127.0.0.1:5556 -m "$model" \
            -t "$threads" --name "node-$i" >"$state/expert-$i.log" 2>&1 &
        pids="$pids $!"
        record PIDS "$pids"
        ip netns exec "$ns" "$bin/moemesh-bench" proxy --listen "$addr:5555" \
            --to 127.0.0.1:5556 --delay-ms "$half" >"$state/proxy-$i.log" 2>&1 &
        pids="$pids $!"
        record PIDS "$pids"
        echo "$addr:5555" >>"$state/endpoints"
        i=$((i + 1))
    done
    i=0
    while [ $i -lt "$n" ]; do
        wait_listening "$state/expert-$i.log"
        wait_listening "$state/proxy-$i.log"
        i=$((i + 1))
    done
    trap - EXIT INT TERM
    echo "cluster $id up: $n nodes, RTT $rtt ms, rate $rate Mbit/s (0: unlimited); coordinator" \
        "namespace $c; endpoints in $state/endpoints"
}

case $cmd in
up) up ;;
down) down ;;
status) status ;;
*) usage ;;
esac
