"""Zero-config: protocols and ports guessed from compose, and init's commented rendering."""

from __future__ import annotations

import dataclasses

import pytest

from localmesh.config import infer_mesh, parse_mesh_text, render_inferred
from localmesh.config.infer import guess_protocol, image_name, infer_service
from localmesh.config.model import PortSpec, Protocol
from tests.unit.config.conftest import MakeProject


def ports(svc: dict[str, object]) -> tuple[PortSpec, ...]:
    return infer_service("x", svc).service.ports


@pytest.mark.parametrize(
    ("image", "name"),
    [
        ("postgres", "postgres"),
        ("postgres:15-alpine", "postgres"),
        ("docker.io/library/redis:7@sha256:abc", "redis"),
        ("bitnami/PostgreSQL:16", "postgresql"),
        ("localhost:5000/team/api:dev", "api"),
    ],
)
def test_image_name(image: str, name: str) -> None:
    assert image_name(image) == name


@pytest.mark.parametrize(
    ("port", "image", "protocol"),
    [
        (5432, None, Protocol.POSTGRES),
        (6379, "nginx", Protocol.REDIS),
        (3306, None, Protocol.TCP),
        (27017, None, Protocol.TCP),
        (11211, None, Protocol.TCP),
        (8000, None, Protocol.HTTP),
        (5433, "postgres:15", Protocol.POSTGRES),
        (6380, "redis", Protocol.REDIS),
        (3307, "mariadb", Protocol.TCP),
        (80, "nginx", Protocol.HTTP),
    ],
)
def test_protocol_guess(port: int, image: str | None, protocol: Protocol) -> None:
    assert guess_protocol(port, image)[0] is protocol


def test_declared_ports_win_over_image_defaults() -> None:
    assert ports({"image": "postgres", "expose": ["5433"]}) == (PortSpec(5433, Protocol.POSTGRES),)
    assert ports({"image": "postgres"}) == (PortSpec(5432, Protocol.POSTGRES),)
    assert ports(
        {
            "image": "nginx",
            "ports": [{"target": 80, "protocol": "tcp"}],
            "expose": ["8000-8001", "9000/tcp"],
        }
    ) == (PortSpec(80), PortSpec(8000), PortSpec(8001), PortSpec(9000))


def test_udp_ports_are_skipped_and_reported() -> None:
    inf = infer_service(
        "dns", {"ports": [{"target": 53, "protocol": "udp"}], "expose": ["5353/udp"]}
    )
    assert inf.service.ports == ()
    assert inf.udp_ports == (53, 5353)


def test_ports_from_command_and_healthcheck() -> None:
    assert ports({"command": ["redis-server", "--port", "6380"]}) == (
        PortSpec(6380, Protocol.REDIS),
    )
    assert ports({"healthcheck": {"test": ["CMD", "pg_isready", "-h", "127.0.0.1"]}}) == (
        PortSpec(5432, Protocol.POSTGRES),
    )
    health = {"test": ["CMD-SHELL", "curl -fsS http://localhost:8000/healthz || exit 1"]}
    assert ports({"healthcheck": health}) == (PortSpec(8000, Protocol.HTTP),)
    assert ports({"command": "python app.py"}) == ()


@pytest.mark.parametrize("mode", ["host", "none", "service:api", "container:abc"])
def test_shared_network_namespaces_are_not_meshed(mode: str) -> None:
    inf = infer_service("x", {"image": "redis", "network_mode": mode})
    assert not inf.service.meshed
    assert inf.note is not None
    assert mode in inf.note


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
    )
    text = render_inferred(project)
    assert "meshed: false   # it uses network_mode: host" in text
    assert "# udp 53: not meshed" in text
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
