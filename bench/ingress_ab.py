"""A/B for the HTTPS ingress: several localmesh builds (or settings) beside HAProxy, one run.

    .venv/bin/python bench/ingress_ab.py [--rounds 10] [--duration 3] NAME=BUILD[+SETTINGS] ...

Why: the keep-alive ratio to HAProxy moves by +-0.03 between rounds of one build and more
between the machine's fast and slow phases, so two separate ``ingress_tls.py`` runs cannot
tell a 2% change apart. Here every build serves at once (each its own runtime process on
its own ports, idle while the others are measured), all pinned like ``ingress_tls.py``
(proxies on CPU 0, nginx and wrk on CPU 1); each round measures HAProxy and every build in
a shuffled order, and the report gives each build's median ratio to the HAProxy of the same
round.

BUILD is ``-`` (this checkout as installed) or a directory put first on PYTHONPATH that holds
a compiled ``localmesh`` package, e.g. another commit's wheel, unpacked::

    git worktree add /tmp/base <commit>
    .venv/bin/pip wheel --no-deps -w /tmp/base-whl /tmp/base
    unzip -q /tmp/base-whl/localmesh-*.whl -d /tmp/base-build

SETTINGS are ``mesh:`` keys for that build's mesh.yaml, comma-separated:
``nolog=-+access_log: false,metrics: false``.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import ingress_tls as bench  # bench/ is on sys.path when run as a script

PROXY_CPU = ["taskset", "-c", "0"]
CLIENT_CPU = ["taskset", "-c", "1"]


def parse_build(arg: str) -> tuple[str, str | None, list[str]]:
    name, _, spec = arg.partition("=")
    build, _, settings = spec.partition("+")
    if not name or not build:
        raise SystemExit(f"expected NAME=BUILD[+SETTINGS], got {arg!r}")
    return name, None if build == "-" else build, [s for s in settings.split(",") if s]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (``taskset`` execs: the pid is the proxy's)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_build(
    procs: bench.Procs, tmp: Path, backend: int, spec: tuple[str, str | None, list[str]]
) -> tuple[int, Path]:
    """One runtime serving the ingress; returns its HTTPS port and the PEM it wrote."""
    name, build, settings = spec
    where = tmp / name
    where.mkdir()
    ports = {k: bench.free_port() for k in ("https", "http", "admin", "listen")}
    text = (bench.HERE / "mesh.yaml").read_text().format(backend=backend, **ports)
    extra = "".join(f"  {s.strip()}\n" for s in settings)
    text = text.replace(
        f"  admin_port: {ports['admin']}\n", f"  admin_port: {ports['admin']}\n{extra}"
    )
    mesh = where / "mesh.yaml"
    mesh.write_text(text)
    env = {**os.environ, "LOCALMESH_HOME": str(tmp / "home")}
    if build is not None:
        env["PYTHONPATH"] = str(Path(build).resolve())
    pem = where / "ingress.pem"
    serve = [sys.executable, bench.__file__, "--serve", str(mesh), str(pem)]
    log = procs.start(name, serve, PROXY_CPU, env)
    deadline = time.monotonic() + 60
    while "ready" not in log.read_text(errors="replace"):
        if procs.running[-1].poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{name} did not start: {log.read_text()[-3000:]}")
        time.sleep(0.05)
    return ports["https"], pem


def run(args: argparse.Namespace) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Requests per second and CPU µs per request of every target, one entry per round."""
    builds = [parse_build(a) for a in args.builds]
    tmp = Path(tempfile.mkdtemp(prefix="localmesh-ab-"))
    procs = bench.Procs(tmp, [])
    try:
        backend = bench.free_port()
        conf = tmp / "nginx.conf"
        conf.write_text((bench.HERE / "nginx.conf").read_text().format(tmp=tmp, port=backend))
        log = procs.start("nginx", ["nginx", "-p", str(tmp), "-c", str(conf)], CLIENT_CPU)
        bench.wait_for_port(backend, procs.running[-1], "nginx", log)
        targets: dict[str, int] = {}
        pids: dict[str, int] = {}
        pem = tmp / "unused"
        for spec in builds:
            targets[spec[0]], pem = start_build(procs, tmp, backend, spec)
            pids[spec[0]] = procs.running[-1].pid
        port = bench.free_port()
        cfg = tmp / "haproxy.cfg"
        template = (bench.HERE / "haproxy.cfg").read_text()
        cfg.write_text(template.format(pem=pem, port=port, backend=backend))
        log = procs.start("haproxy", ["haproxy", "-f", str(cfg)], PROXY_CPU)
        bench.wait_for_port(port, procs.running[-1], "haproxy", log)
        targets["haproxy"] = port
        pids["haproxy"] = procs.running[-1].pid
        for target in targets.values():
            bench.wrk(target, 1, args.connections, CLIENT_CPU)  # warm up
        rps: dict[str, list[float]] = {name: [] for name in targets}
        cpu: dict[str, list[float]] = {name: [] for name in targets}
        for _ in range(args.rounds):
            order = list(targets)
            random.shuffle(order)
            for name in order:
                before = cpu_seconds(pids[name])
                got = bench.wrk(targets[name], args.duration, args.connections, CLIENT_CPU)
                used = cpu_seconds(pids[name]) - before
                rps[name].append(got.rps)
                cpu[name].append(used / (got.rps * args.duration) * 1e6)
        return rps, cpu
    finally:
        procs.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("builds", nargs="+", metavar="NAME=BUILD[+SETTINGS]")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=50)
    args = parser.parse_args()
    rps, cpu = run(args)
    haproxy = rps["haproxy"]
    print(f"HTTPS keep-alive, wrk -c{args.connections} {args.duration:g}s x {args.rounds} rounds")
    for name, values in rps.items():
        ratios = [v / h for v, h in zip(values, haproxy, strict=True)]
        print(
            f"{name:12} median {statistics.median(values):8.0f} req/s   ratio to HAProxy "
            f"{statistics.median(ratios):.3f}   CPU {statistics.median(cpu[name]):5.2f} µs/req   "
            f"rounds {' '.join(f'{r:.2f}' for r in ratios)}"
        )


if __name__ == "__main__":
    main()
