"""Container-mode inputs from the files generate writes: plan.json, project.json, mesh.yaml."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from localmesh.compose.plan import (
    Client,
    MeshNetwork,
    MeshPlan,
    PlanPort,
    PublishedPorts,
    Upstream,
)
from localmesh.config.model import Protocol
from localmesh.errors import ConfigError
from localmesh.runtime.controlplane.compile import compile_snapshot
from localmesh.runtime.controlplane.sources import ContainerSource

PROJECT = {
    "name": "shop",
    "services": {
        "web": {"image": "web", "ports": [{"target": 8080}]},
        "api": {"image": "api", "expose": ["8000"]},
        "legacy": {"image": "thing"},
    },
}


def write_plan(path: Path) -> None:
    plan = MeshPlan(
        project="shop",
        network=MeshNetwork(
            "localmesh",
            "shop_localmesh",
            "10.240.0.0/24",
            "10.240.0.1",
            "10.240.0.2",
            "10.240.0.128/25",
            "10.240.0.16/28",
        ),
        published=PublishedPorts(admin=15000),
        upstreams=(
            Upstream("api", "10.240.0.130", ("api",), (PlanPort(8000, Protocol.HTTP),)),
            Upstream("legacy", "10.240.0.131", ("legacy",), (), unknown_ports=True),
        ),
        clients=(Client("web", ("api", "legacy")),),
    )
    path.write_text(plan.to_json())


def test_inferred_mesh_with_vips_and_the_intercept_listener(tmp_path: Path) -> None:
    write_plan(tmp_path / "plan.json")
    (tmp_path / "project.json").write_text(json.dumps(PROJECT))
    source = ContainerSource(tmp_path / "plan.json", tmp_path / "project.json", None, 15001)
    assert source.label == "inferred mesh"
    loaded = source.load()
    assert loaded.inputs.project is not None
    assert loaded.inputs.config.mesh.name == "shop"
    assert loaded.inputs.vips == {"api": "10.240.0.130", "legacy": "10.240.0.131"}
    assert set(loaded.files) == {tmp_path / "plan.json", tmp_path / "project.json"}
    snap = compile_snapshot(loaded.inputs, version=1, origin="t")
    binds = {(lst.name, lst.bind_host, lst.bind_port) for lst in snap.listeners}
    assert ("api:8000", "10.240.0.130", 8000) in binds
    assert ("intercept", "0.0.0.0", 15001) in binds
    assert not any(lst.service == "web" for lst in snap.listeners)  # a client only


def test_mesh_yaml_is_read_against_the_project(tmp_path: Path) -> None:
    write_plan(tmp_path / "plan.json")
    (tmp_path / "project.json").write_text(json.dumps(PROJECT))
    mesh = tmp_path / "mesh.yaml"
    mesh.write_text("services:\n  apii:\n    ports: [8000]\n")
    source = ContainerSource(tmp_path / "plan.json", tmp_path / "project.json", mesh, 15001)
    assert mesh in source.paths()
    with pytest.raises(ConfigError) as info:
        source.load()
    assert "apii" in str(info.value)
    # without the host path generate passes, by its name, not where the container mounts it
    assert str(info.value).startswith("mesh.yaml:2:3: ")


HOST_MESH = "/home/dev/shop/mesh.yaml"


def test_mesh_yaml_is_named_by_its_host_path_in_every_position(tmp_path: Path) -> None:
    """Load errors, and the positions compile and bind errors take from the config."""
    write_plan(tmp_path / "plan.json")
    (tmp_path / "project.json").write_text(json.dumps(PROJECT))
    mesh = tmp_path / "mesh.yaml"
    source = ContainerSource(
        tmp_path / "plan.json", tmp_path / "project.json", mesh, 15001, HOST_MESH
    )
    mesh.write_text("services:\n  api:\n    ports: [8000]\n    retries: {atempts: 2}\n")
    with pytest.raises(ConfigError, match=rf"^{HOST_MESH}:4:\d+: .*atempts"):
        source.load()
    mesh.write_text("services:\n  api:\n    ports: [8000]\n")
    loaded = source.load()
    [api] = [s for s in loaded.inputs.config.services if s.name == "api"]
    assert api.position is not None
    assert api.ports[0].position is not None
    assert (api.position.file, api.ports[0].position.file) == (HOST_MESH, HOST_MESH)
    # the host path is not there to watch in the container: the mounted files are
    assert set(loaded.files) == {mesh, tmp_path / "plan.json", tmp_path / "project.json"}
    mesh.unlink()
    with pytest.raises(ConfigError, match=f"mesh file not found: {HOST_MESH}"):
        source.load()


def test_a_missing_or_broken_project_file_is_a_config_error(tmp_path: Path) -> None:
    write_plan(tmp_path / "plan.json")
    source = ContainerSource(tmp_path / "plan.json", tmp_path / "project.json", None, 15001)
    with pytest.raises(ConfigError, match="cannot read the normalised compose project"):
        source.load()
    (tmp_path / "project.json").write_text("[1]")
    with pytest.raises(ConfigError, match="is not a compose project"):
        source.load()


def test_a_port_known_only_from_the_image_gets_its_listener(tmp_path: Path) -> None:
    # Inside the mesh container the engine cannot be asked for EXPOSE: the plan carries it.
    project = {"name": "shop", "services": {"search": {"image": "acme/search:1"}}}
    plan = MeshPlan(
        project="shop",
        network=MeshNetwork(
            "localmesh",
            "shop_localmesh",
            "10.240.0.0/24",
            "10.240.0.1",
            "10.240.0.2",
            "10.240.0.128/25",
            "10.240.0.16/28",
        ),
        published=PublishedPorts(admin=15000),
        upstreams=(
            Upstream(
                "search", "10.240.0.140", ("search",), (PlanPort(7700, Protocol.HTTP, ("image",)),)
            ),
        ),
    )
    (tmp_path / "plan.json").write_text(plan.to_json())
    (tmp_path / "project.json").write_text(json.dumps(project))
    source = ContainerSource(tmp_path / "plan.json", tmp_path / "project.json", None, 15001)
    snap = compile_snapshot(source.load().inputs, version=1, origin="t")
    binds = {(lst.name, lst.bind_host, lst.bind_port) for lst in snap.listeners}
    assert ("search:7700", "10.240.0.140", 7700) in binds


def test_an_empty_mesh_yaml_is_the_inferred_mesh_at_start_and_refused_on_reload(
    tmp_path: Path,
) -> None:
    write_plan(tmp_path / "plan.json")
    (tmp_path / "project.json").write_text(json.dumps(PROJECT))
    mesh = tmp_path / "mesh.yaml"
    mesh.write_text("")
    source = ContainerSource(tmp_path / "plan.json", tmp_path / "project.json", mesh, 15001)
    assert {s.name for s in source.load().inputs.config.services} >= {"api", "legacy"}
    with pytest.raises(ConfigError, match=r"^mesh.yaml:1:1: mesh.yaml is empty"):
        source.load(reloading=True)
