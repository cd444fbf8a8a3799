#!/usr/bin/env bash
# The README's CI pipeline example, run for real against a local registry
# (Debian's docker-registry on 127.0.0.1, TLS + htpasswd, a CA made on the
# spot): three fresh kiln roots stand for two CI runners and a deploy host.
#
#   runner 1: login, build the Flask example with the registry cache,
#             push the image and the cache
#   runner 2: the same build on an empty root: every step CACHED from the
#             registry, the same image ID, nothing rebuilt
#   deploy:   pull the image, run it with port 5000 published, curl it
set -euo pipefail
# shellcheck source=scripts/demo-setup.sh
source "$(dirname "$0")/demo-setup.sh"

work=$(mktemp -d /tmp/kiln-registry-demo.XXXXXX)
cid=""
cleanup() {
    [ -n "$cid" ] && KILN_ROOT=$work/deploy "$KILN" rm -f "$cid" >/dev/null 2>&1 || true
    if [ -n "${KILN_DEMO_KEEP:-}" ]; then
        echo "registry-demo: kept $work (registry still running, pid $(cat "$work/registry/pid"))" >&2
        return
    fi
    [ -f "$work/registry/pid" ] && kill "$(cat "$work/registry/pid")" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

fixtures/registry/start-registry.sh "$work/registry" --tls-auth
REG=$(cat "$work/registry/addr")
export KILN_CA_FILE=$work/registry/ca.crt   # same as --ca-file on every command
export DOCKER_CONFIG=$work/docker-config    # where `kiln login` keeps credentials

# (KILN_DEMO_KEEP=1 keeps the roots and the registry for a closer look.)
# The python base comes from the registry too, as a mirror would serve it:
# the offline fixture is built once and pushed.
export KILN_ROOT=$work/seed
KILN_BUILD_FLAGS=--progress=plain KILN=$KILN fixtures/bases/import-into-kiln.sh python >/dev/null
cat "$work/registry/password" | "$KILN" login -u kiln --password-stdin "$REG"
"$KILN" tag python:3.11-slim "$REG/mirror/python:3.11-slim"
"$KILN" push -q "$REG/mirror/python:3.11-slim" >/dev/null
sed "s|^FROM python:3.11-slim|FROM $REG/mirror/python:3.11-slim|" fixtures/flask/Dockerfile >"$work/Dockerfile"

for runner in runner1 runner2; do
    export KILN_ROOT=$work/$runner
    say "[$runner] kiln build --cache-from type=registry,ref=$REG/flask/cache:main --cache-to type=registry,ref=$REG/flask/cache:main,mode=max --push -t $REG/flask/app:0.1 fixtures/flask"
    start=$EPOCHREALTIME
    "$KILN" build --progress=plain -f "$work/Dockerfile" \
        --cache-from "type=registry,ref=$REG/flask/cache:main" \
        --cache-to "type=registry,ref=$REG/flask/cache:main,mode=max" \
        --push -t "$REG/flask/app:0.1" fixtures/flask 2>&1 | tee "$work/$runner.log" >&2
    end=$EPOCHREALTIME
    python3 -c "print('[$runner] build + push took %.2f s' % ($end - $start))" >&2
    "$KILN" inspect "$REG/flask/app:0.1" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Id"])' >"$work/$runner.id"
done
ran=$(python3 - "$work/runner2.log" <<'PY'
import re, sys
labels, ran = {}, []
for line in open(sys.argv[1]):
    m = re.match(r"#(\d+) (.*)", line.rstrip("\n"))
    if not m:
        continue
    n, text = m.groups()
    # Steps only: the FROM line resolves (here: pulls) the base.
    if text.startswith("[") and not text.startswith("[internal]") and "] FROM " not in text:
        labels[n] = text
    elif text.startswith("DONE") and n in labels:
        ran.append(labels[n])
print("\n".join(ran))
PY
)
if [ -n "$ran" ]; then
    echo "registry-demo: runner2 rebuilt steps the registry cache should have covered:" >&2
    echo "$ran" >&2
    exit 1
fi
if ! cmp -s "$work/runner1.id" "$work/runner2.id"; then
    echo "registry-demo: runner1 and runner2 made different images" >&2
    exit 1
fi
echo "registry-demo: runner2 was fully cached and made the same image $(cat "$work/runner2.id")" >&2

export KILN_ROOT=$work/deploy
say "[deploy] kiln pull $REG/flask/app:0.1 && kiln run -d -p 5000:5000 $REG/flask/app:0.1"
"$KILN" pull "$REG/flask/app:0.1"
cid=$("$KILN" run -d -p 5000:5000 "$REG/flask/app:0.1")
page=""
for _ in $(seq 1 100); do
    if page=$(curl -fsS http://localhost:5000/ 2>/dev/null); then break; fi
    sleep 0.1
done
if [ -z "$page" ]; then
    echo "registry-demo: the app did not answer on port 5000; its logs:" >&2
    "$KILN" logs "$cid" >&2 || true
    exit 1
fi
say curl http://localhost:5000/
echo "$page"
"$KILN" stop "${cid:0:12}" >/dev/null
"$KILN" rm "${cid:0:12}" >/dev/null
cid=""
"$KILN" logout "$REG"
echo >&2
echo "registry-demo: OK" >&2
