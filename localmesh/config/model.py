"""The typed, immutable model of a mesh: what mesh.yaml means once loaded and validated.

Vocabulary (Envoy/Istio words, compose-sized):

- **service**: a compose service (or an outside upstream) that the mesh fronts; the
  *cluster* of the same name holds its endpoints.
- **route**: an HTTP rule applied to calls *to* a service (Istio VirtualService): match,
  then forward to weighted destinations, with timeouts, retries, faults, mirroring.
- **policy**: an authorization rule (Istio AuthorizationPolicy) deciding which sources may
  call which services.
- **ingress**: the edge gateway: hosts, TLS, client certificates, routes to services.

Every value here is frozen; durations are seconds as ``float``; percentages are ``0..100``.
Positions (file:line:col) are kept so the compiler and ``analyze`` can point at the source.
Defaults live here, once; the loader fills only what the user wrote.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from localmesh.errors import Position


class Protocol(StrEnum):
    HTTP = "http"
    TCP = "tcp"
    POSTGRES = "postgres"
    REDIS = "redis"

    @property
    def is_http(self) -> bool:
        return self is Protocol.HTTP


class MatchKind(StrEnum):
    EXACT = "exact"
    PREFIX = "prefix"
    REGEX = "regex"


@dataclass(frozen=True, slots=True)
class StringMatch:
    """A regex must match the whole value (``re.fullmatch``), like Envoy's safe_regex."""

    kind: MatchKind
    value: str


@dataclass(frozen=True, slots=True)
class HeaderMatch:
    """``match`` is ``None`` when the header only has to be present."""

    name: str  # lower-cased
    match: StringMatch | None = None
    invert: bool = False


@dataclass(frozen=True, slots=True)
class QueryMatch:
    name: str
    match: StringMatch | None = None


@dataclass(frozen=True, slots=True)
class RequestMatch:
    """All conditions must hold (AND); a route's list of matches is OR-ed."""

    path: StringMatch | None = None
    methods: tuple[str, ...] = ()  # upper-cased; empty = any
    headers: tuple[HeaderMatch, ...] = ()
    query: tuple[QueryMatch, ...] = ()
    sources: tuple[str, ...] = ()  # caller service names; empty = any


@dataclass(frozen=True, slots=True)
class Destination:
    service: str
    subset: str | None = None
    port: int | None = None
    weight: int = 100


@dataclass(frozen=True, slots=True)
class HeaderOps:
    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.set or self.add or self.remove)


RETRY_ON_VALUES = frozenset(
    {"5xx", "gateway-error", "connect-failure", "reset", "retriable-status-codes", "refused-stream"}
)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 2  # retries after the first try (Istio's `attempts`)
    per_try_timeout: float | None = None
    retry_on: frozenset[str] = frozenset({"connect-failure", "reset", "gateway-error"})
    retriable_status_codes: frozenset[int] = frozenset()
    backoff_base: float = 0.025  # Envoy's default base interval
    backoff_max: float = 0.25
    budget_percent: float = 20.0  # at most this share of active requests may be retries
    min_retry_concurrency: int = 3


@dataclass(frozen=True, slots=True)
class FaultDelay:
    fixed: float
    percent: float = 100.0


@dataclass(frozen=True, slots=True)
class FaultAbort:
    status: int
    percent: float = 100.0


@dataclass(frozen=True, slots=True)
class Fault:
    delay: FaultDelay | None = None
    abort: FaultAbort | None = None
    sources: tuple[str, ...] = ()  # only calls from these services; empty = all


@dataclass(frozen=True, slots=True)
class RateLimit:
    """Local token bucket: ``requests_per_second`` refill, ``burst`` capacity."""

    requests_per_second: float
    burst: int
    per_source: bool = False


@dataclass(frozen=True, slots=True)
class Mirror:
    service: str
    subset: str | None = None
    percent: float = 100.0


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    matches: tuple[RequestMatch, ...] = ()  # empty = match everything
    destinations: tuple[Destination, ...] = ()
    rewrite_prefix: str | None = None  # replaces the matched path prefix
    request_headers: HeaderOps = field(default_factory=HeaderOps)
    response_headers: HeaderOps = field(default_factory=HeaderOps)
    timeout: float | None = None  # None = the service's timeout; 0 = none (`false`)
    retries: RetryPolicy | None = None  # None = the service's; attempts=0 = none on this route
    fault: Fault | None = None
    mirror: Mirror | None = None
    rate_limit: RateLimit | None = None
    position: Position | None = field(default=None, compare=False)


class LbPolicy(StrEnum):
    ROUND_ROBIN = "round_robin"
    LEAST_REQUEST = "least_request"
    RANDOM = "random"
    CONSISTENT_HASH = "consistent_hash"


class HashOn(StrEnum):
    HEADER = "header"
    COOKIE = "cookie"
    SOURCE_IP = "source_ip"


@dataclass(frozen=True, slots=True)
class LoadBalancer:
    policy: LbPolicy = LbPolicy.ROUND_ROBIN
    hash_on: HashOn | None = None
    hash_key: str | None = None  # header or cookie name


@dataclass(frozen=True, slots=True)
class ConnectionPool:
    max_connections: int = 1024
    max_pending_requests: int = 1024
    max_requests_per_connection: int = 0  # 0 = unlimited
    connect_timeout: float = 5.0
    idle_timeout: float = 60.0


@dataclass(frozen=True, slots=True)
class OutlierDetection:
    consecutive_5xx: int = 5
    consecutive_gateway_errors: int = 5
    interval: float = 10.0
    base_ejection_time: float = 30.0
    max_ejection_percent: float = 10.0
    # Istio's minHealthPercent (Envoy's panic threshold) at Envoy's default, not Istio's 0:
    # compose services mostly run one replica, and ejecting the only endpoint turns its
    # errors into 30 s of 503s after it has recovered.
    min_health_percent: float = 50.0


