#!/usr/bin/env bash
# Micro-benchmarks of issue 7, collected into bench/results/micro.md:
#   kiln-parser   parse          parser throughput (criterion)
#   kiln-builder  context_hash   context hashing, cold and through the stat cache (criterion)
#   kiln-builder  cache          cache lookup latency with 10,000 records, `kiln cache ls` (criterion)
#   kiln-store    layer          1 GiB layer write/apply MB/s and peak RSS (its one-shot mode)
#   kiln-runner   overhead       per-RUN container overhead (its own table)
# The benches themselves live beside their crates; this script only runs
# them and gathers their medians.
#
#   bench/micro.sh
#   MICRO="parse cache" bench/micro.sh
#
# Environment: MICRO (subset of "parse context_hash cache layer overhead"),
# CARGO_TARGET_DIR (default ./target), MICRO_CRITERION_ARGS (default
# "--warm-up-time 1 --measurement-time 3", passed to criterion).
set -euo pipefail

# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

read -r -a WANT <<<"${MICRO:-parse context_hash cache layer overhead}"
read -r -a CRIT <<<"${MICRO_CRITERION_ARGS:---warm-up-time 1 --measurement-time 3}"
export CARGO_TARGET_DIR=$KILN_TARGET_DIR
mkdir -p "$RESULTS"
OUT=$RESULTS/micro.md
RAW=$BENCH_STATE/micro
mkdir -p "$RAW"

criterion_groups=()
extra=()
for b in "${WANT[@]}"; do
    case $b in
        parse)
            log "cargo bench -p kiln-parser --bench parse"
            (cd "$REPO" && cargo bench -q -p kiln-parser --bench parse -- "${CRIT[@]}") >"$RAW/parse.log" 2>&1
            criterion_groups+=(parse_10k_instructions)
            ;;
        context_hash | cache)
            log "cargo bench -p kiln-builder --bench $b"
            (cd "$REPO" && cargo bench -q -p kiln-builder --bench "$b" -- "${CRIT[@]}") >"$RAW/$b.log" 2>&1
            if [ "$b" = cache ]; then
                criterion_groups+=(cache_10k_records cli_10k_records)
            else
                criterion_groups+=(context_hash)
            fi
            ;;
        layer)
            log "KILN_BENCH_ONESHOT=1 cargo bench -p kiln-store --bench layer"
            (cd "$REPO" && KILN_BENCH_ONESHOT=1 cargo bench -q -p kiln-store --bench layer) >"$RAW/layer.log" 2>&1
            extra+=(layer)
            ;;
        overhead)
            log "cargo bench -p kiln-runner --bench overhead -- 100"
            (cd "$REPO" && cargo bench -q -p kiln-runner --bench overhead -- 100) >"$RAW/overhead.log" 2>&1
            extra+=(overhead)
            ;;
        *) die "unknown micro-benchmark '$b'" ;;
    esac
done

{
    echo "# Micro-benchmarks"
    echo
    machine_line
    echo
    if [ ${#criterion_groups[@]} -gt 0 ]; then
        python3 "$BENCH_DIR/tools/criterion_summary.py" "$CARGO_TARGET_DIR/criterion" "${criterion_groups[@]}"
        echo
    fi
    for e in "${extra[@]}"; do
        case $e in
            layer) echo "## kiln-store: 1 GiB layer, one shot (\`KILN_BENCH_ONESHOT=1 cargo bench -p kiln-store --bench layer\`)" ;;
            overhead) echo "## kiln-runner: per-container overhead (\`cargo bench -p kiln-runner --bench overhead -- 100\`)" ;;
        esac
        echo
        echo '```'
        grep -vE '^\s*(Compiling|Finished|Running|Blocking)' "$RAW/$e.log" || true
        echo '```'
        echo
    done
} >"$OUT"
cat "$OUT"
log "written to $OUT (raw logs in $RAW)"
