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
curl -sS "http://127.0.0.1:$ADMIN_PORT/metrics" | python3 -c '
import re, sys
for line in sys.stdin:
    name = line.split("{")[0]
    if name not in ("istio_requests_total", "istio_tcp_connections_opened_total"):
        continue
    labels = dict(re.findall(r"(\w+)=\"([^\"]*)\"", line))
    if labels.get("reporter") != "source":
        continue
    what = "HTTP " + labels["response_code"] if "response_code" in labels else "TCP connections"
    src, dst = labels["source_workload"], labels["destination_workload"]
    print(f"  {src:>8} -> {dst:<6} {what}: {float(line.split()[-1]):.0f}")'

say "Try it yourself:"
cat <<EOT
  ${CURL[*]} $URL
  curl -s http://127.0.0.1:$ADMIN_PORT/status | python3 -m json.tool | head -40
  edit examples/shop/mesh.yaml (e.g. add a fault to api) and call again: it reloads live
  cd examples/shop && localmesh up -d --scale api=3      # and watch served_by change

Stop it:
  cd examples/shop && localmesh down
EOT
