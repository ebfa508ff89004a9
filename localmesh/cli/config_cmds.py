"""Commands about mesh.yaml: ``init`` (write the inferred one), ``validate``, ``analyze``.

All three read the compose project the way ``docker compose`` would (``-f``,
``--env-file``, ``-p``, ``--profile``), because mesh.yaml names compose services and a
reference is only right or wrong against the real project. Without a compose file (host
mode), ``validate`` and ``analyze`` check mesh.yaml on its own.
"""

from __future__ import annotations

import functools
import inspect
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from localmesh.cli.output import console, print_json, print_warning
from localmesh.compose.generate import GenerateOptions, engine_facts
from localmesh.compose.project import (
    ComposeProject,
    discover_files,
    load_project,
    working_directory,
)
from localmesh.config import analyze, infer_mesh, load_mesh_file, parse_mesh_text, render_inferred
from localmesh.config.model import MeshConfig
from localmesh.config.ports import ImagePorts
from localmesh.errors import ConfigError, LocalmeshError

DEFAULT_MESH = Path("mesh.yaml")


def mesh_yaml_here(directory: Path | None = None) -> dict[str, Any]:
    """``directory``'s mesh.yaml as plain data, for commands that take defaults from it
    ({} when absent or unreadable: `validate` is where its errors are reported)."""
    try:
        data = yaml.safe_load(((directory or Path.cwd()) / DEFAULT_MESH).read_text("utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


Files = Annotated[
    list[Path] | None,
    typer.Option(
        "-f", "--file", metavar="FILE", help="Compose file (repeatable), like docker compose -f."
    ),
]
EnvFiles = Annotated[
    list[Path] | None,
    typer.Option("--env-file", metavar="FILE", help="Compose env file (repeatable)."),
]
ProjectName = Annotated[
    str | None, typer.Option("-p", "--project-name", metavar="NAME", help="Project name.")
]
Profiles = Annotated[
    list[str] | None,
    typer.Option("--profile", metavar="NAME", help="Compose profile to enable (repeatable)."),
]
Json = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]
NoCompose = Annotated[
    bool, typer.Option("--no-compose", help="Check mesh.yaml alone (host mode): no compose.")
]
MeshIn = Annotated[
    Path | None,
    typer.Option("--mesh", help="The mesh.yaml to read (default ./mesh.yaml).", metavar="PATH"),
]


@dataclass(frozen=True)
class ComposeArgs:
    """The compose project as the command line names it, like ``docker compose`` does."""

    files: tuple[Path, ...] = ()
    env_files: tuple[Path, ...] = ()
    project_name: str | None = None
    profiles: tuple[str, ...] = ()

    def load(self, *, required: bool) -> ComposeProject | None:
        """The compose project, or None when there is none here and none was asked for."""
        if not self.files and not required:
            try:
                discover_files(working_directory(), self.env_files)
            except ConfigError:
                return None
        project = load_project(self.files, self.env_files, self.project_name, self.profiles)
        for w in project.warnings:  # generate keeps them in the plan and prints them there
            print_warning(w)
        return project

    def generate_options(
        self,
        *,
        mesh_file: Path | None,
        output: Path | None,
        base_image: str | None,
        subnet: str | None,
        cwd: Path | None = None,
    ) -> GenerateOptions:
        """What ``generate`` (and ``up``, which generates first) is asked to make."""
        return GenerateOptions(
            files=self.files,
            env_files=self.env_files,
            project_name=self.project_name,
            profiles=self.profiles,
            mesh_file=mesh_file,
            output=output,
            base_image=base_image,
            subnet=subnet,
            cwd=cwd,
        )


_COMPOSE_OPTIONS = [
    inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)
    for name, annotation in (
        ("files", Files),
        ("env_files", EnvFiles),
        ("project_name", ProjectName),
        ("profiles", Profiles),
    )
]


