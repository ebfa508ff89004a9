"""The admin API (aiohttp): health, status, config, clusters, metrics, events, access log.

Bound to 127.0.0.1 by default: it shows the whole mesh config and can trigger reloads, so
it is for the local user and the CLI, never for the network. Every answer is JSON except
``/metrics`` (Prometheus text), ``/events`` (server-sent events) and ``/logs?follow=1``
(JSON lines). ``docs/admin-api.md`` and ``docs/openapi.yaml`` describe each endpoint.

The admin side reads the data plane only through ``DataPlaneView`` (bound addresses and
cluster state), so it never touches the hot path's objects.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from localmesh import __version__
from localmesh.config.values import parse_status_filter
from localmesh.errors import RuntimeStartError
from localmesh.runtime.container import LookupFailure
from localmesh.runtime.controlplane.codec import content_hash, encode, redact
from localmesh.runtime.controlplane.plane import ControlPlane
from localmesh.runtime.controlplane.stats import Rates, Sample, rates, read_counts
from localmesh.runtime.dataplane.core.policy import UNKNOWN
from localmesh.runtime.snapshot import Snapshot
from localmesh.runtime.telemetry import AccessLog, MeshMetrics

Record = dict[str, Any]
KEEPALIVE_SECONDS = 15.0


def endpoint_health(endpoint: Mapping[str, Any]) -> str:
    """One word for people and the CLI: ``ejected`` (outlier detection) wins over
    ``unhealthy`` (active health checks); ``unknown`` before the data plane reports."""
    if endpoint.get("ejected"):
        return "ejected"
    healthy = endpoint.get("healthy")
    if healthy is None:
        return "unknown"
    return "healthy" if healthy else "unhealthy"


class DataPlaneView(Protocol):
    def addresses(self) -> dict[str, tuple[str, int]]:
        """Listener name -> the (host, port) it is bound to right now."""
        ...

    def clusters(self) -> list[dict[str, Any]]:
        """Per cluster: endpoints with health, outlier state, active requests."""
        ...


class DiscoveryView(Protocol):
    """Container mode's DNS discovery: the services whose lookups fail right now."""

    failures: dict[str, LookupFailure]


def record_filter(
    service: str | None = None, status: str | None = None
) -> Callable[[Record], bool] | None:
    """A predicate for access-log records: ``service`` (caller or callee) and ``status``.

    ``status`` is a comma list of codes (``503``) and classes (``5xx``), else ValueError;
    records without a status (TCP connections) never match a status filter.
    """
    if service is None and status is None:
        return None
    wanted = parse_status_filter(status or "")

    def match(record: Record) -> bool:
        if service is not None and service not in (
            record.get("source"),
            record.get("destination"),
        ):
            return False
        if wanted:
            code = record.get("status")
            if not isinstance(code, int):
                return False
            text = str(code)
            return any(w == text or (w.endswith("xx") and text[0] == w[0]) for w in wanted)
        return True

    return match


class TrafficSampler:
    """Samples the metrics once per ``interval`` and keeps ``window`` seconds of them."""

    def __init__(self, metrics: MeshMetrics, interval: float = 1.0, window: float = 10.0) -> None:
        self.metrics = metrics
        self.interval = interval
        self._ring: deque[Sample] = deque(maxlen=max(2, int(window / interval) + 1))

    def sample(self) -> None:
        self._ring.append(Sample(time.time(), read_counts(self.metrics.collect())))

    def rates(self) -> dict[str, Rates]:
        if len(self._ring) < 2:
            return {}
        return rates(self._ring[0], self._ring[-1])

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval)


