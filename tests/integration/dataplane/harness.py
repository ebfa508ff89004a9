"""Build snapshots from real backends and run a DataPlane over them (host mode)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from localmesh.config.model import (
    AuthorizationPolicy,
    MeshConfig,
    MeshSettings,
    PortSpec,
    Protocol,
    Service,
    StaticEndpoint,
)
from localmesh.runtime.dataplane import DataPlane
from localmesh.runtime.snapshot import Endpoint, ListenerSpec, Snapshot
from localmesh.runtime.telemetry import AccessLog, MeshMetrics


def endpoints_of(
    *addresses: tuple[str, int], labels: Iterable[tuple[tuple[str, str], ...]] = ()
) -> tuple[StaticEndpoint, ...]:
    labels = list(labels)
    return tuple(
        StaticEndpoint(h, p, labels[i] if i < len(labels) else ())
        for i, (h, p) in enumerate(addresses)
    )


def service(
    name: str,
    *addresses: tuple[str, int],
    protocol: Protocol = Protocol.HTTP,
    port: int = 8000,
    **kw: Any,
) -> Service:
    kw.setdefault("endpoints", endpoints_of(*addresses))
    return Service(name=name, ports=(PortSpec(port, protocol),), **kw)


def snapshot(
    *services: Service,
    callers: Iterable[str] = ("web",),
    policies: Iterable[AuthorizationPolicy] = (),
    version: int = 1,
    listeners: Iterable[ListenerSpec] | None = None,
    **mesh: Any,
) -> Snapshot:
    """One listener per (service port, caller) on 127.0.0.1:0, named ``caller>service``."""
    config = MeshConfig(
        mesh=MeshSettings(name="test", trust_domain="test", **mesh),
        services=tuple(services),
        policies=tuple(policies),
    )
    if listeners is None:
        listeners = [
            ListenerSpec(
                name=f"{caller}>{svc.name}",
                service=svc.name,
                port=svc.ports[0].port,
                protocol=svc.ports[0].protocol,
                bind_host="127.0.0.1",
                bind_port=0,
                source=caller,
            )
            for svc in services
            if svc.ports
            for caller in callers
        ]
    return Snapshot(
        config=config,
        listeners=tuple(listeners),
        endpoints={
            s.name: tuple(Endpoint(e.host, e.port, e.labels) for e in s.endpoints) for s in services
        },
        version=version,
        origin="test",
    )


@dataclass
class Mesh:
    plane: DataPlane
    metrics: MeshMetrics
    log: AccessLog
    sink: io.StringIO = field(default_factory=io.StringIO)

    def url(self, listener: str, path: str = "/") -> str:
        host, port = self.plane.addresses()[listener]
        return f"http://{host}:{port}{path}"

    def address(self, listener: str) -> tuple[str, int]:
        return self.plane.addresses()[listener]

    def records(self) -> list[dict[str, Any]]:
        self.log.flush()
        return [json.loads(line) for line in self.sink.getvalue().splitlines()]

    def explain(self) -> str:
        """For an assertion's message: the clusters (what ``/clusters`` serves: health,
        ejections, requests per endpoint) and the access log so far."""
        lines = [json.dumps(r, sort_keys=True) for r in self.records()]
        clusters = json.dumps(self.plane.clusters(), indent=1, sort_keys=True)
        return f"\n/clusters: {clusters}\naccess log ({len(lines)}):\n" + "\n".join(lines)


@contextlib.asynccontextmanager
async def running(snap: Snapshot) -> AsyncIterator[Mesh]:
    sink = io.StringIO()
    metrics = MeshMetrics("test", "test")
    log = AccessLog(sink)
    plane = DataPlane(metrics, log)
    await plane.apply(snap)
    try:
        yield Mesh(plane, metrics, log, sink)
    finally:
        await plane.close(drain_timeout=1.0)


async def raw_exchange(address: tuple[str, int], data: bytes, *, until_close: bool = True) -> bytes:
    """Send raw bytes, read until the peer closes (failing after 5 s: never a hang)."""
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(data)
        await writer.drain()
        chunks = []
        async with asyncio.timeout(5.0):
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                if not until_close:
                    break
        return b"".join(chunks)
    finally:
        writer.close()


async def eventually(condition: Callable[[], object], seconds: float = 5.0) -> None:
    """Poll ``condition`` until it holds; fail after ``seconds`` (a deadline, not a hope)."""
    async with asyncio.timeout(seconds):
        while not condition():  # noqa: ASYNC110 - the condition has no event to wait on
            await asyncio.sleep(0.02)
