# shellcheck shell=bash disable=SC2034  # variables used by the scripts that source this
# Shared by bench/run.sh and bench/scaling.sh: where things live, how each
# tool is installed, started, reset to "cold" and asked to build.
#
# Isolation: the benchmark never touches the state other people use on the
# machine. It runs
#   - its own dockerd (own --data-root, --exec-root, socket and pid file),
#     started with the same flags as fixtures/docker/start-dockerd.sh
#     (--bridge=none --iptables=false --ip-masq=false), so pruning BuildKit's
#     cache for a cold run cannot remove anybody else's;
#   - buildah with its own --root/--runroot;
#   - kiln with its own KILN_ROOT.
# All three live under $BENCH_STATE (default /var/lib/kiln-bench).

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$BENCH_DIR/.." && pwd)"
FIXTURES_CACHE=${KILN_FIXTURES_CACHE:-/var/cache/kiln-fixtures}
export KILN_FIXTURES_CACHE=$FIXTURES_CACHE
BENCH_STATE=${BENCH_STATE:-/var/lib/kiln-bench}
BENCH_RUNDIR=${BENCH_RUNDIR:-/run/kiln-bench}
# Generated contexts (deterministic, large): kept between runs, not in git.
BENCH_CACHE=${BENCH_CACHE:-/var/cache/kiln-bench}
RESULTS=${BENCH_RESULTS:-$BENCH_DIR/results}

DOCKER=${DOCKER:-/usr/bin/docker}
DOCKER_SOCK=$BENCH_RUNDIR/docker.sock
export DOCKER_HOST=${BENCH_DOCKER_HOST:-unix://$DOCKER_SOCK}
export DOCKER_BUILDKIT=1
BUILDAH=(buildah --root "$BENCH_STATE/buildah" --runroot "$BENCH_RUNDIR/buildah"
    --storage-driver "${BENCH_BUILDAH_DRIVER:-overlay}")

KILN_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
KILN=${KILN:-$KILN_TARGET_DIR/release/kiln}
KILN_TEMPLATE=$BENCH_STATE/kiln-template   # a root with the bases imported, never built into
KILN_ROOT_DIR=$BENCH_STATE/kiln-root       # the root the timed builds use
export KILN_ROOT=$KILN_ROOT_DIR

log() { echo "bench: $*" >&2; }
die() { echo "bench: error: $*" >&2; exit 1; }

apt_install() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing with apt-get: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
}

# ------------------------------------------------------------------ kiln ----

build_kiln() {
    if [ -n "${KILN_PREBUILT:-}" ]; then
        [ -x "$KILN" ] || die "KILN_PREBUILT set but $KILN is not executable"
        return
    fi
    log "cargo build --release -p kiln-builder (target dir $KILN_TARGET_DIR)"
    (cd "$REPO" && CARGO_TARGET_DIR=$KILN_TARGET_DIR cargo build --release -q -p kiln-builder)
    [ -x "$KILN" ] || die "no kiln binary at $KILN"
}

