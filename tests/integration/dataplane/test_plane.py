"""DataPlane.apply/close: atomic swaps under load, kept and drained listeners, bind
failures that leave the previous state serving, uvicorn-ordered shutdown."""

from __future__ import annotations

import asyncio
import dataclasses
import socket

import aiohttp
import pytest

from localmesh.config.model import Destination, MatchKind, RequestMatch, Route, StringMatch
from localmesh.errors import RuntimeStartError
from localmesh.runtime.snapshot import ListenerSpec, Snapshot
from tests.integration.dataplane.harness import (
    eventually,
    raw_exchange,
    running,
    service,
    snapshot,
)
from tests.support.services import HttpBackend, run_http_backend


def to(name: str, prefix: str) -> Route:
    return Route(
        name,
        matches=(RequestMatch(path=StringMatch(MatchKind.PREFIX, prefix)),),
        destinations=(Destination("api"),),
        rewrite_prefix="/echo/",
    )


def versioned(backend: HttpBackend, version: int, *routes: Route) -> Snapshot:
    api = service("api", (backend.host, backend.port), routes=routes)
    return snapshot(api, callers=("web", "worker"), version=version)


async def test_new_snapshot_applies_to_the_next_request_on_an_open_connection(
    http_backend: HttpBackend,
) -> None:
    async with running(versioned(http_backend, 1, to("old", "/old/"))) as mesh:
        before = mesh.plane.addresses()
        reader, writer = await asyncio.open_connection(*mesh.address("web>api"))

        async def ask(path: bytes) -> bytes:
            writer.write(b"GET " + path + b" HTTP/1.1\r\nhost: a\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            return head[9:12] + b" " + await reader.readexactly(length)

        assert (await ask(b"/old/x")).startswith(b"200")
        await mesh.plane.apply(versioned(http_backend, 2, to("new", "/new/")))
        assert (await ask(b"/old/x")).startswith(b"404")
        assert (await ask(b"/new/x")).startswith(b"200")
        writer.close()
        assert mesh.plane.addresses() == before  # unchanged listeners keep their sockets
        assert mesh.plane.snapshot is not None
        assert mesh.plane.snapshot.version == 2


async def test_zero_failed_requests_while_reloading_under_load(http_backend: HttpBackend) -> None:
    async with running(versioned(http_backend, 1, to("r1", "/"))) as mesh:
        url = mesh.url("web>api", "/x")
        stop = asyncio.Event()
        statuses: list[int] = []

        async def client() -> None:
            async with aiohttp.ClientSession() as s:
                while not stop.is_set():
                    async with s.get(url) as r:
                        await r.read()
                        statuses.append(r.status)

        clients = [asyncio.create_task(client()) for _ in range(6)]
        await eventually(lambda: len(statuses) > 10)
        for version in range(2, 22):
            await mesh.plane.apply(versioned(http_backend, version, to(f"r{version}", "/")))
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.gather(*clients)
    assert len(statuses) > 50
    assert set(statuses) == {200}
    assert {r["route"] for r in mesh.records()} >= {"r1", "r21"}


async def test_removed_listener_drains_in_flight_requests(http_backend: HttpBackend) -> None:
    async with running(versioned(http_backend, 1)) as mesh:
        address = mesh.address("web>api")
        slow = asyncio.create_task(
            raw_exchange(
                address, b"GET /delay/400 HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n"
            )
        )
        await asyncio.sleep(0.1)
        only_worker = dataclasses.replace(
            versioned(http_backend, 2),
            listeners=tuple(
                s for s in versioned(http_backend, 2).listeners if s.source == "worker"
            ),
        )
        await mesh.plane.apply(only_worker)
        assert "web>api" not in mesh.plane.addresses()
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(*address)  # no longer accepting
        raw = await slow
        assert raw.startswith(b"HTTP/1.1 200 OK")  # finished on the old snapshot


def without_web(backend: HttpBackend) -> Snapshot:
    """Version 2, in which the ``web>api`` listener is gone."""
    snap = versioned(backend, 2)
    return dataclasses.replace(
        snap, listeners=tuple(s for s in snap.listeners if s.source == "worker")
    )


async def test_removed_listener_closes_its_keep_alive_connections(
    http_backend: HttpBackend,
) -> None:
    """Connections of a removed listener close when idle: at once, or after the response
    in flight, or after the next one (they served on with the old snapshot's rules until
    their idle timeout, a minute); those responses say ``Connection: close``."""
    async with running(versioned(http_backend, 1)) as mesh:
        address = mesh.address("web>api")
        idle = await asyncio.open_connection(*address)
        idle[1].write(b"GET /bytes/1 HTTP/1.1\r\nhost: a\r\n\r\n")
        await idle[0].readuntil(b"\r\n\r\nx")
        busy = await asyncio.open_connection(*address)
        busy[1].write(b"GET /delay/300 HTTP/1.1\r\nhost: a\r\n\r\n")
        heading = await asyncio.open_connection(*address)
        heading[1].write(b"GET /bytes/2 HTTP/1.1\r\nhost: a\r\n")
        await asyncio.sleep(0.1)
        await mesh.plane.apply(without_web(http_backend))
        heading[1].write(b"\r\n")  # the head ends after the drain began
        async with asyncio.timeout(3):
            assert await idle[0].read() == b""
            for reader, body in ((busy[0], b"backend"), (heading[0], b"xx")):
                raw = await reader.read()  # the response, then the end of the stream
                assert raw.startswith(b"HTTP/1.1 200 OK")
                assert b"\r\nconnection: close\r\n" in raw.lower()
                assert raw.endswith(b"\r\n\r\n" + body)
        for _, writer in (idle, busy, heading):
            writer.close()


async def test_a_drain_leaves_tunnels_to_the_drain_timeout(http_backend: HttpBackend) -> None:
    """A WebSocket cannot be told to close after a response: it lives until the deadline."""
    async with (
        running(versioned(http_backend, 1)) as mesh,
        aiohttp.ClientSession() as s,
        s.ws_connect(mesh.url("web>api", "/ws")) as ws,
    ):
        mesh.plane.drain_timeout = 0.5
        await mesh.plane.apply(without_web(http_backend))
        await ws.send_str("still")
        assert (await asyncio.wait_for(ws.receive(), 2)).data == "backend:still"
        msg = await asyncio.wait_for(ws.receive(), 3)  # reset at the deadline
        assert msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)


