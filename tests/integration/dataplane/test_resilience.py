"""Resilience against real failing backends: retries (and what is never retried), timeouts,
circuit breaking, outlier ejection, health checks, faults combined with retries, rate limits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import TypedDict

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

from localmesh.config.model import (
    ConnectionPool,
    Fault,
    FaultAbort,
    FaultDelay,
    HealthCheck,
    HealthCheckKind,
    OutlierDetection,
    Protocol,
    RateLimit,
    RetryPolicy,
    Route,
)
from localmesh.runtime.snapshot import ListenerSpec
from tests.integration.dataplane.harness import Mesh, eventually, running, service, snapshot
from tests.support.services import HttpBackend, free_port, run_http_backend


class Backoff(TypedDict):
    backoff_base: float
    backoff_max: float


FAST: Backoff = {"backoff_base": 0.001, "backoff_max": 0.005}


def failing_app(fail_first: int, status: int = 503) -> Callable[[HttpBackend], web.Application]:
    """Answers ``status`` to the first ``fail_first`` requests, then 200."""

    def factory(backend: HttpBackend) -> web.Application:
        async def handle(request: web.Request) -> web.Response:
            await request.read()
            n = backend.hits[request.path] = backend.hits.get(request.path, 0) + 1
            code = status if n <= fail_first else 200
            return web.Response(status=code, text=backend.name, headers={"x-backend": backend.name})

        app = web.Application(client_max_size=1 << 24)
        app.router.add_route("*", "/{tail:.*}", handle)
        return app

    return factory


@pytest.fixture
def flaky() -> Iterator[HttpBackend]:
    with run_http_backend("flaky", failing_app(2)) as b:
        yield b


@pytest.fixture
def broken() -> Iterator[HttpBackend]:
    with run_http_backend("broken", failing_app(10**9, 500)) as b:
        yield b


def addr(b: HttpBackend) -> tuple[str, int]:
    return (b.host, b.port)


def dead() -> tuple[str, int]:
    return ("127.0.0.1", free_port())


async def get(s: aiohttp.ClientSession, url: str) -> tuple[int, CIMultiDict[str]]:
    async with s.get(url) as r:
        await r.read()
        return r.status, r.headers.copy()


def retries_metric(mesh: Mesh, cluster: str) -> int:
    return mesh.metrics._retries.values.get(cluster, 0)


async def test_retry_recovers_from_5xx(flaky: HttpBackend) -> None:
    api = service(
        "api", addr(flaky), retries=RetryPolicy(attempts=3, retry_on=frozenset({"5xx"}), **FAST)
    )
    async with running(snapshot(api)) as mesh, aiohttp.ClientSession() as s:
        assert (await get(s, mesh.url("web>api", "/x")))[0] == 200
    assert flaky.hits["/x"] == 3
    [record] = mesh.records()
    assert (record["status"], record["retries"]) == (200, 2)
    assert retries_metric(mesh, "api") == 2


async def test_a_retriable_4xx_is_retried_and_others_are_not() -> None:
    """retriable_status_codes: [429] retries a 429 (the loader adds the condition); a 404
    from the same route is passed on at once, without a retry flag."""
    with run_http_backend("limited", failing_app(2, 429)) as limited:
        policy = RetryPolicy(
            attempts=3,
            retry_on=frozenset({"retriable-status-codes"}),
            retriable_status_codes=frozenset({429}),
            **FAST,
        )
        api = service("api", addr(limited), retries=policy)
        async with running(snapshot(api)) as mesh, aiohttp.ClientSession() as s:
            assert (await get(s, mesh.url("web>api", "/x")))[0] == 200
    assert limited.hits["/x"] == 3
    with run_http_backend("missing", failing_app(10**9, 404)) as missing:
        api = service("api", addr(missing), retries=policy)
        async with running(snapshot(api)) as mesh, aiohttp.ClientSession() as s:
            assert (await get(s, mesh.url("web>api", "/y")))[0] == 404
    assert missing.hits["/y"] == 1
    assert mesh.records()[0]["flags"] == "-"


async def test_retries_exhausted_return_the_last_answer(broken: HttpBackend) -> None:
    api = service(
        "api", addr(broken), retries=RetryPolicy(attempts=2, retry_on=frozenset({"5xx"}), **FAST)
    )
    async with running(snapshot(api)) as mesh, aiohttp.ClientSession() as s:
        status, headers = await get(s, mesh.url("web>api", "/x"))
    assert (status, headers["x-backend"]) == (500, "broken")
    assert broken.hits["/x"] == 3
    assert mesh.records()[0]["flags"] == "URX"


async def test_non_replayable_body_is_not_retried(flaky: HttpBackend) -> None:
    api = service(
        "api", addr(flaky), retries=RetryPolicy(attempts=3, retry_on=frozenset({"5xx"}), **FAST)
    )
    async with (
        running(snapshot(api)) as mesh,
        aiohttp.ClientSession() as s,
        s.post(mesh.url("web>api", "/big"), data=b"x" * 200_000) as r,
    ):
        assert r.status == 503
    assert flaky.hits["/big"] == 1


async def test_connect_failure_moves_to_another_endpoint(http_backend: HttpBackend) -> None:
    api = service(
        "api",
        dead(),
        addr(http_backend),
        retries=RetryPolicy(attempts=1, retry_on=frozenset({"connect-failure"}), **FAST),
        outlier_detection=OutlierDetection(consecutive_gateway_errors=2, max_ejection_percent=50),
    )
    async with running(snapshot(api)) as mesh, aiohttp.ClientSession() as s:
        statuses = [(await get(s, mesh.url("web>api", "/")))[0] for _ in range(10)]
        clusters = {c["service"]: c for c in mesh.plane.clusters()}
    assert statuses == [200] * 10
    dead_ep = clusters["api"]["endpoints"][0]
    assert dead_ep["ejected"] is True
    assert mesh.metrics._ejections.values["api"] == 1


async def test_upstream_refusing_without_retry_is_503_connect_failure() -> None:
    api = service("api", dead(), retries=None)
    async with running(snapshot(api)) as mesh, aiohttp.ClientSession() as s:
        status, headers = await get(s, mesh.url("web>api", "/"))
    assert (status, headers["x-localmesh-reason"]) == (503, "upstream-connect-failure")
    assert mesh.records()[0]["flags"] == "UF"


async def test_route_timeout(http_backend: HttpBackend) -> None:
    api = service("api", addr(http_backend), timeout=0.2, retries=None)
    async with running(snapshot(api)) as mesh, aiohttp.ClientSession() as s:
        started = time.monotonic()
        status, headers = await get(s, mesh.url("web>api", "/delay/2000"))
        elapsed = time.monotonic() - started
    assert (status, headers["x-localmesh-reason"]) == (504, "upstream-timeout")
    assert 0.15 < elapsed < 1.0
    assert mesh.records()[0]["flags"] == "UT"


async def test_route_timeout_covers_the_response_body(http_backend: HttpBackend) -> None:
    """Envoy's semantics: a body still streaming (here: stalled) when it runs out is reset."""
    api = service("api", addr(http_backend), timeout=0.3, retries=None)
    async with running(snapshot(api)) as mesh:
        reader, writer = await asyncio.open_connection(*mesh.address("web>api"))
        started = time.monotonic()
        writer.write(b"GET /stall/5000 HTTP/1.1\r\nHost: api\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        assert await reader.readuntil(b"first\n")
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
            async with asyncio.timeout(3.0):
                await reader.readuntil(b"0\r\n\r\n")  # the last chunk never comes
        elapsed = time.monotonic() - started
        writer.close()
        await eventually(mesh.records)
    assert 0.25 < elapsed < 2.0
    [record] = mesh.records()
    assert (record["status"], record["flags"]) == (200, "UT")


async def test_a_stream_inside_the_route_timeout_completes(http_backend: HttpBackend) -> None:
    api = service("api", addr(http_backend), timeout=2.0, retries=None)
    async with (
        running(snapshot(api)) as mesh,
        aiohttp.ClientSession() as s,
        s.get(mesh.url("web>api", "/stall/300")) as r,
    ):
        assert await r.read() == b"first\n"
    assert mesh.records()[0]["flags"] == "-"


async def test_per_try_timeout_is_retried(http_backend: HttpBackend) -> None:
    retry = RetryPolicy(attempts=1, per_try_timeout=0.1, retry_on=frozenset({"reset"}), **FAST)
    api = service("api", addr(http_backend), retries=retry)
    async with running(snapshot(api)) as mesh, aiohttp.ClientSession() as s:
        started = time.monotonic()
        status, _ = await get(s, mesh.url("web>api", "/delay/1000"))
        elapsed = time.monotonic() - started
    assert status == 504
    assert elapsed < 0.8
    assert http_backend.hits["/delay/1000"] == 2
    assert mesh.records()[0]["flags"] == "UT,URX"


async def test_circuit_breaker_overflow(http_backend: HttpBackend) -> None:
    api = service(
        "api",
        addr(http_backend),
        connection_pool=ConnectionPool(max_connections=1, max_pending_requests=0),
    )
    async with running(snapshot(api)) as mesh, aiohttp.ClientSession() as s:
        results = await asyncio.gather(
            *(get(s, mesh.url("web>api", "/delay/300")) for _ in range(2))
        )
    statuses = sorted(status for status, _ in results)
    assert statuses == [200, 503]
    refused = next(h for status, h in results if status == 503)
    assert refused["x-localmesh-reason"] == "circuit-open"
    assert "UO" in {r["flags"] for r in mesh.records()}


async def test_pending_requests_wait_for_a_connection(http_backend: HttpBackend) -> None:
    api = service(
        "api",
        addr(http_backend),
        connection_pool=ConnectionPool(max_connections=1, max_pending_requests=10),
    )
    async with running(snapshot(api)) as mesh, aiohttp.ClientSession() as s:
        results = await asyncio.gather(
            *(get(s, mesh.url("web>api", "/delay/50")) for _ in range(4))
        )
    assert [status for status, _ in results] == [200] * 4


async def test_outlier_ejects_a_failing_endpoint(
    broken: HttpBackend, http_backend: HttpBackend
) -> None:
    api = service(
        "api",
        addr(broken),
        addr(http_backend),
        retries=None,
        outlier_detection=OutlierDetection(consecutive_5xx=2, max_ejection_percent=50),
    )
    async with running(snapshot(api)) as mesh, aiohttp.ClientSession() as s:
        statuses = [(await get(s, mesh.url("web>api", "/")))[0] for _ in range(20)]
    assert statuses[:4].count(500) == 2  # round robin: two failures, then ejected
    assert statuses[4:] == [200] * 16


@pytest.mark.parametrize(("min_health_percent", "after"), [(50.0, 200), (0.0, 503)])
async def test_an_ejected_only_endpoint_keeps_getting_traffic_unless_told_otherwise(
    min_health_percent: float, after: int
) -> None:
    """A single replica answering five 503s is ejected; by default (Envoy's 50% panic
    threshold) it still gets the requests after it recovered, where Istio's 0 answers
    503 no-healthy-upstream for the whole ejection time."""
    od = OutlierDetection(min_health_percent=min_health_percent)
    with run_http_backend("api", failing_app(5)) as backend:
        api = service("api", addr(backend), retries=None, outlier_detection=od)
        async with running(snapshot(api)) as mesh, aiohttp.ClientSession() as s:
            statuses = [(await get(s, mesh.url("web>api", "/")))[0] for _ in range(8)]
            assert mesh.plane.clusters()[0]["endpoints"][0]["ejected"]
            assert mesh.plane.clusters()[0]["panic"] is (after == 200)
    assert statuses == [503] * 5 + [after] * 3


async def test_health_check_takes_a_dead_endpoint_out(http_backend: HttpBackend) -> None:
    hc = HealthCheck(HealthCheckKind.HTTP, path="/health", interval=0.05, unhealthy_threshold=1)
    api = service("api", dead(), addr(http_backend), retries=None, health_check=hc)
    async with running(snapshot(api)) as mesh, aiohttp.ClientSession() as s:
        await eventually(lambda: not mesh.plane.clusters()[0]["endpoints"][0]["healthy"])
        statuses = [(await get(s, mesh.url("web>api", "/")))[0] for _ in range(6)]
    assert statuses == [200] * 6


async def test_no_healthy_upstream() -> None:
    hc = HealthCheck(HealthCheckKind.TCP, interval=0.05, unhealthy_threshold=1)
    no_panic = OutlierDetection(min_health_percent=0)  # else the dead one gets traffic anyway
    api = service("api", dead(), retries=None, health_check=hc, outlier_detection=no_panic)
    async with running(snapshot(api)) as mesh, aiohttp.ClientSession() as s:
        await eventually(lambda: not mesh.plane.clusters()[0]["endpoints"][0]["healthy"])
        status, headers = await get(s, mesh.url("web>api", "/"))
    assert (status, headers["x-localmesh-reason"]) == (503, "no-healthy-upstream")
    assert mesh.records()[0]["flags"] == "UH"


async def test_fault_abort_and_delay(http_backend: HttpBackend) -> None:
    abort = Route("abort", fault=Fault(abort=FaultAbort(418), sources=("web",)))
    api = service("api", addr(http_backend), routes=(abort,), retries=None)
    async with (
        running(snapshot(api, callers=("web", "worker"))) as mesh,
        aiohttp.ClientSession() as s,
    ):
        status, headers = await get(s, mesh.url("web>api", "/"))
        assert (status, headers["x-localmesh-reason"]) == (418, "fault-abort")
        assert (await get(s, mesh.url("worker>api", "/")))[0] == 200  # not from web: no fault
    assert [r["flags"] for r in mesh.records()] == ["FI", "-"]

    delayed = Route("delay", fault=Fault(delay=FaultDelay(0.2)))
    api = service("api", addr(http_backend), routes=(delayed,))
    async with running(snapshot(api)) as mesh, aiohttp.ClientSession() as s:
        started = time.monotonic()
        assert (await get(s, mesh.url("web>api", "/")))[0] == 200
        assert time.monotonic() - started >= 0.2
    assert mesh.records()[0]["flags"] == "DI"


async def test_faults_are_retried_by_the_callers_policy(http_backend: HttpBackend) -> None:
    retry = RetryPolicy(attempts=3, retry_on=frozenset({"5xx"}), **FAST)
    always = Route("always", fault=Fault(abort=FaultAbort(503)), retries=retry)
    api = service("api", addr(http_backend), routes=(always,))
    async with running(snapshot(api)) as mesh, aiohttp.ClientSession() as s:
        assert (await get(s, mesh.url("web>api", "/")))[0] == 503
    [record] = mesh.records()
    assert (record["retries"], record["flags"]) == (3, "FI,URX")

    # a fault that hits 30% of attempts disappears behind 10 retries (Istio cannot do this)
    retry = RetryPolicy(attempts=10, retry_on=frozenset({"5xx"}), budget_percent=100, **FAST)
    sometimes = Route("sometimes", fault=Fault(abort=FaultAbort(503, percent=30)), retries=retry)
    api = service("api", addr(http_backend), routes=(sometimes,))
    async with running(snapshot(api)) as mesh, aiohttp.ClientSession() as s:
        statuses = [(await get(s, mesh.url("web>api", "/")))[0] for _ in range(60)]
    assert statuses == [200] * 60
    assert sum(r.get("retries", 0) for r in mesh.records()) > 0


async def test_rate_limit_answers_429_with_retry_after(http_backend: HttpBackend) -> None:
    limited = Route("limited", rate_limit=RateLimit(requests_per_second=0.5, burst=2))
    api = service("api", addr(http_backend), routes=(limited,))
    async with running(snapshot(api)) as mesh, aiohttp.ClientSession() as s:
        results = [await get(s, mesh.url("web>api", "/")) for _ in range(3)]
    assert [status for status, _ in results] == [200, 200, 429]
    headers = results[2][1]
    assert headers["x-localmesh-reason"] == "rate-limited"
    assert headers["retry-after"] == "2"
    assert mesh.metrics._rate_limited.values == {"limited": 1}


async def test_rate_limit_per_source_keeps_unknown_callers_apart_by_address(
    http_backend: HttpBackend,
) -> None:
    api = service(
        "api",
        addr(http_backend),
        rate_limit=RateLimit(requests_per_second=0.1, burst=1, per_source=True),
    )
    # no pinned caller: connections from 127.0.0.2/.3 (no service lives there) are unknown
    listener = ListenerSpec("open>api", "api", 8000, Protocol.HTTP, "127.0.0.1", 0)
    async with running(snapshot(api, listeners=[listener])) as mesh:

        async def status_from(ip: str) -> int:
            reader, writer = await asyncio.open_connection(
                *mesh.address("open>api"), local_addr=(ip, 0)
            )
            writer.write(b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
            async with asyncio.timeout(5):
                raw = await reader.read()
            writer.close()
            return int(raw[9:12])

        assert await status_from("127.0.0.2") == 200
        assert await status_from("127.0.0.2") == 429
        assert await status_from("127.0.0.3") == 200  # another unknown caller, its own bucket
    assert {r["source"] for r in mesh.records()} == {"unknown"}


async def test_rate_limit_per_source(http_backend: HttpBackend) -> None:
    api = service(
        "api",
        addr(http_backend),
        rate_limit=RateLimit(requests_per_second=0.1, burst=1, per_source=True),
    )
    async with (
        running(snapshot(api, callers=("web", "worker"))) as mesh,
        aiohttp.ClientSession() as s,
    ):
        assert (await get(s, mesh.url("web>api", "/")))[0] == 200
        assert (await get(s, mesh.url("web>api", "/")))[0] == 429
        assert (await get(s, mesh.url("worker>api", "/")))[0] == 200