def compose_options(command: Callable[..., None]) -> Callable[..., None]:
    """Give a command ``-f``, ``--env-file``, ``-p`` and ``--profile``; it receives them as
    one keyword argument ``compose: ComposeArgs``."""
    signature = inspect.signature(command, eval_str=True)
    own = [p for name, p in signature.parameters.items() if name != "compose"]

    @functools.wraps(command)
    def with_compose(
        *,
        files: list[Path] | None = None,
        env_files: list[Path] | None = None,
        project_name: str | None = None,
        profiles: list[str] | None = None,
        **options: Any,
    ) -> None:
        compose = ComposeArgs(
            tuple(files or ()), tuple(env_files or ()), project_name, tuple(profiles or ())
        )
        command(compose=compose, **options)

    with_compose.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*_COMPOSE_OPTIONS, *own]
    )
    return with_compose


def _image_ports(project: ComposeProject | None) -> ImagePorts:
    """What local images EXPOSE, as ``generate`` sees it, so every command infers the same
    ports (nothing when there is no project or no engine answers)."""
    return engine_facts(project).image_ports if project is not None else {}


def _checked_project(compose: ComposeArgs, no_compose: bool) -> ComposeProject | None:
    """What validate and analyze check mesh.yaml against: the project, unless told to
    check it alone or there is none here (host mode)."""
    return None if no_compose else compose.load(required=bool(compose.files))


def _load(mesh: Path | None, project: ComposeProject | None) -> tuple[MeshConfig, Path | None]:
    """mesh.yaml if given or present, else the mesh inferred from compose."""
    path = mesh or DEFAULT_MESH
    if mesh is not None or path.exists():
        return load_mesh_file(path, project, _image_ports(project)), path
    if project is None:
        raise LocalmeshError(
            "no mesh.yaml and no compose project here: nothing to check",
            hint="run in the project directory, or pass --mesh PATH or -f compose.yaml",
        )
    return infer_mesh(project, _image_ports(project)), None


def _check_host_mode(config: MeshConfig) -> None:
    """Without a compose project the mesh runs in host mode (`localmesh run`): compile it
    as that would, so its listener problems (a port with no default listener, two
    listeners or the admin API on one socket) are found here, not at start."""
    from localmesh.runtime.controlplane.compile import Inputs, compile_snapshot

    admin = (config.mesh.admin_bind, config.mesh.admin_port)
    compile_snapshot(Inputs(config), version=1, origin="validate", reserved=[admin])


def _summary(config: MeshConfig) -> str:
    meshed = sum(1 for s in config.services if s.meshed)
    routes = sum(len(s.routes) for s in config.services) + sum(
        len(h.routes) for h in config.ingress.hosts
    )
    parts = [
        f"{_count(len(config.services), 'service')} ({meshed} meshed)",
        _count(routes, "route"),
        _count(len(config.policies), "policy", "policies"),
        _count(len(config.ingress.hosts), "ingress host"),
    ]
    return ", ".join(parts)


