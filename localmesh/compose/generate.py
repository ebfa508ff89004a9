"""``localmesh generate``: normalise → plan → rewrite → write. The one place with I/O.

Reads the user's project through real Compose, mesh.yaml (or infers the mesh), asks the
Docker engine which subnets are taken and which ports local images expose (if no engine
answers, a deterministic candidate subnet is used and a warning says so), writes the
workload certificates, then writes into the state directory (``.localmesh/`` by default,
0700)::

    compose.yaml   the meshed project (0600: Compose inlines env files and secrets' values)
    plan.json      the MeshPlan the mesh container reads (0600)
    project.json   Compose's normalised project, for the mesh container (0600)
    certs/         trust bundle and one identity per meshed service (localmesh/ca)
    runtime/       the mesh container's own state (last known good config), read-write

Files are replaced atomically and only when their bytes change, so a second run with the
same inputs touches nothing and ``docker compose up`` recreates nothing. Before the
compose file is written, Compose itself must accept it.
"""

from __future__ import annotations

import dataclasses
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker.errors
import yaml

from localmesh.ca import files
from localmesh.ca.authority import CertificateAuthority
from localmesh.ca.containers import ContainerCerts, ingress_cert_names, write_container_certs
from localmesh.compose import emit, engine, image
from localmesh.compose.addresses import parse_subnet
from localmesh.compose.plan import MeshPlan, stable_json
from localmesh.compose.planner import EngineFacts, make_plan, relative_position
from localmesh.compose.project import ComposeProject, compose_command, load_project
from localmesh.compose.rewrite import MeshService, rewrite
from localmesh.compose.templates import templates_dir
from localmesh.config import infer_mesh, load_mesh_file
from localmesh.config.model import MeshConfig
from localmesh.config.ports import image_ref
from localmesh.errors import ComposeError, DockerError, Finding, LocalmeshError

STATE_DIR = ".localmesh"
COMPOSE_FILE = "compose.yaml"
PLAN_FILE = "plan.json"
PROJECT_FILE = "project.json"
CERTS_DIR = "certs"
RUNTIME_DIR = "runtime"
MESH_FILE = "mesh.yaml"
TEMPLATE = "mesh-service.yaml"


@dataclass(frozen=True)
class GenerateOptions:
    """The command line, as values (``up`` passes the same)."""

    files: tuple[Path, ...] = ()
    env_files: tuple[Path, ...] = ()
    project_name: str | None = None
    profiles: tuple[str, ...] = ()
    mesh_file: Path | None = None  # None: ./mesh.yaml when it exists, else inferred
    output: Path | None = None  # None: ./.localmesh/compose.yaml
    base_image: str | None = None  # None: $LOCALMESH_BASE_IMAGE, else the default
    subnet: str | None = None  # None: the first free candidate
    cwd: Path | None = None


@dataclass(frozen=True)
class GenerateResult:
    compose_file: Path
    plan_file: Path
    project_file: Path
    plan: MeshPlan
    project: ComposeProject
    mesh: MeshConfig
    mesh_file: Path | None
    image: str
    base_image: str
    changed: bool  # some output's bytes differ from what was there
    ca_created: bool


def generate(
    options: GenerateOptions,
    *,
    facts: EngineFacts | None = None,
    image_tag: str | None = None,
) -> GenerateResult:
    """Write the meshed project; ``facts``/``image_tag`` replace the engine and the package
    hash (tests pin them so golden files do not depend on the machine)."""
    cwd = (options.cwd or Path.cwd()).resolve()
    project = load_project(
        options.files, options.env_files, options.project_name, options.profiles, cwd
    )
    mesh_file = _mesh_file(options.mesh_file, cwd)
    facts = facts or engine_facts(project)
    mesh = (
        load_mesh_file(mesh_file, project, facts.image_ports)
        if mesh_file
        else infer_mesh(project, facts.image_ports)
    )
    subnet = parse_subnet(options.subnet) if options.subnet else None
    compose_file = (cwd / options.output) if options.output else cwd / STATE_DIR / COMPOSE_FILE
    state = compose_file.parent
    planned = make_plan(project, mesh, facts, subnet=subnet)
    plan = dataclasses.replace(
        planned.plan, warnings=planned.plan.warnings + tuple(_leaky_builds(project, state))
    )
    planned = dataclasses.replace(planned, plan=plan)
    files.ensure_private_dir(state)
    files.ensure_private_dir(state / RUNTIME_DIR)
    ca, ca_created = CertificateAuthority.init()
    certs = _container_certs(ca, state, mesh, plan)
    base = image.base_image(options.base_image)
    tag = image_tag or image.mesh_image_tag(base)
    spec = MeshService(
        template=load_template(),
        image=tag,
        base_image=base,
        plan_file=state / PLAN_FILE,
        project_file=state / PROJECT_FILE,
        certs_dir=state / CERTS_DIR,
        runtime_dir=state / RUNTIME_DIR,
        mesh_file=mesh_file,
        sources=tuple(_relative(f, cwd) for f in project.files),
        profiles=tuple(options.profiles),
    )
    document = rewrite(project.model, planned, spec, certs)
    text = emit.dump(document, _header(spec.sources, compose_file, cwd))
    check_with_compose(text, state)
    _write(
        state / ".gitignore", "# localmesh generate's output: secrets and keys, never commit\n*\n"
    )
    changed = False
    changed |= _write(spec.project_file, stable_json(project.model))
    changed |= _write(spec.plan_file, plan.to_json())
    changed |= _write(compose_file, text)
    return GenerateResult(
        compose_file=compose_file,
        plan_file=spec.plan_file,
        project_file=spec.project_file,
        plan=plan,
        project=project,
        mesh=mesh,
        mesh_file=mesh_file,
        image=tag,
        base_image=base,
        changed=changed,
        ca_created=ca_created,
    )


