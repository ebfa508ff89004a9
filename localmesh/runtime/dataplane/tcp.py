"""The L4 relay for ``tcp``, ``postgres`` and ``redis`` listeners.

Per downstream connection: identify the caller, authorise (TCP rules: see ``core.policy``),
pick an endpoint (consistent hash on the caller's IP when configured), connect (retrying
other endpoints on connect failure when the service's retry policy says
``connect-failure``), then relay bytes both ways with backpressure and half-close.

Bytes are counted per connection and added to the metric edge by the sweeper and at close,
never per read. Bytes that arrive while the upstream is being connected are kept (up to
``PENDING_LIMIT``, then reading pauses) and sent once it is.

A relayed connection idle in both directions for ``TCP_IDLE_TIMEOUT`` is closed (Istio's
default TCP idle timeout: one hour, long enough for database connection pools).
"""

from __future__ import annotations

import asyncio
import time
from typing import Final, cast

from localmesh.runtime.dataplane.batching import batched
from localmesh.runtime.dataplane.compiled import ListenerView, RouteTarget
from localmesh.runtime.dataplane.context import ListenerContext
from localmesh.runtime.dataplane.core import wire
from localmesh.runtime.dataplane.core.policy import Caller
from localmesh.runtime.dataplane.core.retry import Outcome, is_retriable
from localmesh.runtime.dataplane.tasks import spawn
from localmesh.runtime.dataplane.upstream import UpstreamHost
from localmesh.runtime.telemetry import TcpEdge

TCP_IDLE_TIMEOUT: Final = 3600.0
PENDING_LIMIT: Final = 256 * 1024  # bytes buffered while connecting before we stop reading


