"""Commands: generate, up, down (up/down are stubs until their part of the issue lands)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from localmesh.cli.config_cmds import EnvFiles, Files, Json, MeshIn, Profiles, ProjectName
from localmesh.cli.output import console, err_console, print_json
from localmesh.compose.generate import GenerateOptions, GenerateResult, generate
from localmesh.errors import LocalmeshError

Output = Annotated[
    Path | None,
    typer.Option(
        "-o", "--output", metavar="FILE", help="Where to write (default .localmesh/compose.yaml)."
    ),
]
BaseImage = Annotated[
    str | None,
    typer.Option(
        "--base-image",
        metavar="IMAGE",
        help="Mesh service base image (default $LOCALMESH_BASE_IMAGE, else python:3.11-slim).",
    ),
]
Subnet = Annotated[
    str | None,
    typer.Option(
        "--subnet",
        metavar="CIDR",
        help="Mesh network subnet, /16-/22 (default: a free one in 10.213.0.0/16).",
    ),
]


def _show(result: GenerateResult, cwd: Path) -> None:
    plan = result.plan

    def rel(path: Path) -> str:
        try:
            return str(path.relative_to(cwd))
        except ValueError:
            return str(path)

    verb = "wrote" if result.changed else "unchanged:"
    console.print(
        f"{verb} {escape(rel(result.compose_file))} and {escape(rel(result.plan_file))} "
        f"(project {escape(plan.project)}, mesh network {plan.network.subnet})",
        highlight=False,
    )
    table = Table("upstream", "VIP", "ports", "may be called by", box=None, pad_edge=False)
    for up in plan.upstreams:
        ports = ", ".join(f"{p.port}/{p.protocol.value}" for p in up.ports)
        if up.unknown_ports:
            ports = f"{ports}, any (intercept)" if ports else "any (intercept)"
        callers = ", ".join(c.service for c in plan.clients if up.service in c.reach) or "-"
        table.add_row(escape(up.service), up.vip, escape(ports), escape(callers))
    console.print(table)
    for u in plan.unmeshed:
        console.print(f"left alone: {escape(u.service)} ({escape(u.reason)})", highlight=False)
    for w in plan.warnings:
        err_console.print(f"[yellow]warning[/]: {escape(str(w))}", highlight=False)
    if result.ca_created:
        console.print("created the local CA (`localmesh ca trust` makes this machine trust it)")


def register(app: typer.Typer) -> None:
    @app.command("generate")
    def _generate(
        *,
        files: Files = None,
        env_files: EnvFiles = None,
        project_name: ProjectName = None,
        profiles: Profiles = None,
        mesh: MeshIn = None,
        output: Output = None,
        base_image: BaseImage = None,
        subnet: Subnet = None,
        json: Json = False,
    ) -> None:
        """Write the meshed compose project to .localmesh/ (your files stay untouched).

        Examples:

          localmesh generate

          localmesh generate -f compose.yaml -f compose.prod.yaml --profile debug

          docker compose -f .localmesh/compose.yaml config   # what it wrote
        """
        cwd = Path.cwd()
        result = generate(
            GenerateOptions(
                files=tuple(files or ()),
                env_files=tuple(env_files or ()),
                project_name=project_name,
                profiles=tuple(profiles or ()),
                mesh_file=mesh,
                output=output,
                base_image=base_image,
                subnet=subnet,
                cwd=cwd,
            )
        )
        if json:
            print_json(
                {
                    "compose_file": str(result.compose_file),
                    "plan_file": str(result.plan_file),
                    "changed": result.changed,
                    "image": result.image,
                    "plan": result.plan.to_dict(),
                }
            )
            return
        _show(result, cwd.resolve())

    @app.command("up")
    def _up() -> None:
        """Not implemented yet."""
        raise LocalmeshError("'up' is not implemented yet")

    @app.command("down")
    def _down() -> None:
        """Not implemented yet."""
        raise LocalmeshError("'down' is not implemented yet")