# The template root: bases imported once. Remade when the kiln binary or
# the base tarballs change (the stamp holds their digests).
setup_kiln() {
    build_kiln
    local stamp want
    want="$(sha256sum "$KILN" "$FIXTURES_CACHE"/busybox/rootfs.tar \
        "$FIXTURES_CACHE"/python-3.11-slim/rootfs.tar | sha256sum | cut -c1-64)"
    stamp=$KILN_TEMPLATE.stamp
    if [ -d "$KILN_TEMPLATE" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        log "kiln: template root up to date ($KILN_TEMPLATE)"
        return
    fi
    log "kiln: importing the bases into a template root ($KILN_TEMPLATE)"
    rm -rf "$KILN_TEMPLATE" "$stamp"
    KILN_ROOT=$KILN_TEMPLATE KILN=$KILN "$REPO/fixtures/bases/import-into-kiln.sh" busybox python \
        >"$BENCH_STATE/kiln-import.log" 2>&1 || {
        tail -n 20 "$BENCH_STATE/kiln-import.log" >&2
        die "kiln could not import the bases"
    }
    echo "$want" >"$stamp"
}

# Cold for kiln: a fresh root that holds the two bases and nothing else (a
# copy of the template, so no cache records, no stat cache, no images but
# the bases). Equivalent to a new machine after import-into-kiln.sh.
reset_kiln() {
    rm -rf "$KILN_ROOT_DIR"
    cp -a "$KILN_TEMPLATE" "$KILN_ROOT_DIR"
}

build_kiln_img() { # TAG CONTEXT
    if [ -n "${BENCH_RSS_FILE:-}" ]; then
        # Peak RSS of kiln (and of the processes it waited for), in KiB.
        /usr/bin/time -f %M -o "$BENCH_RSS_FILE" "$KILN" build -q --network host -t "$1" "$2"
    else
        "$KILN" build -q --network host -t "$1" "$2"
    fi
}

# ----------------------------------------------- kiln-native, kiln-rootless ----

# kiln with copied snapshots instead of overlayfs (KILN_SNAPSHOTTER=native),
# as root, in a root of its own made from the same template.
KILN_NATIVE_ROOT=$BENCH_STATE/kiln-native-root
setup_kiln_native() { setup_kiln; }
reset_kiln-native() {
    rm -rf "$KILN_NATIVE_ROOT"
    cp -a "$KILN_TEMPLATE" "$KILN_NATIVE_ROOT"
}
build_kiln-native_img() { # TAG CONTEXT
    KILN_ROOT=$KILN_NATIVE_ROOT KILN_SNAPSHOTTER=native "$KILN" build -q --network host -t "$1" "$2"
}

# kiln as an ordinary user (fixtures/rootless/make-users.sh: kiln-rl, with
# a subordinate range): the store in its XDG_DATA_HOME, a copy of a
# template the user imported the bases into (through kiln save / load of
# the root template, so both hold the same base images). The binaries are
# copied where the user can run them, kiln-helper beside kiln as installed.
ROOTLESS_USER=kiln-rl
RL_DIR=$BENCH_STATE/rootless
RL_AS=(setpriv --reuid "$ROOTLESS_USER" --regid "$ROOTLESS_USER" --init-groups
    env -i PATH=/usr/bin:/bin HOME="$RL_DIR/home" XDG_DATA_HOME="$RL_DIR/home")
setup_kiln_rootless() {
    setup_kiln
    "$REPO/fixtures/rootless/make-users.sh" >/dev/null
    mkdir -p "$RL_DIR/bin"
    chmod 755 "$BENCH_STATE" "$RL_DIR" "$RL_DIR/bin"
    install -m 755 "$KILN" "$RL_DIR/bin/kiln"
    [ -x "$(dirname "$KILN")/kiln-helper" ] &&
        install -m 755 "$(dirname "$KILN")/kiln-helper" "$RL_DIR/bin/kiln-helper"
    local stamp want
    want="$(cat "$KILN_TEMPLATE.stamp")"
    stamp=$RL_DIR/template.stamp
    if [ -d "$RL_DIR/template" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
        log "kiln-rootless: template store up to date"
        return
    fi
    log "kiln-rootless: loading the bases into $ROOTLESS_USER's template store"
    rm -rf "$RL_DIR/template" "$RL_DIR/home"
    mkdir -p "$RL_DIR/home"
    chown "$ROOTLESS_USER:$ROOTLESS_USER" "$RL_DIR/home"
    local img tar=$RL_DIR/bases.tar
    for img in busybox:latest python:3.11-slim; do
        KILN_ROOT=$KILN_TEMPLATE "$KILN" save -o "$tar" "$img"
        chmod 644 "$tar"
        "${RL_AS[@]}" "$RL_DIR/bin/kiln" load -i "$tar" >/dev/null
        # Unpacked, as the root template's bases are (import-into-kiln.sh
        # builds them): a cold run must not pay for the base's snapshot.
        mkdir -p "$RL_DIR/warm"
        printf 'FROM %s\nRUN echo kiln-bench-warm-up\n' "$img" >"$RL_DIR/warm/Dockerfile"
        chmod -R a+rX "$RL_DIR/warm"
        "${RL_AS[@]}" "$RL_DIR/bin/kiln" build -q "$RL_DIR/warm" >/dev/null
    done
    rm -rf "$tar" "$RL_DIR/warm"
    mv "$RL_DIR/home/kiln" "$RL_DIR/template"
    echo "$want" >"$stamp"
}
reset_kiln-rootless() {
    rm -rf "$RL_DIR/home/kiln"
    cp -a "$RL_DIR/template" "$RL_DIR/home/kiln"
}
build_kiln-rootless_img() { # TAG CONTEXT
    "${RL_AS[@]}" "$RL_DIR/bin/kiln" build -q --network host -t "$1" "$2"
}

# ---------------------------------------------------------------- docker ----

start_docker() {
    if [ -n "${BENCH_DOCKER_HOST:-}" ]; then
        "$DOCKER" info >/dev/null 2>&1 || die "no docker engine answers at $BENCH_DOCKER_HOST"
        return
    fi
    if ! command -v dockerd >/dev/null 2>&1 || [ ! -x "$DOCKER" ]; then
        apt_install docker.io
    fi
    if "$DOCKER" info >/dev/null 2>&1; then
        return
    fi
    mkdir -p "$BENCH_RUNDIR" "$BENCH_STATE/docker"
    local pidf=$BENCH_RUNDIR/docker.pid
    if [ -f "$pidf" ] && ! kill -0 "$(cat "$pidf")" 2>/dev/null; then
        rm -f "$pidf"
    fi
    log "starting the benchmark's own dockerd (socket $DOCKER_SOCK, log $BENCH_STATE/dockerd.log)"
    setsid dockerd --bridge=none --iptables=false --ip-masq=false \
        --data-root "$BENCH_STATE/docker" --exec-root "$BENCH_RUNDIR/docker" \
        -H "unix://$DOCKER_SOCK" --pidfile "$pidf" \
        >>"$BENCH_STATE/dockerd.log" 2>&1 </dev/null &
    local pid=$! _
    for _ in $(seq 60); do
        "$DOCKER" info >/dev/null 2>&1 && return 0
        kill -0 "$pid" 2>/dev/null || break
        sleep 1
    done
    tail -n 20 "$BENCH_STATE/dockerd.log" >&2
    die "the benchmark's dockerd did not start"
}

setup_docker() {
    start_docker
    # load-bases.sh honours DOCKER and DOCKER_HOST and skips tags present.
    DOCKER=$DOCKER "$REPO/fixtures/docker/load-bases.sh" busybox python \
        >"$BENCH_STATE/docker-load.log" 2>&1 || {
        tail -n 20 "$BENCH_STATE/docker-load.log" >&2
        die "docker could not load the bases"
    }
}

# Cold for BuildKit: the benchmark's images removed and the whole build
# cache pruned (`docker builder prune -af`); the base images stay.
reset_docker() {
    local imgs
    imgs="$("$DOCKER" images --format '{{.Repository}}:{{.Tag}}' | grep '^bench-' || true)"
    if [ -n "$imgs" ]; then
        # shellcheck disable=SC2086
        "$DOCKER" rmi -f $imgs >/dev/null
    fi
    "$DOCKER" image prune -f >/dev/null
    "$DOCKER" builder prune -af >/dev/null
}

build_docker_img() { # TAG CONTEXT
    "$DOCKER" build --network=host -q -t "$1" "$2"
}

# --------------------------------------------------------------- buildah ----

setup_buildah() {
    apt_install buildah
    mkdir -p "$BENCH_STATE/buildah" "$BENCH_RUNDIR/buildah"
    local tag ctx
    for tag in busybox:latest python:3.11-slim; do
        case $tag in
            busybox:*) ctx=$FIXTURES_CACHE/busybox ;;
            *) ctx=$FIXTURES_CACHE/python-3.11-slim ;;
        esac
        if "${BUILDAH[@]}" inspect --type image "$tag" >/dev/null 2>&1; then
            continue
        fi
        log "buildah: importing $tag from $ctx"
        "${BUILDAH[@]}" bud --layers --network=host -q -t "$tag" "$ctx" \
            >>"$BENCH_STATE/buildah-load.log" 2>&1 || {
            tail -n 20 "$BENCH_STATE/buildah-load.log" >&2
            die "buildah could not import $tag"
        }
    done
    # Intermediate images of the import are not part of any "cold" state.
    "${BUILDAH[@]}" rmi --prune >/dev/null 2>&1 || true
}

