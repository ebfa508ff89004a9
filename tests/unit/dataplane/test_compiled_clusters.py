"""A compiled snapshot binds every destination to the cluster of one service port.

Plain values only: no sockets, the clusters are inspected, not called (the integration
tests in tests/integration/dataplane/test_ports.py send real calls).
"""

from __future__ import annotations

import pytest

from localmesh.config.model import (
    Destination,
    Ingress,
    IngressHost,
    MatchKind,
    MeshConfig,
    Mirror,
    PortSpec,
    Protocol,
    RequestMatch,
    Route,
    Service,
    StringMatch,
)
from localmesh.runtime.dataplane.compiled import CompiledSnapshot, RouteTarget
from localmesh.runtime.dataplane.upstream import ClusterRuntime
from localmesh.runtime.snapshot import Endpoint, ListenerSpec, Snapshot

pytestmark = pytest.mark.unit

ADMIN = Route(
    "admin",
    matches=(RequestMatch(path=StringMatch(MatchKind.PREFIX, "/admin")),),
    destinations=(Destination("api", port=9000),),
)
API = Service("api", ports=(PortSpec(8000), PortSpec(9000)), routes=(ADMIN, Route("all")))
DB = Service("db", ports=(PortSpec(5432, Protocol.POSTGRES),))
OPAQUE = Service("opaque")
INGRESS = Ingress(
    hosts=(IngressHost("shop.localhost", (Route("api", destinations=(Destination("api"),)),)),)
)
ENDPOINTS = {
    "api": tuple(Endpoint(ip, port) for port in (8000, 9000) for ip in ("10.0.0.2", "10.0.0.3")),
    "db": (Endpoint("10.0.0.4", 5432),),
    "opaque": (Endpoint("10.0.0.5", 0),),
}


def listener(service: str, port: int, protocol: Protocol = Protocol.HTTP) -> ListenerSpec:
    return ListenerSpec(f"{service}:{port}", service, port, protocol, "10.0.1.1", port)


def snapshot(*services: Service, vips: dict[str, str] | None = None) -> Snapshot:
    return Snapshot(
        MeshConfig(services=services, ingress=INGRESS),
        (listener("api", 8000), listener("api", 9000), listener("db", 5432, Protocol.POSTGRES)),
        {s.name: ENDPOINTS.get(s.name, ()) for s in services},
        vips=vips if vips is not None else {"10.0.1.5": "opaque"},
    )


def compile_(snap: Snapshot, previous: list[ClusterRuntime] | None = None) -> CompiledSnapshot:
    return CompiledSnapshot(snap, {c.state.name: c for c in previous or []}, {})


def route_target(compiled: CompiledSnapshot, spec: ListenerSpec, path: bytes) -> RouteTarget:
    vhost = compiled.view(spec).routes.virtual_host(b"api")
    assert vhost is not None
    matcher = vhost.routes.match(b"GET", path, b"", [], "web")
    assert matcher is not None
    return matcher.route.targets[0]


def addresses(target: RouteTarget | None) -> list[str]:
    assert target is not None
    return [h.address for h in target.cluster.hosts]


def test_every_declared_port_has_its_cluster_of_the_endpoints_on_that_port() -> None:
    compiled = compile_(snapshot(API, DB, OPAQUE))
    names = sorted(c.state.name for c in compiled.all_clusters())
    assert names == ["outbound|5432||db", "outbound|8000||api", "outbound|9000||api"]
    api = compiled.clusters["api"]
    assert [h.address for h in api[8000].hosts] == ["10.0.0.2:8000", "10.0.0.3:8000"]
    assert [h.address for h in api[9000].hosts] == ["10.0.0.2:9000", "10.0.0.3:9000"]


