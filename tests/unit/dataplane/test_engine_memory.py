"""The HTTP engine driven through in-memory transports, for orderings real sockets only
produce by chance (a response that ends exactly while the downstream is full)."""

from __future__ import annotations

import io
from typing import Any

import pytest

from localmesh.config.model import MeshConfig, PortSpec, Service, StaticEndpoint
from localmesh.runtime.dataplane.compiled import CompiledSnapshot
from localmesh.runtime.dataplane.context import Clock, ListenerContext
from localmesh.runtime.dataplane.http import HttpDownstream
from localmesh.runtime.dataplane.upstream import ClusterRuntime, UpstreamConnection, UpstreamHost
from localmesh.runtime.snapshot import Endpoint, ListenerSpec, Snapshot
from localmesh.runtime.telemetry import AccessLog, MeshMetrics


class MemoryTransport:
    def __init__(self, on_write: Any = None) -> None:
        self.data = bytearray()
        self.reading = True
        self.closed = False
        self.on_write = on_write

    def write(self, data: bytes) -> None:
        self.data += data
        if self.on_write is not None:
            self.on_write()

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def close(self) -> None:
        self.closed = True

    abort = close


@pytest.fixture
async def engine() -> tuple[HttpDownstream, MemoryTransport, UpstreamConnection, MemoryTransport]:
    svc = Service("api", ports=(PortSpec(80),), endpoints=(StaticEndpoint("127.0.0.1", 9),))
    snap = Snapshot(
        MeshConfig(services=(svc,)),
        (ListenerSpec("l", "api", 80, svc.ports[0].protocol, "127.0.0.1", 0, "web"),),
        {"api": (Endpoint("127.0.0.1", 9),)},
    )
    cluster = ClusterRuntime(svc)
    cluster.update(svc, snap.endpoints["api"])
    compiled = CompiledSnapshot(snap, {"api": cluster}, {})
    ctx = ListenerContext(
        "l", compiled.view(snap.listeners[0]), MeshMetrics("t", "t"), AccessLog(io.StringIO()),
        Clock(0.5),
    )  # fmt: skip
    down = HttpDownstream(ctx)
    down_t = MemoryTransport()
    down.connection_made(down_t)  # type: ignore[arg-type]
    host = cluster.hosts[0]
    assert isinstance(host, UpstreamHost)
    conn = UpstreamConnection(cluster, host)
    up_t = MemoryTransport()
    conn.connection_made(up_t)  # type: ignore[arg-type]
    cluster.state.connections = 1
    host.idle.append(conn)
    return down, down_t, conn, up_t


async def test_response_ending_under_backpressure_leaves_the_connection_readable(
    engine: tuple[HttpDownstream, MemoryTransport, UpstreamConnection, MemoryTransport],
) -> None:
    down, down_t, conn, up_t = engine
    down_t.on_write = down.pause_writing  # the downstream buffer is full after any write
    down.data_received(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
    assert up_t.data.startswith(b"GET / HTTP/1.1\r\n")
    conn.data_received(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
    assert down_t.data.endswith(b"\r\n\r\nok")
    assert conn in conn.host.idle  # back in the pool ...
    assert up_t.reading  # ... and reading again, or its next response would never arrive
    down_t.on_write = None
    down.resume_writing()
    down.data_received(b"GET /2 HTTP/1.1\r\nhost: a\r\n\r\n")
    conn.data_received(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nyes")
    assert down_t.data.endswith(b"\r\n\r\nyes")


async def test_response_before_the_request_ended_closes_both_sides(
    engine: tuple[HttpDownstream, MemoryTransport, UpstreamConnection, MemoryTransport],
) -> None:
    """An upstream answering before it read the whole body (e.g. 413): the unread rest
    of the body makes both connections unusable for another request."""
    down, down_t, conn, up_t = engine
    down.data_received(b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 10\r\n\r\n12345")
    conn.data_received(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n")
    assert down_t.data.startswith(b"HTTP/1.1 413")
    assert up_t.closed
    assert conn not in conn.host.idle
    assert down_t.closed
