"""The data plane: listeners and clusters driven by snapshots.

``apply(snapshot)`` is atomic from a request's point of view:

1. compile the snapshot against the long-lived clusters, one per service port (new ones
   are created aside);
2. bind every new or changed listener without serving yet; if one bind fails, close
   the new sockets and raise ``RuntimeStartError``: the previous state is untouched;
3. commit: update cluster membership, swap every kept listener's view (one attribute per
   listener), start serving the new listeners, drain the replaced and removed ones,
   restart health checks.

A draining listener (``Listener.drain``) stops accepting and closes its HTTP connections
when idle: at once, or after the response in flight, or after the next one, which says
``Connection: close``; what is still open ``drain_timeout`` later is reset. Shutdown drains
every listener the same way.

A failed upstream connect (or a reset under a request) is reported to the optional
``on_upstream_failure(service)`` at most once per service per ``FAILURE_REPORT_INTERVAL``:
the runtime wires it to discovery, which then looks again at once (container mode).

A sweeper task advances the coarse clock that header/idle timeouts use, closes idle
upstream connections and moves TCP byte counts to the metrics.

``close(drain_timeout)`` shuts down in uvicorn's order: stop accepting, close idle
connections, wait for in-flight requests up to the timeout, then abort what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
import time
from collections.abc import Callable
from typing import Any

from localmesh.config.model import Protocol as Proto
from localmesh.config.model import Service, TLSMode
from localmesh.errors import Position, RuntimeStartError
from localmesh.runtime.dataplane.compiled import CompiledSnapshot, LimiterStore, RouteSource
from localmesh.runtime.dataplane.context import Clock, IdentifyHook, ListenerContext
from localmesh.runtime.dataplane.core.cluster import FailureReports
from localmesh.runtime.dataplane.health import HealthChecker
from localmesh.runtime.dataplane.http import HttpDownstream
from localmesh.runtime.dataplane.listeners import Listener
from localmesh.runtime.dataplane.tasks import spawn
from localmesh.runtime.dataplane.tcp import TCP_IDLE_TIMEOUT, TcpDownstream
from localmesh.runtime.dataplane.upstream import ClusterRuntime, UpstreamTLS
from localmesh.runtime.snapshot import ListenerSpec, Snapshot
from localmesh.runtime.telemetry import AccessLog, MeshMetrics

log = logging.getLogger("localmesh.dataplane")

MIN_TICK = 0.05
MAX_TICK = 0.5
POOL_SWEEP_EVERY = 1.0  # seconds between idle upstream connection sweeps
FAILURE_REPORT_INTERVAL = 1.0  # seconds between two upstream failure reports of a service

#: TLS origination to a service (None: plain TCP) for a caller workload ("": the mesh's own
#: identity; it matters under mutual TLS only); see ``ingress/origination.py``. Raises
#: ``OSError`` when that caller's identity cannot be had, which fails the connect.
UpstreamTLSProvider = Callable[[Service, str], UpstreamTLS | None]
#: Told the name of a service one of whose upstreams failed (rate-limited).
UpstreamFailureHook = Callable[[str], None]


class DataPlane:
    """Every listener and cluster of one runtime; the control plane calls ``apply``."""

    def __init__(
        self,
        metrics: MeshMetrics,
        access_log: AccessLog,
        *,
        upstream_tls: UpstreamTLSProvider | None = None,
        on_upstream_failure: UpstreamFailureHook | None = None,
        drain_timeout: float = 5.0,
    ) -> None:
        self.metrics = metrics
        self.drain_timeout = drain_timeout  # for listeners a snapshot replaced or removed
        self.access_log = access_log
        self._upstream_tls = upstream_tls
        self._on_upstream_failure = on_upstream_failure
        self._failures = FailureReports(FAILURE_REPORT_INTERVAL)
        self._limiters: LimiterStore = {}
        self._listeners: dict[str, Listener] = {}
        self._draining: dict[Listener, float] = {}  # -> when what is left is reset
        self._compiled: CompiledSnapshot | None = None
        self._clock = Clock(MAX_TICK)
        self._health = HealthChecker()
        self._sweeper: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._closed = False

    # -- the control plane's API ------------------------------------------------------------

    @property
    def snapshot(self) -> Snapshot | None:
        return self._compiled.snapshot if self._compiled is not None else None

    async def apply(self, snapshot: Snapshot) -> None:
        """Serve ``snapshot``: bind new listeners, keep unchanged ones, drain removed ones."""
        async with self._lock:
            if self._closed:
                raise RuntimeStartError("the data plane is closed")
            await self._apply(snapshot)
        if self._sweeper is None:
            self._sweeper = spawn(self._sweep_forever(), name="dataplane sweeper")

    def addresses(self) -> dict[str, tuple[str, int]]:
        """Listener name -> the (host, port) it is bound to (bind_port 0 resolved); a
        listener closing (drain at stop) has no sockets left and is not listed."""
        return {
            name: lst.address
            for name, lst in self._listeners.items()
            if lst.server is not None and lst.server.sockets
        }

    def clusters(self) -> list[dict[str, Any]]:
        """Per cluster (service port): endpoints with health, outlier state, active requests."""
        now = time.monotonic()
        return [c.describe(now) for c in self._all_clusters()]

    def _all_clusters(self) -> list[ClusterRuntime]:
        return self._compiled.all_clusters() if self._compiled is not None else []

    async def close(self, drain_timeout: float = 5.0) -> None:
        async with self._lock:
            self._closed = True
            listeners = [*self._listeners.values(), *self._draining]
            for lst in listeners:
                lst.drain()
            deadline = time.monotonic() + drain_timeout
            # Connections leave from many protocol callbacks; polling for the few
            # seconds of a shutdown is simpler than threading an event through each.
            while time.monotonic() < deadline and any(  # noqa: ASYNC110
                lst.connections() for lst in listeners
            ):
                await asyncio.sleep(0.02)
            for lst in listeners:
                lst.abort()
                if lst.server is not None:
                    lst.server.close()
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(lst.server.wait_closed(), 1.0)
            self._listeners.clear()
            self._draining.clear()
            if self._sweeper is not None:
                self._sweeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._sweeper
                self._sweeper = None
            await self._health.stop()
            for cluster in self._all_clusters():
                cluster.close()

    # -- the ingress seam -------------------------------------------------------------------

    async def serve_http(
        self,
        name: str,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        routes: Callable[[CompiledSnapshot], RouteSource] | None = None,
        identify: IdentifyHook | None = None,
    ) -> tuple[str, int]:
        """Bind an extra HTTP listener served by this engine (the ingress gateway).

        ``routes`` picks the route source from each snapshot (default: the ingress hosts,
        matched by ``Host``); ``ssl_context`` terminates TLS (SNI callbacks and client-cert
        settings are the context's); ``identify`` turns the verified peer into the caller
        and the ``x-forwarded-client-cert`` value (any XFCC a client sends is stripped).
        """
        listener = self._external(
            name, host=host, port=port, ssl_context=ssl_context, routes=routes, identify=identify
        )
        try:
            await listener.bind()
        except OSError as exc:
            raise RuntimeStartError(
                f"cannot listen on {host}:{port} for {name}: {exc.strerror or exc}",
                hint="another process holds the port; choose another or stop it",
            ) from exc
        await listener.start()
        self._listeners[name] = listener
        return listener.address

    def http_protocol_factory(
        self,
        name: str,
        *,
        scheme: bytes = b"https",
        routes: Callable[[CompiledSnapshot], RouteSource] | None = None,
        identify: IdentifyHook | None = None,
    ) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for connections the caller accepts itself (e.g. after peeking
        at a ClientHello); it follows snapshot swaps like any listener."""
        listener = self._external(
            name, host="", port=0, ssl_context=None, routes=routes, identify=identify
        )
        listener.ctx.scheme = scheme
        self._listeners[name] = listener
        return listener.factory

    def _external(
        self,
        name: str,
        *,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None,
        routes: Callable[[CompiledSnapshot], RouteSource] | None,
        identify: IdentifyHook | None,
    ) -> Listener:
        compiled = self._compiled
        if compiled is None:
            raise RuntimeStartError("no snapshot applied yet", hint="apply a snapshot first")
        spec = ListenerSpec(name, "ingress", port, Proto.HTTP, host, port)
        pick = routes or (lambda c: c.ingress)
        listener = Listener(
            spec,
            compiled.view(spec, pick(compiled)),
            self.metrics,
            self.access_log,
            self._clock,
            ssl_context=ssl_context,
            routes=pick,
            identify=identify,
            external=True,
        )
        return listener

    # -- apply ------------------------------------------------------------------------------

    def _new_cluster(self, service: Service, port: int) -> ClusterRuntime:
        cluster = ClusterRuntime(service, port)
        self._originate(cluster, service)
        cluster.on_failure = self._upstream_failed
        if self._compiled is not None and not self._lock.locked():
            self._health.add(cluster)  # made on first use (an intercepted port): check it now
        return cluster

    def _originate(self, cluster: ClusterRuntime, service: Service) -> None:
        provider = self._upstream_tls
        if provider is None:
            return
        cluster.tls = provider(service, "")
        mutual = service.tls.mode is TLSMode.MUTUAL
        cluster.tls_as = functools.partial(provider, service) if mutual else None

    def _upstream_failed(self, cluster: ClusterRuntime) -> None:
        hook = self._on_upstream_failure
        if hook is not None and self._failures.due(cluster.name, time.monotonic()):
            hook(cluster.name)

    async def _apply(self, snapshot: Snapshot) -> None:
        previous = self._all_clusters()
        compiled = CompiledSnapshot(
            snapshot,
            {c.state.name: c for c in previous},
            self._limiters,
            new_cluster=self._new_cluster,
        )

        wanted = {spec.name: spec for spec in snapshot.listeners}
        keep = {
            n: lst
            for n, lst in self._listeners.items()
            if lst.external or wanted.get(n) == lst.spec
        }
        fresh: list[Listener] = []
        replaced = [lst for n, lst in self._listeners.items() if n not in keep]
        addresses_in_use = {
            (lst.spec.bind_host, lst.spec.bind_port): lst for lst in replaced if lst.spec.bind_port
        }
        try:
            for name, spec in wanted.items():
                if name in keep:
                    continue
                # same socket, different spec: the old one must let go first
                old = addresses_in_use.get((spec.bind_host, spec.bind_port))
                if old is not None:
                    old.stop_accepting()
                listener = Listener(
                    spec, compiled.view(spec), self.metrics, self.access_log, self._clock
                )
                try:
                    await listener.bind()
                except OSError as exc:
                    raise RuntimeStartError(
                        f"listener {name}: cannot listen on {spec.bind_host}:{spec.bind_port}:"
                        f" {exc.strerror or exc}",
                        hint="another process holds the port; set listen: to a free one",
                        position=_declared_at(snapshot, spec),
                    ) from exc
                fresh.append(listener)
        except BaseException:
            for lst in fresh:
                lst.stop_accepting()
            raise

        # commit: nothing below awaits before every view is swapped
        for lst in keep.values():
            lst.update(compiled)
        for lst in fresh:
            lst.update(compiled)
        compiled.prune()
        clusters = compiled.all_clusters()
        for cluster in clusters:
            svc = compiled.services[cluster.name]
            cluster.update(svc, snapshot.endpoints.get(svc.name, ()))
            self._originate(cluster, svc)
        current = set(clusters)
        removed_clusters = [c for c in previous if c not in current]
        self._compiled = compiled
        self._listeners = {**keep, **{lst.spec.name: lst for lst in fresh}}
        self._clock.tick = self._tick_for(compiled)
        for lst in fresh:
            await lst.start()
        for lst in replaced:
            lst.drain()
            self._draining[lst] = time.monotonic() + self.drain_timeout
        for cluster in removed_clusters:
            cluster.close()
        self._health.update(clusters)
        log.info(
            "snapshot %s applied: %d listeners (%d new, %d draining)",
            snapshot.version,
            len(self._listeners),
            len(fresh),
            len(replaced),
        )

    @staticmethod
    def _tick_for(compiled: CompiledSnapshot) -> float:
        spans = [MAX_TICK * 4]
        for svc in compiled.config.services:
            spans.append(svc.limits.header_timeout)
            spans.append(svc.connection_pool.idle_timeout)
        return min(MAX_TICK, max(MIN_TICK, min(spans) / 4))

    # -- the sweeper ------------------------------------------------------------------------

    async def _sweep_forever(self) -> None:
        clock = self._clock
        last_pool_sweep = time.monotonic()
        while True:
            await asyncio.sleep(clock.tick)
            clock.ticks += 1
            for lst in list(self._listeners.values()):
                for ctx in lst.contexts:
                    self._sweep_context(ctx)
            for lst, deadline in list(self._draining.items()):
                if not lst.connections():
                    del self._draining[lst]
                    if lst.server is not None:
                        lst.server.close()
                    continue
                if time.monotonic() >= deadline:
                    lst.abort()
                    continue
                for ctx in lst.contexts:
                    self._sweep_context(ctx)
            now = time.monotonic()
            if now - last_pool_sweep >= POOL_SWEEP_EVERY:
                last_pool_sweep = now
                for cluster in self._all_clusters():
                    cluster.sweep(now)

    def _sweep_context(self, ctx: ListenerContext) -> None:
        clock = self._clock
        ticks = clock.ticks
        view = ctx.view
        service = view.compiled.services.get(view.service)
        header_span = clock.span(view.limits.header_timeout)
        idle_span = clock.span(service.connection_pool.idle_timeout if service else 60.0)
        tcp_idle_span = clock.span(TCP_IDLE_TIMEOUT)
        now = ctx.now()
        for conn in list(ctx.connections):
            if isinstance(conn, HttpDownstream):
                since = conn.wait_since
                if since < 0:
                    active = conn.active
                    if active is not None and active.deadline and now >= active.deadline:
                        active.deadline_passed()
                    continue
                if conn.in_head:
                    if ticks - since > header_span:
                        conn.timed_out(idle=False)
                elif ticks - since > idle_span:
                    conn.timed_out(idle=True)
            elif isinstance(conn, TcpDownstream):
                conn.flush_counts()
                if conn.activity:
                    conn.activity = 0
                    conn.wait_since = ticks
                elif ticks - conn.wait_since > tcp_idle_span:
                    conn.timed_out()


def _declared_at(snapshot: Snapshot, spec: ListenerSpec) -> Position | None:
    """Where the config declares the port a listener serves (its listen:, else the entry)."""
    service = snapshot.config.service(spec.service)
    if service is None:
        return None
    port = next((p for p in service.ports if p.port == spec.port), None)
    return port.position if port is not None and port.position else service.position
