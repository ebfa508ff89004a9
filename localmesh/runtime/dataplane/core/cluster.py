"""Clusters: which endpoints serve a service port, and their health, ejection, load and breaker.

A **cluster** is one port of one service (Envoy's ``outbound|8000||api``): a call that
arrived on the service's port 8000 is only ever balanced over endpoints that serve 8000.
``cluster_port`` decides which port's cluster a route destination goes to and
``port_endpoints`` which of a service's endpoints belong to that cluster.

An ``EndpointState`` lives as long as its endpoint stays in the cluster, across snapshots,
so ejections, health and active requests survive a config reload. A ``ClusterState`` holds
the endpoints of one service and the counters its circuit breaker decides on:

- **circuit breaking** (Envoy's thresholds): ``max_connections`` open upstream connections,
  ``max_pending_requests`` requests waiting for one; past either the request is refused
  (flag ``UO``) instead of queueing without bound.
- **outlier detection**: an endpoint answering ``consecutive_5xx`` 5xx in a row (or
  ``consecutive_gateway_errors`` 502/503/504, connect failures and resets count as both) is
  ejected for ``base_ejection_time`` times the number of its ejections; the count decays by
  one per ``interval`` without ejection. At most ``max_ejection_percent`` of the endpoints
  are ejected at once, but always at least one may be (Envoy's rule). When fewer than
  ``min_health_percent`` of them are available (ejected or failing health checks), the
  cluster **panics** (Envoy's panic threshold): it balances over all its endpoints, since
  sending to a suspect endpoint beats answering 503 with no endpoint at all.
- **active health checks**: ``unhealthy_threshold`` failed checks in a row take an endpoint
  out, ``healthy_threshold`` passing ones bring it back.

The list of available endpoints is cached and rebuilt only when something changes (an
ejection, a health flip, an ejection running out), so a pick costs no filtering.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import replace

from localmesh.config.model import (
    ConnectionPool,
    HealthCheck,
    HealthCheckKind,
    OutlierDetection,
    Protocol,
    Service,
)
from localmesh.runtime.snapshot import Endpoint


def cluster_name(service: str, port: int) -> str:
    """Envoy's name for the outbound cluster of one service port."""
    return f"outbound|{port}||{service}"


def cluster_port(service: Service, wanted: int | None, arrival: tuple[str, int] | None) -> int:
    """The port whose cluster a destination of ``service`` goes to.

    ``wanted`` is the destination's own ``port``; ``arrival`` the (service, port) the call
    came in on: a listener's, or the one an intercepted call dialled (None: the ingress).
    In order: the destination's port; the arrival port when the call was for this service,
    or this service serves that port too (or declares none, so any port it is dialled on);
    else its first HTTP port, else its first port; 0 when it declares none (every endpoint
    as it is).
    """
    if wanted is not None:
        return wanted
    ports = service.ports
    if arrival is not None:
        arrived_for, port = arrival
        if arrived_for == service.name or not ports or any(p.port == port for p in ports):
            return port
    for p in ports:
        if p.protocol is Protocol.HTTP:
            return p.port
    return ports[0].port if ports else 0


def port_endpoints(
    service: Service, endpoints: Iterable[Endpoint], port: int
) -> tuple[Endpoint, ...]:
    """The endpoints of ``service`` that serve its ``port`` (the members of that cluster).

    Discovered endpoints (container mode) serve the port they name; port 0 means "whatever
    port the client dialled" and becomes ``port``. Static endpoints (``service.endpoints``,
    listed per service) on one of the service's ports serve that port only; one on any
    other port serves every port (host mode: listener 127.0.0.1:18000 for port 8000 may
    forward to 127.0.0.1:9000). Cluster port 0 (no port known) takes every endpoint.
    """
    if port == 0:
        return tuple(endpoints)
    if service.endpoints:
        declared = {p.port for p in service.ports}
        return tuple(e for e in endpoints if e.port == port or e.port not in declared)
    members: dict[str, Endpoint] = {}
    for e in endpoints:
        if e.port == port:
            members.setdefault(e.address, e)
        elif e.port == 0:
            dialled = Endpoint(e.host, port, e.labels)
            members.setdefault(dialled.address, dialled)
    return tuple(members.values())


