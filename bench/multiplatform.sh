#!/usr/bin/env bash
# One run of a two-platform build (linux/amd64 + linux/arm64, arm64 RUN
# steps under QEMU user emulation), cold and cached, kiln against BuildKit
# 0.13 (Docker 26.1, fixtures/docker/start-dockerd-modern.sh).
#
#   bench/multiplatform.sh            # prints a markdown table on stdout
#
# BuildKit: Docker's own (docker) driver refuses `--platform a,b` without
# the containerd image store ("Multi-platform build is not supported for
# the docker driver"), and a docker-container builder needs the
# moby/buildkit image from a registry, which this machine cannot reach. So
# BuildKit's figure is its two single-platform builds started at once on
# the one daemon (`docker buildx build --platform linux/amd64` and
# `... linux/arm64`, both `--output type=tar`), which is what a
# multi-platform solve does inside BuildKit: the platforms run in
# parallel. Cold = `--no-cache` (the bases stay loaded; the engine is
# shared with the tests, so its cache is never pruned); cached = the same
# build again.
# kiln: `kiln build --platform linux/amd64,linux/arm64 --output type=tar`
# in a fresh KILN_ROOT with the two bases imported (cold), then again
# (cached).
#
# Environment: KILN (default target/release/kiln; built unless
# KILN_PREBUILT=1), KILN_FIXTURES_CACHE. Needs root, the busybox and
# busybox-arm64 fixtures and qemu-aarch64 registered (all made here).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export KILN_FIXTURES_CACHE=${KILN_FIXTURES_CACHE:-/var/cache/kiln-fixtures}
KILN=${KILN:-$REPO/target/release/kiln}
CASE=$REPO/bench/cases/twoplatform
D=$REPO/fixtures/docker/docker26
log() { echo "bench-multiplatform: $*" >&2; }

if [ -z "${KILN_PREBUILT:-}" ]; then
    (cd "$REPO" && cargo build --release -q -p kiln-builder)
fi
"$REPO/fixtures/bases/make-bases.sh" busybox busybox-arm64 >/dev/null
"$REPO/fixtures/binfmt/register.sh" aarch64
modern="$("$REPO/fixtures/docker/start-dockerd-modern.sh")"
export KILN_DOCKER_MODERN=${modern#DOCKER_HOST=}
"$REPO/fixtures/docker/load-bases.sh" --modern busybox busybox-arm64 >/dev/null
"$D" tag busybox:latest bb-amd64:latest
"$D" tag busybox-arm64:latest bb-arm64:latest

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export KILN_ROOT=$work/kiln-root
"$KILN" build -q --platform linux/amd64 -t bb-amd64:latest "$KILN_FIXTURES_CACHE/busybox" >/dev/null
"$KILN" build -q --platform linux/arm64 -t bb-arm64:latest "$KILN_FIXTURES_CACHE/busybox-arm64" >/dev/null

now() { date +%s.%N; }
secs() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$2"; }

kiln_build() {
    "$KILN" build -q --platform linux/amd64,linux/arm64 \
        --output "type=tar,dest=$work/kiln.tar" "$CASE" >/dev/null
}
buildkit_build() {
    local p pids=()
    for p in amd64 arm64; do
        "$D" buildx build -q --network=host "$@" --platform "linux/$p" \
            --output "type=tar,dest=$work/bk-$p.tar" "$CASE" >/dev/null &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p"; done
}

t0=$(now); kiln_build; t1=$(now); kiln_build; t2=$(now)
kiln_cold=$(secs "$t0" "$t1"); kiln_cached=$(secs "$t1" "$t2")
log "kiln: cold ${kiln_cold}s, cached ${kiln_cached}s"
t0=$(now); buildkit_build --no-cache; t1=$(now); buildkit_build; t2=$(now)
bk_cold=$(secs "$t0" "$t1"); bk_cached=$(secs "$t1" "$t2")
log "BuildKit 0.13: cold ${bk_cold}s, cached ${bk_cached}s"

# Both made the same arm64 result (the emulated steps really ran).
tar -xOf "$work/kiln.tar" linux_arm64/machine | grep -qx aarch64
tar -xOf "$work/bk-arm64.tar" machine | grep -qx aarch64

echo "| two-platform build (linux/amd64,linux/arm64; $(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg)) | cold | cached |"
echo "|---|---|---|"
echo "| kiln (\`kiln build --platform linux/amd64,linux/arm64\`) | ${kiln_cold} s | ${kiln_cached} s |"
echo "| BuildKit 0.13 (two platforms at once on Docker 26.1) | ${bk_cold} s | ${bk_cached} s |"