def renew_certs(result: GenerateResult) -> tuple[str, ...]:
    """Renew what ``generate`` wrote for the containers that has fallen due (2/3 of its
    life): the apps' identities, the ingress certificate and the mesh signer, which the
    mesh container reads but cannot issue. Returns what was issued (service names,
    ``ingress``, ``signer``)."""
    state = result.compose_file.parent
    return _container_certs(CertificateAuthority.load(), state, result.mesh, result.plan).issued


def _container_certs(
    ca: CertificateAuthority, state: Path, mesh: MeshConfig, plan: MeshPlan
) -> ContainerCerts:
    return write_container_certs(
        ca,
        state / CERTS_DIR,
        mesh.mesh.trust_domain,
        [c.service for c in plan.clients],
        ingress_names=ingress_cert_names(mesh.ingress),  # the mesh container cannot issue
        signer=True,  # it issues the identities it originates mutual TLS with
        lifetime=mesh.mesh.workload_cert_lifetime,
    )


def engine_facts(project: ComposeProject) -> EngineFacts:
    """Taken subnets and local images' EXPOSE lists; ``reachable=False`` with no engine."""
    try:
        client = engine.connect()
    except DockerError:
        return EngineFacts(reachable=False)
    try:
        networks: dict[str, tuple[str, ...]] = {}
        for net in client.networks.list():
            pools = ((net.attrs.get("IPAM") or {}).get("Config")) or ()
            networks[str(net.name)] = tuple(str(p["Subnet"]) for p in pools if p.get("Subnet"))
        image_ports: dict[str, tuple[str, ...]] = {}
        for name, svc in project.services().items():
            ref = image_ref(project.name, name, svc)
            if ref is None or ref in image_ports:
                continue
            try:
                found = client.images.get(ref)
            except docker.errors.ImageNotFound:
                continue
            exposed = (found.attrs.get("Config") or {}).get("ExposedPorts") or {}
            image_ports[ref] = tuple(sorted(str(p) for p in exposed))
        return EngineFacts(networks=networks, image_ports=image_ports)
    except docker.errors.DockerException as exc:
        raise DockerError(f"the Docker engine failed while generate asked it: {exc}") from None
    finally:
        client.close()


def load_template() -> Mapping[str, Any]:
    path = templates_dir() / TEMPLATE
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LocalmeshError(
            f"the mesh service template {path} is missing",
            hint="reinstall localmesh (pip install --force-reinstall localmesh)",
        ) from None
    if not isinstance(loaded, Mapping):
        raise LocalmeshError(f"{path} is not a mapping", hint="restore it from the repository")
    return loaded


def check_with_compose(text: str, state: Path) -> None:
    """Compose must accept what we are about to write; if not, it is our bug, said plainly."""
    probe = state / f".{COMPOSE_FILE}.check"
    files.write_atomic(probe, text.encode(), files.PRIVATE_FILE_MODE)
    try:
        done = subprocess.run(
            [*compose_command(), "-f", str(probe), "config", "--quiet"],
            cwd=state,
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        probe.unlink(missing_ok=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise ComposeError(
            f"Compose rejected the generated project: {last}",
            hint="this is a localmesh bug: please report it with your compose file",
        )


def _leaky_builds(project: ComposeProject, state: Path) -> list[Finding]:
    """Build contexts that would send the state directory (workload keys) to the engine."""
    out: list[Finding] = []
    for name, svc in sorted(project.services().items()):
        build = svc.get("build")
        context = build.get("context") if isinstance(build, Mapping) else None
        if not isinstance(context, str) or "://" in context:
            continue
        root = Path(context)
        if not state.is_relative_to(root):
            continue
        ignore = root / ".dockerignore"
        entry = state.relative_to(root).as_posix()
        if ignore.is_file() and entry in ignore.read_text(encoding="utf-8", errors="replace"):
            continue
        out.append(
            Finding(
                "build-context",
                f"the build context of service '{name}' contains {entry}/ (workload keys): "
                f"add '{entry}' to {_relative(ignore, project.working_dir)}",
                relative_position(project, "services", name, "build"),
            )
        )
    return out


def _mesh_file(given: Path | None, cwd: Path) -> Path | None:
    if given is not None:
        return (cwd / given).resolve()
    default = cwd / MESH_FILE
    return default if default.is_file() else None


def _relative(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return str(path)


def _header(sources: tuple[str, ...], compose_file: Path, cwd: Path) -> str:
    return (
        f"Generated by `localmesh generate` from {', '.join(sources)}: do not edit.\n"
        "Change your own compose files or mesh.yaml and generate again; run it with\n"
        f"`localmesh up`, or `docker compose -f {_relative(compose_file, cwd)} up`."
    )


def _write(path: Path, text: str) -> bool:
    """Replace ``path`` (0600) when its bytes differ; True when it did."""
    data = text.encode()
    if path.is_file() and path.read_bytes() == data:
        path.chmod(files.PRIVATE_FILE_MODE)
        return False
    files.write_atomic(path, data, files.PRIVATE_FILE_MODE)
    return True
