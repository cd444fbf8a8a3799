#!/usr/bin/env bash
# The classic tutorial, end to end, on a fresh machine: build kiln, make the
# offline base images, build the Flask example as flask_app:0.1, list it,
# run it detached with port 5000 published, fetch the page, see it in ps,
# stop it and remove it.
set -euo pipefail
# shellcheck source=scripts/demo-setup.sh
source "$(dirname "$0")/demo-setup.sh"
KILN_BUILD_FLAGS=--progress=plain fixtures/bases/import-into-kiln.sh python

say kiln build -t flask_app:0.1 fixtures/flask
"$KILN" build --progress=plain -t flask_app:0.1 fixtures/flask
say kiln images
"$KILN" images
say kiln run -d -p 5000:5000 flask_app:0.1
id=$("$KILN" run -d -p 5000:5000 flask_app:0.1)
echo "$id"
cleanup() { "$KILN" rm -f "$id" >/dev/null 2>&1 || true; }
trap cleanup EXIT
say curl http://localhost:5000/
page=""
for _ in $(seq 1 100); do
    if page=$(curl -fsS http://localhost:5000/ 2>/dev/null); then break; fi
    sleep 0.1
done
if [ -z "$page" ]; then
    echo "flask-demo: the app did not answer on port 5000; its logs:" >&2
    "$KILN" logs "$id" >&2 || true
    exit 1
fi
echo "$page"
say kiln ps
"$KILN" ps
say kiln stop "${id:0:12}"
"$KILN" stop "${id:0:12}"
say kiln rm "${id:0:12}"
"$KILN" rm "${id:0:12}"
trap - EXIT
say kiln ps -a
"$KILN" ps -a
echo >&2
echo "flask-demo: OK" >&2
