"""Per-request CPU cost of the HTTP engine, without sockets or the kernel.

Drives the real code path (llhttp parsing, routing, exchange, pooled upstream connection,
metrics, access log) with in-memory transports: a request goes in as bytes, the upstream
"receives" it and answers a fixed 12-byte response. Prints microseconds per request,
stable enough to compare changes on a busy machine (wrk numbers are not).
``--ceiling`` drives the featureless ``bench/baseline_proxy.py`` the same way: the
interpreter's floor for one proxied request on this stack. ``--tls`` puts the ingress's TLS
stream in front (TLS 1.3 with the ingress's server settings, a certificate from a throwaway
CA); the client's records are encrypted before the clock starts, so only the proxy's
decrypting and encrypting count.

    python bench/engine_cpu.py [--routes 10] [--requests 50000] [--no-access-log] [--ceiling]
                               [--tls]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import tempfile
import time
from pathlib import Path
from typing import Any

import baseline_proxy  # bench/ is on sys.path when run as a script
import uvloop
from mesh_server import routes_for

from localmesh.ca.authority import CertificateAuthority
from localmesh.ca.rotation import load_into
from localmesh.config.model import (
    ClientCerts,
    MeshConfig,
    MeshSettings,
    PortSpec,
    Service,
    StaticEndpoint,
)
from localmesh.runtime.dataplane.batching import batch_of
from localmesh.runtime.dataplane.compiled import CompiledSnapshot
from localmesh.runtime.dataplane.context import Clock, ListenerContext
from localmesh.runtime.dataplane.http import HttpDownstream
from localmesh.runtime.dataplane.upstream import ClusterRuntime, UpstreamConnection, UpstreamHost
from localmesh.runtime.ingress.tls import server_context
from localmesh.runtime.ingress.tlsstream import TLSStream
from localmesh.runtime.snapshot import Endpoint, ListenerSpec, Snapshot
from localmesh.runtime.telemetry import AccessLog, MeshMetrics

# What bench/dataplane.py's wrk sends and its nginx answers, byte for byte.
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:18080\r\n\r\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Wed, 25 Nov 2026 10:51:54 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 12\r\nConnection: keep-alive\r\n\r\n"
    b"hello world\n"
)


class MemoryTransport:
    """Just enough of a transport: records writes, never closes."""

    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += 1

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...


class RecordingTransport(MemoryTransport):
    """Keeps what is written: the TLS handshake's server flights."""

    def __init__(self) -> None:
        super().__init__()
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.written += 1
        self.data += data


def tls_in_front(
    down: HttpDownstream, count: int
) -> tuple[TLSStream, MemoryTransport, list[bytes]]:
    """A TLS stream serving ``down`` after a real handshake, and ``count`` encrypted requests.

    Returns the stream (what receives the records), its raw transport (whose ``written``
    counts the stream's writes) and the records.
    """
    with tempfile.TemporaryDirectory() as tmp:
        ca, _ = CertificateAuthority.init(Path(tmp) / "ca")
    server = server_context(ClientCerts.OFF, b"")
    load_into(server, ca.issue_server(["localhost"]))
    client_ctx = ssl.create_default_context(cadata=ca.root_pem.decode())
    c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="localhost")
    loop = asyncio.get_running_loop()
    stream = TLSStream(server, lambda: down, loop.create_future(), 10.0)
    raw = RecordingTransport()
    stream.connection_made(raw)  # type: ignore[arg-type]
    turn = batch_of(loop).flush  # the stream's writes wait for the turn's end
    while True:
        try:
            client.do_handshake()
            break
        except ssl.SSLWantReadError:
            stream.data_received(c_out.read())
            turn()
            c_in.write(bytes(raw.data))
            raw.data.clear()
    stream.data_received(c_out.read())  # the client's Finished
    turn()
    assert stream.handshake.done()
    assert stream.handshake.exception() is None
    records = []
    for _ in range(count):
        client.write(REQUEST)
        records.append(c_out.read())
    raw.written = 0
    return stream, raw, records


