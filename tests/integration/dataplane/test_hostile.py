"""Hostile and broken traffic over raw sockets: each case is answered correctly, logged
once, and the listener keeps serving everyone else."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from localmesh.config.model import Limits, Protocol
from tests.integration.dataplane.harness import Mesh, raw_exchange, running, service, snapshot
from tests.support.services import HttpBackend, run_redis

CLOSE_REQUEST = b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n"
LIMITS = Limits(
    max_request_headers_bytes=4096,
    max_request_headers_count=20,
    max_request_body_bytes=1000,
    header_timeout=0.3,
)


@pytest.fixture
async def mesh(http_backend: HttpBackend) -> AsyncIterator[Mesh]:
    api = service("api", (http_backend.host, http_backend.port), limits=LIMITS, retries=None)
    async with running(snapshot(api)) as m:
        yield m


async def still_serving(mesh: Mesh) -> None:
    raw = await raw_exchange(
        mesh.address("web>api"), b"GET /bytes/3 HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n"
    )
    assert raw.startswith(b"HTTP/1.1 200 OK")
    assert raw.endswith(b"xxx")


def status_of(raw: bytes) -> int:
    assert raw.startswith(b"HTTP/1.1 "), raw[:80]
    return int(raw[9:12])


CASES = {
    "content-length and transfer-encoding": (
        b"POST /echo HTTP/1.1\r\nhost: a\r\ncontent-length: 4\r\n"
        b"transfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "two different content-lengths": (
        b"POST /echo HTTP/1.1\r\nhost: a\r\ncontent-length: 4\r\ncontent-length: 5\r\n\r\nabcde",
        400,
    ),
    "negative content-length": (
        b"POST /echo HTTP/1.1\r\nhost: a\r\ncontent-length: -4\r\n\r\n",
        400,
    ),
    "bad chunk size": (
        b"POST /echo HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n",
        400,
    ),
    "bare LF line endings": (b"GET / HTTP/1.1\nhost: a\n\n", 400),
    "invalid method": (b"G(T / HTTP/1.1\r\nhost: a\r\n\r\n", 400),
    "invalid version": (b"GET / HTTP/9.7\r\nhost: a\r\n\r\n", 400),
    "not HTTP at all": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64, 400),
    "headers over the limit": (
        b"GET / HTTP/1.1\r\nhost: a\r\n" + b"x-big: " + b"y" * 5000 + b"\r\n\r\n",
        431,
    ),
    "many small headers over the limit": (
        b"GET / HTTP/1.1\r\nhost: a\r\n" + b"x-h: 0123456789\r\n" * 400 + b"\r\n",
        431,
    ),
    "more header fields than the limit": (
        b"GET / HTTP/1.1\r\nhost: a\r\n" + b"x: 1\r\n" * 20 + b"\r\n",
        431,
    ),
    "declared body over the limit": (
        b"POST /echo HTTP/1.1\r\nhost: a\r\ncontent-length: 5000\r\n\r\n" + b"z" * 100,
        413,
    ),
    "streamed body over the limit": (
        b"POST /echo HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n"
        + b"200\r\n" + b"z" * 512 + b"\r\n" + b"200\r\n" + b"z" * 512 + b"\r\n"
        + b"200\r\n" + b"z" * 512 + b"\r\n0\r\n\r\n",
        413,
    ),
    "a transfer coding under chunked": (
        b"POST /echo HTTP/1.1\r\nhost: a\r\ntransfer-encoding: gzip, chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\n\r\n",
        501,
    ),
    "a transfer coding on a line of its own": (
        b"POST /echo HTTP/1.1\r\nhost: a\r\ntransfer-encoding: gzip\r\n"
        b"transfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        501,
    ),
    "CONNECT": (b"CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\n\r\n", 405),
    "two Host headers": (b"GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n", 400),
    "two equal Host headers": (b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n", 400),
    "HTTP/1.1 without Host": (b"GET / HTTP/1.1\r\nx-a: 1\r\n\r\n", 400),
    "HTTP/1.1 with an empty Host": (b"GET / HTTP/1.1\r\nhost:\r\nx-a: 1\r\n\r\n", 400),
    "HTTP/1.1 with an empty Host and no keep-alive": (
        b"GET / HTTP/1.1\r\nhost: \r\nconnection: close\r\n\r\n",
        400,
    ),
    "HTTP/0.9 request line": (b"GET /x\r\n\r\n", 505),
    "HTTP/2.0 over HTTP/1": (b"GET / HTTP/2.0\r\nhost: a\r\n\r\n", 505),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
async def test_broken_request_is_answered_logged_once_and_closed(mesh: Mesh, case: str) -> None:
    request, expected = CASES[case]
    raw = await raw_exchange(mesh.address("web>api"), request)  # returns once we close
    assert status_of(raw) == expected
    assert b"x-localmesh-reason: " in raw
    assert b"connection: close" in raw.lower()
    records = mesh.records()
    assert len(records) == 1
    assert records[0]["status"] == expected
    await still_serving(mesh)


async def test_header_count_limit_is_envoys_100(http_backend: HttpBackend) -> None:
    """100 header fields pass, 101 get 431 (they were never counted: 60 000 one-letter
    fields fit the default 64 KiB)."""
    api = service("api", (http_backend.host, http_backend.port))
    async with running(snapshot(api)) as m:
        head = b"GET /bytes/1 HTTP/1.1\r\nhost: a\r\nconnection: close\r\n"  # 2 fields

        def fields(n: int) -> bytes:
            return head + b"".join(b"x-%d: 1\r\n" % i for i in range(n - 2)) + b"\r\n"

        raw = await raw_exchange(m.address("web>api"), fields(100))
        assert status_of(raw) == 200
        raw = await raw_exchange(m.address("web>api"), fields(101))
        assert status_of(raw) == 431
        assert b"more than 100 header fields" in raw


async def test_slowloris_gets_408(mesh: Mesh) -> None:
    reader, writer = await asyncio.open_connection(*mesh.address("web>api"))
    writer.write(b"GET / HTTP/1.1\r\nhost: a\r\nx-slow: ")
    started = time.monotonic()
    async with asyncio.timeout(5):
        raw = await reader.read()
    writer.close()
    assert status_of(raw) == 408
    assert b"request-header-timeout" in raw
    assert 0.25 < time.monotonic() - started < 2.0
    await still_serving(mesh)


async def test_endless_header_line_is_refused_at_the_limit(mesh: Mesh) -> None:
    """A header line that never ends is refused (431) once the head passes the limit, not
    buffered as long as the client writes (it was: 150 MiB, 830 MB RSS, the loop blocked,
    the header timeout never fired)."""
    reader, writer = await asyncio.open_connection(*mesh.address("web>api"))
    writer.write(b"GET / HTTP/1.1\r\nhost: a\r\nx-a: ")
    with contextlib.suppress(ConnectionError):
        for _ in range(64):  # 4 MiB, unless refused first
            writer.write(b"a" * 65536)
            await writer.drain()
        async with asyncio.timeout(5):
            # the 431, or a reset: the mesh closed with the client's bytes unread
            assert status_of(await reader.read()) == 431
    writer.close()
    [record] = mesh.records()
    assert record["status"] == 431  # not 408: it did not wait for the header timeout
    await still_serving(mesh)


async def _write_until_closed(writer: asyncio.StreamWriter) -> None:
    while True:
        writer.write(b"a" * 1024)
        await writer.drain()
        await asyncio.sleep(0.05)


@pytest.mark.parametrize(
    "start",
    [
        b"GET / HTTP/1.1\r\nhost: a\r\nx-a: ",  # 431 to a head that goes on
        b"POST /echo HTTP/1.1\r\nhost: a\r\ncontent-length: 5000000\r\n\r\n",  # 413
    ],
)
async def test_refused_client_still_sending_reads_its_answer(mesh: Mesh, start: bytes) -> None:
    """A client that writes its whole request before reading gets the refusal: the mesh
    stops sending, drops what still comes and closes when the client does, or after a
    second (it closed at once, the unread bytes reset the connection, and the reset
    destroyed the answer: ConnectionResetError instead of a status)."""
    reader, writer = await asyncio.open_connection(*mesh.address("web>api"))
    writer.write(start)
    for _ in range(32):  # 2 MiB
        writer.write(b"a" * 65536)
        await writer.drain()
    async with asyncio.timeout(5):
        raw = await reader.read()  # the answer, then the mesh's end of the stream
    assert status_of(raw) in (413, 431)
    started = time.monotonic()
    with pytest.raises(ConnectionError):  # the mesh closes a second after the refusal
        await asyncio.wait_for(_write_until_closed(writer), 5)
    assert time.monotonic() - started < 2.0
    writer.close()
    await still_serving(mesh)


async def test_half_close_mid_body_resets_the_exchange(mesh: Mesh) -> None:
    """A request whose body can never arrive whole is reset at the downstream's EOF and
    logged DC (it held both sides until the route timeout, then logged 504 UT)."""
    reader, writer = await asyncio.open_connection(*mesh.address("web>api"))
    writer.write(b"POST /echo HTTP/1.1\r\nhost: a\r\ncontent-length: 100\r\n\r\n" + b"z" * 10)
    await writer.drain()
    writer.write_eof()
    async with asyncio.timeout(3):
        assert await reader.read() == b""
    writer.close()
    [record] = mesh.records()
    assert record["flags"] == "DC"


async def test_idle_connection_is_closed_quietly(http_backend: HttpBackend) -> None:
    from localmesh.config.model import ConnectionPool

    api = service(
        "api",
        (http_backend.host, http_backend.port),
        connection_pool=ConnectionPool(idle_timeout=0.3),
    )
    async with running(snapshot(api)) as m:
        reader, writer = await asyncio.open_connection(*m.address("web>api"))
        writer.write(b"GET /bytes/1 HTTP/1.1\r\nhost: a\r\n\r\n")
        await reader.readuntil(b"\r\n\r\nx")
        async with asyncio.timeout(3):
            assert await reader.read() == b""  # closed without a response: nothing was asked
        writer.close()


async def _raw_upstream(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_upstream_reset_mid_body_resets_the_downstream() -> None:
    async def half_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n" + b"a" * 10)
        await writer.drain()
        writer.transport.abort()

    server, port = await _raw_upstream(half_then_close)
    async with server, running(snapshot(service("api", ("127.0.0.1", port)))) as m:
        started = time.monotonic()
        try:
            raw = await raw_exchange(m.address("web>api"), b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        except ConnectionResetError:
            raw = b""
        assert time.monotonic() - started < 3  # never a hang
        assert len(raw.partition(b"\r\n\r\n")[2]) < 1000
    assert m.records()[0]["flags"] == "UC"


async def test_upstream_closing_before_answering_is_502() -> None:
    async def close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    server, port = await _raw_upstream(close_at_once)
    async with server, running(snapshot(service("api", ("127.0.0.1", port), retries=None))) as m:
        raw = await raw_exchange(m.address("web>api"), CLOSE_REQUEST)
    assert status_of(raw) == 502
    assert b"x-localmesh-reason: upstream-reset" in raw


async def test_upstream_speaking_garbage_is_502() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n")
        await writer.drain()

    server, port = await _raw_upstream(garbage)
    async with server, running(snapshot(service("api", ("127.0.0.1", port), retries=None))) as m:
        raw = await raw_exchange(m.address("web>api"), CLOSE_REQUEST)
    assert status_of(raw) == 502


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n01234EXTRA-GARBAGE!!",
        b"HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n01234",
    ],
)
async def test_complete_response_followed_by_garbage_is_delivered(answer: bytes) -> None:
    """The response is passed on at once (it waited for the route timeout), the upstream
    connection is closed, not reused."""

    async def garbage_after(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        await reader.read()

    server, port = await _raw_upstream(garbage_after)
    async with server, running(snapshot(service("api", ("127.0.0.1", port), retries=None))) as m:
        raw = await asyncio.wait_for(raw_exchange(m.address("web>api"), CLOSE_REQUEST), 3)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head == answer.partition(b"\r\n")[0] + b"\r\ncontent-length: 5\r\nconnection: close"
    assert body == (b"01234" if b" 200 " in head else b"")
    [record] = m.records()
    assert (record["status"], record["flags"]) == (int(head[9:12]), "-")


@pytest.mark.parametrize("coding", [b"gzip, chunked", b"gzip"])
async def test_upstream_transfer_coding_other_than_chunked_is_502(coding: bytes) -> None:
    """De-chunked and re-framed, a gzip-coded body reached the client without its coding
    (or, read to the close, re-chunked without it): Envoy's 502, flag UPE."""

    async def coded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: " + coding + b"\r\n\r\n")
        writer.write(
            b"5\r\n\x1f\x8b\x08\x00\x00\r\n0\r\n\r\n" if b"chunked" in coding else b"\x1f\x8b"
        )
        await writer.drain()
        writer.close()

    server, port = await _raw_upstream(coded)
    async with server, running(snapshot(service("api", ("127.0.0.1", port), retries=None))) as m:
        raw = await asyncio.wait_for(raw_exchange(m.address("web>api"), CLOSE_REQUEST), 5)
        assert status_of(raw) == 502
        assert b"x-localmesh-reason: upstream-protocol-error" in raw
    assert m.records()[0]["flags"] == "UPE"