# Cold for buildah: the benchmark's images removed, then every dangling
# image (buildah's layer cache is made of intermediate images) and every
# working container; the bases stay.
reset_buildah() {
    "${BUILDAH[@]}" rm --all >/dev/null 2>&1 || true
    local imgs
    imgs="$("${BUILDAH[@]}" images --format '{{.Name}}:{{.Tag}}' | grep '/bench-' || true)"
    if [ -n "$imgs" ]; then
        # shellcheck disable=SC2086
        "${BUILDAH[@]}" rmi -f $imgs >/dev/null
    fi
    "${BUILDAH[@]}" rmi --prune >/dev/null 2>&1 || true
}

build_buildah_img() { # TAG CONTEXT
    "${BUILDAH[@]}" bud --layers --network=host -q -t "$1" "$2"
}

# ------------------------------------------- docker26 (BuildKit 0.13) ----
# Docker 26.1 from the Debian 13 root (fixtures/docker/start-dockerd-modern.sh,
# the engine the tests use), driven by its own CLI (fixtures/docker/docker26).

DOCKER26=$REPO/fixtures/docker/docker26

setup_docker26() {
    local modern
    modern="$("$REPO/fixtures/docker/start-dockerd-modern.sh")" || die "the Docker 26.1 engine did not start"
    export KILN_DOCKER_MODERN=${modern#DOCKER_HOST=}
    "$REPO/fixtures/docker/load-bases.sh" --modern busybox python \
        >"$BENCH_STATE/docker26-load.log" 2>&1 || {
        tail -n 20 "$BENCH_STATE/docker26-load.log" >&2
        die "Docker 26.1 could not load the bases"
    }
}

reset_docker26() {
    DOCKER=$DOCKER26 reset_docker
}

build_docker26_img() { # TAG CONTEXT
    DOCKER=$DOCKER26 build_docker_img "$@"
}

# ----------------------------------------------------------- buildah139 ----
# Debian 13's buildah 1.39 in the same root (fixtures/docker/buildah26), its
# storage apart from the tests' (KILN_BUILDAH_DATA).

BUILDAH139=("$REPO/fixtures/docker/buildah26")
export KILN_BUILDAH_DATA=${KILN_BUILDAH_DATA:-$BENCH_STATE/buildah139}

buildah139() { # [--bind DIR]... ARGS: the wrapper, with the bench's dirs bound
    "${BUILDAH139[@]}" --bind "$FIXTURES_CACHE" --bind "$BENCH_CACHE" "$@"
}

setup_buildah139() {
    mkdir -p "$KILN_BUILDAH_DATA"
    local tag ctx
    for tag in busybox:latest python:3.11-slim; do
        case $tag in
            busybox:*) ctx=$FIXTURES_CACHE/busybox ;;
            *) ctx=$FIXTURES_CACHE/python-3.11-slim ;;
        esac
        if buildah139 inspect --type image "$tag" >/dev/null 2>&1; then
            continue
        fi
        log "buildah 1.39: importing $tag from $ctx"
        buildah139 bud --layers --network=host -q -t "$tag" "$ctx" \
            >>"$BENCH_STATE/buildah139-load.log" 2>&1 || {
            tail -n 20 "$BENCH_STATE/buildah139-load.log" >&2
            die "buildah 1.39 could not import $tag"
        }
    done
    buildah139 rmi --prune >/dev/null 2>&1 || true
}

