"""Run localmesh's data plane in host mode for the benchmarks (metrics and access log on).

    python bench/mesh_server.py --http 127.0.0.1:18080=127.0.0.1:8080 \\
        --tcp redis:127.0.0.1:16379=127.0.0.1:6379 --routes 10 --services 0

``--http LISTEN=UPSTREAM`` and ``--tcp PROTOCOL:LISTEN=UPSTREAM`` each add a service and
its listener. ``--routes N`` gives each HTTP service N routes: N-1 that the benchmark's
requests do not match (``/svcJ/`` prefixes with a header condition), then a catch-all, so
routing does real work. ``--services N`` adds N idle HTTP services with listeners (the
RSS figure). The access log is on and written to ``--access-log`` (default /dev/null) by
the same flush task ``localmesh run`` uses. Prints ``ready`` once every listener is bound.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal

import uvloop

from localmesh.config.model import (
    Destination,
    HeaderMatch,
    MatchKind,
    MeshConfig,
    MeshSettings,
    PortSpec,
    Protocol,
    RequestMatch,
    Route,
    Service,
    StaticEndpoint,
    StringMatch,
)
from localmesh.runtime.dataplane import DataPlane
from localmesh.runtime.snapshot import Endpoint, ListenerSpec, Snapshot
from localmesh.runtime.telemetry import AccessLog, MeshMetrics


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def routes_for(service: str, count: int) -> tuple[Route, ...]:
    never = HeaderMatch("x-never", StringMatch(MatchKind.EXACT, "1"))
    misses = tuple(
        Route(
            name=f"r{j}",
            matches=(
                RequestMatch(path=StringMatch(MatchKind.PREFIX, f"/svc{j}/"), headers=(never,)),
            ),
            destinations=(Destination(service),),
        )
        for j in range(count - 1)
    )
    return (*misses, Route(name="main", destinations=(Destination(service),)))


def build(args: argparse.Namespace) -> Snapshot:
    services: list[Service] = []
    listeners: list[ListenerSpec] = []
    mappings = [("http", m) for m in args.http] + [tuple(m.split(":", 1)) for m in args.tcp]
    for i, (proto, mapping) in enumerate(mappings):
        listen, upstream = (_addr(x) for x in mapping.split("="))
        name = f"{proto}{i}"
        protocol = Protocol(proto)
        services.append(
            Service(
                name=name,
                ports=(PortSpec(upstream[1], protocol),),
                endpoints=(StaticEndpoint(*upstream),),
                routes=routes_for(name, args.routes) if protocol is Protocol.HTTP else (),
            )
        )
        listeners.append(
            ListenerSpec(
                name, name, upstream[1], protocol, listen[0], listen[1], source="bench-client"
            )
        )
    for i in range(args.services):
        name = f"idle{i}"
        services.append(
            Service(
                name=name,
                ports=(PortSpec(9000 + i, Protocol.HTTP),),
                endpoints=(StaticEndpoint("127.0.0.1", 9000 + i),),
                routes=routes_for(name, args.routes),
            )
        )
        listeners.append(ListenerSpec(name, name, 9000 + i, Protocol.HTTP, "127.0.0.1", 0))
    mesh = MeshSettings(name="bench", metrics=not args.no_metrics)
    config = MeshConfig(mesh=mesh, services=tuple(services))
    endpoints = {s.name: tuple(Endpoint(e.host, e.port) for e in s.endpoints) for s in services}
    return Snapshot(config, tuple(listeners), endpoints, version=1, origin="bench")


async def main(args: argparse.Namespace, sink: object) -> None:
    metrics = MeshMetrics("bench", "bench")
    access_log = AccessLog(sink, enabled=not args.no_access_log)  # type: ignore[arg-type]
    plane = DataPlane(metrics, access_log)
    await plane.apply(build(args))
    loop = asyncio.get_running_loop()
    flusher = loop.create_task(access_log.run())
    print("ready", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    flusher.cancel()
    await plane.close(1.0)
    access_log.flush()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--http", action="append", default=[], metavar="LISTEN=UPSTREAM")
    parser.add_argument("--tcp", action="append", default=[], metavar="PROTO:LISTEN=UPSTREAM")
    parser.add_argument("--routes", type=int, default=10)
    parser.add_argument("--services", type=int, default=0)
    parser.add_argument("--access-log", default=os.devnull)
    parser.add_argument("--no-access-log", action="store_true")
    parser.add_argument("--no-metrics", action="store_true", help="mesh.metrics: false")
    options = parser.parse_args()
    with open(options.access_log, "w") as out:
        uvloop.run(main(options, out))
