"""The L4 relay with real Postgres (asyncpg) and real Redis through it, plus half-close,
authorization, connect failures and the TCP metrics."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from localmesh.config.model import (
    AuthorizationPolicy,
    Destination,
    PolicyAction,
    Protocol,
    RequestMatch,
    RetryPolicy,
    Route,
)
from tests.integration.dataplane.harness import eventually, running, service, snapshot
from tests.support.services import Postgres, Redis, free_port


def redis_at(address: tuple[str, int]) -> aioredis.Redis:
    return aioredis.Redis(host=address[0], port=address[1])


@pytest.mark.postgres
async def test_postgres_through_the_mesh(postgres: Postgres) -> None:
    db = service("db", (postgres.host, postgres.port), protocol=Protocol.POSTGRES, port=5432)
    async with running(snapshot(db)) as mesh:
        host, port = mesh.address("web>db")
        conn = await asyncpg.connect(host=host, port=port, user=postgres.user, database="postgres")
        try:
            await conn.execute("CREATE TABLE IF NOT EXISTS t (id int, name text)")
            await conn.executemany(
                "INSERT INTO t VALUES ($1, $2)", [(i, f"n{i}") for i in range(500)]
            )
            rows = await conn.fetch("SELECT count(*) AS n, sum(id) AS s FROM t")
            big = await conn.fetchval("SELECT repeat('x', 5000000)")
            await conn.execute("DROP TABLE t")
        finally:
            await conn.close()
        assert (rows[0]["n"], rows[0]["s"]) == (500, sum(range(500)))
        assert len(big) == 5_000_000
        await eventually(mesh.records)
    [record] = mesh.records()
    assert (record["protocol"], record["source"], record["destination"]) == (
        "postgres",
        "web",
        "db",
    )
    assert record["response_bytes"] > 5_000_000
    edge = mesh.metrics.tcp_edge("web", "db")
    cell = edge._cells["-"]
    assert (cell.opened, cell.closed) == (1, 1)
    assert cell.sent == record["response_bytes"]
    assert cell.received == record["request_bytes"]


@pytest.mark.redis
async def test_redis_through_the_mesh_with_a_pool(redis_server: Redis) -> None:
    cache = service(
        "cache", (redis_server.host, redis_server.port), protocol=Protocol.REDIS, port=6379
    )
    async with running(snapshot(cache)) as mesh:
        host, port = mesh.address("web>cache")
        pool = aioredis.BlockingConnectionPool(host=host, port=port, max_connections=8)
        client = aioredis.Redis(connection_pool=pool)
        try:
            await asyncio.gather(*(client.set(f"k{i}", i) for i in range(200)))
            values = await asyncio.gather(*(client.get(f"k{i}") for i in range(200)))
            pipe = client.pipeline()
            for _i in range(100):
                pipe.incr("counter")
            results = await pipe.execute()
        finally:
            await client.aclose()
    assert values == [str(i).encode() for i in range(200)]
    assert results[-1] >= 100


async def test_tcp_routes_split_connections_by_caller() -> None:
    """A TCP route matches on sources only: web's connections go to `special`, everyone
    else's to the service's own endpoints; the access log names the route."""

    def answering(name: bytes) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(name)
            await writer.drain()
            writer.close()

        return handle

    plain = await asyncio.start_server(answering(b"plain"), "127.0.0.1", 0)
    special = await asyncio.start_server(answering(b"special"), "127.0.0.1", 0)
    up = service(
        "up",
        ("127.0.0.1", plain.sockets[0].getsockname()[1]),
        protocol=Protocol.TCP,
        routes=(
            Route("from-web", (RequestMatch(sources=("web",)),), (Destination("special"),)),
            Route("rest"),
        ),
    )
    other = service(
        "special", ("127.0.0.1", special.sockets[0].getsockname()[1]), protocol=Protocol.TCP
    )
    async with plain, special, running(snapshot(up, other, callers=("web", "batch"))) as m:
        answers = {}
        for caller in ("web", "batch"):
            reader, writer = await asyncio.open_connection(*m.address(f"{caller}>up"))
            async with asyncio.timeout(5):
                answers[caller] = await reader.read()
            writer.close()
        await eventually(lambda: len([r for r in m.records() if r["destination"] == "up"]) == 2)
    assert answers == {"web": b"special", "batch": b"plain"}
    routes = {r["source"]: r["route"] for r in m.records() if r["destination"] == "up"}
    assert routes == {"web": "from-web", "batch": "rest"}


async def test_half_close_is_relayed() -> None:
    """The client shuts its write side; the upstream still answers everything."""

    async def upper(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read()  # until the client's EOF
        writer.write(data.upper())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(upper, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with (
        server,
        running(snapshot(service("up", ("127.0.0.1", port), protocol=Protocol.TCP))) as m,
    ):
        reader, writer = await asyncio.open_connection(*m.address("web>up"))
        writer.write(b"hello " * 10000)
        writer.write_eof()
        async with asyncio.timeout(5):
            answer = await reader.read()
        writer.close()
    assert answer == b"HELLO " * 10000


async def test_policy_denies_tcp_callers(redis_server: Redis) -> None:
    cache = service(
        "cache", (redis_server.host, redis_server.port), protocol=Protocol.REDIS, port=6379
    )
    policy = AuthorizationPolicy("api-only", PolicyAction.ALLOW, to=("cache",), sources=("api",))
    async with running(snapshot(cache, callers=("web", "api"), policies=(policy,))) as mesh:
        host, port = mesh.address("web>cache")
        denied = aioredis.Redis(host=host, port=port)
        with pytest.raises(aioredis.ConnectionError):
            await denied.ping()
        await denied.aclose()
        allowed = redis_at(mesh.address("api>cache"))
        assert await allowed.ping()
        await allowed.aclose()
        await eventually(lambda: any(r["flags"] == "UAEX" for r in mesh.records()))


async def test_connect_failure_tries_another_endpoint(redis_server: Redis) -> None:
    cache = service(
        "cache",
        ("127.0.0.1", free_port()),
        (redis_server.host, redis_server.port),
        protocol=Protocol.REDIS,
        port=6379,
        retries=RetryPolicy(attempts=2, retry_on=frozenset({"connect-failure"})),
    )
    async with running(snapshot(cache)) as mesh:
        for _ in range(4):  # round robin starts on each endpoint at least once
            client = redis_at(mesh.address("web>cache"))
            assert await client.ping()
            await client.aclose()


async def test_no_upstream_closes_the_downstream() -> None:
    cache = service("cache", ("127.0.0.1", free_port()), protocol=Protocol.TCP, retries=None)
    async with running(snapshot(cache)) as mesh:
        reader, writer = await asyncio.open_connection(*mesh.address("web>cache"))
        async with asyncio.timeout(5):
            with contextlib.suppress(ConnectionResetError):
                assert await reader.read() == b""
        writer.close()
        await eventually(mesh.records)
    assert mesh.records()[0]["flags"] == "UF"
