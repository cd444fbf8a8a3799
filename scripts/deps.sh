#!/usr/bin/env bash
# Installs what kiln's build, tests and Flask demo need on a fresh Debian
# machine, idempotently: only missing packages are installed, and apt's
# lists are refreshed only when something must be installed.
set -euo pipefail

packages=(debootstrap linux-libc-dev busybox-static zstd skopeo curl python3 python3-pip ca-certificates iproute2 util-linux docker-registry apache2-utils openssl openssh-client git passt slirp4netns uidmap)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "deps: missing packages ${missing[*]}; run as root (or install them) first" >&2
        exit 1
    fi
    echo "deps: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
    [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null 2>&1 || {
    echo "deps: no Rust toolchain (cargo) on PATH; install one with rustup first" >&2
    exit 1
}
