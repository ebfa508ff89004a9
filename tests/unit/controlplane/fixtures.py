"""Model values shared by the control-plane unit tests (built directly, as the loader would)."""

from __future__ import annotations

from localmesh.config.model import (
    AuthorizationPolicy,
    Destination,
    Fault,
    FaultAbort,
    HeaderMatch,
    HeaderOps,
    HealthCheck,
    HealthCheckKind,
    Ingress,
    IngressHost,
    MatchKind,
    MeshConfig,
    MeshSettings,
    Mirror,
    PolicyAction,
    PortSpec,
    Protocol,
    RequestMatch,
    RetryPolicy,
    Route,
    Service,
    StaticEndpoint,
    StringMatch,
    Subset,
)
from localmesh.errors import Position


def pos(line: int, column: int = 5, file: str = "/p/mesh.yaml") -> Position:
    return Position(file, line, column)


def rich_config() -> MeshConfig:
    """A mesh using most of the model: routes, subsets, mirrors, policies, ingress."""
    api = Service(
        name="api",
        ports=(PortSpec(8000, Protocol.HTTP, listen="127.0.0.1:18000"),),
        endpoints=(
            StaticEndpoint("127.0.0.1", 9001, (("version", "v1"),)),
            StaticEndpoint("127.0.0.1", 9002, (("version", "v2"),)),
        ),
        subsets=(Subset("v1", (("version", "v1"),)), Subset("v2", (("version", "v2"),))),
        routes=(
            Route(
                name="canary",
                matches=(
                    RequestMatch(
                        path=StringMatch(MatchKind.PREFIX, "/v2"),
                        methods=("GET",),
                        headers=(
                            HeaderMatch("authorization", StringMatch(MatchKind.EXACT, "Bearer s3")),
                        ),
                    ),
                ),
                destinations=(
                    Destination("api", subset="v1", weight=90),
                    Destination("api", subset="v2", weight=10),
                ),
                request_headers=HeaderOps(
                    set=(("authorization", "Bearer upstream-secret"), ("x-env", "dev")),
                ),
                retries=RetryPolicy(attempts=3, retry_on=frozenset({"5xx", "reset"})),
                fault=Fault(abort=FaultAbort(503, 5.0)),
                mirror=Mirror("api", subset="v2", percent=10.0),
                position=pos(7),
            ),
        ),
        health_check=HealthCheck(HealthCheckKind.HTTP, path="/healthz"),
        position=pos(3),
    )
    db = Service(
        name="db",
        ports=(PortSpec(5432, Protocol.POSTGRES),),
        endpoints=(StaticEndpoint("127.0.0.1", 5432),),
        position=pos(20),
    )
    return MeshConfig(
        mesh=MeshSettings(name="shop"),
        services=(api, db),
        ingress=Ingress(
            hosts=(
                IngressHost("shop.localhost", (Route("web", destinations=(Destination("api"),)),)),
            ),
            https_port=18443,
            http_port=18080,
            bind="127.0.0.1",
        ),
        policies=(
            AuthorizationPolicy(
                "only-api-to-db", PolicyAction.ALLOW, to=("db",), sources=("api",), position=pos(30)
            ),
        ),
        source="/p/mesh.yaml",
    )
