#!/bin/sh
# A Kubernetes deployment of deploy/k8s without Kubernetes, for tests/deploy/simdeploy_test.c:
# each "pod" is a network namespace of its own, linked to the coordinator's by a veth pair, and
# the StatefulSet pod names resolve through /etc/netns/<ns>/hosts, which `ip netns exec` binds
# over /etc/hosts the way cluster DNS would answer. Every program gets exactly the environment
# the rendered manifests give its container (WORK/*.env, written by the C test) and the volume
# paths those manifests mount (bind mounts inside the pod's private mount namespace).
#
# usage: simdeploy.sh BIN_DIR WORK N_EXPERTS [restart]
#   WORK holds coordinator.env, expert-<i>.env, pod.env (HTTP_PORT, READY_PATH, LIVE_PATH,
#   MODEL_DIR, CACHE_DIR, GRACE_SECONDS) and models/ (the coordinator's model volume).
# Steps: start the experts and the coordinator, wait for readiness, check the probe paths and a
# chat completion; with "restart", kill expert pod 1, start it again on a new address (as a
# rescheduled pod would be) and require readiness and a chat completion once more; finally
# SIGTERM the coordinator and require it to exit within its grace period.
# Exit 0 on success, 77 when this machine cannot do it (not root, no ip netns), 1 on failure.
# Everything it creates carries the pid in its name and goes in the trap.
set -u

