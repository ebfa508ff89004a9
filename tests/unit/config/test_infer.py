"""Zero-config: protocols and ports guessed from compose, and init's commented rendering."""

from __future__ import annotations

import dataclasses

import pytest

from localmesh.config import infer_mesh, parse_mesh_text, render_inferred
from localmesh.config.infer import InferredService, infer_services
from localmesh.config.model import PortSpec, Protocol
from tests.unit.config.conftest import MakeProject

pytestmark = pytest.mark.unit


def infer(make_project: MakeProject, **services: dict[str, object]) -> dict[str, InferredService]:
    return infer_services(make_project(**services))


def ports(make_project: MakeProject, svc: dict[str, object]) -> tuple[PortSpec, ...]:
    return infer(make_project, x=svc)["x"].service.ports


def test_declared_ports_win_over_image_defaults(make_project: MakeProject) -> None:
    assert ports(make_project, {"image": "postgres", "expose": ["5433"]}) == (
        PortSpec(5433, Protocol.POSTGRES),
    )
    assert ports(make_project, {"image": "postgres"}) == (PortSpec(5432, Protocol.POSTGRES),)
    assert ports(
        make_project,
        {
            "image": "nginx",
            "ports": [{"target": 80, "protocol": "tcp"}],
            "expose": ["8000-8001", "9000/tcp"],
        },
    ) == (PortSpec(80), PortSpec(8000), PortSpec(8001), PortSpec(9000))


def test_udp_services_are_left_alone_with_the_reason(make_project: MakeProject) -> None:
    dns = infer(
        make_project,
        dns={"ports": [{"target": 53, "protocol": "udp"}], "expose": ["53/tcp", "5353/udp"]},
    )["dns"]
    assert not dns.service.meshed
    assert dns.service.ports == ()
    assert dns.note is not None
    assert "UDP ports 53/udp, 5353/udp" in dns.note


def test_ports_from_command_and_healthcheck(make_project: MakeProject) -> None:
    assert ports(make_project, {"command": ["redis-server", "--port", "6380"]}) == (
        PortSpec(6380, Protocol.REDIS),
    )
    assert ports(make_project, {"healthcheck": {"test": ["CMD", "pg_isready", "-h", "x"]}}) == (
        PortSpec(5432, Protocol.POSTGRES),
    )
    health = {"test": ["CMD-SHELL", "curl -fsS http://localhost:8000/healthz || exit 1"]}
    assert ports(make_project, {"healthcheck": health}) == (PortSpec(8000, Protocol.HTTP),)
    tls = {"test": ["CMD-SHELL", "curl -fsk https://127.0.0.1:8443/healthz"]}
    assert ports(make_project, {"healthcheck": tls}) == (PortSpec(8443, Protocol.TCP),)
    assert ports(make_project, {"command": "python app.py"}) == ()


def test_other_services_references_give_ports_and_protocols(make_project: MakeProject) -> None:
    found = infer(
        make_project,
        web={"environment": {"API": "https://api:8443/v1", "CACHE": "rediss://cache:6380"}},
        api={"expose": ["8443"]},
        cache={"image": "redis:7"},
    )
    assert found["api"].service.ports == (PortSpec(8443, Protocol.TCP),)  # TLS: opaque
    assert found["api"].ports[0].sources == ("env:web", "expose")
    assert found["cache"].service.ports == (
        PortSpec(6379, Protocol.REDIS),
        PortSpec(6380, Protocol.TCP),
    )


def test_a_wide_expose_range_is_left_to_the_intercept(make_project: MakeProject) -> None:
    media = infer(make_project, media={"expose": ["8000", "30000-30100"]})["media"]
    assert media.service.ports == (PortSpec(8000),)
    assert media.wide_ranges == ((30000, 30100, "expose"),)
    assert media.unknown_ports
    assert infer(make_project, worker={"image": "x"})["worker"].unknown_ports
    assert not infer(make_project, db={"image": "postgres"})["db"].unknown_ports


@pytest.mark.parametrize("mode", ["host", "none", "bridge", "service:api", "container:abc"])
def test_services_with_a_network_mode_are_not_meshed(make_project: MakeProject, mode: str) -> None:
    inf = infer(make_project, x={"image": "redis", "network_mode": mode})["x"]
    assert not inf.service.meshed
    assert inf.note is not None
    assert mode in inf.note


def test_image_expose_lists_count_when_an_engine_told_them(make_project: MakeProject) -> None:
    project = make_project(api={"image": "ghcr.io/x/api:1"}, built={"build": {"context": "."}})
    image_ports = {"ghcr.io/x/api:1": ("8080/tcp",), "shop-built": ("9000/tcp", "9001/tcp")}
    config = infer_mesh(project, image_ports)
    assert [(s.name, [p.port for p in s.ports]) for s in config.services] == [
        ("api", [8080]),
        ("built", [9000, 9001]),
    ]
    assert [s.ports for s in infer_mesh(project).services] == [(), ()]


def test_infer_mesh(make_project: MakeProject) -> None:
    project = make_project(
        web={"image": "nginx", "ports": [{"target": 80, "protocol": "tcp"}]},
        db={"image": "postgres:15"},
    )
    config = infer_mesh(project)
    assert config.mesh.name == "shop"
    assert [(s.name, s.ports) for s in config.services] == [
        ("db", (PortSpec(5432, Protocol.POSTGRES),)),
        ("web", (PortSpec(80, Protocol.HTTP),)),
    ]
    assert all(s.meshed for s in config.services)


def test_rendered_init_file_parses_back_to_the_inferred_mesh(make_project: MakeProject) -> None:
    project = make_project(
        "odd",
        web={"image": "nginx", "ports": [{"target": 80, "protocol": "tcp"}]},
        db={"image": "postgres:15"},
        cache={"command": ["redis-server"]},
        worker={"image": "busybox"},
        **{"on": {"image": "x"}, "1st": {"image": "x"}},
        metrics={"image": "x", "network_mode": "host"},
        dns={"ports": [{"target": 53, "protocol": "udp"}]},
        media={"image": "x", "expose": ["30000-30100"]},
        api={"image": "x", "environment": {"DB": "postgres://db/app"}},
    )
    text = render_inferred(project)
    assert "meshed: false   # it uses network_mode: host" in text
    assert "meshed: false   # it uses UDP ports 53/udp" in text
    db_port = "{port: 5432, protocol: postgres}   # from env:api, well-known-image; protocol by"
    assert f"{db_port} postgres:// in api" in text
    assert "# expose 30000-30100: too wide to list" in text
    assert '"1st":' in text
    parsed = parse_mesh_text(text, "mesh.yaml", project)
    inferred = infer_mesh(project)
    assert parsed.services == inferred.services  # positions do not take part in equality
    assert parsed.mesh == inferred.mesh
    assert dataclasses.replace(parsed, source="x") == dataclasses.replace(inferred, source="x")


def test_init_of_an_empty_project(make_project: MakeProject) -> None:
    project = make_project()
    text = render_inferred(project)
    assert "services: {}" in text
    assert parse_mesh_text(text, "mesh.yaml", project).services == ()
