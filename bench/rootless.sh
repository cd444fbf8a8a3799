#!/usr/bin/env bash
# Rootless against root on the same machine, in one run: the same small
# build (5 RUN steps over busybox, --no-cache, base present) as root and as
# the fixture user kiln-rl (fixtures/rootless/make-users.sh), timed in
# alternation by farm-bench (--vs), so drift of a shared machine hits both.
#
#   bench/rootless.sh                 # 10 runs of each
#   ROOTLESS_RUNS=20 KILN=/path/to/kiln bench/rootless.sh
#   ROOTLESS_FLASK=0 bench/rootless.sh   # without the Flask case (5 runs, ROOTLESS_FLASK_RUNS)
#
# Needs root (it runs kiln as the user with setpriv). KILN defaults to the
# release build under target/ (see bench/lib.sh).
set -euo pipefail

# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RUNS=${ROOTLESS_RUNS:-10}
USER_NAME=kiln-rl
[ "$(id -u)" = 0 ] || die "must run as root (it runs kiln as $USER_NAME with setpriv)"
[ -x "$KILN" ] || die "no kiln binary at $KILN (cargo build --release, or set KILN)"
command -v farm-bench >/dev/null || die "farm-bench is not installed"
"$REPO/fixtures/rootless/make-users.sh"
"$REPO/fixtures/bases/make-bases.sh" busybox >/dev/null

work="$(mktemp -d /tmp/kiln-bench-rootless.XXXXXX)"
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"
cp "$KILN" "$work/kiln"
mkdir -p "$work/home" "$work/ctx"
cat >"$work/ctx/Dockerfile" <<'DOCKERFILE'
FROM busybox:latest
RUN echo one > /1
RUN seq 1 10000 > /2
RUN mkdir -p /3/a /3/b && touch /3/a/f /3/b/g
RUN chown -R 1000:1000 /3/a && chown 65534:65534 /3/b/g
RUN rm /bin/vi && ln -s /bin/busybox /bin/vi2
DOCKERFILE

# One base, loaded into both stores.
KILN_ROOT=$work/root "$work/kiln" build -q -t busybox:latest "$FIXTURES_CACHE/busybox" >/dev/null
KILN_ROOT=$work/root "$work/kiln" save -o "$work/busybox.tar" busybox:latest
chmod 644 "$work/busybox.tar"
chown -R "$USER_NAME:$USER_NAME" "$work/home" "$work/ctx"
as_user=(setpriv --reuid "$USER_NAME" --regid "$USER_NAME" --init-groups
    env -i PATH=/usr/bin:/bin HOME="$work/home" XDG_DATA_HOME="$work/home")
"${as_user[@]}" "$work/kiln" load -i "$work/busybox.tar" >/dev/null
# Both stores hold the base's snapshot before timing starts.
"${as_user[@]}" "$work/kiln" build -q "$work/ctx" >/dev/null
KILN_ROOT=$work/root "$work/kiln" build -q "$work/ctx" >/dev/null

log "5 RUN steps over busybox, --no-cache: rootless ($USER_NAME) vs root, $RUNS runs each"
farm-bench -n "$RUNS" --timeout 600 \
    --vs "env KILN_ROOT=$work/root $work/kiln build -q --no-cache $work/ctx" \
    -- "${as_user[@]}" "$work/kiln" build -q --no-cache "$work/ctx"

# The Flask example cold (--no-cache, base present): pip dominates.
if [ "${ROOTLESS_FLASK:-1}" = 1 ]; then
    "$REPO/fixtures/bases/make-bases.sh" python >/dev/null
    "$REPO/fixtures/flask/fetch-wheels.sh" 2>/dev/null
    cp -r "$REPO/fixtures/flask" "$work/flask"
    KILN_ROOT=$work/root "$work/kiln" build -q -t python:3.11-slim "$FIXTURES_CACHE/python-3.11-slim" >/dev/null
    KILN_ROOT=$work/root "$work/kiln" save -o "$work/python.tar" python:3.11-slim
    chmod 644 "$work/python.tar"
    chown -R "$USER_NAME:$USER_NAME" "$work/flask"
    "${as_user[@]}" "$work/kiln" load -i "$work/python.tar" >/dev/null
    "${as_user[@]}" "$work/kiln" build -q "$work/flask" >/dev/null
    KILN_ROOT=$work/root "$work/kiln" build -q "$work/flask" >/dev/null
    log "Flask example, --no-cache: rootless ($USER_NAME) vs root, ${ROOTLESS_FLASK_RUNS:-5} runs each"
    farm-bench -n "${ROOTLESS_FLASK_RUNS:-5}" --timeout 900 \
        --vs "env KILN_ROOT=$work/root $work/kiln build -q --no-cache $work/flask" \
        -- "${as_user[@]}" "$work/kiln" build -q --no-cache "$work/flask"
fi