[ $# -ge 3 ] || { echo "usage: $0 BIN_DIR WORK N_EXPERTS [restart]" >&2; exit 2; }
BIN=$1 WORK=$2 N=$3 RESTART=${4:-}
[ "$(id -u)" = 0 ] || { echo "simdeploy: needs root (network namespaces)"; exit 77; }
command -v ip >/dev/null && command -v curl >/dev/null || { echo "simdeploy: needs ip and curl"; exit 77; }
. "$WORK/pod.env"

P=md$$                  # names: netns mmdeploy<pid>-*, veths md<pid>c<i>/md<pid>e<i>
NSC=mmdeploy$$-coord
PIDS=""
fail() { echo "simdeploy: FAIL: $*"; exit 1; }

MADE=""                 # volume mount points this run created on the host (removed at exit)
cleanup() {
    for p in $PIDS; do kill -9 "$p" 2>/dev/null; done
    for p in $PIDS; do wait "$p" 2>/dev/null; done
    for d in $MADE; do rmdir "$d" 2>/dev/null; done
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^mmdeploy$$-"); do
        ip netns del "$ns" 2>/dev/null
        rm -rf "/etc/netns/$ns"
    done
}
trap cleanup EXIT
trap 'exit 1' INT TERM

ip netns add "$NSC" || { echo "simdeploy: ip netns unavailable"; exit 77; }
ip -n "$NSC" link set lo up
mkdir -p "/etc/netns/$NSC"
printf '127.0.0.1 localhost\n' > "/etc/netns/$NSC/hosts"

# Pod i on subnet 10.77.<i>.0/24, address .2 (.3 after a restart), the coordinator at .1.
link_pod() { # i addr
    ns=mmdeploy$$-e$1
    ip netns add "$ns" 2>/dev/null
    ip -n "$ns" link set lo up
    ip link add "${P}c$1" type veth peer name "${P}e$1" || fail "veth"
    ip link set "${P}c$1" netns "$NSC"
    ip link set "${P}e$1" netns "$ns"
    ip -n "$NSC" addr add "10.77.$1.1/24" dev "${P}c$1"
    ip -n "$ns" addr add "10.77.$1.$2/24" dev "${P}e$1"
    ip -n "$NSC" link set "${P}c$1" up
    ip -n "$ns" link set "${P}e$1" up
}
# The DNS answer for pod i: the hosts file is rewritten in place (same inode, so the bind
# mount of a running coordinator sees it; glibc reads it on every lookup).
set_dns() { # i addr
    f=/etc/netns/$NSC/hosts
    grep -v " moemesh-expert-$1\.moemesh-expert\$" "$f" > "$f.new"
    printf '10.77.%s.%s moemesh-expert-%s.moemesh-expert\n' "$1" "$2" "$1" >> "$f.new"
    cat "$f.new" > "$f" && rm -f "$f.new"
}

# Runs a program in pod namespace ns with exactly the variables of envfile, the volume
# directory bound at its manifest path; stdout/stderr to log. Sets LAST to its pid.
start() { # ns envfile volume_src volume_dst log prog args...
    ns=$1 envf=$2 src=$3 dst=$4 log=$5
    shift 5
    # The mount point must exist on the shared root filesystem; only the mount is private.
    [ -d "$dst" ] || { mkdir -p "$dst" && MADE="$dst $MADE"; }
    ip netns exec "$ns" sh -c 'mount --bind "$1" "$2" || exit 1; shift 2; envf=$1; shift;
        IFS="
"; exec env -i $(cat "$envf") "$@"' sh "$src" "$dst" "$envf" "$@" > "$log" 2>&1 &
    LAST=$!
    PIDS="$PIDS $LAST"
}

start_expert() { # i addr
    ns=mmdeploy$$-e$1
    mkdir -p "$WORK/cache-$1"
    start "$ns" "$WORK/expert-$1.env" "$WORK/cache-$1" "$CACHE_DIR" "$WORK/expert-$1.log" \
        "$BIN/moemesh-expert"
    eval "EXPERT_$1=$LAST"
}

http() { # method path [body] -> prints "status body"
    if [ $# -ge 3 ]; then
        ip netns exec "$NSC" curl -s -m 60 -o "$WORK/body" -w '%{http_code}' -X "$1" \
            -H 'Content-Type: application/json' --data "$3" "http://127.0.0.1:$HTTP_PORT$2"
    else
        ip netns exec "$NSC" curl -s -m 10 -o "$WORK/body" -w '%{http_code}' "http://127.0.0.1:$HTTP_PORT$2"
    fi
}

wait_ready() { # seconds
    t=0
    while [ "$(http GET "$READY_PATH")" != 200 ]; do
        kill -0 "$COORD" 2>/dev/null || { cat "$WORK/coordinator.log"; fail "coordinator exited"; }
        t=$((t + 1))
        [ $t -le "$1" ] || { cat "$WORK/body"; echo; tail -n 20 "$WORK/coordinator.log"; fail "not ready within $1 s"; }
        sleep 1
    done
}

chat() {
    code=$(http POST /v1/chat/completions \
        '{"messages":[{"role":"user","content":"Tell me a story"}],"max_tokens":16,"temperature":0}')
    [ "$code" = 200 ] || { cat "$WORK/body"; echo; tail -n 20 "$WORK/coordinator.log"; fail "chat completion: HTTP $code"; }
    grep -q '"chat.completion"' "$WORK/body" && grep -q '"content"' "$WORK/body" ||
        fail "chat completion: unexpected body $(cat "$WORK/body")"
}

i=0
while [ $i -lt "$N" ]; do
    link_pod $i 2
    set_dns $i 2
    start_expert $i
    i=$((i + 1))
done
start "$NSC" "$WORK/coordinator.env" "$WORK/models" "$MODEL_DIR" "$WORK/coordinator.log" \
    "$BIN/moemesh-coordinator" serve
COORD=$LAST

# Liveness answers from the first moments (loading included); readiness once experts are placed.
t=0
until [ "$(http GET "$LIVE_PATH")" = 200 ]; do
    t=$((t + 1)); [ $t -le 30 ] || fail "$LIVE_PATH never answered 200"; sleep 1
done
wait_ready 120
[ "$(http GET /metrics)" = 200 ] || fail "/metrics"
grep -q "moemesh-expert-0" "$WORK/body" || fail "/metrics does not name the pods"
chat
echo "simdeploy: $N expert pods ready, probes answer, chat completion served"

if [ "$RESTART" = restart ]; then
    # The pod is deleted (SIGKILL, as a failed node would be) and comes back on another
    # address under the same name, with an empty cache volume as a rescheduled pod has.
    eval "kill -9 \$EXPERT_1; wait \$EXPERT_1" 2>/dev/null
    # A namespace outlives its last process only briefly, but its veth end (and so the pair)
    # lives as long as it does: delete the pair from our side so the new one can take its name.
    ip -n "$NSC" link del "${P}c1" 2>/dev/null
    ip netns del "mmdeploy$$-e1"
    rm -rf "$WORK/cache-1"
    link_pod 1 3
    set_dns 1 3
    start_expert 1
    # Readiness drops (the node is gone) and must come back without restarting the coordinator.
    t=0
    while [ "$(http GET "$READY_PATH")" = 200 ] && [ $t -lt 5 ]; do
        http POST /v1/completions '{"prompt":"Once","max_tokens":2}' >/dev/null
        t=$((t + 1)); sleep 1
    done
    wait_ready 120
    chat
    kill -0 "$COORD" || fail "the coordinator restarted"
    grep -q . "$WORK/expert-1.log"
    echo "simdeploy: expert pod 1 restarted on a new address, got its shard back, chat served"
fi

# Termination: SIGTERM drains within the pod's grace period.
kill -TERM "$COORD"
t=0
while kill -0 "$COORD" 2>/dev/null; do
    t=$((t + 1))
    [ $t -le "$GRACE_SECONDS" ] || fail "coordinator still running ${GRACE_SECONDS} s after SIGTERM"
    sleep 1
done
wait "$COORD"
rc=$?
[ $rc = 0 ] || { tail -n 20 "$WORK/coordinator.log"; fail "coordinator exited $rc after SIGTERM"; }
echo "simdeploy: coordinator drained and exited 0 after SIGTERM"
exit 0
