"""Bound sockets: one per ListenerSpec, plus the catch-all intercept listener.

A ``Listener`` owns an ``asyncio.Server`` and the ``ListenerContext`` its connections read.
Listeners are constant once bound (Envoy's rule): a changed spec gets a new listener and
the old one drains. An unchanged spec keeps its socket and only its view is replaced.

The **intercept** listener receives traffic that iptables redirected from any VIP and port
(``REDIRECT``); ``SO_ORIGINAL_DST`` on the accepted socket tells which VIP and port the
client dialled, ``Snapshot.vips`` which service that is, and the service's port spec which
protocol to speak (unknown ports are relayed as TCP).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
from collections.abc import Callable
from typing import cast

from localmesh.config.model import Protocol as Proto
from localmesh.runtime.dataplane.compiled import CompiledSnapshot, ListenerView, RouteSource
from localmesh.runtime.dataplane.context import Clock, IdentifyHook, ListenerContext
from localmesh.runtime.dataplane.http import HttpDownstream
from localmesh.runtime.dataplane.tcp import TcpDownstream
from localmesh.runtime.snapshot import ListenerSpec
from localmesh.runtime.telemetry import AccessLog, MeshMetrics

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
BACKLOG = 1024


def original_destination(sock: socket.socket) -> tuple[str, int]:
    """The (address, port) the client connected to before NAT redirected it to us."""
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)  # struct sockaddr_in
    port = struct.unpack_from("!H", raw, 2)[0]
    return socket.inet_ntoa(raw[4:8]), int(port)


def protocol_for(ctx: ListenerContext) -> asyncio.Protocol:
    if ctx.view.protocol is Proto.HTTP:
        return HttpDownstream(ctx)
    return TcpDownstream(ctx)


class Listener:
    """One bound socket and the contexts its connections share."""

    def __init__(
        self,
        spec: ListenerSpec,
        view: ListenerView,
        metrics: MeshMetrics,
        access_log: AccessLog,
        clock: Clock,
        *,
        ssl_context: ssl.SSLContext | None = None,
        routes: Callable[[CompiledSnapshot], RouteSource] | None = None,
        identify: IdentifyHook | None = None,
        external: bool = False,
    ) -> None:
        self.spec = spec
        self.external = external  # added through the ingress seam, not from a snapshot
        self._compiled = view.compiled
        self.server: asyncio.Server | None = None
        self._routes = routes
        self._ssl = ssl_context
        self.ctx = ListenerContext(
            spec.name,
            view,
            metrics,
            access_log,
            clock,
            scheme=b"https" if ssl_context is not None else b"http",
            identify=identify,
            gateway=external,
        )
        # intercept: one context per (service, port) dialled
        self._targets: dict[tuple[str, int], ListenerContext] = {}

    @property
    def contexts(self) -> list[ListenerContext]:
        return [self.ctx, *self._targets.values()]

    def update(self, compiled: CompiledSnapshot) -> None:
        """Atomically switch new requests and connections to ``compiled``."""
        routes = self._routes(compiled) if self._routes is not None else None
        if not self.spec.intercept:
            self.ctx.view = compiled.view(self.spec, routes)
        for (service, port), ctx in list(self._targets.items()):
            if service in compiled.clusters:
                ctx.view = compiled.view(self._target_spec(service, port, compiled))
            else:
                del self._targets[(service, port)]
        self._compiled = compiled

    def factory(self) -> asyncio.Protocol:
        if self.spec.intercept:
            return _InterceptAccept(self)
        return protocol_for(self.ctx)

    async def bind(self) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            self.factory,
            self.spec.bind_host,
            self.spec.bind_port,
            backlog=BACKLOG,
            ssl=self._ssl,
            reuse_address=True,
            start_serving=False,
        )
        return self.address

    async def start(self) -> None:
        if self.server is not None:
            await self.server.start_serving()

    @property
    def address(self) -> tuple[str, int]:
        assert self.server is not None
        assert self.server.sockets
        host, port = self.server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    def stop_accepting(self) -> None:
        if self.server is not None:
            self.server.close()

    def connections(self) -> list[asyncio.Protocol]:
        return [c for ctx in self.contexts for c in ctx.connections]

    def drain(self) -> None:
        """Stop accepting; HTTP connections close when idle: now, or after the response in
        flight, or the next one (Envoy's listener drain). What outlives the drain timeout
        is ``abort``-ed."""
        self.stop_accepting()
        for ctx in self.contexts:
            ctx.view = ctx.view.drained()
            for conn in list(ctx.connections):
                if isinstance(conn, HttpDownstream):
                    conn.drain()

    def abort(self) -> None:
        """Reset every connection still open (the drain timeout ran out)."""
        for conn in self.connections():
            transport = getattr(conn, "transport", None)
            if transport is not None:
                transport.abort()

    # -- intercept --------------------------------------------------------------------------

    def _target_spec(self, service: str, port: int, compiled: CompiledSnapshot) -> ListenerSpec:
        return ListenerSpec(
            name=f"{self.spec.name}>{service}:{port}",
            service=service,
            port=port,
            protocol=compiled.port_protocol(service, port),
            bind_host=self.spec.bind_host,
            bind_port=self.spec.bind_port,
            source=self.spec.source,
        )

    def target_context(self, address: str, port: int) -> ListenerContext | None:
        compiled = self._compiled
        service = compiled.snapshot.vips.get(address)
        if service is None or service not in compiled.clusters:
            return None
        ctx = self._targets.get((service, port))
        if ctx is None:
            spec = self._target_spec(service, port, compiled)
            ctx = self._targets[(service, port)] = ListenerContext(
                spec.name, compiled.view(spec), self.ctx.metrics, self.ctx.access_log,
                self.ctx.clock,
            )  # fmt: skip
        return ctx


class _InterceptAccept(asyncio.Protocol):
    """Reads the original destination of a redirected connection and hands it over."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        sock = transport.get_extra_info("socket")
        try:
            address, port = original_destination(sock)
        except OSError:
            transport.abort()
            return
        ctx = self.listener.target_context(address, port)
        if ctx is None:
            transport.abort()
            return
        proto = protocol_for(ctx)
        transport.set_protocol(proto)
        proto.connection_made(transport)