class TcpDownstream(asyncio.Protocol):
    __slots__ = (
        "_down_eof",
        "_flushed_received",
        "_flushed_sent",
        "_up_eof",
        "activity",
        "caller",
        "closed",
        "ctx",
        "edge",
        "flags",
        "host",
        "peer_ip",
        "pending",
        "received",
        "route",
        "sent",
        "started",
        "target",
        "transport",
        "upstream",
        "view",
        "wait_since",
    )

    def __init__(self, ctx: ListenerContext) -> None:
        self.ctx = ctx
        self.view: ListenerView = ctx.view
        self.transport: asyncio.Transport | None = None
        self.upstream: TcpUpstream | None = None
        # bytes that arrive before the upstream is connected (uvloop starts reading
        # before connection_made returns, so pausing there is too late)
        self.pending: list[bytes] | None = []
        self.host: UpstreamHost | None = None
        self.caller: Caller | None = None
        self.target: RouteTarget | None = None  # where this connection goes (its route's)
        self.route: str | None = None
        self.edge: TcpEdge | None = None
        self.peer_ip = "unknown"
        self.received = 0  # from the downstream
        self.sent = 0  # to the downstream
        self._flushed_received = 0
        self._flushed_sent = 0
        self.flags = wire.NO_FLAGS
        self.started = ctx.now()
        self.closed = False
        self._down_eof = False
        self._up_eof = False
        self.activity = 0  # bumped on every read; the sweeper compares it between ticks
        self.wait_since = 0

    # -- downstream -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = batched(cast(asyncio.Transport, transport))  # uvloop's is no subclass
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer_ip = str(peer[0])
        ctx = self.ctx
        ctx.connections.add(self)
        self.wait_since = ctx.clock.ticks
        view = self.view
        caller = self.caller = view.caller_for(self.peer_ip)
        if view.compiled.metrics:
            self.edge = edge = ctx.metrics.tcp_edge(caller.name, view.service)
            edge.opened()
        target = self.target = self._route(view, caller)
        if target is None:
            self._refuse(wire.NO_ROUTE)
            return
        if target.policy is not None and target.policy.check_tcp(caller) is not None:
            self._refuse(wire.DENIED)
            return
        spawn(self._connect(), name=f"tcp {ctx.name} {self.peer_ip}")

    def _route(self, view: ListenerView, caller: Caller) -> RouteTarget | None:
        """The first route whose ``match.sources`` names the caller (a TCP route matches on
        nothing else), its weighted split picked; without routes, the service itself."""
        vhost = view.routes.virtual_host(b"")
        if vhost is None:
            return view.target
        matcher = vhost.routes.match(b"", b"/", b"", [], caller.name)
        if matcher is None:
            return None
        route = matcher.route
        self.route = route.name
        targets = route.targets
        return targets[route.pick(self.ctx.rng.random()) if len(targets) > 1 else 0]

    async def _connect(self) -> None:
        target = self.target
        assert target is not None
        cluster = target.cluster
        state = cluster.state
        retry = cluster.service.retries
        tries = 1 + (retry.attempts if retry is not None else 0)
        key = self.peer_ip.encode() if target.hashed else None
        for attempt in range(tries):
            if self.closed:
                return
            host = target.picker.pick(time.monotonic(), key)
            if host is None:
                self._refuse(wire.NO_HEALTHY_UPSTREAM)
                return
            if not state.can_connect():
                self._refuse(wire.UPSTREAM_OVERFLOW)
                return
            assert isinstance(host, UpstreamHost)
            try:
                transport, proto = await cluster.open_stream(host, lambda: TcpUpstream(self))
            except (OSError, TimeoutError):
                if state.outlier is not None and state.report_failure(host, time.monotonic()):
                    self.ctx.metrics.ejection(cluster.name)
                last = attempt == tries - 1
                if last or retry is None or not is_retriable(retry, Outcome.CONNECT_FAILURE):
                    self._refuse(wire.UPSTREAM_CONNECT_FAILURE)
                    return
                self.ctx.metrics.retry(cluster.name)
                continue
            state.report_status(host, 200, time.monotonic())
            assert isinstance(proto, TcpUpstream)
            if self._gone():  # the downstream left while we were connecting
                transport.close()
                return
            transport = proto.transport  # batched, as every later write
            self.host = host
            host.active_requests += 1
            host.total_requests += 1
            self.upstream = proto
            pending, self.pending = self.pending, None
            if pending:
                transport.write(b"".join(pending))
            if self._down_eof and transport.can_write_eof():
                transport.write_eof()
            if self.transport is not None:
                self.transport.resume_reading()
            return

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        self.activity += 1
        up = self.upstream
        if up is not None:
            up.transport.write(data)
        elif self.pending is not None:  # still connecting: keep it (bounded) for the upstream
            self.pending.append(data)
            if self.received > PENDING_LIMIT and self.transport is not None:
                self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        self._down_eof = True
        up = self.upstream
        if up is not None and up.transport.can_write_eof():
            up.transport.write_eof()
        if self._up_eof:
            return None
        return True  # keep relaying the other direction (or wait for the upstream)

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and not self._up_eof:
            self.flags = wire.join_flags(self.flags, wire.DOWNSTREAM_TERMINATION)
        self._close()

    def pause_writing(self) -> None:
        up = self.upstream
        if up is not None:
            up.transport.pause_reading()

    def resume_writing(self) -> None:
        up = self.upstream
        if up is not None:
            up.transport.resume_reading()

    # -- upstream events --------------------------------------------------------------------

    def upstream_eof(self) -> bool:
        self._up_eof = True
        t = self.transport
        if t is not None and t.can_write_eof() and not t.is_closing():
            t.write_eof()
        return not self._down_eof

    def upstream_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self.flags = wire.join_flags(self.flags, wire.UPSTREAM_TERMINATION)
        if self.transport is not None:
            self.transport.close()
        self._close()

    # -- endings ----------------------------------------------------------------------------

    def _refuse(self, flag: str) -> None:
        self.flags = wire.join_flags(self.flags, flag)
        if self.transport is not None:
            self.transport.abort()
        self._close()

    def _gone(self) -> bool:
        return self.closed

    def flush_counts(self) -> None:
        """Move byte counts to the metric edge (sweeper and close)."""
        edge = self.edge
        if edge is None:
            return
        if self.sent != self._flushed_sent:
            edge.add_sent(self.sent - self._flushed_sent)
            self._flushed_sent = self.sent
        if self.received != self._flushed_received:
            edge.add_received(self.received - self._flushed_received)
            self._flushed_received = self.received

    def timed_out(self) -> None:
        self.flags = wire.join_flags(self.flags, wire.STREAM_IDLE_TIMEOUT)
        if self.transport is not None:
            self.transport.close()
        up = self.upstream
        if up is not None:
            up.transport.close()

    def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.ctx.connections.discard(self)
        up, self.upstream = self.upstream, None
        if up is not None:
            up.transport.close()
        if self.host is not None:
            self.host.active_requests -= 1
        self.flush_counts()
        if self.edge is not None:
            self.edge.closed(self.flags)
        view = self.view
        if view.compiled.access_log:
            self.ctx.access_log.log(
                {
                    "time": self.ctx.wall_time(self.started),
                    "protocol": str(view.protocol),
                    "source": self.caller.name if self.caller is not None else "unknown",
                    "destination": view.service,
                    "route": self.route,
                    "flags": self.flags,
                    "request_bytes": self.received,
                    "response_bytes": self.sent,
                    "duration_ms": round((self.ctx.now() - self.started) * 1000.0, 3),
                    "upstream": self.host.address if self.host is not None else None,
                    "peer": self.peer_ip,
                }
            )


class TcpUpstream(asyncio.Protocol):
    """The upstream half of a relayed connection; its reads go straight to the downstream."""

    __slots__ = ("down", "transport")

    def __init__(self, down: TcpDownstream) -> None:
        self.down = down

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = batched(cast(asyncio.Transport, transport))  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        down = self.down
        down.sent += len(data)
        down.activity += 1
        t = down.transport
        if t is not None:
            t.write(data)

    def eof_received(self) -> bool | None:
        return True if self.down.upstream_eof() else None

    def connection_lost(self, exc: Exception | None) -> None:
        target = self.down.target
        if target is not None:
            target.cluster.state.connections -= 1
            if exc is not None:  # reset mid-relay: discovery may know a newer address
                target.cluster.upstream_failed()
        self.down.upstream_lost(exc)

    def pause_writing(self) -> None:
        t = self.down.transport
        if t is not None:
            t.pause_reading()

    def resume_writing(self) -> None:
        t = self.down.transport
        if t is not None:
            t.resume_reading()
