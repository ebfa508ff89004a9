"""HTTPS through localmesh's ingress vs HAProxy terminating TLS, same certificate, same run.

    .venv/bin/python bench/ingress_tls.py [--duration 5] [--rounds 2] [--connections 50]

Both proxies run one thread on the same CPU (``taskset -c 0`` when there are 2+ CPUs; nginx
and the load generators share CPU 1) in front of the same nginx (one worker, a 12-byte body):

- **localmesh**: the real runtime in host mode (``Runtime`` as ``localmesh run`` builds it:
  control plane, admin API, access log on, written to /dev/null), its ingress on
  ``https://localhost``; it issues its certificate from a throwaway CA
  (``LOCALMESH_HOME`` in a temp dir) and writes that very certificate and key for HAProxy.
- **HAProxy**: ``nbthread 1``, TLS 1.2+ with that PEM, ALPN http/1.1, keep-alive upstream.

Measured per target, alternating targets each round (best round reported):

1. keep-alive requests/s and p50/p99 latency: ``wrk -t1 -cN --latency``;
2. a new connection per request: ``wrk -H 'Connection: close'`` (wrk resumes TLS sessions,
   so these are mostly abbreviated handshakes);
3. full handshakes/s: ``openssl s_time -new`` (a new session each time), several in
   parallel, connections counted over the wall time.

For context it also measures localmesh's plain-HTTP listener for the same backend (the
data plane without TLS), which bounds what the ingress can reach.

The script is its own ingress process: ``--serve MESH PEM`` runs the runtime.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent / "ingress_tls"
BODY = b"hello world\n"  # what nginx answers: 12 bytes
HOST = "localhost"  # the ingress host; resolves to 127.0.0.1, so wrk's SNI matches it


# -- the ingress process -------------------------------------------------------------------


def serve(mesh: Path, pem: Path) -> None:
    """Run localmesh's runtime (uvloop); once serving, write the ingress cert+key to ``pem``."""
    import uvloop

    from localmesh.runtime.app import RunOptions, Runtime
    from localmesh.runtime.app import serve as serve_runtime
    from localmesh.runtime.ingress.gateway import IngressGateway

    def ready(runtime: Runtime) -> None:
        gateway = runtime.dataplane
        assert isinstance(gateway, IngressGateway)
        assert gateway.tls is not None
        issued = gateway.tls.certificate(HOST).current
        fd = os.open(pem, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(issued.cert_pem + issued.key_pem)
        print("ready", flush=True)

    options = RunOptions(
        mesh=mesh, state_dir=mesh.parent / "state", access_log=os.devnull, drain_timeout=0.5
    )
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve_runtime(Runtime(options), ready))


# -- processes -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited: {log.read_text(errors='replace')[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise SystemExit(f"{what} did not listen on {port} within 30 s")


@dataclass
class Procs:
    tmp: Path
    running: list[subprocess.Popen[bytes]]

    def start(
        self, name: str, cmd: list[str], cpu: list[str], env: dict[str, str] | None = None
    ) -> Path:
        log = self.tmp / f"{name}.log"
        proc = subprocess.Popen(
            [*cpu, *cmd],
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            env=env,
        )
        self.running.append(proc)
        return log

    def stop(self) -> None:
        for proc in reversed(self.running):
            proc.terminate()
        for proc in self.running:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


