#!/usr/bin/env bash
# Make sure a Docker engine answers: start dockerd in the background if we are root and
# none runs. Exits non-zero with the reason when it cannot (the Docker tests then fail loudly).
set -uo pipefail
if docker info >/dev/null 2>&1; then exit 0; fi
if ! command -v dockerd >/dev/null 2>&1; then
  echo "ensure-docker: no Docker engine answers and dockerd is not installed (apt-get install docker.io)" >&2
  exit 1
fi
if [ "$(id -u)" != 0 ]; then
  echo "ensure-docker: no Docker engine answers; start one (sudo dockerd &) and retry" >&2
  exit 1
fi
echo "ensure-docker: starting dockerd (log: /tmp/localmesh-dockerd.log)"
nohup dockerd >/tmp/localmesh-dockerd.log 2>&1 &
for _ in $(seq 1 60); do
  docker info >/dev/null 2>&1 && exit 0
  sleep 0.5
done
echo "ensure-docker: dockerd did not come up in 30 s; last log lines:" >&2
tail -20 /tmp/localmesh-dockerd.log >&2
exit 1
