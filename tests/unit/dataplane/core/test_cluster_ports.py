"""Clusters per service port: which port a destination goes to, which endpoints serve it."""

from __future__ import annotations

import pytest

from localmesh.config.model import (
    HealthCheck,
    HealthCheckKind,
    PortSpec,
    Protocol,
    Service,
    StaticEndpoint,
)
from localmesh.runtime.dataplane.core.cluster import (
    FailureReports,
    cluster_name,
    cluster_port,
    port_endpoints,
    port_health_check,
)
from localmesh.runtime.snapshot import Endpoint

pytestmark = pytest.mark.unit

API = Service("api", ports=(PortSpec(8000), PortSpec(9000)))
DB = Service("db", ports=(PortSpec(5432, Protocol.POSTGRES),))
OPAQUE = Service("opaque")  # ports unknown: served on any port through the intercept
MIXED = Service("mixed", ports=(PortSpec(6379, Protocol.REDIS), PortSpec(8080), PortSpec(8081)))


def test_cluster_names_are_envoys_outbound_names() -> None:
    assert cluster_name("api", 8000) == "outbound|8000||api"


def test_the_destinations_own_port_wins() -> None:
    assert cluster_port(API, 9000, ("api", 8000)) == 9000
    assert cluster_port(API, 9000, None) == 9000


def test_a_call_keeps_the_port_it_arrived_on() -> None:
    assert cluster_port(API, None, ("api", 8000)) == 8000
    assert cluster_port(API, None, ("api", 9000)) == 9000
    # an intercepted port the service never declared is still the port it was dialled on
    assert cluster_port(API, None, ("api", 7000)) == 7000
    assert cluster_port(OPAQUE, None, ("opaque", 7000)) == 7000


def test_another_service_takes_the_arrival_port_only_when_it_serves_it() -> None:
    other = Service("api-v2", ports=(PortSpec(9000), PortSpec(8000)))
    assert cluster_port(other, None, ("api", 8000)) == 8000
    assert cluster_port(OPAQUE, None, ("api", 8000)) == 8000  # any port: the dialled one
    assert cluster_port(MIXED, None, ("api", 8000)) == 8080  # its first HTTP port
    assert cluster_port(DB, None, ("api", 8000)) == 5432  # no HTTP port: its first


def test_without_an_arrival_port_the_default_port_is_used() -> None:
    """The ingress and mirrors: the first HTTP port, else the first, else 0."""
    assert cluster_port(API, None, None) == 8000
    assert cluster_port(MIXED, None, None) == 8080
    assert cluster_port(DB, None, None) == 5432
    assert cluster_port(OPAQUE, None, None) == 0


REPLICAS = (
    Endpoint("10.0.0.2", 8000),
    Endpoint("10.0.0.3", 8000),
    Endpoint("10.0.0.2", 9000),
    Endpoint("10.0.0.3", 9000),
)


def test_discovered_endpoints_serve_the_port_they_name() -> None:
    assert port_endpoints(API, REPLICAS, 8000) == REPLICAS[:2]
    assert port_endpoints(API, REPLICAS, 9000) == REPLICAS[2:]
    assert port_endpoints(API, REPLICAS, 7000) == ()


def test_port_zero_endpoints_become_the_dialled_port() -> None:
    opaque = (Endpoint("10.0.0.4", 0, (("v", "1"),)), Endpoint("10.0.0.5", 0))
    assert port_endpoints(OPAQUE, opaque, 7001) == (
        Endpoint("10.0.0.4", 7001, (("v", "1"),)),
        Endpoint("10.0.0.5", 7001),
    )


def test_known_and_dialled_endpoints_of_one_replica_are_one_member() -> None:
    """An upstream with known ports and intercepted others has both kinds per replica."""
    both = (Endpoint("10.0.0.2", 8000), Endpoint("10.0.0.2", 0))
    assert port_endpoints(API, both, 8000) == (Endpoint("10.0.0.2", 8000),)
    assert port_endpoints(API, both, 7000) == (Endpoint("10.0.0.2", 7000),)


def test_static_endpoints_on_a_declared_port_serve_that_port_only() -> None:
    svc = Service(
        "api",
        ports=API.ports,
        endpoints=(StaticEndpoint("127.0.0.1", 8000), StaticEndpoint("127.0.0.1", 9000)),
    )
    eps = (Endpoint("127.0.0.1", 8000), Endpoint("127.0.0.1", 9000))
    assert port_endpoints(svc, eps, 8000) == eps[:1]
    assert port_endpoints(svc, eps, 9000) == eps[1:]


def test_static_endpoints_on_other_ports_serve_every_port() -> None:
    """Host mode: listener 127.0.0.1:18000 for port 8000 forwards to 127.0.0.1:9001."""
    svc = Service(
        "api",
        ports=(PortSpec(8000),),
        endpoints=(StaticEndpoint("127.0.0.1", 9001), StaticEndpoint("127.0.0.2", 9002)),
    )
    eps = (Endpoint("127.0.0.1", 9001), Endpoint("127.0.0.2", 9002))
    assert port_endpoints(svc, eps, 8000) == eps
    multi = Service(
        "api",
        ports=API.ports,
        endpoints=(StaticEndpoint("127.0.0.1", 8000), StaticEndpoint("127.0.0.3", 7777)),
    )
    mixed = (Endpoint("127.0.0.1", 8000), Endpoint("127.0.0.3", 7777))
    assert port_endpoints(multi, mixed, 8000) == mixed
    assert port_endpoints(multi, mixed, 9000) == mixed[1:]


def test_cluster_port_zero_takes_every_endpoint() -> None:
    assert port_endpoints(API, REPLICAS, 0) == REPLICAS


def test_failure_reports_are_one_per_service_per_interval() -> None:
    reports = FailureReports(interval=1.0)
    assert reports.due("api", 10.0)
    assert not reports.due("api", 10.5)
    assert reports.due("db", 10.5)  # another service has its own clock
    assert not reports.due("api", 10.99)
    assert reports.due("api", 11.0)
    assert not reports.due("api", 11.2)


def test_an_http_health_check_connects_only_on_ports_that_are_not_http() -> None:
    http = HealthCheck(HealthCheckKind.HTTP, path="/healthz", interval=2.0)
    svc = Service("mixed", ports=MIXED.ports, health_check=http)
    assert port_health_check(svc, 8080) == http
    assert port_health_check(svc, 6379) == HealthCheck(
        HealthCheckKind.TCP, path="/healthz", interval=2.0
    )
    intercepted = port_health_check(svc, 7000)  # a port only the intercept knows: connect
    assert intercepted is not None
    assert intercepted.kind is HealthCheckKind.TCP
    tcp = HealthCheck(HealthCheckKind.TCP)
    assert port_health_check(Service("db", ports=DB.ports, health_check=tcp), 5432) == tcp
    assert port_health_check(DB, 5432) is None
