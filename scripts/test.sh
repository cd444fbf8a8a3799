#!/usr/bin/env bash
# Every test kiln has: formatting, lints, unit, behaviour and end-to-end
# tests (the e2e ones build and run containers, so: root). Installs what a
# fresh machine lacks and makes the offline fixtures first (cached).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
export KILN_FIXTURES_CACHE=${KILN_FIXTURES_CACHE:-/var/cache/kiln-fixtures}

echo "== fixtures (offline base images, Flask wheels; cached)" >&2
fixtures/bases/make-bases.sh >/dev/null
fixtures/flask/fetch-wheels.sh >/dev/null

echo "== Docker engine for the differential test against BuildKit" >&2
fixtures/docker/start-dockerd.sh >/dev/null
fixtures/docker/load-bases.sh busybox >/dev/null
export KILN_DOCKER=1

echo "== fixture tools (python unittest)" >&2
python3 -m unittest discover -s fixtures/tools

echo "== cargo fmt --check" >&2
cargo fmt --all --check
echo "== cargo clippy" >&2
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test" >&2
cargo test --workspace --no-fail-fast
