"""Commands: generate, up, down."""

from __future__ import annotations

import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn
from rich.status import Status
from rich.table import Table

from localmesh.cli.config_cmds import (
    ComposeArgs,
    Json,
    MeshIn,
    ProjectName,
    compose_options,
)
from localmesh.cli.output import (
    console,
    errors_as_json,
    print_error,
    print_json,
    print_warning,
)
from localmesh.compose import lifecycle
from localmesh.compose.generate import (
    COMPOSE_FILE,
    PLAN_FILE,
    STATE_DIR,
    GenerateResult,
    generate,
    renew_certs,
)
from localmesh.compose.plan import MeshPlan
from localmesh.compose.project import working_directory
from localmesh.config.values import parse_duration
from localmesh.errors import LocalmeshError

Output = Annotated[
    Path | None,
    typer.Option(
        "-o",
        "--output",
        metavar="FILE",
        help="Where to write the compose file (default .localmesh/compose.yaml; "
        "the rest stays in .localmesh/).",
    ),
]
Generated = Annotated[
    Path | None,
    typer.Option(
        "-o",
        "--output",
        metavar="FILE",
        help="The compose file `up` wrote, if not .localmesh/compose.yaml.",
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
        soft_wrap=True,
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
        console.print(
            f"left alone: {escape(u.service)} ({escape(u.reason)})", highlight=False, soft_wrap=True
        )
    for w in plan.warnings:
        print_warning(w)
    if result.ca_created:
        console.print("created the local CA (`localmesh ca trust` makes this machine trust it)")


def register(app: typer.Typer) -> None:
    @app.command("generate")
    @compose_options
    def _generate(
        *,
        compose: ComposeArgs,
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
        cwd = working_directory()
        with errors_as_json(json):
            result = generate(
                compose.generate_options(
                    mesh_file=mesh, output=output, base_image=base_image, subnet=subnet, cwd=cwd
                )
            )
        if json:
            print_json(
                {
                    "ok": True,
                    "compose_file": str(result.compose_file),
                    "plan_file": str(result.plan_file),
                    "changed": result.changed,
                    "image": result.image,
                    "plan": result.plan.to_dict(),
                }
            )
            return
        _show(result, cwd)

    app.command(
        "up",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )(_up)
    app.command("down")(_down)


# --- up / down -----------------------------------------------------------------------------


Detach = Annotated[bool, typer.Option("-d", "--detach", help="Return once everything is ready.")]
Timeout = Annotated[
    str,
    typer.Option(
        "--timeout",
        metavar="DURATION",
        help="How long to wait for readiness: 3m, 90s, or plain seconds.",
    ),
]
Volumes = Annotated[bool, typer.Option("-v", "--volumes", help="Also remove named volumes.")]


@compose_options
def _up(
    *,
    ctx: typer.Context,
    compose: ComposeArgs,
    mesh: MeshIn = None,
    output: Output = None,
    base_image: BaseImage = None,
    subnet: Subnet = None,
    detach: Detach = False,
    timeout: Timeout = "3m",
) -> None:
    """Mesh the compose project here, start it, and wait until every service is ready.

    Arguments it does not know go to `docker compose up`. In the foreground it shows the
    status until Ctrl-C, then stops the project.

    Examples:

      localmesh up -d

      localmesh up -d --build --scale api=3
    """
    options = lifecycle.UpOptions(
        generate=compose.generate_options(
            mesh_file=mesh, output=output, base_image=base_image, subnet=subnet
        ),
        compose_args=tuple(ctx.args),
        timeout=_seconds("--timeout", timeout),
    )
    with RichUi(console) as ui:
        result = lifecycle.up(options, ui)
    for w in result.generated.plan.warnings:  # generate's, Compose's own among them
        print_warning(w)
    if detach:
        _print_up(result)
        console.print("stop it with [bold]localmesh down[/]")
        return
    _follow(result)


def _seconds(flag: str, text: str) -> float:
    """A duration flag: ``3m``, ``500ms``, or a plain number of seconds."""
    try:
        return float(text) if text.replace(".", "", 1).isdigit() else parse_duration(text)
    except ValueError as exc:
        raise LocalmeshError(f"{flag}: {exc}", hint="e.g. 3m, 90s or 180") from None


def _renew(generated: GenerateResult) -> None:
    """Renew what fell due; a failure is reported and retried at the next check."""
    try:
        issued = renew_certs(generated)
    except LocalmeshError as exc:
        print_error(exc)
        return
    if issued:
        console.print(f"renewed the certificates of {', '.join(issued)}")


def _down(
    *, project_name: ProjectName = None, output: Generated = None, volumes: Volumes = False
) -> None:
    """Stop and remove what `localmesh up` started: containers, networks (-v: volumes).

    `-p NAME` (as given to `up`) checks that the project up started here is that one.
    """
    if project_name is not None:
        _check_project(project_name, output)
    options = lifecycle.DownOptions(output=output, volumes=volumes)
    with RichUi(console) as ui:
        removed = lifecycle.down(options, ui)
    console.print(f"removed {len(removed)} containers and networks", highlight=False)


def _check_project(name: str, output: Path | None) -> None:
    """``down`` stops what ``up`` generated here: refuse when that is another project than
    the one named (no plan here: down itself says there is nothing to stop)."""
    plan_file = (output or Path(STATE_DIR) / COMPOSE_FILE).parent / PLAN_FILE
    try:
        text = plan_file.read_text(encoding="utf-8")
    except OSError:
        return
    project = MeshPlan.from_json(text, str(plan_file)).project
    if project != name:
        raise LocalmeshError(
            f"-p {name}: the project `localmesh up` started here is {project}",
            hint=f"run `localmesh down` in {name}'s directory, or drop -p",
        )


class RichUi:
    """A spinner for waits and a progress bar for the image build, one at a time."""

    def __init__(self, out: Console) -> None:
        self.console = out
        self._status: Status | None = None
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> RichUi:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop()

    def waiting(self, text: str) -> None:
        self._stop_progress()
        if self._status is None:
            self._status = self.console.status(text)
            self._status.start()
        else:
            self._status.update(text)

    def note(self, text: str) -> None:
        self.console.print(text)

    def build_progress(self) -> RichUi:
        return self

    def phase(self, text: str) -> None:
        self._bar().update(self._task_id(), description=text)

    def step(self, done: int, total: int, text: str) -> None:
        self._bar().update(
            self._task_id(), completed=done, total=total, description=f"mesh image: {text}"
        )

    def _bar(self) -> Progress:
        if self._progress is None:
            self._stop_status()
            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                console=self.console,
                transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task("mesh image", total=None)
        return self._progress

    def _task_id(self) -> TaskID:
        assert self._task is not None
        return self._task

    def _stop_status(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None

    def _stop_progress(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
            self._task = None

    def _stop(self) -> None:
        self._stop_status()
        self._stop_progress()


def _status_table(containers: Sequence[lifecycle.ContainerState]) -> Table:
    table = Table(box=None, pad_edge=False)
    for column in ("service", "containers", "status"):
        table.add_column(column)
    by_service: dict[str, list[lifecycle.ContainerState]] = {}
    for c in containers:
        by_service.setdefault(c.service, []).append(c)
    for service, group in sorted(by_service.items()):
        statuses = sorted({c.status for c in group})
        ok = all(c.ready for c in group)
        table.add_row(
            service, str(len(group)), ("[green]" if ok else "[yellow]") + ", ".join(statuses)
        )
    return table


def _print_up(result: lifecycle.UpResult) -> None:
    plan = result.generated.plan
    built = ", mesh image built" if result.image_built else ""
    console.print(f"[bold green]{plan.project}[/] is up in {result.took:.1f}s{built}")
    for url in result.ingress_urls:
        console.print(f"  ingress  {url}")
    console.print(f"  admin    {result.admin_url}")
    console.print(_status_table(result.containers))


#: How often a foreground ``localmesh up`` looks for certificates that fell due.
RENEW_CHECK_SECONDS = 600.0


def _follow(result: lifecycle.UpResult) -> None:
    """Show the live status until Ctrl-C, then stop the project (as `docker compose up` does).

    Meanwhile it renews the containers' certificates as they fall due (workload identities
    last 24 hours, the mesh container cannot issue them). The banner is inside the ``try``:
    a Ctrl-C that lands while it prints must stop the project too, not leave it running
    behind an exit code. SIGTERM (a CI job cancelled, ``kill``) is treated as Ctrl-C.
    """
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        _print_up(result)
        next_check = time.monotonic() + RENEW_CHECK_SECONDS
        with Live(_status_table(result.containers), console=console, refresh_per_second=1) as live:
            while True:
                time.sleep(2)
                live.update(_status_table(result.runner.ps()))
                if time.monotonic() >= next_check:
                    next_check = time.monotonic() + RENEW_CHECK_SECONDS
                    _renew(result.generated)
    except KeyboardInterrupt:
        console.print("\nstopping (Ctrl-C again to leave it running)...")
        result.runner.check("stop")
        console.print("stopped; `localmesh down` removes the containers and networks")
