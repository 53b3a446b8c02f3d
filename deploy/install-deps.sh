#!/bin/sh
# Installs every Debian 12 package moemesh needs to build, test and run.
# Idempotent: packages already present are skipped, and nothing runs when all are there.
# As root it calls apt-get; otherwise it prints the exact command to run and fails.
set -eu

PKGS="build-essential pkg-config
libzmq3-dev libprotobuf-c-dev protobuf-c-compiler
libuv1-dev libopenblas-dev libcriterion-dev
libpcre2-dev libjansson-dev node-llhttp
python3 python3-yaml curl gnuplot-nox iproute2
clang libclang-rt-14-dev"
# tests/deploy renders deploy/k8s with kubectl: Debian's (kubernetes-client, 1.20) only where
# no kubectl is installed, so a newer one from elsewhere is kept.
command -v kubectl >/dev/null 2>&1 || PKGS="$PKGS kubernetes-client"

missing=""
for p in $PKGS; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done

[ -z "$missing" ] && exit 0

cmd="apt-get install -y --no-install-recommends$missing"
if [ "$(id -u)" != 0 ]; then
    echo "install-deps: missing packages:$missing" >&2
    echo "install-deps: run as root: apt-get update && $cmd" >&2
    exit 1
fi

echo "install-deps: installing$missing" >&2
export DEBIAN_FRONTEND=noninteractive
# A fresh image has no package lists; a failed install is retried once after refreshing them.
if ! $cmd >/dev/null 2>&1; then
    apt-get update -qq
    $cmd
fi
