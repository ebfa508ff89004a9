"""Request smuggling over raw sockets: whatever a client sends, the upstream sees exactly
the requests the mesh routed, authorised and logged, framed as the mesh parsed them."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any

from localmesh.config.model import HeaderMatch, MatchKind, RequestMatch, Route, StringMatch
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


async def _head_seen_upstream(request: bytes, **kw: Any) -> tuple[bytes, bytes]:
    """(the response, the request head the upstream received) for one raw request."""
    heads: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()

    server, port = await _upstream(answer)
    async with server, running(snapshot(service("api", ("127.0.0.1", port), **kw))) as mesh:
        raw = await raw_exchange(mesh.address("web>api"), request)
    return raw, heads[0] if heads else b""


async def test_absolute_form_target_replaces_host() -> None:
    """RFC 9112 3.2.2: the target's authority is the request's Host, for the route and for
    the upstream, which gets it as its one Host (it got the client's Host header)."""
    route = Route(
        "by-host",
        matches=(
            RequestMatch(
                headers=(HeaderMatch("host", StringMatch(MatchKind.EXACT, "example.com:81")),)
            ),
        ),
    )
    raw, head = await _head_seen_upstream(
        b"GET http://example.com:81/x?q=1 HTTP/1.1\r\nHost: other\r\nconnection: close\r\n\r\n",
        routes=(route,),
    )
    assert raw.startswith(b"HTTP/1.1 200 ")
    lines = head.split(b"\r\n")
    assert lines[0] == b"GET /x?q=1 HTTP/1.1"
    assert [line for line in lines if line.lower().startswith(b"host:")] == [
        b"host: example.com:81"
    ]
    assert b"x-forwarded-host: example.com:81" in lines
    raw, head = await _head_seen_upstream(
        b"GET /x HTTP/1.1\r\nHost: other\r\nconnection: close\r\n\r\n", routes=(route,)
    )
    assert raw.startswith(b"HTTP/1.1 404 ")  # the Host header alone does not match
    assert head == b""


async def test_empty_host_never_reaches_the_upstream_beside_another() -> None:
    """An empty Host is no authority: HTTP/1.0 gets the service's as if it had none, an
    absolute target's authority replaces it (it was copied, and a second Host added)."""
    for request, host in [
        (b"GET /x HTTP/1.0\r\nHost:\r\n\r\n", b"api"),
        (b"GET http://b:8/x HTTP/1.1\r\nHost:\r\nconnection: close\r\n\r\n", b"b:8"),
    ]:
        raw, head = await _head_seen_upstream(request)
        assert raw.startswith(b"HTTP/1.1 200 ")
        hosts = [line for line in head.split(b"\r\n") if line.lower().startswith(b"host:")]
        assert hosts == [b"host: " + host]


async def test_absolute_form_target_with_userinfo_is_400() -> None:
    raw, head = await _head_seen_upstream(
        b"GET http://u:p@a/x HTTP/1.1\r\nHost: a\r\nconnection: close\r\n\r\n"
    )
    assert raw.startswith(b"HTTP/1.1 400 ")
    assert head == b""


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


async def test_bytes_after_a_declined_upgrade_never_reach_the_upstream() -> None:
    """The upstream answers 200, not 101: what followed the upgrade request's head was
    never tunnel data, and is not forwarded as such (the connection closes instead)."""
    received = bytearray()

    async def declines(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        answered = 0
        while data := await reader.read(65536):
            received.extend(data)
            while received.count(b"\r\n\r\n") > answered:
                answered += 1
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")

    request = (
        b"GET /ok HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        + SMUGGLED
    )
    server, port = await _upstream(declines)
    async with server, running(snapshot(service("api", ("127.0.0.1", port)))) as mesh:
        raw = await raw_exchange(mesh.address("web>api"), request)
        await asyncio.sleep(0.1)
    assert raw.startswith(b"HTTP/1.1 200 OK")
    assert raw.count(b"HTTP/1.1 ") == 1
    assert b"/ok" in received
    assert b"/admin/secret" not in received


async def test_h2c_upgrade_is_stripped_and_the_request_served(http_backend: HttpBackend) -> None:
    """Like Envoy: ``Upgrade: h2c`` and ``HTTP2-Settings`` are removed, the request is plain
    HTTP/1.1, and the requests pipelined around it are served in order."""
    request = (
        b"GET /echo/0 HTTP/1.1\r\nHost: a\r\n\r\n"
        b"GET /echo/1 HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
        b"GET /echo/2 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    )
    async with running(snapshot(service("api", (http_backend.host, http_backend.port)))) as mesh:
        raw = await raw_exchange(mesh.address("web>api"), request)
    assert re.findall(rb'"path": "(/echo/.)"', raw) == [b"/echo/0", b"/echo/1", b"/echo/2"]
    assert raw.count(b"HTTP/1.1 200 OK") == 3
    assert b'"upgrade"' not in raw.lower()  # in no echoed header list
    assert b"http2-settings" not in raw.lower()


async def test_101_to_a_request_that_did_not_ask_to_upgrade_is_502() -> None:
    """RFC 9110 15.2.2: an unasked-for 101 does not turn the connection into a tunnel."""

    async def switches(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
            b"tunnel bytes"
        )
        await writer.drain()
        await reader.read()

    server, port = await _upstream(switches)
    async with server, running(snapshot(service("api", ("127.0.0.1", port), retries=None))) as m:
        raw = await raw_exchange(
            m.address("web>api"), b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n"
        )
    assert raw.startswith(b"HTTP/1.1 502 ")
    assert b"tunnel bytes" not in raw
    [record] = m.records()
    assert (record["status"], record["flags"]) == (502, "UPE")


async def test_bytes_sent_before_the_101_open_the_tunnel() -> None:
    """A client need not wait for the 101: what it sent early is held, then forwarded."""

    async def accepts(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n"
        )
        writer.write(b"echo:" + await reader.readexactly(5))
        writer.close()

    request = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: x\r\n\r\nearly"
    server, port = await _upstream(accepts)
    async with server, running(snapshot(service("api", ("127.0.0.1", port)))) as mesh:
        raw = await raw_exchange(mesh.address("web>api"), request)
    assert raw.startswith(b"HTTP/1.1 101 ")
    assert raw.endswith(b"\r\n\r\necho:early")
