# kiln as an image, built by kiln itself, for CI runners that start jobs
# as unprivileged containers (issue 14):
#
#   cargo build --release -p kiln-builder
#   kiln build -t kiln:dev .
#   kiln save kiln:dev | docker load
#   docker run --rm --user 1000 kiln:dev --version
#
# The base is Debian bookworm (kiln links glibc 2.36): here the offline
# python:3.11-slim of fixtures/bases/make-bases.sh; any bookworm image
# works (--build-arg BASE=...). newuidmap/newgidmap (uidmap) map the
# user's subordinate IDs, pasta (passt) is RUN's network.
ARG BASE=python:3.11-slim
FROM ${BASE}
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends uidmap passt >/dev/null \
 && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 1000 builder \
 && echo builder:100000:65536 >/etc/subuid \
 && echo builder:100000:65536 >/etc/subgid
# kiln and its small container helper, side by side (README, Layout).
ARG KILN_DIR=target/release
COPY ${KILN_DIR}/kiln ${KILN_DIR}/kiln-helper /usr/local/bin/
USER builder
WORKDIR /home/builder
ENTRYPOINT ["kiln"]
