#!/usr/bin/env bash
# Issue 19's fleet benchmark, one run: "runner 2" (an empty machine of the
# fleet) builds the Flask example with everything in the registry cache
# and pushes it; how long, and how many bytes it downloads, kiln against
# BuildKit 0.13 on the same local registry (behind the counting proxy).
#
#   bench/registry-cache.sh        # prints a markdown table on stdout
#
# kiln: runner 1 = an empty root, `--cache-to type=registry,...,mode=max
# --push`; runner 2 = another empty root with the base imported,
# `--cache-from type=registry,ref=... --push`. Also with the inline cache
# (`--cache-to type=inline`, `--cache-from IMAGE`).
# BuildKit 0.13 (Docker 26.1, fixtures/docker/start-dockerd-modern.sh):
# the engine's own `docker` driver, the one buildx uses without a
# builder container (a docker-container builder needs the moby/buildkit
# image from a registry, which this machine cannot reach). That driver
# cannot export a registry cache ("Cache export is not supported for the
# docker driver"), so BuildKit's runner 1 pushes with the inline cache
# (`--cache-to type=inline`) and runner 2 imports it (`--cache-from
# IMAGE`); runner 2 is the same daemon with the image removed and the
# build cache pruned (`builder prune -af`), the base kept, as on a fresh
# runner whose base is pre-pulled.
#
# Environment: KILN (default target/release/kiln; built unless
# KILN_PREBUILT=1), KILN_FIXTURES_CACHE. Needs root.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export KILN_FIXTURES_CACHE=${KILN_FIXTURES_CACHE:-/var/cache/kiln-fixtures}
KILN=${KILN:-$REPO/target/release/kiln}
D=$REPO/fixtures/docker/docker26
log() { echo "bench-registry-cache: $*" >&2; }

if [ -z "${KILN_PREBUILT:-}" ]; then
    (cd "$REPO" && cargo build --release -q -p kiln-builder)
fi
"$REPO/fixtures/bases/make-bases.sh" python >/dev/null
"$REPO/fixtures/flask/fetch-wheels.sh" >/dev/null
modern="$("$REPO/fixtures/docker/start-dockerd-modern.sh")"
export KILN_DOCKER_MODERN=${modern#DOCKER_HOST=}
"$REPO/fixtures/docker/load-bases.sh" --modern python >/dev/null

work="$(mktemp -d)"
cleanup() {
    [ -f "$work/reg/pid" ] && kill "$(cat "$work/reg/pid")" 2>/dev/null || true
    [ -n "${proxy_pid:-}" ] && kill "$proxy_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
"$REPO/fixtures/registry/start-registry.sh" "$work/reg"
mkdir -p "$work/proxy"
python3 "$REPO/fixtures/registry/counting-proxy.py" "$work/proxy" "$(cat "$work/reg/addr")" &
proxy_pid=$!
for _ in $(seq 100); do [ -s "$work/proxy/addr" ] && break; sleep 0.05; done
REG="$(tr -d '\n' <"$work/proxy/addr")"
cp -a "$REPO/fixtures/flask" "$work/ctx"

bytes() { cat "$work/proxy/bytes" 2>/dev/null || echo 0; }
now() { date +%s.%N; }
secs() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$2"; }
kib() { python3 -c "import sys; print(f'{(int(sys.argv[2]) - int(sys.argv[1])) / 1000:.1f} kB')" "$1" "$2"; }

kiln_root() { # DIR: an empty root with the base imported
    # Reproducibly, so that every runner has the same base image (as when
    # they pull it): a cache hit starts from the base's digest.
    SOURCE_DATE_EPOCH=1704067200 KILN_ROOT=$1 "$KILN" build -q -t python:3.11-slim \
        "$KILN_FIXTURES_CACHE/python-3.11-slim" >/dev/null
}

# runner2 ID LABEL CMD...: times CMD and counts the bytes the proxy sent
# back; its output goes to $work/ID.log.
runner2() {
    local id=$1 label=$2 b0 t0 t1 b1
    shift 2
    b0=$(bytes); t0=$(now)
    "$@" >"$work/$id.log" 2>&1 || { tail -n 20 "$work/$id.log" >&2; exit 1; }
    t1=$(now); b1=$(bytes)
    echo "| $label | $(secs "$t0" "$t1") s | $(kib "$b0" "$b1") |" >>"$work/rows"
    log "$id: $(secs "$t0" "$t1") s, $(kib "$b0" "$b1") downloaded"
}

# kiln, registry cache (mode=max) and inline cache.
for mode in registry inline; do
    r1=$work/kiln-$mode-1 r2=$work/kiln-$mode-2
    kiln_root "$r1"; kiln_root "$r2"
    img=$REG/kiln-$mode/app
    if [ $mode = registry ]; then
        to="type=registry,ref=$img:cache,mode=max" from="type=registry,ref=$img:cache"
    else
        to="type=inline" from="$img:1"
    fi
    KILN_ROOT=$r1 "$KILN" build -q --cache-to "$to" --push -t "$img:1" "$work/ctx" >/dev/null
    if [ $mode = registry ]; then label="kiln, registry cache (\`mode=max\`), lazy import"; else label="kiln, inline cache (\`--cache-from IMAGE\`)"; fi
    runner2 "run2-kiln-$mode" "$label" \
        env KILN_ROOT="$r2" "$KILN" build --progress=plain --cache-from "$from" --push -t "$img:2" "$work/ctx"
done

# BuildKit 0.13, inline cache through the docker driver.
img=$REG/buildkit/app
"$D" buildx build -q --network=host --cache-to type=inline --push -t "$img:1" "$work/ctx" >/dev/null
# Runner 2 has the base and nothing of the app: every image of this
# benchmark goes (earlier runs tagged theirs under other registry ports).
"$D" images --format '{{.Repository}}:{{.Tag}}' | grep '/buildkit/app:' | xargs -r "$D" rmi -f >/dev/null
"$D" image prune -f >/dev/null
"$D" builder prune -af >/dev/null
runner2 run2-buildkit "BuildKit 0.13, docker driver, inline cache (\`--cache-from IMAGE\`)" \
    "$D" buildx build --progress=plain --network=host --cache-from "$img:1" --push -t "$img:2" "$work/ctx"

# Every runner 2 hit the cache for the pip step (none ran pip again).
for f in "$work"/run2-*.log; do
    [ -f "$f" ] || continue
    if grep -q "Successfully installed" "$f"; then
        log "$(basename "$f"): the pip step ran again: not a cache hit"
        exit 1
    fi
done

echo "| runner 2: Flask example, everything cached, build + push ($(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg)) | time | downloaded |"
echo "|---|---:|---:|"
cat "$work/rows"