async def test_upstream_head_without_end_is_502() -> None:
    """A response head that never ends (one header line growing forever) is cut off at
    60 KiB with a 502, not buffered for as long as the upstream writes."""

    async def endless_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nx-big: ")
        with contextlib.suppress(ConnectionError):
            for _ in range(200):  # 1.6 MB at most, unless cut off first
                writer.write(b"a" * 8192)
                await writer.drain()
                await asyncio.sleep(0)

    server, port = await _raw_upstream(endless_head)
    async with server, running(snapshot(service("api", ("127.0.0.1", port), retries=None))) as m:
        raw = await asyncio.wait_for(raw_exchange(m.address("web>api"), CLOSE_REQUEST), 5)
        assert status_of(raw) == 502
        assert b"response head over 60 KiB" in raw
    assert m.records()[0]["flags"] == "UC"


async def test_upstream_head_over_the_limit_in_one_read_is_502() -> None:
    """A complete head of 100 KiB, arriving in one read, is refused as well."""

    async def big_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        lines = (b"x-h: " + b"h" * 8000 + b"\r\n") * 13  # 104 KB
        writer.write(b"HTTP/1.1 200 OK\r\n" + lines + b"content-length: 2\r\n\r\nok")
        await writer.drain()

    server, port = await _raw_upstream(big_head)
    async with server, running(snapshot(service("api", ("127.0.0.1", port), retries=None))) as m:
        raw = await asyncio.wait_for(raw_exchange(m.address("web>api"), CLOSE_REQUEST), 5)
        assert status_of(raw) == 502
        assert b"response head over 60 KiB" in raw