def port_health_check(service: Service, port: int) -> HealthCheck | None:
    """The active check of one port's cluster: an HTTP check is for HTTP ports; the cluster
    of any other port (tcp, postgres, redis, or one only the intercept listener knows) is
    checked by connecting, so its endpoints are not failed for not speaking HTTP."""
    check = service.health_check
    if check is None or check.kind is not HealthCheckKind.HTTP:
        return check
    if any(p.port == port and p.protocol is Protocol.HTTP for p in service.ports):
        return check
    return replace(check, kind=HealthCheckKind.TCP)


class EndpointState:
    """One upstream instance and everything the data plane knows about it."""

    __slots__ = (
        "active_requests",
        "address",
        "consecutive_5xx",
        "consecutive_gateway",
        "ejected_until",
        "ejections",
        "hc_failures",
        "hc_successes",
        "healthy",
        "host",
        "labels",
        "port",
        "total_requests",
    )

    def __init__(self, host: str, port: int, labels: tuple[tuple[str, str], ...] = ()) -> None:
        self.host = host
        self.port = port
        self.address = f"{host}:{port}"
        self.labels = labels
        self.healthy = True
        self.active_requests = 0
        self.total_requests = 0
        self.consecutive_5xx = 0
        self.consecutive_gateway = 0
        self.ejected_until = 0.0
        self.ejections = 0
        self.hc_failures = 0
        self.hc_successes = 0

    def ejected(self, now: float) -> bool:
        return now < self.ejected_until

    def describe(self, now: float) -> dict[str, object]:
        return {
            "address": self.address,
            "labels": dict(self.labels),
            "healthy": self.healthy,
            "ejected": self.ejected(now),
            "ejected_for": round(max(0.0, self.ejected_until - now), 3),
            "ejections": self.ejections,
            "active_requests": self.active_requests,
            "total_requests": self.total_requests,
        }