def build(routes: int) -> Snapshot:
    svc = Service(
        name="api",
        ports=(PortSpec(8080),),
        endpoints=(StaticEndpoint("127.0.0.1", 9),),
        routes=routes_for("api", routes),
    )
    return Snapshot(
        MeshConfig(mesh=MeshSettings(name="b"), services=(svc,)),
        (ListenerSpec("web>api", "api", 8080, svc.ports[0].protocol, "127.0.0.1", 0, "web"),),
        {"api": (Endpoint("127.0.0.1", 9),)},
    )


def drive(down: Any, conn: Any, requests: list[bytes], flush: Any, turn: Any) -> float:
    """CPU seconds for ``requests`` (after 1000 to warm up) into ``down``, answered by ``conn``;
    ``turn()`` ends a turn of the event loop (the held writes go out) after each request."""
    for data in requests[:1000]:  # warm up
        down.data_received(data)
        conn.data_received(RESPONSE)
        turn()
    flush()
    t0 = time.process_time()  # CPU time: other load on the machine does not count
    for i, data in enumerate(requests[1000:]):
        down.data_received(data)
        conn.data_received(RESPONSE)  # the upstream answers
        turn()
        if i % 1000 == 999:
            flush()  # what the flush task does, on the same core
    flush()
    return time.process_time() - t0


async def ceiling(n: int) -> None:
    down = baseline_proxy.Downstream(("127.0.0.1", 9))
    down_t = MemoryTransport()
    down.transport = down_t  # type: ignore[assignment]
    up = baseline_proxy.Upstream(down)
    up_t = MemoryTransport()
    up.connection_made(up_t)  # type: ignore[arg-type]
    down.up = up
    dt = drive(down, up, [REQUEST] * (n + 1000), lambda: None, lambda: None)
    print(f"{dt / n * 1e6:.2f} us/request (ceiling: bench/baseline_proxy.py)")
    assert down_t.written == up_t.written == n + 1000, "requests did not all complete"


async def main(args: argparse.Namespace) -> None:
    if args.ceiling:
        await ceiling(args.requests)
        return
    snap = build(args.routes)
    svc = snap.config.services[0]
    cluster = ClusterRuntime(svc)
    cluster.update(svc, snap.endpoints["api"])
    compiled = CompiledSnapshot(snap, {"api": cluster}, {})
    # the sink the runtime opens for ``--access-log PATH``: a text file over a binary one
    sink = open(os.devnull, "a", encoding="utf-8")  # noqa: SIM115, ASYNC230
    log = AccessLog(sink, enabled=not args.no_access_log)
    ctx = ListenerContext(
        "web>api", compiled.view(snap.listeners[0]), MeshMetrics("b", "b"), log, Clock(0.5)
    )
    down = HttpDownstream(ctx)
    n = args.requests
    entry: Any = down
    if args.tls:
        entry, down_t, requests = tls_in_front(down, n + 1000)
    else:
        down_t, requests = MemoryTransport(), [REQUEST] * (n + 1000)
        down.connection_made(down_t)  # type: ignore[arg-type]
    host = cluster.hosts[0]
    assert isinstance(host, UpstreamHost)
    conn = UpstreamConnection(cluster, host)
    up_t = MemoryTransport()
    conn.connection_made(up_t)  # type: ignore[arg-type]
    cluster.state.connections = 1
    host.idle.append(conn)

    dt = drive(entry, conn, requests, log.flush, batch_of(asyncio.get_running_loop()).flush)
    print(
        f"{dt / n * 1e6:.2f} us/request ({args.routes} routes, access log {not args.no_access_log}"
        f"{', behind TLS' if args.tls else ''})"
    )
    assert down_t.written == up_t.written == n + 1000, "requests did not all complete"


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--routes", type=int, default=10)
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--no-access-log", action="store_true")
    parser.add_argument("--ceiling", action="store_true", help="the featureless proxy instead")
    parser.add_argument("--tls", action="store_true", help="the ingress's TLS stream in front")
    uvloop.run(main(parser.parse_args()))
