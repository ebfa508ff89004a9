"""HTTP/1.1 through the mesh against real aiohttp backends: headers, framing, streaming,
keep-alive and pipelining, 100-continue, HTTP/1.0, HEAD/204/304, WebSockets."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from localmesh.config.model import ConnectionPool
from localmesh.runtime.snapshot import Snapshot
from tests.integration.dataplane.harness import raw_exchange, running, service, snapshot
from tests.support.services import HttpBackend


def api(backend: HttpBackend, **kw: Any) -> Snapshot:
    return snapshot(service("api", (backend.host, backend.port), **kw))


async def test_request_headers_are_forwarded_with_mesh_headers(http_backend: HttpBackend) -> None:
    async with running(api(http_backend)) as mesh, aiohttp.ClientSession() as s:
        headers = {
            "x-custom": "1",
            "Connection": "keep-alive, x-hop",
            "x-hop": "must not pass",
            "keep-alive": "timeout=5",
            "x-forwarded-for": "10.9.9.9",
        }
        async with s.post(mesh.url("web>api", "/echo/a?q=1"), data=b"hello", headers=headers) as r:
            assert r.status == 200
            assert r.headers["x-backend"] == "backend"
            body = await r.json()
    seen = body["headers"]
    assert body["method"] == "POST"
    assert body["path"] == "/echo/a"
    assert body["query"] == "q=1"
    assert body["body_length"] == 5
    assert seen["x-custom"] == "1"
    assert "x-hop" not in seen
    assert "keep-alive" not in seen
    assert seen["x-forwarded-for"] == "10.9.9.9, 127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == seen["host"]
    assert re.fullmatch(r"[0-9a-f-]{36}", seen["x-request-id"])
    tp = seen["traceparent"]
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", tp)
    assert seen["x-b3-traceid"] == tp[3:35]
    [record] = mesh.records()
    assert record["request_id"] == seen["x-request-id"]
    assert record["traceparent"] == tp
    assert (record["source"], record["destination"], record["status"]) == ("web", "api", 200)
    assert record["upstream"] == f"{http_backend.host}:{http_backend.port}"


async def test_client_sent_xfcc_never_passes_a_service_listener(http_backend: HttpBackend) -> None:
    """Upstreams trust x-forwarded-client-cert as the ingress's word (docs/ingress.md):
    one a client wrote itself is stripped on every listener, not only the ingress."""
    forged = b"By=spiffe://test/ns/x/sa/api;URI=spiffe://test/client/admin"
    async with running(api(http_backend)) as mesh:
        raw = await raw_exchange(
            mesh.address("web>api"),
            b"GET /echo HTTP/1.1\r\nhost: a\r\nx-forwarded-client-cert: " + forged
            + b"\r\nX-Forwarded-Client-Cert: " + forged + b"\r\nconnection: close\r\n\r\n",
        )  # fmt: skip
    assert raw.startswith(b"HTTP/1.1 200 OK")
    assert b"x-forwarded-client-cert" not in raw.lower()
    assert b"spiffe://test/client/admin" not in raw


async def test_incoming_ids_propagate(http_backend: HttpBackend) -> None:
    tp = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
    async with running(api(http_backend)) as mesh, aiohttp.ClientSession() as s:
        headers = {"x-request-id": "req-1", "traceparent": tp}
        async with s.get(mesh.url("web>api", "/echo"), headers=headers) as r:
            seen = (await r.json())["headers"]
    assert seen["x-request-id"] == "req-1"
    assert seen["traceparent"] == tp
    assert seen["x-b3-traceid"] == "a" * 32


async def test_malformed_incoming_b3_is_replaced_not_duplicated(http_backend: HttpBackend) -> None:
    async with running(api(http_backend)) as mesh, aiohttp.ClientSession() as s:
        headers = {"x-b3-traceid": 'not"hex', "x-b3-spanid": "zz", "x-b3-sampled": "1"}
        async with s.get(mesh.url("web>api", "/echo"), headers=headers) as r:
            pairs = (await r.json())["header_list"]
    names = [name for name, _ in pairs]
    for name in ("x-b3-traceid", "x-b3-spanid", "x-b3-sampled", "traceparent"):
        assert names.count(name) == 1, pairs
    seen = dict(pairs)
    assert seen["x-b3-traceid"] == seen["traceparent"][3:35] != 'not"hex'


async def test_bodies_stream_both_ways(http_backend: HttpBackend) -> None:
    big = 8 * 1024 * 1024

    async def chunks() -> AsyncIterator[bytes]:  # chunked upload, larger than any buffer
        for _ in range(64):
            yield b"z" * (big // 64)

    async with running(api(http_backend)) as mesh, aiohttp.ClientSession() as s:
        async with s.post(mesh.url("web>api", "/echo"), data=chunks()) as r:
            assert (await r.json())["body_length"] == big
        async with s.get(mesh.url("web>api", f"/bytes/{big}")) as r:
            assert r.headers["content-length"] == str(big)
            assert len(await r.read()) == big
        async with s.get(mesh.url("web>api", "/stream/50")) as r:
            assert r.headers["transfer-encoding"] == "chunked"
            text = await r.text()
    assert text == "".join(f"chunk-{i}\n" for i in range(50))


async def test_keep_alive_and_pipelining_answer_in_order(http_backend: HttpBackend) -> None:
    async with running(api(http_backend)) as mesh:
        reqs = (
            b"".join(b"GET /echo/%d HTTP/1.1\r\nhost: api\r\n\r\n" % i for i in range(5))
            + b"GET /echo/last HTTP/1.1\r\nhost: api\r\nconnection: close\r\n\r\n"
        )
        raw = await raw_exchange(mesh.address("web>api"), reqs)
    paths = re.findall(rb'"path": "(/echo/[^"]+)"', raw)
    assert paths == [b"/echo/0", b"/echo/1", b"/echo/2", b"/echo/3", b"/echo/4", b"/echo/last"]
    assert raw.count(b"HTTP/1.1 200 OK") == 6


async def test_expect_100_continue(http_backend: HttpBackend) -> None:
    async with running(api(http_backend)) as mesh:
        reader, writer = await asyncio.open_connection(*mesh.address("web>api"))
        writer.write(
            b"POST /echo HTTP/1.1\r\nhost: api\r\ncontent-length: 4\r\n"
            b"expect: 100-continue\r\nconnection: close\r\n\r\n"
        )
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"abcd")
        rest = await asyncio.wait_for(reader.read(), 5)
        writer.close()
    assert rest.startswith(b"HTTP/1.1 200")
    assert b'"body_length": 4' in rest


async def test_http10_client_gets_a_close_delimited_body(http_backend: HttpBackend) -> None:
    async with running(api(http_backend)) as mesh:
        raw = await raw_exchange(mesh.address("web>api"), b"GET /stream/3 HTTP/1.0\r\n\r\n")
    head, body = raw.split(b"\r\n\r\n", 1)
    assert b"transfer-encoding" not in head.lower()
    assert b"connection: close" in head.lower()
    assert body == b"chunk-0\nchunk-1\nchunk-2\n"


async def test_http10_keep_alive(http_backend: HttpBackend) -> None:
    async with running(api(http_backend)) as mesh:
        reader, writer = await asyncio.open_connection(*mesh.address("web>api"))
        for _ in range(2):
            writer.write(b"GET /bytes/3 HTTP/1.0\r\nconnection: keep-alive\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert b"connection: keep-alive" in head.lower()
            assert await reader.readexactly(3) == b"xxx"
        writer.close()


async def test_head_204_304_have_no_body_and_keep_the_connection(
    http_backend: HttpBackend,
) -> None:
    async with running(api(http_backend)) as mesh:
        reqs = (
            b"HEAD /bytes/100 HTTP/1.1\r\nhost: a\r\n\r\n"
            b"GET /status/204 HTTP/1.1\r\nhost: a\r\n\r\n"
            b"GET /status/304 HTTP/1.1\r\nhost: a\r\n\r\n"
            b"GET /bytes/2 HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n"
        )
        raw = await raw_exchange(mesh.address("web>api"), reqs)
    parts = raw.split(b"HTTP/1.1 ")
    assert [p[:3] for p in parts[1:]] == [b"200", b"204", b"304", b"200"]
    assert b"content-length: 100\r\n" in parts[1].lower()
    assert parts[1].endswith(b"\r\n\r\n")  # no body after the HEAD response
    assert raw.endswith(b"\r\n\r\nxx")


async def test_websocket_upgrade_is_a_tunnel(http_backend: HttpBackend) -> None:
    async with (
        running(api(http_backend)) as mesh,
        aiohttp.ClientSession() as s,
        s.ws_connect(mesh.url("web>api", "/ws")) as ws,
    ):
        for i in range(3):
            await ws.send_str(f"hi {i}")
            msg = await asyncio.wait_for(ws.receive(), 5)
            assert msg.data == f"backend:hi {i}"
    [record] = mesh.records()
    assert record["status"] == 101


async def test_an_idle_tunnel_is_closed_after_idle_timeout() -> None:
    """A tunnel lives while bytes pass either way and closes after the service's
    idle_timeout without (it had no timeout at all: a silent tunnel held both sockets)."""

    async def upgrading(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\nconnection: upgrade\r\n\r\n"
        )
        lines = 0
        while line := await reader.readline():
            if line == b"push\n":  # the upstream talks, the client is silent
                for _ in range(10):
                    writer.write(b"tick\n")
                    await asyncio.sleep(0.1)
            elif line == b"count\n":
                writer.write(b"%d\n" % lines)
            else:  # the client talks, the upstream is silent
                lines += 1

    server = await asyncio.start_server(upgrading, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = ConnectionPool(idle_timeout=0.3)
    async with (
        server,
        running(snapshot(service("api", ("127.0.0.1", port), connection_pool=pool))) as mesh,
    ):
        reader, writer = await asyncio.open_connection(*mesh.address("web>api"))
        writer.write(b"GET /ws HTTP/1.1\r\nhost: a\r\nconnection: upgrade\r\nupgrade: x\r\n\r\n")
        async with asyncio.timeout(5):
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
            writer.write(b"push\n")
            for _ in range(10):  # a second of upstream bytes only
                assert await reader.readline() == b"tick\n"
            for _ in range(10):  # a second of client bytes only
                writer.write(b"x\n")
                await asyncio.sleep(0.1)
            writer.write(b"count\n")
            assert await reader.readline() == b"10\n"
            started = asyncio.get_running_loop().time()
            assert await reader.read() == b""  # silence: closed
        assert asyncio.get_running_loop().time() - started < 1.5
        writer.close()


@pytest.mark.parametrize("method", ["GET", "DELETE", "PUT", "PATCH", "OPTIONS"])
async def test_methods(http_backend: HttpBackend, method: str) -> None:
    async with (
        running(api(http_backend)) as mesh,
        aiohttp.ClientSession() as s,
        s.request(method, mesh.url("web>api", "/echo"), data=b"x") as r,
    ):
        assert (await r.json())["method"] == method


async def test_slow_reader_gets_everything_and_the_connection_stays_usable(
    http_backend: HttpBackend,
) -> None:
    """Backpressure: the response waits for a slow client (the upstream is paused, not
    buffered), and the paused upstream connection goes back to the pool readable."""
    size = 16 * 1024 * 1024
    async with running(api(http_backend)) as mesh:
        reader, writer = await asyncio.open_connection(*mesh.address("web>api"), limit=1 << 16)
        writer.write(f"GET /bytes/{size} HTTP/1.1\r\nhost: a\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert f"content-length: {size}".encode() in head.lower()
        await asyncio.sleep(0.3)  # let every buffer between us and the backend fill up
        got = 0
        async with asyncio.timeout(10):
            while got < size:
                got += len(await reader.read(1 << 20))
        assert got == size
        for _ in range(3):  # the same pooled upstream connection serves the next requests
            writer.write(b"GET /bytes/5 HTTP/1.1\r\nhost: a\r\n\r\n")
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
            assert await asyncio.wait_for(reader.readexactly(5), 2) == b"xxxxx"
        writer.close()