def _count(n: int, noun: str, plural: str | None = None) -> str:
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def _write_atomic(path: Path, text: str) -> None:
    """Write via a temp file and rename, so a failure never leaves half a mesh.yaml."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".mesh-", suffix=".yaml", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def register(app: typer.Typer) -> None:
    @app.command("init")
    @compose_options
    def _init(
        *,
        compose: ComposeArgs,
        mesh: Annotated[Path, typer.Option("--mesh", help="Where to write it.")] = DEFAULT_MESH,
        force: Annotated[bool, typer.Option("--force", help="Overwrite mesh.yaml.")] = False,
        stdout: Annotated[bool, typer.Option("--stdout", help="Print, do not write.")] = False,
    ) -> None:
        """Write a commented mesh.yaml inferred from the compose project.

        Ports and protocols are learned as `localmesh generate` learns them: declared
        ports, local images' EXPOSE, well-known images, commands and healthchecks, and
        the URLs other services call (5432 postgres, 6379 redis, TLS and MySQL, Mongo,
        memcached tcp, otherwise http).

        Examples:

          localmesh init                       # ./mesh.yaml from ./compose.yaml

          localmesh init -f compose.yaml -f compose.prod.yaml --mesh prod-mesh.yaml

          localmesh init --stdout | less
        """
        project = compose.load(required=True)
        assert project is not None
        image_ports = _image_ports(project)
        text = render_inferred(project, image_ports)
        # never write what validate would reject
        parse_mesh_text(text, str(mesh), project, image_ports)
        if stdout:
            typer.echo(text, nl=False)
            return
        if mesh.exists() and not force:
            raise LocalmeshError(
                f"{mesh} already exists; not overwriting it",
                hint="pass --force to replace it, or --stdout to compare",
            )
        _write_atomic(mesh, text)
        config = infer_mesh(project, image_ports)
        console.print(f"[green]wrote[/] {mesh}: {_summary(config)}", highlight=False)
        for svc in config.services:
            ports = ", ".join(f"{p.port}/{p.protocol.value}" for p in svc.ports) or "no ports"
            state = "" if svc.meshed else " [yellow](not meshed)[/]"
            console.print(f"  {svc.name}: {ports}{state}", highlight=False)
        console.print("next: edit it, then `localmesh validate`", highlight=False)

    @app.command("validate")
    @compose_options
    def _validate(
        *,
        compose: ComposeArgs,
        mesh: MeshIn = None,
        no_compose: NoCompose = False,
        as_json: Json = False,
    ) -> None:
        """Check mesh.yaml against its schema and the compose project; exit 2 if invalid.

        Every problem is listed as file:line:col with the key, what was expected and a
        hint. Nothing is written.

        Examples:

          localmesh validate

          localmesh validate --mesh staging.yaml -f compose.yaml

          localmesh validate --json | jq '.problems[].message'
        """
        project: ComposeProject | None = None
        try:  # a broken compose file is a ConfigError too, with its own positions
            project = _checked_project(compose, no_compose)
            config, path = _load(mesh, project)
            if project is None:
                _check_host_mode(config)
        except ConfigError as exc:
            if not as_json:
                raise
            print_json(_validate_json(False, mesh or DEFAULT_MESH, project, None, exc))
            # SystemExit, not typer.Exit: with standalone_mode=False click returns an Exit's
            # code from app() instead of exiting, and main() does not look at it
            raise SystemExit(exc.exit_code) from None
        if as_json:
            print_json(_validate_json(True, path, project, config, None))
            return
        what = str(path) if path else "the mesh inferred from compose (no mesh.yaml)"
        console.print(f"[green]valid[/]: {what}: {_summary(config)}", highlight=False)

    @app.command("analyze")
    @compose_options
    def _analyze(
        *,
        compose: ComposeArgs,
        mesh: MeshIn = None,
        no_compose: NoCompose = False,
        as_json: Json = False,
    ) -> None:
        """Warn about valid but suspicious setups; exit 0 (2 if mesh.yaml is invalid).

        Looks for unreachable services, shadowed routes, policies that deny everything,
        retries that a timeout makes impossible, UDP ports and network_mode: host
        services the mesh cannot carry.

        Examples:

          localmesh analyze

          localmesh analyze --json | jq -r '.findings[].code'
        """
        project = _checked_project(compose, no_compose)
        config, path = _load(mesh, project)
        findings = analyze(config, project)
        if as_json:
            print_json(
                {"mesh": str(path) if path else None, "findings": [f.as_dict() for f in findings]}
            )
            return
        if not findings:
            console.print(f"[green]no findings[/]: {_summary(config)}", highlight=False)
            return
        for f in findings:
            print_warning(f)
        console.print(f"{len(findings)} findings: {_summary(config)}", highlight=False)


def _validate_json(
    valid: bool,
    path: Path | None,
    project: ComposeProject | None,
    config: MeshConfig | None,
    error: ConfigError | None,
) -> dict[str, object]:
    return {
        "valid": valid,
        "mesh": str(path) if path else None,
        "compose_files": [str(f) for f in project.files] if project else [],
        "services": [s.name for s in config.services] if config else [],
        "problems": [p.as_dict() for p in error.problems] if error else [],
    }