@contextlib.contextmanager
def setup(pin: bool) -> Iterator[tuple[dict[str, int], Path, list[str]]]:
    """nginx, the ingress and HAProxy up; yields their ports, the CA root, the client prefix."""
    tmp = Path(tempfile.mkdtemp(prefix="localmesh-bench-"))
    two_cpus = pin and (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
    proxy_cpu = ["taskset", "-c", "0"] if two_cpus else []
    client_cpu = ["taskset", "-c", "1"] if two_cpus else []
    procs = Procs(tmp, [])
    ports = {k: free_port() for k in ("nginx", "haproxy", "https", "http", "admin", "listen")}
    try:
        conf = tmp / "nginx.conf"
        conf.write_text((HERE / "nginx.conf").read_text().format(tmp=tmp, port=ports["nginx"]))
        log = procs.start("nginx", ["nginx", "-p", str(tmp), "-c", str(conf)], client_cpu)
        wait_for_port(ports["nginx"], procs.running[-1], "nginx", log)

        mesh = tmp / "mesh.yaml"
        mesh.write_text(
            (HERE / "mesh.yaml")
            .read_text()
            .format(
                admin=ports["admin"],
                listen=ports["listen"],
                backend=ports["nginx"],
                https=ports["https"],
                http=ports["http"],
            )
        )
        pem = tmp / "ingress.pem"
        env = {**os.environ, "LOCALMESH_HOME": str(tmp / "home")}
        serve_cmd = [sys.executable, __file__, "--serve", str(mesh), str(pem)]
        log = procs.start("localmesh", serve_cmd, proxy_cpu, env)
        deadline = time.monotonic() + 60
        while "ready" not in log.read_text(errors="replace"):
            if procs.running[-1].poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"localmesh did not start: {log.read_text()[-3000:]}")
            time.sleep(0.05)

        cfg = tmp / "haproxy.cfg"
        cfg.write_text(
            (HERE / "haproxy.cfg")
            .read_text()
            .format(pem=pem, port=ports["haproxy"], backend=ports["nginx"])
        )
        log = procs.start("haproxy", ["haproxy", "-f", str(cfg)], proxy_cpu)
        wait_for_port(ports["haproxy"], procs.running[-1], "haproxy", log)
        yield ports, tmp / "home" / "ca" / "root.pem", client_cpu
    finally:
        procs.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def check(port: int, root: Path) -> None:
    """Both must answer the benchmark request with nginx's 12 bytes over verified TLS."""
    ctx = ssl.create_default_context(cafile=str(root))
    with urllib.request.urlopen(f"https://{HOST}:{port}/", context=ctx, timeout=5) as r:
        body = r.read()
    if r.status != 200 or body != BODY:
        raise SystemExit(f"port {port} answered {r.status} {body!r}, expected 200 {BODY!r}")


# -- load generators -----------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


