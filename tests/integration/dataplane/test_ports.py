"""Clusters per service port, with real backends (host mode), and upstream failure reports.

A service with two ports has two clusters: a call that arrived on one port only ever
reaches endpoints of that port, a route may name another port, metrics stay per service.
The container-mode shape (discovered endpoints per port and replica, port 0 for intercepted
ports) runs in a network namespace with an iptables REDIRECT (``ports_child.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from localmesh.config.model import (
    Destination,
    HealthCheck,
    HealthCheckKind,
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
from tests.integration.dataplane.harness import Mesh, eventually, running, service, snapshot
from tests.support.services import HttpBackend, free_port, run_http_backend

CHILD = Path(__file__).with_name("ports_child.py")
ROOT = Path(__file__).parents[3]
TcpHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
def backends() -> Iterator[tuple[HttpBackend, HttpBackend]]:
    with run_http_backend("port-a") as a, run_http_backend("port-b") as b:
        yield a, b


def two_port_snapshot(a: HttpBackend, b: HttpBackend, *routes: Route) -> Snapshot:
    """``api`` serves ports a.port and b.port (host mode: the backends' own ports); one
    listener per port, as ``localmesh run`` binds them."""
    api = Service(
        "api",
        ports=(PortSpec(a.port), PortSpec(b.port)),
        endpoints=(StaticEndpoint(a.host, a.port), StaticEndpoint(b.host, b.port)),
        routes=routes,
    )
    return Snapshot(
        config=MeshConfig(mesh=MeshSettings(name="test", trust_domain="test"), services=(api,)),
        listeners=tuple(
            ListenerSpec(f"web>api:{p}", "api", p, Protocol.HTTP, "127.0.0.1", 0, source="web")
            for p in (a.port, b.port)
        ),
        endpoints={"api": (Endpoint(a.host, a.port), Endpoint(b.host, b.port))},
        origin="test",
    )


async def backends_seen(mesh: Mesh, listener: str, path: str = "/echo", n: int = 20) -> set[str]:
    seen: set[str] = set()
    async with aiohttp.ClientSession() as s:
        for _ in range(n):
            async with s.get(mesh.url(listener, path)) as r:
                assert r.status == 200
                seen.add(r.headers["x-backend"])
    return seen


async def test_each_port_of_a_service_reaches_only_its_own_backend(
    backends: tuple[HttpBackend, HttpBackend],
) -> None:
    a, b = backends
    async with running(two_port_snapshot(a, b)) as mesh:
        assert await backends_seen(mesh, f"web>api:{a.port}") == {"port-a"}
        assert await backends_seen(mesh, f"web>api:{b.port}") == {"port-b"}
        clusters = {c["name"]: c for c in mesh.plane.clusters()}
    assert a.hits["/echo"] == b.hits["/echo"] == 20
    assert set(clusters) == {f"outbound|{a.port}||api", f"outbound|{b.port}||api"}
    for backend in (a, b):
        cluster = clusters[f"outbound|{backend.port}||api"]
        assert (cluster["service"], cluster["port"]) == ("api", backend.port)
        [endpoint] = cluster["endpoints"]
        assert endpoint["address"] == f"{backend.host}:{backend.port}"
        assert endpoint["total_requests"] == 20
    # Istio's metrics are per service: both ports count under destination api
    families = text_string_to_metric_families(generate_latest(mesh.metrics.registry).decode())
    requests = [
        sample
        for family in families
        if family.name == "istio_requests"
        for sample in family.samples
        if sample.name == "istio_requests_total" and sample.labels["reporter"] == "destination"
    ]
    assert [(s.labels["destination_service_name"], s.value) for s in requests] == [("api", 40.0)]


async def test_a_route_naming_a_port_goes_to_that_ports_cluster(
    backends: tuple[HttpBackend, HttpBackend],
) -> None:
    a, b = backends
    to_b = Route(
        "to-b",
        matches=(RequestMatch(path=StringMatch(MatchKind.PREFIX, "/b/")),),
        destinations=(Destination("api", port=b.port),),
    )
    async with running(two_port_snapshot(a, b, to_b, Route("rest"))) as mesh:
        assert await backends_seen(mesh, f"web>api:{a.port}", "/b/x", n=10) == {"port-b"}
        assert await backends_seen(mesh, f"web>api:{a.port}", "/echo", n=10) == {"port-a"}


@contextlib.asynccontextmanager
async def tcp_server(handle: TcpHandler) -> AsyncIterator[int]:
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()


def named_line(checks: list[bytes]) -> TcpHandler:
    """A TCP backend: answers one line with ``tcp:<line>``; counts connect-only checks."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        if not line:
            checks.append(line)
        writer.write(b"tcp:" + line)
        await writer.drain()
        writer.close()

    return handle


async def test_an_http_port_and_a_tcp_port_of_one_service(http_backend: HttpBackend) -> None:
    """With an HTTP health check: the TCP port's cluster is checked by connecting (an HTTP
    probe would fail its endpoint and refuse every TCP call)."""
    check = HealthCheck(HealthCheckKind.HTTP, path="/", interval=0.05, unhealthy_threshold=1)
    tcp_checks: list[bytes] = []
    async with tcp_server(named_line(tcp_checks)) as tcp_port:
        api = Service(
            "api",
            ports=(PortSpec(http_backend.port), PortSpec(tcp_port, Protocol.TCP)),
            endpoints=(
                StaticEndpoint(http_backend.host, http_backend.port),
                StaticEndpoint("127.0.0.1", tcp_port),
            ),
            health_check=check,
        )
        listeners = [
            ListenerSpec(f"web>api:{p.port}", "api", p.port, p.protocol, "127.0.0.1", 0, "web")
            for p in api.ports
        ]
        async with running(snapshot(api, listeners=listeners)) as mesh:
            await eventually(lambda: http_backend.hits.get("/", 0) >= 3)  # checks ran
            await eventually(lambda: len(tcp_checks) >= 3)
            health = {c["port"]: c["endpoints"][0]["healthy"] for c in mesh.plane.clusters()}
            assert health == {http_backend.port: True, tcp_port: True}
            assert await backends_seen(mesh, f"web>api:{http_backend.port}") == {"backend"}
            for i in range(10):
                reader, writer = await asyncio.open_connection(*mesh.address(f"web>api:{tcp_port}"))
                writer.write(f"call {i}\n".encode())
                assert await asyncio.wait_for(reader.readline(), 5) == f"tcp:call {i}\n".encode()
                writer.close()


def test_container_shaped_calls_land_on_the_dialled_port_of_every_replica() -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("iptables") is None:
        pytest.fail("this test needs root, unshare and iptables (a network namespace with NAT)")
    done = subprocess.run(
        ["unshare", "-n", sys.executable, str(CHILD)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    replicas = ("10.98.0.2", "10.98.0.3")
    # a known port: both replicas, only on that port
    assert result["api:8000"] == [f"{ip}:8000" for ip in replicas]
    assert result["api:9000"] == [f"{ip}:9000" for ip in replicas]
    # intercepted ports (port-0 endpoints): the port the client dialled, on both replicas
    assert result["opaque:7001"] == [f"{ip}:7001" for ip in replicas]
    assert result["opaque:7002"] == [f"{ip}:7002" for ip in replicas]
    # known and intercepted ports of one upstream
    assert result["legacy:8080"] == ["10.98.0.2:8080"]
    assert result["legacy:7003"] == ["10.98.0.2:7003"]
    assert [tuple(c) for c in result["clusters"]] == [
        ("outbound|7001||opaque", [f"{ip}:7001" for ip in replicas]),
        ("outbound|7002||opaque", [f"{ip}:7002" for ip in replicas]),
        ("outbound|7003||legacy", ["10.98.0.2:7003"]),
        ("outbound|8000||api", [f"{ip}:8000" for ip in replicas]),
        ("outbound|8080||legacy", ["10.98.0.2:8080"]),
        ("outbound|9000||api", [f"{ip}:9000" for ip in replicas]),
    ]


# -- upstream failure reports (discovery looks again) ---------------------------------------


@contextlib.asynccontextmanager
async def reporting(snap: Snapshot) -> AsyncIterator[tuple[DataPlane, list[str]]]:
    reports: list[str] = []
    plane = DataPlane(MeshMetrics("t", "t"), AccessLog(None), on_upstream_failure=reports.append)
    await plane.apply(snap)
    try:
        yield plane, reports
    finally:
        await plane.close(1.0)


async def test_a_refused_connect_is_reported_once_per_service_not_per_call() -> None:
    dead = ("127.0.0.1", free_port())
    snap = snapshot(service("api", dead), service("db", dead, protocol=Protocol.TCP, port=5432))
    async with reporting(snap) as (plane, reports), aiohttp.ClientSession() as s:
        host, port = plane.addresses()["web>api"]
        for _ in range(5):  # each call is tried three times (the default retries)
            async with s.get(f"http://{host}:{port}/") as r:
                assert r.status == 503
        assert reports == ["api"]
        reader, writer = await asyncio.open_connection(*plane.addresses()["web>db"])
        assert await asyncio.wait_for(reader.read(), 5) == b""  # refused: closed
        writer.close()
        assert reports == ["api", "db"]


async def test_a_reset_under_a_request_is_reported() -> None:
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # linger 0: the close is an RST

    async with (
        tcp_server(reset) as port,
        reporting(snapshot(service("api", ("127.0.0.1", port)))) as (plane, reports),
    ):
        host, listen = plane.addresses()["web>api"]
        async with aiohttp.ClientSession() as s, s.get(f"http://{host}:{listen}/") as r:
            assert r.status == 502
            assert r.headers["x-localmesh-reason"] == "upstream-reset"
        assert reports == ["api"]


async def test_a_tcp_relay_reset_by_the_upstream_is_reported() -> None:
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(b"partial answer")
        await writer.drain()
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # an RST in the middle of the relay

    async with tcp_server(reset) as port:
        snap = snapshot(service("db", ("127.0.0.1", port), protocol=Protocol.TCP, port=5432))
        async with reporting(snap) as (plane, reports):
            reader, writer = await asyncio.open_connection(*plane.addresses()["web>db"])
            writer.write(b"query\n")
            assert await asyncio.wait_for(reader.read(), 5) == b"partial answer"
            writer.close()
            await eventually(lambda: reports == ["db"])
