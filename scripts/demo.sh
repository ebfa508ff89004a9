#!/usr/bin/env bash
# `make demo`: the example shop (web → api → Postgres + Redis) through the mesh, to look at.
# Builds what it needs (the base image once, the mesh and app images when they changed),
# starts it with `localmesh up -d`, then makes a few calls through the mesh and shows them.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"
export PATH="$REPO/${VENV:-.venv}/bin:$PATH"
export LOCALMESH_BASE_IMAGE="${LOCALMESH_BASE_IMAGE:-localmesh-base:bookworm}"

scripts/ensure-docker.sh
if [ "$LOCALMESH_BASE_IMAGE" = "localmesh-base:bookworm" ]; then
  scripts/build-test-images.sh
fi

cd examples/shop
localmesh up -d --build

# What the example's mesh.yaml and localmesh's defaults publish on 127.0.0.1.
HTTPS_PORT=8443
ADMIN_PORT=15000
ROOT="${LOCALMESH_HOME:-$HOME/.localmesh}/ca/root.pem"
URL="https://shop.localhost:$HTTPS_PORT/"
CURL=(curl -sS --max-time 15 --cacert "$ROOT" --resolve "shop.localhost:$HTTPS_PORT:127.0.0.1")

say() { printf '\n\033[1m%s\033[0m\n' "$*"; }

say "A call through the ingress (HTTPS, certificate from the local mesh CA):"
echo "\$ curl --cacert $ROOT $URL"
"${CURL[@]}" "$URL"

say "Five more; the api answers from the database and counts visits in Redis:"
for _ in 1 2 3 4 5; do
  "${CURL[@]}" "$URL" | python3 -c '
import json, sys
text = sys.stdin.read()
try:
    page = json.loads(text)
except ValueError:
    page = {"error": text.strip() or "no answer"}
api = page.get("api")
if api:
    print("hits", api["hits"], "- served by api", api["served_by"])
else:
    print("error:", page.get("error"), page.get("detail", ""))' || true
done

say "Every hop went through the mesh (Istio's metrics, from the admin API):"
curl -sS "http://127.0.0.1:$ADMIN_PORT/metrics" \
  | grep -E '^istio_(requests_total|tcp_connections_opened_total)\{' \
  | sed -E 's/.*source_workload="([^"]*)".*destination_workload="([^"]*)".*response_code="([^"]*)".*\} (.*)/  \1 -> \2  HTTP \3: \4/; s/^istio_tcp.*source_workload="([^"]*)".*destination_workload="([^"]*)".*\} (.*)/  \1 -> \2  TCP connections: \3/' \
  | sort -u

say "Try it yourself:"
cat <<EOT
  ${CURL[*]} $URL
  curl -s http://127.0.0.1:$ADMIN_PORT/status | python3 -m json.tool | head -40
  edit examples/shop/mesh.yaml (e.g. add a fault to api) and call again: it reloads live
  cd examples/shop && localmesh up -d --scale api=3      # and watch served_by change

Stop it:
  cd examples/shop && localmesh down
EOT
