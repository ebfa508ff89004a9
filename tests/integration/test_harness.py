"""The harness itself works against the real servers (so a broken fixture fails here first)."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import asyncpg
import pytest
import redis.asyncio as aioredis

from tests.support.services import HttpBackend, Postgres, Redis


@pytest.mark.postgres
async def test_postgres_answers_a_query(postgres: Postgres) -> None:
    conn = await asyncpg.connect(postgres.dsn)
    try:
        assert await conn.fetchval("select 40 + 2") == 42
    finally:
        await conn.close()


@pytest.mark.redis
async def test_redis_round_trip(redis_server: Redis) -> None:
    client = aioredis.Redis(host=redis_server.host, port=redis_server.port)
    try:
        await client.set("k", "v")
        assert await client.get("k") == b"v"
    finally:
        await client.aclose()


def test_http_backend_echoes(http_backend: HttpBackend) -> None:
    with urllib.request.urlopen(f"{http_backend.url}/echo?a=1") as resp:
        body = json.loads(resp.read())
    assert body["backend"] == "backend"
    assert body["query"] == "a=1"
    assert http_backend.hits["/echo"] == 1


async def test_http_backend_usable_from_any_loop(http_backend: HttpBackend) -> None:
    reader, writer = await asyncio.open_connection(http_backend.host, http_backend.port)
    writer.write(b"GET /status/503 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = await reader.read()
    writer.close()
    assert data.startswith(b"HTTP/1.1 503")