def test_a_listener_routes_to_the_cluster_of_its_own_port() -> None:
    compiled = compile_(snapshot(API, DB, OPAQUE))
    on_8000 = route_target(compiled, listener("api", 8000), b"/")
    on_9000 = route_target(compiled, listener("api", 9000), b"/")
    assert addresses(on_8000) == ["10.0.0.2:8000", "10.0.0.3:8000"]
    assert addresses(on_9000) == ["10.0.0.2:9000", "10.0.0.3:9000"]
    assert on_8000.service == on_9000.service == "api"  # metrics stay per service
    db = compiled.view(listener("db", 5432, Protocol.POSTGRES)).target
    assert addresses(db) == ["10.0.0.4:5432"]


def test_a_destination_port_picks_that_ports_cluster() -> None:
    compiled = compile_(snapshot(API, DB, OPAQUE))
    admin = route_target(compiled, listener("api", 8000), b"/admin/x")
    assert addresses(admin) == ["10.0.0.2:9000", "10.0.0.3:9000"]


def test_the_ingress_and_mirrors_use_the_default_port() -> None:
    compiled = compile_(snapshot(API, DB, OPAQUE))
    vhost = compiled.ingress.virtual_host(b"shop.localhost")
    assert vhost is not None
    matcher = vhost.routes.match(b"GET", b"/", b"", [], "unknown")
    assert matcher is not None
    assert addresses(matcher.route.targets[0]) == ["10.0.0.2:8000", "10.0.0.3:8000"]
    assert addresses(compiled.mirror_target(Mirror("api"))) == ["10.0.0.2:8000", "10.0.0.3:8000"]


def test_an_intercepted_port_gets_its_own_cluster_with_the_dialled_port() -> None:
    compiled = compile_(snapshot(API, DB, OPAQUE))
    first = compiled.view(listener("opaque", 7001, Protocol.TCP)).target
    second = compiled.view(listener("opaque", 7002, Protocol.TCP)).target
    assert addresses(first) == ["10.0.0.5:7001"]
    assert addresses(second) == ["10.0.0.5:7002"]
    assert first is not None
    assert second is not None
    assert first.cluster is not second.cluster


def test_clusters_survive_a_new_snapshot_and_unused_ones_are_pruned() -> None:
    old = compile_(snapshot(API, DB, OPAQUE))
    old.view(listener("opaque", 7001, Protocol.TCP))
    api_8000 = old.clusters["api"][8000]
    # same services: every cluster is kept, the intercepted port too (opaque keeps its VIP)
    same = compile_(snapshot(API, DB, OPAQUE), old.all_clusters())
    assert same.clusters["api"][8000] is api_8000
    assert same.prune() == []
    assert 7001 in same.clusters["opaque"]
    # db removed, opaque no longer intercepted, api drops port 9000
    smaller = Service("api", ports=(PortSpec(8000),))
    new = compile_(snapshot(smaller, OPAQUE, vips={}), same.all_clusters())
    assert "db" not in new.clusters
    assert new.clusters["api"][8000] is api_8000
    dropped = new.prune()
    assert sorted(c.state.name for c in dropped) == ["outbound|7001||opaque", "outbound|9000||api"]
    assert sorted(c.state.name for c in new.all_clusters()) == ["outbound|8000||api"]


def test_the_ingress_finds_hosts_in_any_case_with_a_port_and_remembers_only_matches() -> None:
    router = compile_(snapshot(API)).ingress
    vhost = router.virtual_host(b"shop.localhost")
    assert vhost is not None
    for authority in (b"SHOP.localhost:8443", b"shop.localhost", b"Shop.Localhost:1"):
        assert router.virtual_host(authority) is vhost  # first lookup, then remembered
    assert router.virtual_host(b"other.localhost") is None
    assert router.virtual_host(b"[::1]:8443") is None
    for i in range(3000):  # a client making up Host headers does not grow it without bound
        assert router.virtual_host(b"nope%d.localhost" % i) is None
        router.virtual_host(b"shop.localhost:%d" % i)
    assert len(router._seen) <= 1024