class ClusterState:
    """A service's endpoints, their availability, and the circuit breaker's counters."""

    __slots__ = (
        "_available",
        "_refresh_at",
        "active_requests",
        "active_retries",
        "connections",
        "endpoints",
        "health_check",
        "max_requests_per_connection",
        "name",
        "outlier",
        "panic",
        "pending",
        "pool",
        "version",
    )

    def __init__(
        self,
        name: str,
        pool: ConnectionPool,
        outlier: OutlierDetection | None,
        health_check: HealthCheck | None = None,
    ) -> None:
        self.name = name
        self.pool = pool
        self.max_requests_per_connection = pool.max_requests_per_connection  # read per request
        self.outlier = outlier
        self.health_check = health_check
        self.endpoints: list[EndpointState] = []
        self.connections = 0
        self.pending = 0
        self.active_requests = 0
        self.active_retries = 0
        self.version = 0  # bumped whenever availability may have changed
        self.panic = False  # too few endpoints available: balancing over all of them
        self._available: list[EndpointState] = []
        self._refresh_at = math.inf

    # -- membership (a new snapshot) --------------------------------------------------------

    def configure(
        self,
        pool: ConnectionPool,
        outlier: OutlierDetection | None,
        health_check: HealthCheck | None,
    ) -> None:
        self.pool, self.outlier, self.health_check = pool, outlier, health_check
        self.max_requests_per_connection = pool.max_requests_per_connection
        self._changed()

    def set_endpoints(self, wanted: Iterable[EndpointState]) -> list[EndpointState]:
        """Keep states of endpoints that stay; return the ones that left (to close pools)."""
        wanted = list(wanted)
        keys = {e.address for e in wanted}
        current = {e.address: e for e in self.endpoints}
        removed = [e for a, e in current.items() if a not in keys]
        merged: list[EndpointState] = []
        for e in wanted:
            kept = current.get(e.address)
            if kept is not None and kept.labels != e.labels:
                kept.labels = e.labels
            merged.append(kept if kept is not None else e)
        self.endpoints = merged
        self._changed()
        return removed

    # -- availability -----------------------------------------------------------------------

    def available(self, now: float) -> list[EndpointState]:
        """Endpoints that are healthy and not ejected (cached; rebuilt on change)."""
        if now >= self._refresh_at:
            self._rebuild(now)
        return self._available

    def _changed(self) -> None:
        self.version += 1
        self._refresh_at = -math.inf

    def _rebuild(self, now: float) -> None:
        available = [e for e in self.endpoints if e.healthy and not e.ejected(now)]
        od = self.outlier
        total = len(self.endpoints)
        self.panic = od is not None and len(available) * 100.0 < od.min_health_percent * total
        self._available = list(self.endpoints) if self.panic else available
        ends = [e.ejected_until for e in self.endpoints if e.ejected(now)]
        self._refresh_at = min(ends) if ends else math.inf
        self.version += 1

    # -- circuit breaking -------------------------------------------------------------------

    def can_connect(self) -> bool:
        return self.connections < self.pool.max_connections

    def can_queue(self) -> bool:
        return self.pending < self.pool.max_pending_requests

    # -- outlier detection ------------------------------------------------------------------

    def report_status(self, ep: EndpointState, status: int, now: float) -> bool:
        """Account one response; True when it got the endpoint ejected."""
        if status < 500:
            ep.consecutive_5xx = 0
            ep.consecutive_gateway = 0
            return False
        ep.consecutive_5xx += 1
        if status in (502, 503, 504):
            ep.consecutive_gateway += 1
        else:
            ep.consecutive_gateway = 0
        return self._maybe_eject(ep, now)

    def report_failure(self, ep: EndpointState, now: float) -> bool:
        """A connect failure, reset or timeout: a gateway error for outlier detection."""
        ep.consecutive_5xx += 1
        ep.consecutive_gateway += 1
        return self._maybe_eject(ep, now)

    def _maybe_eject(self, ep: EndpointState, now: float) -> bool:
        od = self.outlier
        if od is None or ep.ejected(now):
            return False
        if ep.consecutive_5xx < od.consecutive_5xx and (
            ep.consecutive_gateway < od.consecutive_gateway_errors
        ):
            return False
        ejected = sum(1 for e in self.endpoints if e.ejected(now))
        allowed = max(1, math.floor(len(self.endpoints) * od.max_ejection_percent / 100.0))
        if ejected >= allowed:
            return False
        if ep.ejections and od.interval > 0:  # the multiplier decays while the host behaves
            quiet = max(0.0, now - ep.ejected_until)
            ep.ejections = max(0, ep.ejections - int(quiet // od.interval))
        ep.ejections += 1
        ep.ejected_until = now + od.base_ejection_time * ep.ejections
        ep.consecutive_5xx = 0
        ep.consecutive_gateway = 0
        self._changed()
        return True

    # -- active health checks ---------------------------------------------------------------

    def report_check(self, ep: EndpointState, ok: bool) -> bool:
        """Account one health check; True when the endpoint's health flipped."""
        hc = self.health_check
        if hc is None:
            return False
        if ok:
            ep.hc_failures = 0
            ep.hc_successes += 1
            if not ep.healthy and ep.hc_successes >= hc.healthy_threshold:
                ep.healthy = True
                self._changed()
                return True
        else:
            ep.hc_successes = 0
            ep.hc_failures += 1
            if ep.healthy and ep.hc_failures >= hc.unhealthy_threshold:
                ep.healthy = False
                self._changed()
                return True
        return False

    def describe(self, now: float) -> dict[str, object]:
        self.available(now)  # panic as of now
        return {
            "name": self.name,
            "panic": self.panic,
            "connections": self.connections,
            "pending_requests": self.pending,
            "active_requests": self.active_requests,
            "endpoints": [e.describe(now) for e in self.endpoints],
        }


def subset_members(
    endpoints: Sequence[EndpointState], labels: tuple[tuple[str, str], ...]
) -> list[EndpointState]:
    """The endpoints carrying every label of a subset."""
    wanted = set(labels)
    return [e for e in endpoints if wanted <= set(e.labels)]


class FailureReports:
    """At most one "an upstream of this service failed" report per service per ``interval``.

    A report asks discovery to look again (a replica went away, a database restarted);
    a burst of failed calls must not become a burst of DNS lookups.
    """

    __slots__ = ("_last", "interval")

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}

    def due(self, service: str, now: float) -> bool:
        last = self._last.get(service)
        if last is not None and now - last < self.interval:
            return False
        self._last[service] = now
        return True