async def test_upstream_head_under_the_limit_with_a_large_body_in_the_same_read() -> None:
    """The limit counts the head only: a 50 KiB head sent in one write with 200 KiB of body
    is passed on whole."""
    body = b"b" * 200_000

    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        head = b"HTTP/1.1 200 OK\r\nx-big: " + b"h" * 50_000 + b"\r\n"
        writer.write(head + b"content-length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()

    server, port = await _raw_upstream(big)
    async with server, running(snapshot(service("api", ("127.0.0.1", port), retries=None))) as m:
        raw = await raw_exchange(m.address("web>api"), CLOSE_REQUEST)
    assert status_of(raw) == 200
    assert raw.endswith(body)


async def test_garbage_on_a_tcp_listener_does_not_hurt_other_clients() -> None:
    import redis.asyncio as aioredis

    with run_redis() as r:
        cache = service("cache", (r.host, r.port), protocol=Protocol.REDIS, port=6379)
        async with running(snapshot(cache)) as m:
            host, port = m.address("web>cache")
            _reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"\x00\xff\xfe garbage \r\n\r\n" * 100)
            await writer.drain()
            client = aioredis.Redis(host=host, port=port)
            try:
                assert await client.set("k", "v")
                assert await client.get("k") == b"v"
            finally:
                await client.aclose()
            writer.close()
