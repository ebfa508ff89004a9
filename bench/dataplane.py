"""The data plane against HAProxy, same run: HTTP hop, TCP relay, Redis, Postgres.

    .venv/bin/python bench/dataplane.py [--duration 5] [--rounds 1] [--json]

Starts, on loopback:

- **backends**: nginx (one worker, ``return 200 "hello world\\n"``: a 12-byte body),
  redis-server, PostgreSQL 15 (a throwaway cluster, ``pgbench -i -s 1``);
- **HAProxy** (``nbthread 1``): an HTTP frontend (keep-alive to nginx) and TCP frontends
  for nginx, Redis and Postgres;
- **localmesh** in host mode (``bench/mesh_server.py``): the data plane with metrics and
  access logging on (written to /dev/null by the runtime's flush task), 10 routes on the
  HTTP service, the same upstreams as HAProxy;
- **the ceiling** (``bench/baseline_proxy.py``): a featureless uvloop + httptools
  keep-alive proxy, so the report can tell the interpreter's share of the HTTP gap from
  the features'.

The proxies are pinned to CPU 0 (``taskset``, when there are 2+ CPUs); backends and load
generators share CPU 1. Then, per round and for each path (direct, HAProxy, localmesh):

- ``wrk -t1 -c50 --latency`` through the HTTP hop (also through the ceiling) and through
  the TCP relay;
- ``redis-benchmark -t get,set -c 50`` (requests/s of GET and SET);
- ``pgbench -S -c 10 -j 1`` (read-only TPS);

and, for localmesh alone: HTTP req/s with 1000 routes against 10 (a second instance),
the cost of telemetry (metrics off, access log off, both off: fresh instances, the same
load), and the RSS of an instance configured with 20 services. The median
of the rounds is reported (with the spread) and the ratios localmesh/HAProxy; ``--only``
runs a subset (e.g. ``--only http,postgres``) for quick comparisons.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import NotRequired, TypedDict

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.services import run_postgres, run_redis  # noqa: E402

PG_BIN = Path(os.environ.get("LOCALMESH_PG_BIN", "/usr/lib/postgresql/15/bin"))
PYTHON = sys.executable

Metrics = dict[str, float]  # one measurement: {"rps": ..., "p99_ms": ...}
Round = dict[str, dict[str, Metrics]]  # path ("http", "tcp", ...) -> who ("haproxy", ...) -> it


class Results(TypedDict):
    rounds: list[Round]
    localmesh_only: NotRequired[dict[str, list[object]]]
    pinned: NotRequired[bool]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on {port}") from None
            time.sleep(0.05)


def cpus() -> tuple[list[str], list[str]]:
    """taskset prefixes: proxies on CPU 0, the rest on CPU 1 (no pinning on one CPU)."""
    if (os.cpu_count() or 1) < 2 or shutil.which("taskset") is None:
        return [], []
    return ["taskset", "-c", "0"], ["taskset", "-c", "1"]


class Procs:
    """Processes started here, stopped (by their own pid) on exit."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=env)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


NGINX = """
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 10000000;
  client_body_temp_path {tmp}; proxy_temp_path {tmp}; fastcgi_temp_path {tmp};
  uwsgi_temp_path {tmp}; scgi_temp_path {tmp};
  server {{ listen 127.0.0.1:{port}; location / {{ return 200 "hello world\\n"; }} }}
}}
"""

HAPROXY = """
global
  nbthread 1
  maxconn 4000
defaults
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend http
  mode http
  option http-keep-alive
  bind 127.0.0.1:{http}
  default_backend nginx_http
backend nginx_http
  mode http
  http-reuse always
  server s1 127.0.0.1:{nginx}
listen tcp
  mode tcp
  bind 127.0.0.1:{tcp}
  server s1 127.0.0.1:{nginx}
listen redis
  mode tcp
  bind 127.0.0.1:{redis}
  server s1 127.0.0.1:{redis_up}
listen postgres
  mode tcp
  bind 127.0.0.1:{pg}
  server s1 127.0.0.1:{pg_up}
"""