async def test_a_drain_resets_what_outlives_the_drain_timeout(http_backend: HttpBackend) -> None:
    async with running(versioned(http_backend, 1)) as mesh:
        mesh.plane.drain_timeout = 0.3
        slow = asyncio.create_task(
            raw_exchange(mesh.address("web>api"), b"GET /delay/5000 HTTP/1.1\r\nhost: a\r\n\r\n")
        )
        await asyncio.sleep(0.1)
        await mesh.plane.apply(without_web(http_backend))
        try:
            raw = await asyncio.wait_for(slow, 2)  # not the 5 s the upstream takes
        except ConnectionResetError:
            raw = b""
        assert not raw.startswith(b"HTTP/1.1 200")


async def test_bind_failure_keeps_the_previous_state(http_backend: HttpBackend) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    taken = holder.getsockname()[1]
    try:
        async with running(versioned(http_backend, 1, to("v1", "/"))) as mesh:
            before = mesh.plane.addresses()
            bad = versioned(http_backend, 2, to("v2", "/"))
            extra = ListenerSpec(
                "extra", "api", 8000, bad.listeners[0].protocol, "127.0.0.1", taken
            )
            bad = dataclasses.replace(bad, listeners=(*bad.listeners, extra))
            with pytest.raises(RuntimeStartError) as err:
                await mesh.plane.apply(bad)
            assert str(taken) in err.value.message
            assert err.value.hint
            assert mesh.plane.addresses() == before
            assert mesh.plane.snapshot is not None
            assert mesh.plane.snapshot.version == 1
            raw = await raw_exchange(
                mesh.address("web>api"), b"GET /a HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n"
            )
            assert raw.startswith(b"HTTP/1.1 200")
        assert [r["route"] for r in mesh.records()] == ["v1"]
    finally:
        holder.close()


async def test_endpoint_changes_keep_the_state_of_staying_endpoints(
    http_backend: HttpBackend,
) -> None:
    with run_http_backend("other") as other:
        one = service("api", (http_backend.host, http_backend.port))
        both = service("api", (http_backend.host, http_backend.port), (other.host, other.port))
        async with running(snapshot(one)) as mesh:
            state = mesh.plane.clusters()[0]
            assert [e["address"] for e in state["endpoints"]] == [
                f"{http_backend.host}:{http_backend.port}"
            ]
            await raw_exchange(
                mesh.address("web>api"), b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n"
            )
            await mesh.plane.apply(dataclasses.replace(snapshot(both), version=2))
            endpoints = mesh.plane.clusters()[0]["endpoints"]
            assert len(endpoints) == 2
            assert endpoints[0]["total_requests"] == 1
            assert endpoints[1]["total_requests"] == 0


async def test_close_finishes_in_flight_requests_and_drops_idle_connections(
    http_backend: HttpBackend,
) -> None:
    async with running(versioned(http_backend, 1)) as mesh:
        address = mesh.address("web>api")
        idle_reader, idle_writer = await asyncio.open_connection(*address)
        slow = asyncio.create_task(
            raw_exchange(address, b"GET /delay/300 HTTP/1.1\r\nhost: a\r\n\r\n")
        )
        await asyncio.sleep(0.1)
        await mesh.plane.close(drain_timeout=3.0)
        assert (await slow).startswith(b"HTTP/1.1 200 OK")
        assert await asyncio.wait_for(idle_reader.read(), 1) == b""
        idle_writer.close()


async def test_close_aborts_what_outlives_the_drain_timeout(http_backend: HttpBackend) -> None:
    async with running(versioned(http_backend, 1)) as mesh:
        slow = asyncio.create_task(
            raw_exchange(mesh.address("web>api"), b"GET /delay/3000 HTTP/1.1\r\nhost: a\r\n\r\n")
        )
        await asyncio.sleep(0.1)
        await mesh.plane.close(drain_timeout=0.2)
        try:
            raw = await asyncio.wait_for(slow, 2)
        except ConnectionResetError:
            raw = b""
        assert not raw.startswith(b"HTTP/1.1 200")
