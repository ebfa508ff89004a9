"""``mesh.metrics: false`` and ``mesh.access_log: false`` turn their telemetry off and
leave the traffic alone (the bench measures what each costs)."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from prometheus_client import generate_latest

from localmesh.config.model import Protocol
from tests.integration.dataplane.harness import eventually, running, service, snapshot
from tests.support.services import HttpBackend, Redis


def istio_samples(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("istio_") and "build" not in line]


@pytest.mark.redis
@pytest.mark.parametrize("metrics", [True, False])
async def test_metrics_switch(
    http_backend: HttpBackend, redis_server: Redis, metrics: bool
) -> None:
    snap = snapshot(
        service("api", (http_backend.host, http_backend.port)),
        service("cache", ("127.0.0.1", redis_server.port), protocol=Protocol.REDIS, port=6379),
        metrics=metrics,
    )
    async with running(snap) as mesh:
        async with aiohttp.ClientSession() as s, s.get(mesh.url("web>api", "/hello")) as r:
            assert r.status == 200
        reader, writer = await asyncio.open_connection(*mesh.address("web>cache"))
        writer.write(b"PING\r\n")
        assert await reader.readline() == b"+PONG\r\n"
        writer.close()
        await eventually(lambda: len(mesh.records()) == 2)  # the access log is still on
        text = generate_latest(mesh.metrics.registry).decode()
    samples = istio_samples(text)
    if metrics:
        assert any(s.startswith("istio_requests_total{") for s in samples)
        assert any(s.startswith("istio_tcp_connections_opened_total{") for s in samples)
    else:
        assert samples == []
        assert "istio_build{" in text  # the build info stays


async def test_access_log_switch(http_backend: HttpBackend) -> None:
    snap = snapshot(service("api", (http_backend.host, http_backend.port)), access_log=False)
    async with running(snap) as mesh:
        async with aiohttp.ClientSession() as s, s.get(mesh.url("web>api", "/hello")) as r:
            assert r.status == 200
        text = generate_latest(mesh.metrics.registry).decode()
        assert mesh.records() == []
    assert any(s.startswith("istio_requests_total{") for s in istio_samples(text))


async def test_durations_are_finer_than_the_loops_millisecond_clock(
    http_backend: HttpBackend,
) -> None:
    """uvloop's ``loop.time()`` is whole milliseconds, cached per loop iteration: timed with
    it, every request on loopback logged 0.000 or 1.000 ms and landed in the first bucket."""
    snap = snapshot(service("api", (http_backend.host, http_backend.port)))
    async with running(snap) as mesh:
        async with aiohttp.ClientSession() as s:
            for _ in range(5):
                async with s.get(mesh.url("web>api", "/hello")) as r:
                    assert r.status == 200
        await eventually(lambda: len(mesh.records()) == 5)
        durations = [r["duration_ms"] for r in mesh.records()]
    assert all(d > 0 for d in durations), durations
    assert any(d != int(d) for d in durations), durations
