#!/usr/bin/env bash
# The floor of the Flask example's cold build: the one expensive step,
# `pip install --no-cache-dir --no-index --find-links=/wheels -r /requirements.txt`,
# run with no build engine at all (chroot into a fresh overlay of the
# python-3.11-slim root, wheels bind-mounted read-only, as
# fixtures/flask/check-chroot.sh does). Any engine's cold Flask build is
# this plus its own overhead (container setup, diff, layer encode, commit).
#
#   bench/floor-flask.sh            # 5 runs; prints each and the median
#   FLOOR_RUNS=3 bench/floor-flask.sh
set -euo pipefail

# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RUNS=${FLOOR_RUNS:-5}
ROOTFS=$FIXTURES_CACHE/work/python-3.11-slim.rootfs
FLASK=$REPO/fixtures/flask

[ "$(id -u)" = 0 ] || die "must run as root (overlay mount, chroot)"
"$REPO/fixtures/bases/make-bases.sh" python >/dev/null
python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
"$FLASK/fetch-wheels.sh"

work="$(mktemp -d /tmp/kiln-bench-floor.XXXXXX)"
merged=$work/merged
umount_all() {
    local m
    for m in "$merged/proc" "$merged/wheels" "$merged/requirements.txt" "$merged"; do
        if mountpoint -q "$m" 2>/dev/null; then umount "$m"; fi
    done
}
cleanup() {
    umount_all
    rm -rf "$work"
}
trap cleanup EXIT

samples=()
for run in $(seq "$RUNS"); do
    umount_all
    rm -rf "$work/upper" "$work/work"
    mkdir -p "$work/upper" "$work/work" "$merged"
    mount -t overlay overlay -o "lowerdir=$ROOTFS,upperdir=$work/upper,workdir=$work/work" "$merged"
    mount -t proc proc "$merged/proc"
    mkdir -p "$merged/wheels"
    touch "$merged/requirements.txt"
    mount --bind -o ro "$FLASK/wheels" "$merged/wheels"
    mount --bind -o ro "$FLASK/requirements.txt" "$merged/requirements.txt"
    t0=$EPOCHREALTIME
    chroot "$merged" /usr/bin/env -i PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin \
        LANG=C.UTF-8 HOME=/root \
        pip install -q --no-cache-dir --no-index --find-links=/wheels -r /requirements.txt 2>/dev/null
    t1=$EPOCHREALTIME
    s="$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.3f}')" "$t0" "$t1")"
    samples+=("$s")
    echo "floor-flask: run $run: pip install in a chroot: $s s" >&2
done
python3 -c "import statistics, sys; v = [float(x) for x in sys.argv[1:]]; print(f'floor-flask: median {statistics.median(v):.3f} s (min {min(v):.3f}, max {max(v):.3f}) over {len(v)} runs')" "${samples[@]}"
