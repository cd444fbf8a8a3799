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
# busybox for arm64 and QEMU registered for it (binfmt_misc, F flag): the
# emulation tests run arm64 programs here.
fixtures/bases/make-bases.sh busybox-arm64 >/dev/null
# An arm64 Debian bookworm minbase (debootstrap, second stage under QEMU):
# cold ~5 min on 2 loaded cores, cached 0.04 s.
fixtures/bases/make-debian-arm64.sh >/dev/null
# An amd64 Debian bookworm with gcc and the arm64 cross gcc, for the
# cross-compilation test (debootstrap --include; the .debs cached).
fixtures/bases/make-debian-cross.sh >/dev/null
fixtures/flask/fetch-wheels.sh >/dev/null
# Ordinary users with (and one without) subordinate ID ranges, for the
# rootless tests (builder/tests/rootless.rs).
fixtures/rootless/make-users.sh

echo "== Docker engines for the differential test against BuildKit 0.8 and 0.13" >&2
fixtures/docker/start-dockerd.sh >/dev/null
fixtures/docker/load-bases.sh busybox >/dev/null
export KILN_DOCKER=1
# Docker 26.1 (BuildKit 0.13) from a cached trixie root, beside 20.10: cold
# ~95 s (debootstrap + apt), cached ~2 s. Only KILN_DOCKER_MODERN is
# exported: DOCKER_HOST stays the 20.10 engine's.
modern="$(fixtures/docker/start-dockerd-modern.sh)"
export KILN_DOCKER_MODERN=${modern#DOCKER_HOST=}
fixtures/docker/load-bases.sh --modern busybox >/dev/null
# arm64 busybox for the kiln-vs-BuildKit arm64 comparison (multiplatform.rs).
fixtures/docker/load-bases.sh --modern busybox-arm64 >/dev/null

echo "== fixture tools (python unittest)" >&2
python3 -m unittest discover -s fixtures/tools

echo "== cargo fmt --check" >&2
cargo fmt --all --check
echo "== cargo clippy" >&2
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test" >&2
cargo test --workspace --no-fail-fast