class HealthCheckKind(StrEnum):
    HTTP = "http"
    TCP = "tcp"


@dataclass(frozen=True, slots=True)
class HealthCheck:
    kind: HealthCheckKind
    path: str = "/"
    interval: float = 5.0
    timeout: float = 1.0
    unhealthy_threshold: int = 2
    healthy_threshold: int = 1


class TLSMode(StrEnum):
    DISABLE = "disable"
    SIMPLE = "simple"  # originate TLS, verify the upstream
    MUTUAL = "mutual"  # originate mTLS with the caller's workload identity


@dataclass(frozen=True, slots=True)
class UpstreamTLS:
    mode: TLSMode = TLSMode.DISABLE
    ca_file: str | None = None  # None = the mesh CA
    sni: str | None = None


@dataclass(frozen=True, slots=True)
class PortSpec:
    port: int
    protocol: Protocol = Protocol.HTTP
    listen: str | None = None  # host mode: "127.0.0.1:15432"; None = the VIP/port in container mode
    position: Position | None = field(default=None, compare=False)  # its listen:, else the entry


@dataclass(frozen=True, slots=True)
class StaticEndpoint:
    host: str
    port: int
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Subset:
    name: str
    labels: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Limits:
    max_request_headers_bytes: int = 64 * 1024
    max_request_headers_count: int = 100  # Envoy's max_headers_count
    max_request_body_bytes: int = 0  # 0 = unlimited
    header_timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class Service:
    name: str
    ports: tuple[PortSpec, ...] = ()
    endpoints: tuple[StaticEndpoint, ...] = ()  # empty = discovered (container mode)
    subsets: tuple[Subset, ...] = ()
    routes: tuple[Route, ...] = ()  # empty = one default route to this service
    load_balancer: LoadBalancer = field(default_factory=LoadBalancer)
    connection_pool: ConnectionPool = field(default_factory=ConnectionPool)
    outlier_detection: OutlierDetection | None = field(default_factory=OutlierDetection)
    health_check: HealthCheck | None = None
    tls: UpstreamTLS = field(default_factory=UpstreamTLS)
    rate_limit: RateLimit | None = None
    limits: Limits = field(default_factory=Limits)
    timeout: float | None = 15.0  # Istio's default route timeout is off; 15 s is Envoy's
    retries: RetryPolicy | None = field(default_factory=RetryPolicy)
    meshed: bool = True
    position: Position | None = field(default=None, compare=False)


class PolicyAction(StrEnum):
    ALLOW = "allow"
    DENY = "deny"


@dataclass(frozen=True, slots=True)
class AuthorizationPolicy:
    """Istio semantics: any matching DENY wins; if a target has ALLOW policies, one must match."""

    name: str
    action: PolicyAction
    to: tuple[str, ...]  # target services
    # service names, SPIFFE principals (mesh.yaml's `client:NAME` arrives as
    # spiffe://<trust_domain>/client/NAME), `*` and prefix*/*suffix wildcards; empty = any
    sources: tuple[str, ...] = ()
    paths: tuple[StringMatch, ...] = ()
    methods: tuple[str, ...] = ()
    position: Position | None = field(default=None, compare=False)


class ClientCerts(StrEnum):
    OFF = "off"
    OPTIONAL = "optional"
    REQUIRED = "required"


@dataclass(frozen=True, slots=True)
class IngressHost:
    host: str  # "app.localhost", "*.localhost"
    routes: tuple[Route, ...]
    client_certs: ClientCerts = ClientCerts.OFF
    position: Position | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class IngressPositions:
    """Where the ingress' socket settings are written (None: left at the default), so a
    failed bind points at the line to change, as a service's ``listen:`` does."""

    section: Position | None = None  # the ``ingress:`` key
    https_port: Position | None = None
    http_port: Position | None = None
    bind: Position | None = None


@dataclass(frozen=True, slots=True)
class Ingress:
    hosts: tuple[IngressHost, ...] = ()
    https_port: int = 8443
    http_port: int = 8080
    redirect_http: bool = True  # plain HTTP answers 308 to HTTPS
    bind: str = "0.0.0.0"
    extra_cert_hosts: tuple[str, ...] = ()
    positions: IngressPositions = field(default_factory=IngressPositions, compare=False)


class PeerAuthMode(StrEnum):
    PERMISSIVE = "permissive"
    STRICT = "strict"


@dataclass(frozen=True, slots=True)
class MeshSettings:
    name: str = "localmesh"  # the compose project name; namespace in telemetry
    trust_domain: str = "localmesh"  # SPIFFE: spiffe://<trust_domain>/svc/<service>
    admin_port: int = 15000
    admin_bind: str = "127.0.0.1"
    access_log: bool = True
    metrics: bool = True  # Istio request/connection metrics (off: only localmesh_* ones)
    keep_network_isolation: bool = True  # compose networks that did not connect stay denied
    workload_cert_lifetime: float = 24 * 3600.0
    peer_auth: PeerAuthMode = PeerAuthMode.PERMISSIVE


@dataclass(frozen=True, slots=True)
class MeshConfig:
    """The whole validated mesh.yaml (or the one inferred from compose)."""

    mesh: MeshSettings = field(default_factory=MeshSettings)
    services: tuple[Service, ...] = ()
    ingress: Ingress = field(default_factory=Ingress)
    policies: tuple[AuthorizationPolicy, ...] = ()
    source: str = "<inferred>"  # the mesh.yaml path, or how it was made

    def service(self, name: str) -> Service | None:
        for svc in self.services:
            if svc.name == name:
                return svc
        return None
