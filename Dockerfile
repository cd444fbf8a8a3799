# kiln as an image, built by kiln itself, for CI runners that start jobs
# as unprivileged containers (issue 14):
#
#   cargo build --release -p kiln-builder
#   kiln build -t kiln:dev .
#   kiln save kiln:dev | docker load
#   docker run --rm --user 1000 \
#       --security-opt seccomp=unconfined --security-opt apparmor=unconfined \
#       --security-opt systempaths=unconfined \
#       -v "$PWD:/src:ro" kiln:dev build -t app /src
#
# The first two options let kiln make its user namespace (Docker's default
# profiles refuse it), the third lets RUN steps mount their own /proc
# (Docker masks paths of the container's /proc, and the kernel then refuses
# a new one). No --privileged, no added capability.
#
# The base is Debian bookworm (kiln links glibc 2.36): here the offline
# python:3.11-slim of fixtures/bases/make-bases.sh; any bookworm image
# works (--build-arg BASE=...).
ARG BASE=python:3.11-slim
FROM ${BASE}
# newuidmap/newgidmap with file capabilities, not set-uid root: a set-uid
# root helper lacks CAP_SYS_ADMIN in a container's bounding set, and the
# kernel wants it (or being the namespace's owner) to write an ID map.
# pasta (passt) is RUN's network.
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends uidmap passt libcap2-bin >/dev/null \
 && rm -rf /var/lib/apt/lists/* \
 && chmod u-s /usr/bin/newuidmap /usr/bin/newgidmap \
 && setcap cap_setuid+ep /usr/bin/newuidmap \
 && setcap cap_setgid+ep /usr/bin/newgidmap
RUN useradd --create-home --uid 1000 builder \
 && echo builder:100000:65536 >/etc/subuid \
 && echo builder:100000:65536 >/etc/subgid \
 && mkdir -p /home/builder/.local/share/kiln \
 && chown -R builder:builder /home/builder/.local
# kiln and its small container helper, side by side (README, Layout).
ARG KILN_DIR=target/release
COPY ${KILN_DIR}/kiln ${KILN_DIR}/kiln-helper /usr/local/bin/
USER builder
WORKDIR /home/builder
# The store on a volume: overlayfs (the container's own root) cannot hold
# the upper dirs of RUN steps.
VOLUME /home/builder/.local/share/kiln
ENTRYPOINT ["kiln"]
