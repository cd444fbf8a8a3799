#!/usr/bin/env bash
# kiln side by side with BuildKit (Docker 20.10's, DOCKER_BUILDKIT=1) and
# buildah (Debian's 1.28, `bud --layers`): the cases of issue 7, the same
# Dockerfiles and contexts for all three, N runs each, tools alternating
# run by run. Prints a table (median, min-max, kiln/BuildKit and
# kiln/buildah ratios) and writes
#   bench/results/latest.md    the table, with date and machine
#   bench/results/latest.csv   every sample: case,tool,run,seconds,ok
#
#   bench/run.sh                  # everything, 5 runs
#   BENCH_RUNS=3 bench/run.sh
#   BENCH_TOOLS="kiln docker" BENCH_CASES="flask run20" bench/run.sh
#
# Needs root. Installs what is missing (apt: docker.io, buildah,
# debootstrap, busybox-static; Flask wheels with pip on the host) and makes
# the offline bases (fixtures/bases/make-bases.sh, cached). See bench/README.md
# for what "cold" means for each tool and how the peers are isolated.
#
# Environment:
#   BENCH_RUNS     runs per case and tool (default 5)
#   BENCH_TOOLS    subset of "kiln kiln-native kiln-rootless docker docker26
#                  buildah buildah139" (default "kiln docker buildah"):
#                  kiln-native = KILN_SNAPSHOTTER=native (copied roots),
#                  kiln-rootless = kiln as the user kiln-rl; docker = Docker 20.10's
#                  BuildKit 0.8, docker26 = Docker 26.1's BuildKit 0.13,
#                  buildah = Debian 12's 1.28, buildah139 = Debian 13's 1.39
#   BENCH_CASES    subset of "flask run20 stages copy200" (default all)
#   KILN           kiln binary (default: cargo build --release into
#                  $CARGO_TARGET_DIR or ./target); KILN_PREBUILT=1 skips the build
#   BENCH_STATE, BENCH_CACHE, BENCH_DOCKER_HOST, BENCH_BUILDAH_DRIVER: see lib.sh
set -euo pipefail

# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RUNS=${BENCH_RUNS:-5}
read -r -a TOOLS <<<"${BENCH_TOOLS:-kiln docker buildah}"
read -r -a CASES <<<"${BENCH_CASES:-flask run20 stages copy200}"

[ "$(id -u)" = 0 ] || die "must run as root (dockerd, buildah and kiln's RUN need it)"
case $RUNS in '' | *[!0-9]* | 0) die "BENCH_RUNS must be a positive integer" ;; esac

mkdir -p "$BENCH_STATE" "$BENCH_RUNDIR" "$BENCH_CACHE" "$RESULTS"
LOG=$BENCH_STATE/run.log
: >"$LOG"

# ------------------------------------------------------------------ setup ----

log "making the offline bases (cached)"
"$REPO/fixtures/bases/make-bases.sh" busybox python >/dev/null
# fetch-wheels.sh runs `python3 -m pip download` on the host.
python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
"$REPO/fixtures/flask/fetch-wheels.sh"

for tool in "${TOOLS[@]}"; do
    case $tool in
        kiln) setup_kiln ;;
        kiln-native) setup_kiln_native ;;
        kiln-rootless) setup_kiln_rootless ;;
        docker) setup_docker ;;
        buildah) setup_buildah ;;
        docker26) setup_docker26 ;;
        buildah139) setup_buildah139 ;;
        *) die "unknown tool '$tool' (known: kiln docker docker26 buildah buildah139)" ;;
    esac
done

# Contexts: one copy per tool, so that editing app.py for one tool never
# changes what another sees mid-run.
CTX=$BENCH_CACHE/ctx
mkdir -p "$CTX"
for tool in "${TOOLS[@]}"; do
    rm -rf "$CTX/flask-$tool"
    mkdir -p "$CTX/flask-$tool"
    cp -a "$REPO/fixtures/flask/." "$CTX/flask-$tool/"
done
cp -a "$REPO/fixtures/flask/app.py" "$CTX/flask-app.py.orig"
rm -rf "$CTX/run20" "$CTX/stages"
cp -a "$BENCH_DIR/cases/run20" "$BENCH_DIR/cases/stages" "$CTX/"
log "generating the 200 MB / 2,000-file context (cached)"
gen_context "$BENCH_CACHE/copy200" 2000 200M
# kiln-rootless reads the contexts as an ordinary user.
chmod -R a+rX "$CTX" "$BENCH_CACHE/copy200"

CSV=$RESULTS/latest.csv
echo "case,tool,run,seconds,ok" >"$CSV"

record() { # CASE TOOL RUN SECONDS OK
    echo "$1,$2,$3,$4,$5" >>"$CSV"
    local mark=""
    [ "$5" = 1 ] || mark="  (FAILED, see $LOG)"
    printf 'bench: run %s  %-14s %-8s %8.3f s%s\n' "$3" "$1" "$2" "$4" "$mark" >&2
}

reset() {
    "reset_$1"
    # Write back what the reset left dirty (kiln's is a copy of a root
    # holding the 150 MB python base) before the clock starts: otherwise the
    # first fsync of the measured build pays for it (ext4 flushes it with
    # the journal commit), which no real cold build on a settled machine does.
    sync
}

# measure CASE TOOL RUN TAG CONTEXT
measure() {
    local t ok=1
    t="$(timed "$2" "$4" "$5")" || ok=0
    record "$1" "$2" "$3" "$t" "$ok"
}

case_flask() { # TOOL RUN
    local tool=$1 run=$2 ctx=$CTX/flask-$1
    reset "$tool"
    cp "$CTX/flask-app.py.orig" "$ctx/app.py"
    measure flask-cold "$tool" "$run" bench-flask "$ctx"
    measure flask-noop "$tool" "$run" bench-flask "$ctx"
    # A real edit: new content (so no engine can skip it by size or hash).
    printf '\n# edited by bench run %s for %s\n' "$run" "$tool" >>"$ctx/app.py"
    measure flask-edit "$tool" "$run" bench-flask "$ctx"
}

case_run20() {
    reset "$1"
    measure run20-cold "$1" "$2" bench-run20 "$CTX/run20"
}

case_stages() {
    reset "$1"
    measure stages-cold "$1" "$2" bench-stages "$CTX/stages"
}

case_copy200() {
    reset "$1"
    measure copy200-cold "$1" "$2" bench-copy200 "$BENCH_CACHE/copy200"
    measure copy200-noop "$1" "$2" bench-copy200 "$BENCH_CACHE/copy200"
}

# ------------------------------------------------------------------- runs ----

# Tools alternate: each case, each run, every tool once, and the order
# rotates from one run to the next so no tool always goes first (or always
# right after another tool's cache prune).
n=${#TOOLS[@]}
for run in $(seq "$RUNS"); do
    for c in "${CASES[@]}"; do
        declare -F "case_$c" >/dev/null || die "unknown case '$c'"
        for i in $(seq 0 $((n - 1))); do
            tool=${TOOLS[$(((i + run - 1) % n))]}
            "case_$c" "$tool" "$run"
        done
    done
done

# ------------------------------------------------------------------ table ----

python3 "$BENCH_DIR/tools/stats.py" --csv "$CSV" --markdown "$RESULTS/latest.md" \
    --machine "$(machine_line)" --runs "$RUNS"
log "samples: $CSV; table: $RESULTS/latest.md; tool output: $LOG"
