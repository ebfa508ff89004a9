"""Snapshot compilation: host-mode listener defaults, endpoints, and the consistency check."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from localmesh.config.model import (
    AuthorizationPolicy,
    Destination,
    MeshConfig,
    Mirror,
    PolicyAction,
    PortSpec,
    Protocol,
    Route,
    Service,
    StaticEndpoint,
)
from localmesh.errors import ConfigError
from localmesh.runtime.controlplane.codec import content_hash
from localmesh.runtime.controlplane.compile import (
    Discovered,
    Inputs,
    compile_snapshot,
    host_mode_default_port,
    parse_listen,
)
from localmesh.runtime.snapshot import Endpoint
from tests.unit.controlplane.fixtures import pos, rich_config


def compile_(config: MeshConfig, **kw: object) -> object:
    return compile_snapshot(Inputs(config), version=1, origin="test", now=0.0, **kw)  # type: ignore[arg-type]


def problems_of(config: MeshConfig, **kw: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        compile_(config, **kw)
    return [str(p) for p in info.value.problems]


def svc(name: str, port: int = 8000, **kw: object) -> Service:
    kw.setdefault("endpoints", (StaticEndpoint("127.0.0.1", port),))
    return Service(name=name, ports=(PortSpec(port),), position=pos(1), **kw)  # type: ignore[arg-type]


def test_host_mode_listeners_use_listen_or_the_offset_default() -> None:
    snap = compile_snapshot(Inputs(rich_config()), version=7, origin="mesh.yaml", now=1.0)
    by_name = {lst.name: lst for lst in snap.listeners}
    assert set(by_name) == {"api:8000", "db:5432"}
    assert (by_name["api:8000"].bind_host, by_name["api:8000"].bind_port) == ("127.0.0.1", 18000)
    assert (by_name["db:5432"].bind_host, by_name["db:5432"].bind_port) == ("127.0.0.1", 15432)
    assert by_name["db:5432"].protocol is Protocol.POSTGRES
    assert snap.version == 7
    assert snap.origin == "mesh.yaml"
    assert [e.address for e in snap.endpoints["api"]] == ["127.0.0.1:9001", "127.0.0.1:9002"]
    assert snap.endpoints["api"][0].labels == (("version", "v1"),)


def test_same_inputs_hash_the_same_and_a_change_hashes_differently() -> None:
    a = compile_snapshot(Inputs(rich_config()), version=1, origin="x", now=1.0)
    b = compile_snapshot(Inputs(rich_config()), version=2, origin="y", now=2.0)
    assert content_hash(a) == content_hash(b)
    config = rich_config()
    changed = dataclasses.replace(config, mesh=dataclasses.replace(config.mesh, name="other"))
    assert content_hash(compile_snapshot(Inputs(changed), version=3, origin="x")) != content_hash(a)


def test_content_hash_ignores_set_order_and_positions() -> None:
    config = rich_config()
    route = config.services[0].routes[0]
    assert route.retries is not None
    reordered = dataclasses.replace(
        route,
        retries=dataclasses.replace(route.retries, retry_on=frozenset(["reset", "5xx"])),
        position=pos(99),
    )
    api = dataclasses.replace(config.services[0], routes=(reordered,), position=pos(1))
    moved = dataclasses.replace(config, services=(api, *config.services[1:]))
    a = compile_snapshot(Inputs(config), version=1, origin="t")
    b = compile_snapshot(Inputs(moved), version=1, origin="t")
    assert content_hash(a) == content_hash(b)


def test_content_hash_is_the_same_in_another_process() -> None:
    """Snapshot.hash (repr-based) is not: frozenset order follows the string hash seed."""
    code = (
        "from localmesh.runtime.controlplane.codec import content_hash;"
        "from localmesh.runtime.controlplane.compile import Inputs, compile_snapshot;"
        "from tests.unit.controlplane.fixtures import rich_config;"
        "print(content_hash(compile_snapshot(Inputs(rich_config()), version=1, origin='t')))"
    )
    here = content_hash(compile_snapshot(Inputs(rich_config()), version=1, origin="t"))
    for seed in ("1", "2", "3"):
        out = subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parents[3],
        )
        assert out.stdout.strip() == here


def test_unmeshed_services_get_no_listener() -> None:
    config = MeshConfig(services=(svc("a"), svc("b", 8001, meshed=False)))
    snap = compile_snapshot(Inputs(config), version=1, origin="t")
    assert [lst.name for lst in snap.listeners] == ["a:8000"]


def test_parse_listen_and_default_port() -> None:
    assert parse_listen("127.0.0.1:15432") == ("127.0.0.1", 15432)
    assert parse_listen("[::1]:80") == ("::1", 80)
    assert parse_listen(":9000") == ("127.0.0.1", 9000)
    for bad in ("127.0.0.1", "host:port", "1.2.3.4:70000"):
        with pytest.raises(ValueError, match="host:port"):
            parse_listen(bad)
    assert host_mode_default_port(5432) == 15432
    assert host_mode_default_port(55535) == 65535
    assert host_mode_default_port(55536) is None


def test_every_broken_reference_is_reported_with_its_position() -> None:
    route = Route(
        name="r",
        destinations=(Destination("apii"), Destination("b", subset="v9"), Destination("b", port=1)),
        mirror=Mirror("nope"),
        position=pos(12, 9),
    )
    config = MeshConfig(
        services=(svc("api", routes=(route,)), svc("b", 8001)),
        policies=(AuthorizationPolicy("p", PolicyAction.DENY, to=("bb",), position=pos(40, 7)),),
    )
    problems = problems_of(config)
    assert problems == [
        "/p/mesh.yaml:12:9: route 'r': unknown service 'apii' (did you mean 'api'?)",
        "/p/mesh.yaml:12:9: route 'r': service 'b' has no subset 'v9'",
        "/p/mesh.yaml:12:9: route 'r': service 'b' has no port 1",
        "/p/mesh.yaml:12:9: route 'r': unknown mirror service 'nope'",
        "/p/mesh.yaml:40:7: policy 'p': unknown service 'bb' (did you mean 'b'?)",
    ]


def test_host_mode_needs_endpoints_and_subsets_must_select_one() -> None:
    lonely = Service(name="lonely", ports=(PortSpec(8000),), position=pos(2))
    problems = problems_of(MeshConfig(services=(lonely,)))
    assert len(problems) == 1
    assert "service 'lonely' has no endpoints" in problems[0]
    assert "list endpoints" in problems[0]

    config = rich_config()
    api = dataclasses.replace(config.services[0], endpoints=config.services[0].endpoints[:1])
    problems = problems_of(dataclasses.replace(config, services=(api, config.services[1])))
    assert any("subset 'api/v2' selects no endpoint" in p for p in problems)


def test_listeners_may_not_share_a_socket_nor_take_the_admin_port() -> None:
    a = Service(
        "a",
        ports=(PortSpec(8000, listen="127.0.0.1:9999"),),
        endpoints=(StaticEndpoint("127.0.0.1", 1),),
        position=pos(3),
    )
    b = Service(
        "b",
        ports=(PortSpec(8001, listen="0.0.0.0:9999"),),
        endpoints=(StaticEndpoint("127.0.0.1", 1),),
        position=pos(9),
    )
    c = svc("c", 5000)  # default 127.0.0.1:15000
    problems = problems_of(MeshConfig(services=(a, b, c)), reserved=[("127.0.0.1", 15000)])
    assert problems == [
        "/p/mesh.yaml:9:5: listener b:8001 wants 0.0.0.0:9999, already used by listener a:8000"
        " (set listen: on port 8001 of 'b')",
        "/p/mesh.yaml:1:5: listener c:5000 wants 127.0.0.1:15000, already used by the admin API"
        " (set listen: on port 5000 of 'c')",
    ]


def test_port_zero_listeners_never_clash() -> None:
    a = Service(
        "a",
        ports=(PortSpec(1, listen="127.0.0.1:0"), PortSpec(2, listen="127.0.0.1:0")),
        endpoints=(StaticEndpoint("127.0.0.1", 1),),
    )
    snap = compile_snapshot(Inputs(MeshConfig(services=(a,))), version=1, origin="t")
    assert [lst.bind_port for lst in snap.listeners] == [0, 0]


def test_high_ports_need_an_explicit_listen() -> None:
    problems = problems_of(MeshConfig(services=(svc("x", 60000),)))
    assert problems == [
        "/p/mesh.yaml:1:5: x:60000: no default host-mode listener above port 55535"
        ' (set listen: "127.0.0.1:PORT" on port 60000)'
    ]


def test_bad_regex_and_unknown_route_source_are_caught() -> None:
    from localmesh.config.model import MatchKind, RequestMatch, StringMatch

    route = Route(
        "r",
        matches=(RequestMatch(path=StringMatch(MatchKind.REGEX, "/a("), sources=("ghost",)),),
        position=pos(5),
    )
    problems = problems_of(MeshConfig(services=(svc("api", routes=(route,)),)))
    assert len(problems) == 2
    assert "bad regex '/a('" in problems[0]
    assert "unknown source service 'ghost'" in problems[1]


def test_container_mode_uses_discovery_vips_and_sources() -> None:
    from pathlib import Path

    from localmesh.compose.project import ComposeProject

    project = ComposeProject("shop", Path("/p"), (Path("/p/compose.yaml"),), {"services": {}})
    api = Service("api", ports=(PortSpec(8000),))
    pinned = Service(
        "ext", ports=(PortSpec(443, Protocol.TCP),), endpoints=(StaticEndpoint("10.9.9.9", 443),)
    )
    discovered = Discovered(
        endpoints={"api": (Endpoint("172.20.0.5", 8000), Endpoint("172.20.0.3", 8000))},
        sources={"172.20.0.7": "api"},
    )
    inputs = Inputs(
        MeshConfig(services=(api, pinned)),
        project,
        vips={"api": "10.240.0.10", "ext": "10.240.0.11"},
    )
    snap = compile_snapshot(inputs, discovered, version=1, origin="t")
    assert [(lst.bind_host, lst.bind_port) for lst in snap.listeners] == [
        ("10.240.0.10", 8000),
        ("10.240.0.11", 443),
    ]
    assert [e.host for e in snap.endpoints["api"]] == ["172.20.0.3", "172.20.0.5"]
    assert snap.endpoints["ext"] == (Endpoint("10.9.9.9", 443),)
    assert snap.vips == {"10.240.0.10": "api", "10.240.0.11": "ext"}
    assert snap.sources == {"172.20.0.7": "api"}

    # an empty cluster is allowed in container mode (nothing running yet); a bad source is not
    bad = Discovered(sources={"172.20.0.8": "ghost"})
    with pytest.raises(ConfigError, match="unknown service 'ghost'"):
        compile_snapshot(inputs, bad, version=1, origin="t")
    # no VIP: nobody calls it by name, so no listener; the intercept listener when asked
    no_vip = Inputs(MeshConfig(services=(api,)), project, intercept_port=15001)
    listeners = compile_snapshot(no_vip, version=1, origin="t").listeners
    assert [(lst.name, lst.bind_host, lst.bind_port, lst.intercept) for lst in listeners] == [
        ("intercept", "0.0.0.0", 15001, True)
    ]


def test_host_mode_sources_are_ips_owned_by_exactly_one_service() -> None:
    web = Service("web", ports=(PortSpec(8080),), endpoints=(StaticEndpoint("127.0.0.2", 8080),))
    api = Service(
        "api",
        ports=(PortSpec(8000),),
        endpoints=(StaticEndpoint("127.0.0.1", 9001), StaticEndpoint("127.0.0.3", 9001)),
    )
    db = Service("db", ports=(PortSpec(5432),), endpoints=(StaticEndpoint("127.0.0.1", 5432),))
    ext = Service("ext", ports=(PortSpec(443),), endpoints=(StaticEndpoint("example.test", 443),))
    snap = compile_snapshot(Inputs(MeshConfig(services=(web, api, db, ext))), version=1, origin="t")
    assert snap.sources == {"127.0.0.2": "web", "127.0.0.3": "api"}
    # 127.0.0.1 names nobody even when one service alone lives there: a developer's curl
    # comes from it too
    alone = compile_snapshot(Inputs(MeshConfig(services=(db,))), version=1, origin="t")
    assert alone.sources == {}
