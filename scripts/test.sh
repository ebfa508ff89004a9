#!/usr/bin/env bash
# The whole suite: lint, types, then every test, Docker included.
# Starts the Docker engine when it can and builds the local test images (cached).
# Pass pytest arguments through: scripts/test.sh -m unit
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
export PATH="$PWD/$VENV/bin:$PATH"

echo "== lint and types"
ruff check .
mypy

echo "== docker engine and test images"
if scripts/ensure-docker.sh && scripts/build-test-images.sh; then
  export LOCALMESH_DOCKER_READY=1
else
  echo "!! Docker is not available: the Docker tests will FAIL (not skip) with the reason" >&2
fi

echo "== tests"
exec python -m pytest -q -ra "$@"