def run_tool(argv: list[str]) -> str:
    """A load generator's stdout; when it fails, stop the harness saying what ran and what
    it said (wrk tells why on stderr: "unable to connect to 127.0.0.1:...")."""
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        streams = (("stderr", done.stderr), ("stdout", done.stdout))
        said = [f"{name}:\n{text.strip()}" for name, text in streams if text.strip()]
        sys.exit(f"{shlex.join(argv)} exited {done.returncode}\n" + ("\n".join(said) or "(silent)"))
    return done.stdout


def wrk(port: int, seconds: float, cpu: list[str]) -> dict[str, float]:
    argv = [*cpu, "wrk", "-t1", "-c50", f"-d{seconds:g}s", "--latency", f"http://127.0.0.1:{port}/"]
    out = run_tool(argv)
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if found is None:
        sys.exit(f"{shlex.join(argv)} printed no Requests/sec:\n{out.strip()}")
    rps = float(found.group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
    return {
        "rps": rps,
        "p50_ms": _ms(re.search(r"50%\s+([\d.]+\w+)", out).group(1)),  # type: ignore[union-attr]
        "p99_ms": _ms(re.search(r"99%\s+([\d.]+\w+)", out).group(1)),  # type: ignore[union-attr]
        "errors": 1.0 if errors else 0.0,
    }


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def redis_bench(port: int, requests: int, cpu: list[str]) -> dict[str, float]:
    out = run_tool(
        [
            *cpu,
            "redis-benchmark",
            "-p",
            str(port),
            "-q",
            "-n",
            str(requests),
            "-c",
            "50",
            "-t",
            "get,set",
            "--csv",
        ]
    )
    rows = {line.split(",")[0].strip('"'): float(line.split(",")[1].strip('"')) for line in
            out.splitlines() if line.startswith('"') and not line.startswith('"test"')}  # fmt: skip
    return {"get_rps": rows["GET"], "set_rps": rows["SET"]}


def pgbench(port: int, seconds: float, cpu: list[str]) -> dict[str, float]:
    out = run_tool(
        [
            *cpu,
            str(PG_BIN / "pgbench"),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-U",
            "postgres",
            "-S",
            "-c",
            "10",
            "-j",
            "1",
            "-T",
            str(int(seconds)),
            "postgres",
        ]
    )
    tps = re.search(r"tps = ([\d.]+)", out).group(1)  # type: ignore[union-attr]
    return {"tps": float(tps)}


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@contextlib.contextmanager
def mesh(procs: Procs, cpu: list[str], *args: str) -> Iterator[subprocess.Popen[bytes]]:
    proc = procs.start(
        f"mesh-{len(procs.procs)}",
        [*cpu, PYTHON, str(ROOT / "bench" / "mesh_server.py"), *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    log = procs.tmp / f"mesh-{len(procs.procs) - 1}.log"
    deadline = time.monotonic() + 30
    while b"ready" not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"mesh_server did not start: {log.read_text()[-2000:]}")
        time.sleep(0.05)
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait(10)


def measure(args: argparse.Namespace) -> Results:
    proxy_cpu, other_cpu = cpus()
    only = set(args.only.split(","))
    tmp = Path(tempfile.mkdtemp(prefix="localmesh-bench-"))
    procs = Procs(tmp)
    ports = {k: free_port() for k in ("nginx", "http", "tcp", "redis", "pg", "baseline")}
    mesh_ports = {k: free_port() for k in ("http", "tcp", "redis", "pg", "http1000")}
    results: Results = {"rounds": []}
    try:
        with run_redis() as redis_server, run_postgres() as pg:
            for proc in (redis_server.proc, pg.proc):
                if other_cpu and proc is not None:
                    subprocess.run(
                        ["taskset", "-pc", "1", str(proc.pid)], capture_output=True, check=False
                    )
            conf = tmp / "nginx.conf"
            conf.write_text(NGINX.format(tmp=tmp, port=ports["nginx"]))
            procs.start("nginx", [*other_cpu, "nginx", "-c", str(conf), "-p", str(tmp)])
            hap = tmp / "haproxy.cfg"
            hap.write_text(
                HAPROXY.format(
                    http=ports["http"], tcp=ports["tcp"], nginx=ports["nginx"],
                    redis=ports["redis"], redis_up=redis_server.port,
                    pg=ports["pg"], pg_up=pg.port,
                )
            )  # fmt: skip
            procs.start("haproxy", [*proxy_cpu, "haproxy", "-f", str(hap)])
            n = f"127.0.0.1:{ports['nginx']}"
            procs.start(
                "baseline",
                [*proxy_cpu, PYTHON, str(ROOT / "bench" / "baseline_proxy.py"),
                 str(ports["baseline"]), n],
            )  # fmt: skip
            for port in ports.values():
                wait_port(port)
            run_tool(
                [
                    str(PG_BIN / "pgbench"),
                    "-i",
                    "-s",
                    "1",
                    "-q",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(pg.port),
                    "-U",
                    "postgres",
                    "postgres",
                ]
            )
            mesh_args = [
                "--http", f"127.0.0.1:{mesh_ports['http']}={n}",
                "--tcp", f"tcp:127.0.0.1:{mesh_ports['tcp']}={n}",
                "--tcp", f"redis:127.0.0.1:{mesh_ports['redis']}=127.0.0.1:{redis_server.port}",
                "--tcp", f"postgres:127.0.0.1:{mesh_ports['pg']}=127.0.0.1:{pg.port}",
                "--routes", "10",
            ]  # fmt: skip
            d = args.duration
            with mesh(procs, proxy_cpu, *mesh_args):
                for _ in range(args.rounds):
                    rnd: Round = {}
                    if "http" in only:
                        rnd["http"] = {
                            "direct": wrk(ports["nginx"], d, other_cpu),
                            "haproxy": wrk(ports["http"], d, other_cpu),
                            "baseline": wrk(ports["baseline"], d, other_cpu),
                            "localmesh": wrk(mesh_ports["http"], d, other_cpu),
                        }
                    if "tcp" in only:
                        rnd["tcp"] = {
                            "haproxy": wrk(ports["tcp"], d, other_cpu),
                            "localmesh": wrk(mesh_ports["tcp"], d, other_cpu),
                        }
                    if "redis" in only:
                        n_redis = int(10_000 * d)
                        rnd["redis"] = {
                            "direct": redis_bench(redis_server.port, n_redis, other_cpu),
                            "haproxy": redis_bench(ports["redis"], n_redis, other_cpu),
                            "localmesh": redis_bench(mesh_ports["redis"], n_redis, other_cpu),
                        }
                    if "postgres" in only:
                        rnd["postgres"] = {
                            "direct": pgbench(pg.port, d, other_cpu),
                            "haproxy": pgbench(ports["pg"], d, other_cpu),
                            "localmesh": pgbench(mesh_ports["pg"], d, other_cpu),
                        }
                    results["rounds"].append(rnd)
            extra: dict[str, list[object]] = {}
            if "extra" in only:
                http1000 = [
                    "--http", f"127.0.0.1:{mesh_ports['http1000']}={n}", "--routes", "1000",
                ]  # fmt: skip
                for _ in range(args.rounds):  # alternating instances
                    with mesh(procs, proxy_cpu, *http1000):
                        extra.setdefault("routes_1000", []).append(
                            wrk(mesh_ports["http1000"], d, other_cpu)
                        )
                    with mesh(procs, proxy_cpu, *mesh_args[:2], "--routes", "10"):
                        extra.setdefault("routes_10", []).append(
                            wrk(mesh_ports["http"], d, other_cpu)
                        )
                    with mesh(procs, proxy_cpu, *mesh_args[:2], "--no-access-log"):
                        extra.setdefault("access_log_off", []).append(
                            wrk(mesh_ports["http"], d, other_cpu)
                        )
                    with mesh(procs, proxy_cpu, *mesh_args[:2], "--no-metrics"):
                        extra.setdefault("metrics_off", []).append(
                            wrk(mesh_ports["http"], d, other_cpu)
                        )
                    with mesh(procs, proxy_cpu, *mesh_args[:2], "--no-access-log", "--no-metrics"):
                        extra.setdefault("telemetry_off", []).append(
                            wrk(mesh_ports["http"], d, other_cpu)
                        )
                with mesh(procs, proxy_cpu, "--services", "20", "--routes", "10") as idle:
                    time.sleep(0.5)
                    extra["rss_kib_20_services"] = [rss_kib(idle.pid)]
            results["localmesh_only"] = extra
    finally:
        procs.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    results["pinned"] = bool(proxy_cpu)
    return results


def median(rounds: list[Round], kind: str, who: str, key: str) -> float:
    return statistics.median(r[kind][who][key] for r in rounds)


def spread(rounds: list[Round], kind: str, who: str, key: str) -> str:
    values = [r[kind][who][key] for r in rounds]
    return f"{min(values):.0f}–{max(values):.0f}" if len(values) > 1 else ""


def report(res: Results) -> str:
    rounds = res["rounds"]
    lines = [
        f"median of {len(rounds)} round(s); per-round range of localmesh in brackets",
        "",
        "| path | direct | HAProxy | ceiling | localmesh | localmesh/HAProxy |",
        "|---|---:|---:|---:|---:|---:|",
    ]

    def row(label: str, kind: str, key: str) -> None:
        if kind not in rounds[0]:
            return
        who = rounds[0][kind]
        h = median(rounds, kind, "haproxy", key)
        m = median(rounds, kind, "localmesh", key)
        cells = [
            f"{median(rounds, kind, w, key):.0f}" if w in who else "-"
            for w in ("direct", "haproxy", "baseline")
        ]
        rng = spread(rounds, kind, "localmesh", key)
        lines.append(f"| {label} | {' | '.join(cells)} | {m:.0f} ({rng}) | **{m / h:.2f}x** |")

    def lat(kind: str) -> None:
        if kind not in rounds[0]:
            return
        p = {w: (median(rounds, kind, w, "p50_ms"), median(rounds, kind, w, "p99_ms"))
             for w in rounds[0][kind]}  # fmt: skip
        text = ", ".join(f"{w} {p50:.2f} / {p99:.2f} ms" for w, (p50, p99) in p.items())
        ratio = p["localmesh"][1] / p["haproxy"][1]
        lines.append(f"{kind} p50 / p99: {text} (p99 localmesh/HAProxy **{ratio:.2f}x**)")

    row("HTTP hop, req/s (wrk -c50)", "http", "rps")
    row("TCP relay, req/s (wrk -c50 through L4)", "tcp", "rps")
    row("Redis GET/s (redis-benchmark -c50)", "redis", "get_rps")
    row("Redis SET/s", "redis", "set_rps")
    row("Postgres TPS (pgbench -S -c10)", "postgres", "tps")
    lines.append("")
    lat("http")
    lat("tcp")
    if "http" in rounds[0]:
        ceiling = median(rounds, "http", "baseline", "rps")
        mesh_rps = median(rounds, "http", "localmesh", "rps")
        lines.append(f"HTTP: localmesh/ceiling **{mesh_rps / ceiling:.2f}x**")
    extra: dict[str, list[dict[str, float]]] = res["localmesh_only"]  # type: ignore[assignment]
    if extra:
        r10 = statistics.median(r["rps"] for r in extra["routes_10"])
        r1000 = statistics.median(r["rps"] for r in extra["routes_1000"])
        off = statistics.median(r["rps"] for r in extra["access_log_off"])
        m_off = statistics.median(r["rps"] for r in extra["metrics_off"])
        t_off = statistics.median(r["rps"] for r in extra["telemetry_off"])
        rss = extra["rss_kib_20_services"][0]
        lines.append(
            f"localmesh alone: 10 routes {r10:.0f} req/s, 1000 routes {r1000:.0f} req/s "
            f"({r1000 / r10:.2f}x); RSS with 20 services "
            f"{int(rss) / 1024:.1f} MiB"  # type: ignore[call-overload]
        )
        lines.append(
            f"telemetry cost: metrics off {m_off:.0f} req/s (on/off {r10 / m_off:.2f}x), "
            f"access log off {off:.0f} req/s ({r10 / off:.2f}x), both off {t_off:.0f} req/s "
            f"(**{r10 / t_off:.2f}x**; target >= 0.90x)"
        )
    lines.append(f"(proxies pinned to CPU 0: {res['pinned']})")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--only",
        default="http,tcp,redis,postgres,extra",
        help="comma-separated subset of http,tcp,redis,postgres,extra",
    )
    args = parser.parse_args()
    for tool in ("nginx", "haproxy", "wrk", "redis-benchmark", "taskset"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is required (apt-get install nginx haproxy wrk redis-tools)")
    result = measure(args)
    print(json.dumps(result, indent=2) if args.json else report(result))


if __name__ == "__main__":
    main()
