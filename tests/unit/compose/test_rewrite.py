"""The rewrite only adds: user values stay, unmeshed services are untouched, and the mesh
service is the template filled in."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from localmesh.ca.containers import ContainerCerts, ServiceCerts
from localmesh.compose.generate import load_template
from localmesh.compose.planner import EngineFacts, make_plan
from localmesh.compose.project import ComposeProject
from localmesh.compose.rewrite import MeshService, plan_hash, rewrite
from localmesh.config.model import Ingress, IngressHost, MeshConfig

pytestmark = pytest.mark.unit
STATE = Path("/p/.localmesh")

MODEL: dict[str, Any] = {
    "name": "p",
    "services": {
        "app": {
            "image": "app:1",
            "networks": {"default": None},
            "environment": {"SSL_CERT_FILE": "/mine.pem", "A": "1"},
            "extra_hosts": {"metrics": "10.1.1.1"},
            "depends_on": {"api": {"condition": "service_started", "required": True}},
            "volumes": [{"type": "volume", "source": "data", "target": "/data"}],
        },
        "api": {"image": "api:1", "networks": {"default": None}, "expose": ["8000"]},
        "agent": {"image": "agent:1", "network_mode": "host"},
    },
    "networks": {"default": {"name": "p_default"}, "hostnet": {"driver": "host"}},
    "volumes": {"data": {"name": "p_data"}},
    "x-team": {"owner": "platform"},
}


def certs() -> ContainerCerts:
    base = STATE / "certs"
    return ContainerCerts(
        base / "trust",
        {
            n: ServiceCerts(n, f"spiffe://localmesh/svc/{n}", base / "services" / n)
            for n in ("app", "api")
        },
    )


def run(mesh_file: Path | None = None, config: MeshConfig | None = None) -> dict[str, Any]:
    project = ComposeProject("p", Path("/p"), (Path("/p/compose.yaml"),), copy.deepcopy(MODEL))
    planned = make_plan(project, config or MeshConfig(), EngineFacts())
    spec = MeshService(
        template=load_template(),
        image="localmesh-mesh:test",
        base_image="base:1",
        plan_file=STATE / "plan.json",
        project_file=STATE / "project.json",
        certs_dir=STATE / "certs",
        runtime_dir=STATE / "runtime",
        mesh_file=mesh_file,
        sources=("compose.yaml",),
        profiles=(),
    )
    out = rewrite(project.model, planned, spec, certs())
    assert project.model == MODEL  # never modified in place
    assert out["services"]["localmesh"]["labels"]["dev.localmesh.plan"] == plan_hash(
        planned.plan.to_json()
    )
    return out


def test_user_values_stay_and_additions_come_after() -> None:
    app = run()["services"]["app"]
    assert app["environment"]["SSL_CERT_FILE"] == "/mine.pem"  # the user's value wins
    assert app["environment"]["A"] == "1"
    assert app["environment"]["LOCALMESH_SPIFFE_ID"] == "spiffe://localmesh/svc/app"
    assert app["extra_hosts"]["metrics"] == "10.1.1.1"
    assert "api" in app["extra_hosts"]  # mapping form kept as a mapping
    assert app["depends_on"]["api"] == {"condition": "service_started", "required": True}
    assert app["depends_on"]["localmesh"] == {"condition": "service_healthy", "required": True}
    assert app["volumes"][0] == MODEL["services"]["app"]["volumes"][0]
    assert [v["target"] for v in app["volumes"][1:]] == [
        "/etc/localmesh/trust",
        "/etc/localmesh/identity",
    ]
    assert app["volumes"][2]["source"] == "/p/.localmesh/certs/services/app"
    assert all(v.get("read_only") for v in app["volumes"][1:])
    assert app["networks"] == {"default": None, "localmesh": None}


def test_unmeshed_services_are_untouched_and_top_level_keys_kept() -> None:
    out = run()
    assert out["services"]["agent"] == MODEL["services"]["agent"]
    assert out["volumes"] == MODEL["volumes"]
    assert out["x-team"] == MODEL["x-team"]
    assert list(out)[:2] == ["name", "x-localmesh"]
    assert out["networks"]["default"] == MODEL["networks"]["default"]
    assert out["networks"]["localmesh"]["ipam"]["config"][0]["subnet"].startswith("10.213.")


def test_mesh_service_from_the_template() -> None:
    mesh = run()["services"]["localmesh"]
    assert mesh["image"] == "localmesh-mesh:test"
    assert mesh["cap_add"] == ["NET_ADMIN"]
    assert mesh["entrypoint"] == ["localmesh"]
    assert mesh["command"] == ["run", "--container", "--plan", "/etc/localmesh/plan.json"]
    assert "http://127.0.0.1:15000/readyz" in mesh["healthcheck"]["test"][-1]
    assert mesh["ports"] == [
        {
            "mode": "ingress",
            "host_ip": "127.0.0.1",
            "target": 15000,
            "published": "15000",
            "protocol": "tcp",
        }
    ]
    # every user network except host/none drivers, and a fixed address on its own
    assert list(mesh["networks"]) == ["localmesh", "default"]
    assert mesh["networks"]["localmesh"]["ipv4_address"].endswith(".2")
    assert {v["target"]: v["read_only"] for v in mesh["volumes"]} == {
        "/etc/localmesh/plan.json": True,
        "/etc/localmesh/project.json": True,
        "/etc/localmesh/certs": True,
        "/etc/localmesh/certs/services": False,  # the apps' identities, renewed by the mesh
        "/var/lib/localmesh": False,  # last known good survives a restart of the container
    }
    assert "@" not in repr(mesh)  # every template token filled in


def test_mesh_file_is_mounted_by_directory_and_ingress_ports_published() -> None:
    config = MeshConfig(ingress=Ingress(hosts=(IngressHost("app.localhost", ()),)))
    mesh = run(Path("/p/conf/mesh.yaml"), config)["services"]["localmesh"]
    # read where it is mounted, named in errors by the path the user edits
    assert mesh["command"][-4:] == [
        "--mesh",
        "/etc/localmesh/mesh.d/mesh.yaml",
        "--mesh-host-path",
        "/p/conf/mesh.yaml",
    ]
    mount = next(v for v in mesh["volumes"] if v["target"] == "/etc/localmesh/mesh.d")
    assert mount["source"] == "/p/conf"
    assert [p["target"] for p in mesh["ports"]] == [15000, 8443, 8080]
