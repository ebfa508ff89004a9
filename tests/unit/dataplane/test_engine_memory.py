"""The HTTP engine driven through in-memory transports, for orderings real sockets only
produce by chance (a response that ends exactly while the downstream is full)."""

from __future__ import annotations

import io
from typing import Any

import pytest

from localmesh.config.model import MeshConfig, PortSpec, Service, StaticEndpoint
from localmesh.runtime.dataplane import http
from localmesh.runtime.dataplane.compiled import CompiledSnapshot
from localmesh.runtime.dataplane.context import Clock, ListenerContext
from localmesh.runtime.dataplane.http import HttpDownstream
from localmesh.runtime.dataplane.upstream import ClusterRuntime, UpstreamConnection, UpstreamHost
from localmesh.runtime.snapshot import Endpoint, ListenerSpec, Snapshot
from localmesh.runtime.telemetry import AccessLog, MeshMetrics


class MemoryTransport:
    #: writes land at once (not at the turn's end), so a test sees them where it makes them
    batches_writes = True

    def __init__(self, on_write: Any = None) -> None:
        self.data = bytearray()
        self.reading = True
        self.closed = False
        self.eof = False  # write_eof: the sending side is closed
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

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True


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
    assert down_t.eof  # it lingers to read the rest away (see _linger)
    assert down.eof_received() is None  # and closes at the client's end


async def test_response_hop_by_hop_headers_stay_behind(
    engine: tuple[HttpDownstream, MemoryTransport, UpstreamConnection, MemoryTransport],
) -> None:
    """Hop-by-hop response headers, and those the response's Connection header names
    (before or after it), are not passed on; the rest are, in order, named as the upstream
    wrote them."""
    down, down_t, conn, _ = engine
    down.data_received(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
    conn.data_received(
        b"HTTP/1.1 200 OK\r\nX-Before: 1\r\nX-Keep: 2\r\nConnection: keep-alive, X-Before, "
        b"x-after\r\nKeep-Alive: timeout=5\r\nX-After: 3\r\nContent-Length: 2\r\n\r\nok"
    )
    head, _, body = bytes(down_t.data).partition(b"\r\n\r\n")
    assert body == b"ok"
    assert head.split(b"\r\n") == [b"HTTP/1.1 200 OK", b"X-Keep: 2", b"Content-Length: 2"]
    assert conn in conn.host.idle  # keep-alive: reused
    down.data_received(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")  # the next response is unaffected
    conn.data_received(b"HTTP/1.1 200 OK\r\nX-Before: 1\r\nContent-Length: 0\r\n\r\n")
    assert down_t.data.endswith(b"HTTP/1.1 200 OK\r\nX-Before: 1\r\nContent-Length: 0\r\n\r\n")


async def test_response_framing_and_hop_by_hop_names_are_found_in_any_case(
    engine: tuple[HttpDownstream, MemoryTransport, UpstreamConnection, MemoryTransport],
) -> None:
    down, down_t, conn, _ = engine
    down.data_received(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
    conn.data_received(
        b"HTTP/1.1 200 OK\r\nCONNECTION: Keep-Alive, X-DROP\r\nx-drop: 1\r\n"
        b"KEEP-ALIVE: timeout=5\r\nTransfer-ENCODING: chunked\r\nX-Keep: 2\r\n\r\n"
        b"2\r\nok\r\n0\r\n\r\n"
    )
    head, _, body = bytes(down_t.data).partition(b"\r\n\r\n")
    assert head.split(b"\r\n") == [
        b"HTTP/1.1 200 OK",
        b"X-Keep: 2",
        b"transfer-encoding: chunked",  # re-framed by the mesh
    ]
    assert body == b"2\r\nok\r\n0\r\n\r\n"
    assert conn in conn.host.idle


async def test_request_headers_copied_through_except_hop_by_hop_and_rewritten_ones(
    engine: tuple[HttpDownstream, MemoryTransport, UpstreamConnection, MemoryTransport],
) -> None:
    down, _, _, up_t = engine
    down.data_received(
        b"GET /p?q=1 HTTP/1.1\r\nHost: a\r\nX-One: 1\r\nConnection: keep-alive, x-gone\r\n"
        b"X-Gone: 2\r\nTE: trailers\r\nX-Forwarded-For: 10.0.0.1\r\nX-Request-Id: rid-7\r\n"
        b"Traceparent: garbage\r\nX-Two: 3\r\n\r\n"
    )
    lines = bytes(up_t.data).split(b"\r\n")
    assert lines[0] == b"GET /p?q=1 HTTP/1.1"
    names = [line.split(b": ", 1)[0] for line in lines[1:] if line]
    assert names[:4] == [b"host", b"x-one", b"x-request-id", b"x-two"]  # in arrival order
    for gone in (b"connection", b"x-gone", b"te"):
        assert gone not in names
    assert b"x-forwarded-for: 10.0.0.1, 127.0.0.1" in lines
    assert names.count(b"traceparent") == 1  # the malformed one replaced by a generated one
    assert b"traceparent: garbage" not in lines
    assert b"x-request-id: rid-7" in lines


async def test_request_header_names_reach_the_upstream_lower_cased_however_many_there_are(
    engine: tuple[HttpDownstream, MemoryTransport, UpstreamConnection, MemoryTransport],
) -> None:
    """Lower-cased names are remembered per spelling, up to a bound: a client inventing
    names gets them lower-cased all the same, without growing the memory."""
    down, _, conn, up_t = engine
    names = [b"X-Made-Up-%d" % i for i in range(700)]
    for _ in range(2):  # the second time from the remembered spellings
        for start in range(0, len(names), 90):  # 100 header fields at most per request
            batch = names[start : start + 90]
            head = b"".join(name + b": v\r\n" for name in batch)
            up_t.data.clear()
            down.data_received(b"GET / HTTP/1.1\r\nHOST: a\r\n" + head + b"\r\n")
            sent = bytes(up_t.data).split(b"\r\n")
            assert b"host: a" in sent
            assert all(name.lower() + b": v" in sent for name in batch)
            conn.data_received(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
    assert len(http._LOWER_NAMES) <= 512
