"""Where the control plane reads its inputs from.

``MeshFileSource`` is host mode: one mesh.yaml with static endpoints, no compose project.
``ContainerSource`` is the mesh container of ``localmesh up``: plan.json + project.json
from ``generate`` (mounted under /etc/localmesh) and mesh.yaml if the project has one.
Loading runs in a worker thread (``asyncio.to_thread``), so it may block on file I/O.
"""

from __future__ import annotations

import json
from pathlib import Path

from localmesh.compose.plan import MeshPlan
from localmesh.compose.project import ComposeProject
from localmesh.config import infer_mesh, load_mesh_file
from localmesh.config.ports import image_ref
from localmesh.errors import ConfigError, Problem
from localmesh.runtime.container import load_plan
from localmesh.runtime.controlplane.compile import Inputs
from localmesh.runtime.controlplane.isolation import with_isolation
from localmesh.runtime.controlplane.plane import Loaded, config_files


class MeshFileSource:
    """A mesh.yaml file; every file its config has positions in is watched too."""

    def __init__(self, path: Path) -> None:
        self.path = path.absolute()
        self.label = self.path.name

    def paths(self) -> tuple[Path, ...]:
        return (self.path,)

    def load(self, *, reloading: bool = False) -> Loaded:
        config = load_mesh_file(self.path, empty_ok=not reloading)
        files = {self.path, *(p.absolute() for p in config_files(config))}
        return Loaded(Inputs(config), tuple(sorted(files)))


class ContainerSource:
    """Container mode: the plan and normalised project ``generate`` wrote, and mesh.yaml
    (or, without one, the mesh inferred from the project).

    mesh.yaml is read where it is mounted and named by ``mesh_host_path``, its path on the
    host (``generate`` passes it), so every position the user sees (load, compile and bind
    errors, ``/config``) names the file they edit; without it, by its bare name.
    """

    def __init__(
        self,
        plan: Path,
        project: Path,
        mesh: Path | None,
        intercept_port: int,
        mesh_host_path: str | None = None,
    ) -> None:
        self.plan_path = plan.absolute()
        self.project_path = project.absolute()
        self.mesh_path = mesh.absolute() if mesh else None
        self.intercept_port = intercept_port
        self.label = self.mesh_path.name if self.mesh_path else "inferred mesh"
        self.mesh_shown_as = mesh_host_path or self.label

    def paths(self) -> tuple[Path, ...]:
        return tuple(p for p in (self.mesh_path, self.plan_path, self.project_path) if p)

    def load(self, *, reloading: bool = False) -> Loaded:
        plan = load_plan(self.plan_path)
        project = load_project_json(self.project_path)
        if self.mesh_path is not None:
            config = load_mesh_file(
                self.mesh_path,
                project,
                image_ports=plan_image_ports(plan, project),
                empty_ok=not reloading,
                shown_as=self.mesh_shown_as,
            )
        else:
            config = infer_mesh(project, plan_image_ports(plan, project))
        config = with_isolation(config, plan)
        inputs = Inputs(
            config,
            project,
            vips={u.service: u.vip for u in plan.upstreams},
            intercept_port=self.intercept_port
            if any(u.unknown_ports for u in plan.upstreams)
            else None,
        )
        # positions name the host path, which does not exist in here: watch the mounts
        return Loaded(inputs, tuple(sorted(self.paths())))


def plan_image_ports(plan: MeshPlan, project: ComposeProject) -> dict[str, list[str]]:
    """The image EXPOSE lists ``generate`` saw on the host, rebuilt from the plan.

    The mesh container cannot ask the engine; without these, a port known only from an
    image would get no listener on its VIP (and, not being unknown, no intercept either).
    """
    out: dict[str, list[str]] = {}
    services = project.services()
    for upstream in plan.upstreams:
        svc = services.get(upstream.service)
        ref = image_ref(project.name, upstream.service, svc) if svc is not None else None
        exposed = [f"{p.port}/tcp" for p in upstream.ports if "image" in p.sources]
        if ref is not None and exposed:
            out.setdefault(ref, []).extend(exposed)
    return out


def load_project_json(path: Path) -> ComposeProject:
    """The normalised compose model ``generate`` saved (Compose's own JSON)."""
    try:
        model = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(
            Problem(f"cannot read the normalised compose project {path}: {exc}"),
            hint="regenerate it with `localmesh generate`",
        ) from None
    if not isinstance(model, dict):
        raise ConfigError(Problem(f"{path} is not a compose project"))
    return ComposeProject(
        name=str(model.get("name", "")), working_dir=path.parent, files=(path,), model=model
    )