reset_buildah139() {
    buildah139 rm --all >/dev/null 2>&1 || true
    local imgs
    imgs="$(buildah139 images --format '{{.Name}}:{{.Tag}}' | grep '/bench-' || true)"
    if [ -n "$imgs" ]; then
        # shellcheck disable=SC2086
        buildah139 rmi -f $imgs >/dev/null
    fi
    buildah139 rmi --prune >/dev/null 2>&1 || true
}

build_buildah139_img() { # TAG CONTEXT
    buildah139 bud --layers --network=host -q -t "$1" "$2"
}

# ----------------------------------------------------------------- timing ----

# timed TOOL TAG CONTEXT: builds, prints the wall time in seconds on stdout;
# the tool's output goes to $LOG. Returns the build's exit status.
timed() {
    local tool=$1 tag=$2 ctx=$3 t0 t1 rc=0
    echo "=== $(date -u +%T) $tool build -t $tag $ctx" >>"$LOG"
    t0=$EPOCHREALTIME
    "build_${tool}_img" "$tag" "$ctx" >>"$LOG" 2>&1 || rc=$?
    t1=$EPOCHREALTIME
    python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.4f}')" "$t0" "$t1"
    return $rc
}

# gen_context DIR FILES BYTES: a deterministic context (see tools/gen_context.py).
gen_context() {
    python3 "$BENCH_DIR/tools/gen_context.py" --out "$1" --files "$2" --bytes "$3"
}

machine_line() {
    local mem
    mem="$(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), $mem RAM, kernel $(uname -r), $(. /etc/os-release && echo "$PRETTY_NAME")"
}
