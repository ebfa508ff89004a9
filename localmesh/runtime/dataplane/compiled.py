"""A snapshot compiled for serving: everything a request needs, resolved once per version.

``compile_snapshot`` turns a ``Snapshot`` into route tables (regexes compiled, weights
summed), authorization tables, rate limiters and pickers bound to the long-lived
``ClusterRuntime`` objects. A request then reads one ``ListenerView`` (swapped atomically
when a snapshot is applied) and never looks at the config model.

Clusters are per service *port* (``core.cluster``): a listener's routes are compiled for the
port it serves (an intercepted call: the port it dialled), so a destination without a
``port`` reaches the cluster of the port the call arrived on. A cluster is made for every
declared port, and on first use for any other (a port only the intercept listener sees).

The HTTP engine asks a ``RouteSource`` for the ``VirtualHost`` of a request: a mesh
listener always answers its service's routes; the ingress answers by ``Host`` header
(``HostRouter``), which is how the ingress gateway reuses this engine.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from typing import Final

from localmesh.config.model import (
    Destination,
    Limits,
    LoadBalancer,
    MeshConfig,
    Mirror,
    RateLimit,
    Route,
    Service,
)
from localmesh.config.model import Protocol as Proto
from localmesh.runtime.dataplane.core.balancer import Picker
from localmesh.runtime.dataplane.core.cluster import cluster_port
from localmesh.runtime.dataplane.core.policy import (
    UNKNOWN_CALLER,
    Caller,
    TargetPolicy,
    compile_policies,
)
from localmesh.runtime.dataplane.core.ratelimit import RateLimiter
from localmesh.runtime.dataplane.core.routing import RouteTable, compile_routes
from localmesh.runtime.dataplane.core.uri import authority_host
from localmesh.runtime.dataplane.upstream import ClusterRuntime
from localmesh.runtime.snapshot import ListenerSpec, Snapshot

#: Limiters are keyed by where they apply and their settings, so a reload that leaves a
#: rate limit unchanged keeps its buckets (no burst of free tokens on every reload).
LimiterStore = dict[tuple[str, RateLimit], RateLimiter]

#: Makes the cluster of one service port (the data plane adds TLS and failure reporting).
ClusterFactory = Callable[[Service, int], ClusterRuntime]


class RouteTarget:
    """One route destination: the cluster, a picker over its (subset's) endpoints, authz."""

    __slots__ = ("cluster", "hashed", "lb", "picker", "policy", "service")

    def __init__(
        self,
        cluster: ClusterRuntime,
        lb: LoadBalancer,
        subset: tuple[tuple[str, str], ...] | None,
        policy: TargetPolicy | None,
        rng: random.Random,
    ) -> None:
        self.cluster = cluster
        self.service = cluster.name
        self.lb = lb
        self.hashed = lb.hash_on is not None  # consistent hashing: a key per request
        self.picker = Picker(cluster.state, lb, subset, rng)
        self.policy = policy


class VirtualHost:
    """The routes and limits an HTTP request is served with."""

    __slots__ = ("limits", "name", "rate_limiter", "route_limiters", "routes")

    def __init__(
        self,
        name: str,
        routes: RouteTable[RouteTarget],
        limits: Limits,
        rate_limiter: RateLimiter | None,
        route_limiters: dict[str, RateLimiter],
    ) -> None:
        self.name = name
        self.routes = routes
        self.limits = limits
        self.rate_limiter = rate_limiter
        self.route_limiters = route_limiters


class RouteSource:
    """Which virtual host serves a request with this ``Host`` header (None: 404).

    This base serves none: a listener whose service is gone, or the intercept listener
    itself. A class rather than a Protocol: compiled code calls a class's method through
    its vtable, a Protocol's by name (a few hundred instructions per request).
    """

    __slots__ = ()

    def virtual_host(self, authority: bytes) -> VirtualHost | None:
        return None


class FixedRoutes(RouteSource):
    """A mesh listener: every request gets its service's routes."""

    __slots__ = ("vhost",)

    def __init__(self, vhost: VirtualHost) -> None:
        self.vhost = vhost

    def virtual_host(self, authority: bytes) -> VirtualHost | None:
        return self.vhost


NO_ROUTES: Final = RouteSource()
_SEEN_MAX: Final = 1024


class HostRouter(RouteSource):
    """The ingress: exact host names first, then ``*.suffix`` wildcards (longest first).

    Answers are remembered by the ``Host`` header as sent (clients repeat the same one), so
    a request costs one lookup instead of normalising the header again. A malformed
    ``Host`` (``authority_host`` None) has no virtual host.
    """

    def __init__(self, hosts: Mapping[str, VirtualHost]) -> None:
        self._exact = {h.lower().encode(): v for h, v in hosts.items() if not h.startswith("*")}
        wild = [(h[1:].lower().encode(), v) for h, v in hosts.items() if h.startswith("*")]
        self._wild = sorted(wild, key=lambda hv: -len(hv[0]))
        self._seen: dict[bytes, VirtualHost] = {}  # hosts that matched (misses are rare)

    def virtual_host(self, authority: bytes) -> VirtualHost | None:
        seen = self._seen
        found = seen.get(authority)
        if found is None:
            found = self._find(authority)
            if found is not None:
                if len(seen) >= _SEEN_MAX:  # many different Host headers: start over
                    seen.clear()
                seen[authority] = found
        return found

    def _find(self, authority: bytes) -> VirtualHost | None:
        host = authority_host(authority)  # what the ingress's 421 check reads too
        if host is None:
            return None
        found = self._exact.get(host)
        if found is not None:
            return found
        for suffix, vhost in self._wild:
            if host.endswith(suffix):
                return vhost
        return None


class ListenerView:
    """What one listener serves under one snapshot; replaced as a whole on apply."""

    __slots__ = (
        "caller",
        "compiled",
        "draining",
        "limits",
        "max_body",
        "max_head",
        "max_headers",
        "protocol",
        "routes",
        "service",
        "target",
    )

    def __init__(
        self,
        compiled: CompiledSnapshot,
        *,
        service: str,
        protocol: Proto,
        routes: RouteSource,
        caller: Caller | None,
        limits: Limits,
        target: RouteTarget | None,
    ) -> None:
        self.compiled = compiled
        self.service = service
        self.protocol = protocol
        self.routes = routes
        self.caller = caller  # pinned caller (host mode); None: look up by peer IP
        self.limits = limits
        # read per request or connection: plain ints, not attributes of the config object
        self.max_body = limits.max_request_body_bytes
        self.max_head = limits.max_request_headers_bytes
        self.max_headers = limits.max_request_headers_count
        self.target = target  # TCP: where connections go
        self.draining = False  # the listener is going away: no more keep-alive

    def drained(self) -> ListenerView:
        """This view for a draining listener: connections that read it close after their
        next response (a new object: each connection notices it as a new view)."""
        view = ListenerView(
            self.compiled,
            service=self.service,
            protocol=self.protocol,
            routes=self.routes,
            caller=self.caller,
            limits=self.limits,
            target=self.target,
        )
        view.draining = True
        return view

    def caller_for(self, peer_ip: str) -> Caller:
        if self.caller is not None:
            return self.caller
        return self.compiled.callers.get(peer_ip, UNKNOWN_CALLER)


class CompiledSnapshot:
    """Everything derived from one snapshot that requests read.

    ``clusters`` (service -> port -> cluster) starts from the clusters that exist (those
    of services still configured are kept, and change only when the data plane commits
    this snapshot); new ones are made aside by ``new_cluster``, already holding this
    snapshot's endpoints.
    """

    def __init__(
        self,
        snapshot: Snapshot,
        clusters: Mapping[str, ClusterRuntime],
        limiters: LimiterStore,
        rng: random.Random | None = None,
        *,
        new_cluster: ClusterFactory = ClusterRuntime,
    ) -> None:
        self.snapshot = snapshot
        self.version = snapshot.version
        config: MeshConfig = snapshot.config
        self.config = config
        self.trust_domain = config.mesh.trust_domain
        self.access_log = config.mesh.access_log
        self.metrics = config.mesh.metrics
        self._rng = rng or random.Random()
        self._limiters = limiters
        self._now = time.monotonic()
        self._new_cluster = new_cluster
        self.policies = compile_policies(config.policies)
        self.services = {s.name: s for s in config.services}
        self.callers = {
            ip: Caller.service(name, self.trust_domain) for ip, name in snapshot.sources.items()
        }
        self.clusters: dict[str, dict[int, ClusterRuntime]] = {s: {} for s in self.services}
        for kept in clusters.values():
            if kept.name in self.clusters:
                self.clusters[kept.name].setdefault(kept.port, kept)
        for svc in config.services:
            for spec in svc.ports:
                self.cluster(svc.name, spec.port)
        self._targets: dict[tuple[str, str | None, int], RouteTarget] = {}
        self._vhosts: dict[tuple[str, int], VirtualHost | None] = {}
        self.ingress = HostRouter(
            {
                h.host: self._vhost(
                    f"ingress:{h.host}", Service(name=f"ingress:{h.host}"), h.routes, None
                )
                for h in config.ingress.hosts
            }
        )

    # -- clusters ---------------------------------------------------------------------------

    def prune(self) -> list[ClusterRuntime]:
        """Drop (and return) the kept clusters this snapshot no longer uses: not a declared
        port, no route goes there, and the intercept listener does not serve the service.
        Called once every listener view is built."""
        used = {(t.service, t.cluster.port) for t in self._targets.values()}
        intercepted = set(self.snapshot.vips.values())
        dropped: list[ClusterRuntime] = []
        for service, by_port in self.clusters.items():
            if service in intercepted:
                continue
            declared = {p.port for p in self.services[service].ports}
            for port in [p for p in by_port if p not in declared and (service, p) not in used]:
                dropped.append(by_port.pop(port))
        return dropped

    def cluster(self, service: str, port: int) -> ClusterRuntime:
        """The cluster of one service port, made (with this snapshot's endpoints) if new."""
        by_port = self.clusters[service]
        found = by_port.get(port)
        if found is None:
            svc = self.services[service]
            found = by_port[port] = self._new_cluster(svc, port)
            found.update(svc, self.snapshot.endpoints.get(service, ()))
        return found

    def all_clusters(self) -> list[ClusterRuntime]:
        return [c for by_port in self.clusters.values() for c in by_port.values()]

    def caller(self, name: str | None) -> Caller | None:
        return None if name is None else Caller.service(name, self.trust_domain)

    def target(self, service: str, subset: str | None, port: int) -> RouteTarget:
        key = (service, subset, port)
        found = self._targets.get(key)
        if found is None:
            svc = self.services[service]
            labels = None
            if subset is not None:
                labels = next(s.labels for s in svc.subsets if s.name == subset)
            found = self._targets[key] = RouteTarget(
                self.cluster(service, port),
                svc.load_balancer,
                labels,
                self.policies.get(service),
                self._rng,
            )
        return found

    def mirror_target(self, mirror: Mirror) -> RouteTarget:
        """Mirrors name no port: the mirror service's default one (``cluster_port``)."""
        svc = self.services[mirror.service]
        return self.target(mirror.service, mirror.subset, cluster_port(svc, None, None))

    def _limiter(self, scope: str, config: RateLimit | None) -> RateLimiter | None:
        if config is None:
            return None
        key = (scope, config)
        found = self._limiters.get(key)
        if found is None:
            found = self._limiters[key] = RateLimiter(config, self._now)
        return found

    def vhost(self, service: str, port: int) -> VirtualHost | None:
        """The routes of calls to ``service`` that arrived on ``port``."""
        key = (service, port)
        if key not in self._vhosts:
            svc = self.services.get(service)
            self._vhosts[key] = None if svc is None else self._vhost(service, svc, None, key)
        return self._vhosts[key]

    def _vhost(
        self,
        name: str,
        service: Service,
        routes: tuple[Route, ...] | None,
        arrival: tuple[str, int] | None,
    ) -> VirtualHost:
        def make(dest: Destination) -> RouteTarget:
            port = cluster_port(self.services[dest.service], dest.port, arrival)
            return self.target(dest.service, dest.subset, port)

        table = compile_routes(service, make, routes)
        route_limiters: dict[str, RateLimiter] = {}
        for route in table.routes:
            limiter = self._limiter(f"{name}/{route.name}", route.rate_limit)
            if limiter is not None:
                route_limiters[route.name] = limiter
        return VirtualHost(
            name,
            table,
            service.limits,
            self._limiter(name, service.rate_limit),
            route_limiters,
        )

    def view(self, spec: ListenerSpec, routes: RouteSource | None = None) -> ListenerView:
        """The view of a mesh listener (or, with ``routes``, of an ingress-style one)."""
        svc = self.services.get(spec.service)
        limits = svc.limits if svc is not None else Limits()
        if routes is None:
            vhost = self.vhost(spec.service, spec.port)
            routes = FixedRoutes(vhost) if vhost is not None else NO_ROUTES
        target = self.target(spec.service, None, spec.port) if svc is not None else None
        return ListenerView(
            self,
            service=spec.service,
            protocol=spec.protocol,
            routes=routes,
            caller=self.caller(spec.source),
            limits=limits,
            target=target,
        )

    def port_protocol(self, service: str, port: int) -> Proto:
        svc = self.services.get(service)
        if svc is not None:
            for p in svc.ports:
                if p.port == port:
                    return p.protocol
        return Proto.TCP
