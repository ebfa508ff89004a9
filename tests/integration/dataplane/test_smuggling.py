"""Request smuggling over raw sockets: whatever a client sends, the upstream sees exactly
the requests the mesh routed, authorised and logged, framed as the mesh parsed them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from tests.integration.dataplane.harness import raw_exchange, running, service, snapshot
from tests.support.services import HttpBackend

SMUGGLED = b"GET /admin/secret HTTP/1.1\r\nHost: a\r\n\r\n"


async def _upstream(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_connection_header_cannot_remove_framing_or_host(http_backend: HttpBackend) -> None:
    """``Connection: content-length, host`` nominates fields a proxy must keep (RFC 9110
    7.6.1): dropped, the body would reach the upstream unframed, as its next request."""
    request = (
        b"POST /echo HTTP/1.1\r\nHost: a\r\nConnection: content-length, host, close\r\n"
        b"Content-Length: %d\r\n\r\n" % len(SMUGGLED) + SMUGGLED
    )
    api = service("api", (http_backend.host, http_backend.port), retries=None)
    async with running(snapshot(api)) as mesh:
        raw = await raw_exchange(mesh.address("web>api"), request)
        await asyncio.sleep(0.1)  # what the upstream would run next, it runs by now
    assert raw.count(b"HTTP/1.1 ") == 1
    assert b'"body_length": %d' % len(SMUGGLED) in raw
    assert b'"host": "a"' in raw
    assert "/admin/secret" not in http_backend.hits


async def test_response_connection_header_cannot_remove_content_length() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nConnection: content-length\r\ncontent-length: 5\r\n\r\n01234"
        )
        await writer.drain()

    server, port = await _upstream(answer)
    async with server, running(snapshot(service("api", ("127.0.0.1", port)))) as mesh:
        raw = await raw_exchange(
            mesh.address("web>api"), b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n"
        )
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"content-length: 5" in head.lower()
    assert body == b"01234"
