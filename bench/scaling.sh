#!/usr/bin/env bash
# Scaling curves of kiln (issue 7): how build time grows with
#   - the number of files in the context (1 KiB each): cold COPY and the
#     cached rebuild (nothing changed);
#   - the total size of the context (1,000 files): cold COPY and cached rebuild;
#   - the number of independent stages that each `sleep 1`, plus a last
#     stage copying one file from each: cold build.
# Writes bench/results/scaling.csv (every sample), scaling.md (medians) and
# scaling-files.svg, scaling-size.svg, scaling-stages.svg. For kiln it also
# records the peak RSS of each build (GNU time's %M).
#
#   bench/scaling.sh
#   SCALING_RUNS=1 SCALING_SIZES="10M 100M" bench/scaling.sh
#
# Environment:
#   SCALING_RUNS    runs per point (default 3)
#   SCALING_FILES   file counts (default "1000 10000 100000")
#   SCALING_SIZES   total sizes (default "10M 100M 500M 2G")
#   SCALING_STAGES  stage counts (default "1 2 3 4 5 6 7 8")
#   SCALING_TOOLS   tools to measure (default "kiln"; "kiln docker buildah"
#                   puts the peers on the same curves)
#   SCALING_SWEEPS  subset of "files size stages" (default all); the samples
#                   of sweeps not run are kept in scaling.csv
# and lib.sh's (KILN, KILN_PREBUILT, BENCH_STATE, BENCH_CACHE, ...).
set -euo pipefail

# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RUNS=${SCALING_RUNS:-3}
read -r -a FILES <<<"${SCALING_FILES:-1000 10000 100000}"
read -r -a SIZES <<<"${SCALING_SIZES:-10M 100M 500M 2G}"
read -r -a STAGES <<<"${SCALING_STAGES:-1 2 3 4 5 6 7 8}"
read -r -a TOOLS <<<"${SCALING_TOOLS:-kiln}"
read -r -a SWEEPS <<<"${SCALING_SWEEPS:-files size stages}"

[ "$(id -u)" = 0 ] || die "must run as root"
mkdir -p "$BENCH_STATE" "$BENCH_RUNDIR" "$BENCH_CACHE" "$RESULTS"
LOG=$BENCH_STATE/scaling.log
: >"$LOG"

"$REPO/fixtures/bases/make-bases.sh" busybox python >/dev/null
apt_install time # GNU time, for kiln's peak RSS
for tool in "${TOOLS[@]}"; do
    case $tool in
        kiln) setup_kiln ;;
        docker) setup_docker ;;
        buildah) setup_buildah ;;
        *) die "unknown tool '$tool'" ;;
    esac
done

CSV=$RESULTS/scaling.csv
# Re-running some sweeps replaces only their rows: the other sweeps' samples
# stay in the CSV (and on the plots).
keep=""
if [ -f "$CSV" ]; then
    keep="$(awk -F, -v s=" ${SWEEPS[*]} " 'NR > 1 && index(s, " " $1 " ") == 0' "$CSV")"
fi
echo "sweep,x,tool,run,kind,seconds,ok,rss_kib" >"$CSV"
[ -z "$keep" ] || echo "$keep" >>"$CSV"
# kiln runs under /usr/bin/time -f %M for its peak RSS (a ~1 ms fork+exec
# more per sample; the peers are not measured for memory).
export BENCH_RSS_FILE=$BENCH_STATE/scaling.rss

sample() { # SWEEP X TOOL RUN KIND TAG CONTEXT
    local t ok=1 rss=""
    rm -f "$BENCH_RSS_FILE"
    t="$(timed "$3" "$6" "$7")" || ok=0
    if [ "$3" = kiln ] && [ -s "$BENCH_RSS_FILE" ]; then
        rss="$(tail -n 1 "$BENCH_RSS_FILE")"
    fi
    echo "$1,$2,$3,$4,$5,$t,$ok,$rss" >>"$CSV"
    printf 'scaling: %-6s %-6s %-7s run %s %-6s %8.3f s%s\n' "$1" "$2" "$3" "$4" "$5" "$t" \
        "$([ $ok = 1 ] || echo "  (FAILED, see $LOG)")" >&2
}

point() { # SWEEP X CONTEXT [cold-only]
    local run tool i n=${#TOOLS[@]}
    for run in $(seq "$RUNS"); do
        # the tools' order rotates from run to run, as in run.sh
        for i in $(seq 0 $((n - 1))); do
            tool=${TOOLS[$(((i + run - 1) % n))]}
            "reset_$tool"
            sample "$1" "$2" "$tool" "$run" cold "bench-scaling" "$3"
            if [ "${4:-}" != cold-only ]; then
                sample "$1" "$2" "$tool" "$run" cached "bench-scaling" "$3"
            fi
        done
    done
}

for sweep in "${SWEEPS[@]}"; do
    case $sweep in
        files)
            for n in "${FILES[@]}"; do
                log "context of $n files of 1 KiB (cached after the first time)"
                gen_context "$BENCH_CACHE/files-$n" "$n" "$((n * 1024))"
                point files "$n" "$BENCH_CACHE/files-$n"
            done
            ;;
        size)
            for s in "${SIZES[@]}"; do
                log "context of 1,000 files, $s in total (cached after the first time)"
                gen_context "$BENCH_CACHE/size-$s" 1000 "$s"
                point size "$s" "$BENCH_CACHE/size-$s"
            done
            ;;
        stages)
            for n in "${STAGES[@]}"; do
                ctx=$BENCH_CACHE/stages-$n
                rm -rf "$ctx"
                mkdir -p "$ctx"
                {
                    for i in $(seq "$n"); do
                        printf 'FROM busybox:latest AS s%d\nRUN sleep 1 && echo %d > /s%d\n\n' "$i" "$i" "$i"
                    done
                    echo "FROM busybox:latest"
                    for i in $(seq "$n"); do
                        printf 'COPY --from=s%d /s%d /\n' "$i" "$i"
                    done
                } >"$ctx/Dockerfile"
                point stages "$n" "$ctx" cold-only
            done
            ;;
        *) die "unknown sweep '$sweep' (known: files size stages)" ;;
    esac
done

python3 "$BENCH_DIR/tools/plot.py" --csv "$CSV" --out "$RESULTS" --machine "$(machine_line)"
log "samples: $CSV; medians: $RESULTS/scaling.md; plots: $RESULTS/scaling-*.svg"
