"""Turn the user's normalised project and a plan into the meshed project. Only adds.

Every key the user's project has keeps its value; a meshed service gains the mesh
network (its own networks stay listed, ``default`` included), ``extra_hosts`` for the
upstreams' names after the user's own entries, ``depends_on: localmesh`` (healthy), the
trust bundle and its own identity mounted read-only, and the trust variables (the user's
own values win). Unmeshed services are not touched at all. The project gains the
``localmesh`` service (from ``compose-templates/mesh-service.yaml``), the ``localmesh``
network and the ``x-localmesh`` marker that makes ``generate`` refuse its own output.

The one removal: a ``required: false`` dependency on a service the project does not have
(an inactive profile's: Compose's normalised JSON drops the service but keeps the
dependency, and would refuse its own output; ``up`` skips such a dependency anyway).

Pure: paths and the template come in as values.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localmesh.ca.containers import (
    CONTAINER_IDENTITY_DIR,
    CONTAINER_TRUST_DIR,
    SERVICES_DIR,
    ContainerCerts,
)
from localmesh.compose.planner import MESH_KEY, Planned, joined_by_mesh
from localmesh.compose.project import GENERATED_MARKER

CONTAINER_PLAN = "/etc/localmesh/plan.json"
CONTAINER_PROJECT = "/etc/localmesh/project.json"
CONTAINER_CERTS = "/etc/localmesh/certs"
CONTAINER_STATE = "/var/lib/localmesh"  # runtime/app.py's CONTAINER_STATE_DIR
#: mesh.yaml's directory, not the file: editors save by rename, and a single-file bind
#: mount would keep showing the old inode, so live edits would never reach the mesh.
CONTAINER_MESH_DIR = "/etc/localmesh/mesh.d"
NETWORK_LABELS = {"dev.localmesh.role": "mesh"}


@dataclass(frozen=True)
class MeshService:
    """What the ``localmesh`` service is made of besides the plan."""

    template: Mapping[str, Any]  # compose-templates/mesh-service.yaml, parsed
    image: str
    base_image: str
    plan_file: Path  # host paths, absolute
    project_file: Path
    certs_dir: Path
    runtime_dir: Path  # the mesh's writable state: last known good config survives restarts
    mesh_file: Path | None
    sources: tuple[str, ...]  # the user's compose files, relative to the project
    profiles: tuple[str, ...]


def plan_hash(plan_json: str) -> str:
    return hashlib.sha256(plan_json.encode()).hexdigest()[:16]


def rewrite(
    model: Mapping[str, Any], planned: Planned, mesh: MeshService, certs: ContainerCerts
) -> dict[str, Any]:
    """The meshed project as a new document (``model`` is not modified)."""
    plan = planned.plan
    out: dict[str, Any] = {}
    for k, v in model.items():
        out[k] = copy.deepcopy(v)
        if k == "name":
            out[GENERATED_MARKER] = _marker(mesh)
    if GENERATED_MARKER not in out:
        out = {GENERATED_MARKER: _marker(mesh), **out}

    services: dict[str, Any] = out.setdefault("services", {})
    meshed = {c.service for c in plan.clients}
    for name, written in services.items():
        svc = present_dependencies(written, services)
        services[name] = _client(name, svc, planned, certs) if name in meshed else svc
    services[MESH_KEY] = _mesh_service(model, planned, mesh)

    networks: dict[str, Any] = out.setdefault("networks", {})
    if any("default" in (s.get("networks") or {}) for s in services.values()):
        networks.setdefault("default", {"name": f"{plan.project}_default", "ipam": {}})
    net = plan.network
    networks[MESH_KEY] = {
        "name": net.name,
        "driver": "bridge",
        **({"internal": True} if planned.internal else {}),
        "ipam": {
            "config": [{"subnet": net.subnet, "ip_range": net.ip_range, "gateway": net.gateway}]
        },
        "labels": dict(NETWORK_LABELS),
    }
    return out


def present_dependencies(svc: Mapping[str, Any], services: Mapping[str, Any]) -> Any:
    """``svc`` without its optional dependencies on services the project does not have."""
    depends = svc.get("depends_on") or {}
    kept = {
        k: v for k, v in depends.items() if k in services or (v or {}).get("required") is not False
    }
    if kept == depends:
        return svc
    out = {k: v for k, v in svc.items() if k != "depends_on"}
    return {**out, "depends_on": kept} if kept else out


def _marker(mesh: MeshService) -> dict[str, Any]:
    return {
        "generated_by": "localmesh generate: edit your own compose files, then run it again",
        "sources": list(mesh.sources),
        "profiles": list(mesh.profiles),
        "image": {"tag": mesh.image, "base": mesh.base_image},
    }


def _client(
    name: str, svc: Mapping[str, Any], planned: Planned, certs: ContainerCerts
) -> dict[str, Any]:
    out = dict(svc)
    networks = dict(out.get("networks") or {"default": None})
    networks[MESH_KEY] = None
    out["networks"] = networks

    hosts = [f"{host}={ip}" for host, ip in planned.hosts.get(name, ())]
    if hosts:
        user = out.get("extra_hosts") or []
        if isinstance(user, Mapping):
            out["extra_hosts"] = {**user, **dict(h.split("=", 1) for h in hosts)}
        else:
            out["extra_hosts"] = [*user, *hosts]

    depends = dict(out.get("depends_on") or {})
    depends[MESH_KEY] = {"condition": "service_healthy", "required": True}
    out["depends_on"] = depends

    identity = certs.services[name]
    out["volumes"] = [
        *(out.get("volumes") or []),
        _bind(certs.trust_dir, CONTAINER_TRUST_DIR),
        _bind(identity.directory, CONTAINER_IDENTITY_DIR),
    ]
    env = dict(out.get("environment") or {})
    for key, value in identity.environment().items():
        env.setdefault(key, value)
    out["environment"] = env
    return out


def _bind(source: Path, target: str, *, read_only: bool = True) -> dict[str, Any]:
    # create_host_path false: a missing source is an error at `up`, not an empty directory
    # Docker would create where the CA later needs to write.
    return {
        "type": "bind",
        "source": str(source),
        "target": target,
        "read_only": read_only,
        "bind": {"create_host_path": False},
    }


def _fill(value: Any, tokens: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        for token, text in tokens.items():
            value = value.replace(token, text)
        return value
    if isinstance(value, Mapping):
        return {k: _fill(v, tokens) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, tokens) for v in value]
    return value


def _mesh_service(model: Mapping[str, Any], planned: Planned, mesh: MeshService) -> dict[str, Any]:
    plan = planned.plan
    tokens = {
        "@IMAGE@": mesh.image,
        "@ADMIN_PORT@": str(plan.published.admin),
        "@PLAN_HASH@": plan_hash(plan.to_json()),
    }
    svc: dict[str, Any] = _fill(mesh.template, tokens)
    command = list(svc.get("command") or [])
    volumes = [
        _bind(mesh.plan_file, CONTAINER_PLAN),
        _bind(mesh.project_file, CONTAINER_PROJECT),
        _bind(mesh.certs_dir, CONTAINER_CERTS),
        # the apps' identity files, which the mesh renews with its signer (ca.containers)
        _bind(mesh.certs_dir / SERVICES_DIR, f"{CONTAINER_CERTS}/{SERVICES_DIR}", read_only=False),
        _bind(mesh.runtime_dir, CONTAINER_STATE, read_only=False),
    ]
    if mesh.mesh_file is not None:
        volumes.append(_bind(mesh.mesh_file.parent, CONTAINER_MESH_DIR))
        command += ["--mesh", f"{CONTAINER_MESH_DIR}/{mesh.mesh_file.name}"]
        # errors name the file the user edits, not the mount
        command += ["--mesh-host-path", str(mesh.mesh_file)]
    svc["command"] = command
    svc["volumes"] = volumes
    svc["ports"] = [
        {
            "mode": "ingress",
            "host_ip": "127.0.0.1",
            "target": port,
            "published": str(port),
            "protocol": "tcp",
        }
        for port in (plan.published.admin, plan.published.https, plan.published.http)
        if port is not None
    ]
    networks: dict[str, Any] = {MESH_KEY: {"ipv4_address": plan.network.mesh_ip}}
    for net_name, cfg in (model.get("networks") or {}).items():
        if joined_by_mesh(cfg):
            networks[net_name] = None
    svc["networks"] = networks
    return svc