def wrk(
    port: int,
    seconds: float,
    connections: int,
    cpu: list[str],
    *,
    close: bool = False,
    scheme: str = "https",
) -> WrkResult:
    cmd = [*cpu, "wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency"]
    if close:
        cmd += ["-H", "Connection: close"]
    out = subprocess.run(
        [*cmd, f"{scheme}://{HOST}:{port}/"], capture_output=True, text=True, check=True
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = {
        p: float(v) * _UNITS[u]
        for p, v, u in re.findall(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s)$", out, re.M)
    }
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors += int(bad.group(1)) if bad else 0
    return WrkResult(rps, lat["50"], lat["99"], errors)


def handshakes(port: int, seconds: float, clients: int, cpu: list[str]) -> float:
    """Full TLS handshakes per second: ``clients`` parallel ``openssl s_time -new``."""
    cmd = [*cpu, "openssl", "s_time", "-connect", f"{HOST}:{port}", "-new"]
    started = time.monotonic()
    procs = [
        subprocess.Popen(
            [*cmd, "-time", str(max(1, round(seconds)))],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for _ in range(clients)
    ]
    total = 0
    for proc in procs:
        out, _ = proc.communicate()
        found = re.search(r"(\d+) connections in [\d.]+s", out)
        if found is None:
            raise SystemExit(f"openssl s_time printed nothing usable: {out!r}")
        total += int(found.group(1))
    return total / (time.monotonic() - started)


# -- the run -------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    keep_alive: WrkResult
    close: WrkResult
    full_handshakes: float


def measure(args: argparse.Namespace) -> dict[str, object]:
    with setup(not args.no_pin) as (ports, root, cpu):
        targets = {"haproxy": ports["haproxy"], "localmesh": ports["https"]}
        for port in targets.values():
            check(port, root)
            wrk(port, 1, args.connections, cpu)  # warm up: upstream pools, session caches
        best: dict[str, Target] = {}
        plain: WrkResult | None = None
        for _ in range(args.rounds):
            got_plain = wrk(ports["listen"], args.duration, args.connections, cpu, scheme="http")
            plain = max(plain or got_plain, got_plain, key=lambda r: r.rps)
            for name, port in targets.items():
                got = Target(
                    name,
                    wrk(port, args.duration, args.connections, cpu),
                    wrk(port, args.duration, args.connections, cpu, close=True),
                    handshakes(port, args.duration, args.handshake_clients, cpu),
                )
                prev = best.get(name)
                if prev is None:
                    best[name] = got
                    continue
                best[name] = Target(
                    name,
                    max(prev.keep_alive, got.keep_alive, key=lambda r: r.rps),
                    max(prev.close, got.close, key=lambda r: r.rps),
                    max(prev.full_handshakes, got.full_handshakes),
                )
    h, m = best["haproxy"], best["localmesh"]
    assert plain is not None
    return {
        "settings": {
            "duration_s": args.duration,
            "rounds": args.rounds,
            "connections": args.connections,
            "handshake_clients": args.handshake_clients,
            "pinned": not args.no_pin,
        },
        "haproxy": asdict(h),
        "localmesh": asdict(m),
        "localmesh_plain_http": asdict(plain),
        "ratio": {
            "keep_alive_rps": m.keep_alive.rps / h.keep_alive.rps,
            "close_rps": m.close.rps / h.close.rps,
            "full_handshakes": m.full_handshakes / h.full_handshakes,
        },
    }


def report(result: dict[str, object]) -> str:
    h: dict[str, dict[str, float]] = result["haproxy"]  # type: ignore[assignment]
    m: dict[str, dict[str, float]] = result["localmesh"]  # type: ignore[assignment]
    full_h: float = h["full_handshakes"]  # type: ignore[assignment]
    full_m: float = m["full_handshakes"]  # type: ignore[assignment]
    s: dict[str, object] = result["settings"]  # type: ignore[assignment]
    rows = [
        f"HTTPS ingress: wrk -t1 -c{s['connections']} {s['duration_s']}s x {s['rounds']} "
        "rounds (best), one CPU per proxy",
        f"{'':34}{'HAProxy':>12}{'localmesh':>12}{'ratio':>8}",
    ]

    def row(label: str, a: float, b: float, fmt: str = "{:.0f}") -> None:
        rows.append(f"{label:34}{fmt.format(a):>12}{fmt.format(b):>12}{b / a:>7.2f}x")

    row("keep-alive req/s", h["keep_alive"]["rps"], m["keep_alive"]["rps"])
    row("  p50 ms", h["keep_alive"]["p50_ms"], m["keep_alive"]["p50_ms"], "{:.2f}")
    row("  p99 ms", h["keep_alive"]["p99_ms"], m["keep_alive"]["p99_ms"], "{:.2f}")
    row("new connection per request req/s", h["close"]["rps"], m["close"]["rps"])
    row("  p50 ms", h["close"]["p50_ms"], m["close"]["p50_ms"], "{:.2f}")
    row("  p99 ms", h["close"]["p99_ms"], m["close"]["p99_ms"], "{:.2f}")
    row(f"full handshakes/s (s_time x{s['handshake_clients']})", full_h, full_m)
    plain: dict[str, float] = result["localmesh_plain_http"]  # type: ignore[assignment]
    rows.append(
        f"context: localmesh plain-HTTP listener, keep-alive {plain['rps']:.0f} req/s "
        f"(p50 {plain['p50_ms']:.2f} ms, p99 {plain['p99_ms']:.2f} ms)"
    )
    errors = h["keep_alive"]["errors"] + h["close"]["errors"]
    errors += m["keep_alive"]["errors"] + m["close"]["errors"]
    if errors:
        rows.append(f"WARNING: {errors:.0f} socket errors or non-2xx answers (see --json)")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--handshake-clients", type=int, default=4)
    parser.add_argument("--no-pin", action="store_true", help="do not pin to CPUs 0 and 1")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--serve", nargs=2, metavar=("MESH", "PEM"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(Path(args.serve[0]), Path(args.serve[1]))
        return
    result = measure(args)
    print(json.dumps(result, indent=2) if args.json else report(result))


if __name__ == "__main__":
    main()