class AdminApi:
    def __init__(
        self,
        plane: ControlPlane,
        dataplane: DataPlaneView,
        metrics: MeshMetrics,
        access_log: AccessLog,
        *,
        sampler: TrafficSampler | None = None,
        discovery: DiscoveryView | None = None,
    ) -> None:
        self.plane = plane
        self.dataplane = dataplane
        self.discovery = discovery
        self.metrics = metrics
        self.access_log = access_log
        self.sampler = sampler or TrafficSampler(metrics)
        self.draining = False  # set at shutdown: /readyz turns 503 while requests drain
        self._streams: set[asyncio.Task[Any]] = set()  # /events and /logs?follow handlers
        self._runner: web.AppRunner | None = None
        self.address: tuple[str, int] | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self.index)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/status", self.status)
        app.router.add_get("/config", self.config)
        app.router.add_get("/clusters", self.clusters)
        app.router.add_get("/metrics", self.prometheus)
        app.router.add_get("/events", self.events)
        app.router.add_get("/logs", self.logs)
        app.router.add_post("/reload", self.reload)
        return app

    async def start(self, host: str, port: int) -> tuple[str, int]:
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise RuntimeStartError(
                f"cannot bind the admin API on {host}:{port}: {exc.strerror or exc}",
                hint="pass --admin HOST:PORT with a free port",
            ) from exc
        self._runner = runner
        bound = runner.addresses[0]
        self.address = (str(bound[0]), int(bound[1]))
        return self.address

    async def stop(self) -> None:
        """Close streams first: a server cannot finish shutting down under open ones."""
        for task in list(self._streams):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- readiness ------------------------------------------------------------------------

    def readiness(self) -> tuple[bool, str]:
        if self.draining:
            return False, "shutting down: draining in-flight requests"
        snapshot = self.plane.snapshot
        if snapshot is None:
            return False, "no active snapshot"
        bound = self.dataplane.addresses()
        missing = [lst.name for lst in snapshot.listeners if lst.name not in bound]
        if missing:
            return False, f"listeners not bound: {', '.join(missing)}"
        return True, f"snapshot {snapshot.version} active, {len(bound)} listeners bound"

    # -- handlers -------------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.Response:
        paths = sorted({r.resource.canonical for r in request.app.router.routes() if r.resource})
        return web.json_response({"localmesh": __version__, "endpoints": paths})

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(self, request: web.Request) -> web.Response:
        ready, reason = self.readiness()
        return web.json_response({"ready": ready, "reason": reason}, status=200 if ready else 503)

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response(self.status_document())

    def status_document(self) -> dict[str, Any]:
        doc = self.plane.status()
        snapshot = self.plane.snapshot
        bound = self.dataplane.addresses()
        ready, reason = self.readiness()
        doc.update(
            version=__version__,
            ready=ready,
            ready_reason=reason,
            admin=_addr(self.address),
            listeners=[] if snapshot is None else _listeners(snapshot, bound),
            services=[] if snapshot is None else self._services(snapshot),
        )
        return doc

    def _services(self, snapshot: Snapshot) -> list[dict[str, Any]]:
        # a service has one cluster per port: its endpoints are theirs together
        clusters: dict[str, list[dict[str, Any]]] = {}
        for c in self.dataplane.clusters():
            service = str(c.get("service") or c.get("name"))
            clusters.setdefault(service, []).extend(c.get("endpoints", []))
        window = self.sampler.rates()
        failures = self.discovery.failures if self.discovery is not None else {}
        out: list[dict[str, Any]] = []
        for svc in snapshot.config.services:
            cluster = clusters.get(svc.name)
            endpoints = (
                [{**ep, "health": endpoint_health(ep)} for ep in cluster]
                if cluster is not None
                else [
                    {"address": e.address, "health": "unknown"}
                    for e in snapshot.endpoints[svc.name]
                ]
            )
            traffic = window.get(svc.name)
            failure = failures.get(svc.name)
            out.append(
                {
                    "name": svc.name,
                    "meshed": svc.meshed,
                    "ports": [{"port": p.port, "protocol": str(p.protocol)} for p in svc.ports],
                    "endpoints": endpoints,
                    "traffic": traffic.as_dict() if traffic else None,
                    "discovery_error": failure.as_dict() if failure else None,
                }
            )
        return out

    async def config(self, request: web.Request) -> web.Response:
        snapshot = self.plane.snapshot
        if snapshot is None:
            return web.json_response({"error": "no active snapshot"}, status=503)
        return web.json_response(snapshot_document(snapshot))

    async def clusters(self, request: web.Request) -> web.Response:
        return web.json_response({"clusters": self.dataplane.clusters()})

    async def prometheus(self, request: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def reload(self, request: web.Request) -> web.Response:
        ok = await self.plane.reload("admin API")
        doc = self.plane.status()
        return web.json_response(
            {"applied": ok, "snapshot": doc["snapshot"], "last_error": doc["last_error"]},
            status=200 if ok else 409,
        )

    async def events(self, request: web.Request) -> web.StreamResponse:
        after_header = request.headers.get("Last-Event-ID") or request.query.get("after")
        after = int(after_header) if after_header and after_header.isdigit() else None
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        await response.write(b": localmesh events\n\n")
        subscription = self.plane.events.subscribe(after=after)
        self._track()
        try:
            while True:
                try:
                    event = await asyncio.wait_for(subscription.next(), KEEPALIVE_SECONDS)
                except TimeoutError:
                    await response.write(b": keep-alive\n\n")
                    continue
                if event is None:
                    break
                data = json.dumps(event.as_dict(), separators=(",", ":"))
                await response.write(
                    f"id: {event.id}\nevent: {event.type}\ndata: {data}\n\n".encode()
                )
        except ConnectionResetError:
            pass  # the client went away
        finally:
            subscription.close()
        return response

    def _track(self) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._streams.add(task)
            task.add_done_callback(self._streams.discard)

    async def logs(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        try:
            limit = int(query.get("limit", "100"))
        except ValueError:
            return web.json_response({"error": "limit must be an integer"}, status=400)
        service = query.get("service") or None
        try:
            match = record_filter(service, query.get("status") or None)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        if service is not None and not self._knows(service):
            return web.json_response(self._no_such_service(service), status=404)
        records = self.access_log.recent(limit=limit, match=match) if limit > 0 else []
        if query.get("follow") not in ("1", "true", "yes"):
            return web.json_response({"records": records})
        return await self._follow_logs(request, records, match)

    def _knows(self, service: str) -> bool:
        """A service of the active config, a caller outside it (``unknown``, a client
        certificate's name) or any name a kept access-log record carries."""
        snapshot = self.plane.snapshot
        if service == UNKNOWN or (snapshot and snapshot.config.service(service)):
            return True
        match = record_filter(service)
        return bool(self.access_log.recent(limit=1, match=match))

    def _no_such_service(self, service: str) -> dict[str, str]:
        snapshot = self.plane.snapshot
        names = sorted(s.name for s in snapshot.config.services) if snapshot else []
        known = ", ".join([*names, UNKNOWN])
        return {
            "error": f"no service {service!r} in the mesh, and no call from or to it is logged",
            "hint": f"services: {known}",
        }

    async def _follow_logs(
        self, request: web.Request, backlog: list[Record], match: Callable[[Record], bool] | None
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        queue: asyncio.Queue[Record] = asyncio.Queue(maxsize=1000)

        def deliver(record: Record) -> None:
            if (match is None or match(record)) and not queue.full():
                queue.put_nowait(record)

        unsubscribe = self.access_log.subscribe(deliver)
        self._track()
        try:
            for record in backlog:
                await response.write(_line(record))
            while True:
                try:
                    record = await asyncio.wait_for(queue.get(), KEEPALIVE_SECONDS)
                except TimeoutError:
                    await response.write(b"\n")  # keeps proxies and the CLI's read alive
                    continue
                await response.write(_line(record))
        except ConnectionResetError:
            pass  # the client went away
        finally:
            unsubscribe()
        return response


def snapshot_document(snapshot: Snapshot) -> dict[str, Any]:
    """The compiled snapshot as JSON with credentials redacted (``/config``)."""
    return {
        "version": snapshot.version,
        "hash": content_hash(snapshot),
        "origin": snapshot.origin,
        "created": snapshot.created,
        "config": redact(encode(snapshot.config)),
        "listeners": encode(snapshot.listeners),
        "endpoints": {k: encode(v) for k, v in snapshot.endpoints.items()},
        "sources": dict(snapshot.sources),
        "vips": dict(snapshot.vips),
    }


def _listeners(snapshot: Snapshot, bound: dict[str, tuple[str, int]]) -> list[dict[str, Any]]:
    return [
        {
            "name": lst.name,
            "service": lst.service,
            "port": lst.port,
            "protocol": str(lst.protocol),
            "bind": f"{lst.bind_host}:{lst.bind_port}",
            "address": _addr(bound.get(lst.name)),
        }
        for lst in snapshot.listeners
    ]


def _addr(addr: tuple[str, int] | None) -> str | None:
    if addr is None:
        return None
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _line(record: Record) -> bytes:
    return (json.dumps(record, separators=(",", ":")) + "\n").encode()
