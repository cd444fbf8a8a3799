# Sourced by the demo scripts (flask-demo.sh, registry-demo.sh): moves to the
# repository root, installs what they need, builds kiln (release) into
# $KILN, fetches Flask's wheels, and defines `say` for the command banners.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/deps.sh
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
export KILN_FIXTURES_CACHE=${KILN_FIXTURES_CACHE:-/var/cache/kiln-fixtures}

say() { printf '\n\033[1m$ %s\033[0m\n' "$*" >&2; }

cargo build --release -q -p kiln-builder
KILN=${CARGO_TARGET_DIR:-$PWD/target}/release/kiln
export KILN
fixtures/flask/fetch-wheels.sh >/dev/null
