#!/usr/bin/env bash
# Build the local images the Docker tests and the demo use; no registry is needed.
#   localmesh-base:bookworm  Debian bookworm (minbase) + python3, pip, iproute2, iptables,
#                            postgresql-15, redis-server, curl: one image for the mesh, the
#                            example apps, Postgres and Redis, so it is built (≈1-2 min) once.
# Cached by tag: does nothing when the image exists. Needs root, debootstrap and a Docker engine.
set -euo pipefail
TAG="${LOCALMESH_BASE_IMAGE:-localmesh-base:bookworm}"
if docker image inspect "$TAG" >/dev/null 2>&1; then
  echo "image $TAG: cached"
  exit 0
fi
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
ROOT="$(mktemp -d /tmp/localmesh-rootfs.XXXXXX)"
trap 'rm -rf "$ROOT"' EXIT
echo "image $TAG: debootstrap into $ROOT (about a minute)"
debootstrap --variant=minbase \
  --include=python3,python3-pip,python3-venv,iproute2,iptables,ca-certificates,curl,postgresql-15,redis-server,procps \
  bookworm "$ROOT" "$MIRROR" >/tmp/localmesh-debootstrap.log 2>&1 || {
    tail -20 /tmp/localmesh-debootstrap.log; exit 1; }
rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/*
tar -C "$ROOT" -c . | docker import \
  -c 'ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  -c 'ENV LANG=C.UTF-8' - "$TAG" >/dev/null
echo "image $TAG: built"
