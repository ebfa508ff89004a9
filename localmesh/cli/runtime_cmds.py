"""Commands: ``run`` (the runtime, host mode) and ``status``, ``config``, ``logs``.

``run`` is the runtime process itself. The other three are clients of its admin API
(``--admin HOST:PORT`` or ``$LOCALMESH_ADMIN``, else the project in the current directory,
see ``admin_address``), so they work the same against a host-mode runtime and against the
mesh container of ``localmesh up``.
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from localmesh.cli.config_cmds import mesh_yaml_here
from localmesh.cli.output import console, err_console, print_json
from localmesh.config.values import parse_duration, parse_status_filter
from localmesh.errors import LocalmeshError, NotRunningError

DEFAULT_ADMIN = "127.0.0.1:15000"

Admin = Annotated[
    str | None,
    typer.Option(
        "--admin",
        envvar="LOCALMESH_ADMIN",
        metavar="HOST:PORT",
        help="Admin API of the running mesh (env LOCALMESH_ADMIN). Default: the project in "
        "this directory (the port `localmesh up` published, or mesh.yaml's admin_port), "
        "else 127.0.0.1:15000.",
        show_default=False,
    ),
]


def admin_address(given: str | None, here: Path | None = None) -> str:
    """``--admin`` as given (checked), else where the project in ``here`` serves it.

    Several projects can be up at once, each on its own admin port: without this, a command
    run in one project's directory would show another project's mesh. Tried in order: the
    port ``localmesh up``/``generate`` published (``.localmesh/plan.json``), mesh.yaml's
    ``mesh.admin_port`` (host mode), then the default port.
    """
    if given:
        host, _, port = given.split("://")[-1].rstrip("/").rpartition(":")
        if not host or not port.isdigit():
            raise LocalmeshError(
                f"--admin {given!r}: expected HOST:PORT", hint="e.g. --admin 127.0.0.1:15001"
            )
        return given
    here = here or Path.cwd()
    try:
        plan = json.loads((here / ".localmesh" / "plan.json").read_text())
        return f"127.0.0.1:{int(plan['published']['admin'])}"
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        return f"127.0.0.1:{int(mesh_yaml_here(here)['mesh']['admin_port'])}"
    except (ValueError, KeyError, TypeError):
        return DEFAULT_ADMIN


def mesh_container_state(here: Path) -> str | None:
    """The state of the mesh container of the project ``localmesh up`` started here (e.g.
    "exited (137)"), when it is not running; None when there is no such project, no engine
    answers, or the container runs (then its state explains nothing)."""
    import docker.errors

    from localmesh.compose import engine
    from localmesh.compose.lifecycle import MESH_SERVICE

    try:
        project = json.loads((here / ".localmesh" / "plan.json").read_text())["project"]
        client = engine.connect()
        found = client.containers.list(
            all=True,
            filters={
                "label": [
                    f"com.docker.compose.project={project}",
                    f"com.docker.compose.service={MESH_SERVICE}",
                ]
            },
        )
    except (
        OSError,
        ValueError,
        KeyError,
        TypeError,
        LocalmeshError,
        docker.errors.DockerException,
    ):
        return None
    if not found:
        return f"the mesh container of project {project} does not exist"
    container = found[0]
    if container.status == "running":
        return None
    code = container.attrs.get("State", {}).get("ExitCode")
    exited = f" ({code})" if container.status == "exited" and code is not None else ""
    return f"the mesh container {container.name} is {container.status}{exited}"


def first_status(client: AdminClient, given: str | None) -> Any:
    """``/status``; when nothing answers and the project here has a mesh container that is
    not running, the error says its state instead of only asking whether it runs."""
    try:
        return client.get("/status")
    except NotRunningError as exc:
        state = None if given else mesh_container_state(Path.cwd())
        if state is None:
            raise
        raise NotRunningError(
            f"cannot reach the admin API at {client.address}: {state}",
            hint="`docker logs` on it says why; `localmesh up -d` starts it again",
        ) from exc


Json = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]


class AdminClient:
    """A tiny blocking client of the admin API (stdlib only: the CLI starts fast)."""

    def __init__(self, address: str, timeout: float = 5.0) -> None:
        base = address if "://" in address else f"http://{address}"
        self.base = base.rstrip("/")
        self.address = address
        self.timeout = timeout

    def _open(self, path: str, timeout: float | None) -> Any:
        try:
            return urllib.request.urlopen(f"{self.base}{path}", timeout=timeout)
        except urllib.error.HTTPError as exc:
            if 400 <= exc.code < 500:  # the question was wrong: say what the mesh said
                with exc:
                    doc = _json_or_none(exc.read())
                if not isinstance(doc, dict) or "error" not in doc:
                    doc = {"error": f"{self.address}{path}: {exc.code} {exc.reason}"}
                raise LocalmeshError(str(doc["error"]), doc.get("hint")) from None
            return exc  # a JSON error document with a status; callers read it
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise NotRunningError(
                f"cannot reach the admin API at {self.address}: {reason}",
                hint="is `localmesh run` (or `localmesh up`) running? "
                "Point --admin or LOCALMESH_ADMIN at it",
            ) from None

    def get(self, path: str) -> Any:
        with self._open(path, self.timeout) as response:
            return json.loads(response.read().decode())

    def lines(self, path: str) -> Iterator[bytes]:
        """A streaming endpoint, line by line, until the server closes it."""
        with self._open(path, None) as response:
            yield from response


def _json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


def register(app: typer.Typer) -> None:
    @app.command("run")
    def _run(
        *,
        mesh: Annotated[
            Path | None,
            typer.Option(
                "--mesh", metavar="PATH", help="The mesh.yaml to serve (default ./mesh.yaml)."
            ),
        ] = None,
        state_dir: Annotated[
            Path | None,
            typer.Option(
                "--state-dir",
                metavar="DIR",
                help="Where the last good config is kept (default: .localmesh/ beside mesh.yaml).",
            ),
        ] = None,
        admin: Annotated[
            str | None,
            typer.Option(
                "--admin",
                metavar="HOST:PORT",
                help="Bind the admin API here (default: mesh.admin_bind:admin_port, "
                "127.0.0.1:15000).",
            ),
        ] = None,
        access_log: Annotated[
            str,
            typer.Option(
                "--access-log",
                metavar="-|off|PATH",
                help="JSON access log: stdout (-), a file, or off (still kept for `logs`).",
            ),
        ] = "-",
        drain: Annotated[
            str,
            typer.Option(
                "--drain-timeout",
                metavar="DURATION",
                help="Wait this long for in-flight requests (stop, replaced listeners).",
            ),
        ] = "5s",
        container: Annotated[
            bool,
            typer.Option(
                "--container",
                help="Container mode (inside the mesh container `localmesh up` adds).",
            ),
        ] = False,
        plan: Annotated[
            Path | None,
            typer.Option("--plan", metavar="PATH", help="Container mode: generate's plan.json."),
        ] = None,
        project: Annotated[
            Path | None,
            typer.Option(
                "--project",
                metavar="PATH",
                help="Container mode: the normalised project (default: project.json beside "
                "the plan).",
            ),
        ] = None,
        mesh_host_path: Annotated[
            str | None,
            typer.Option(
                "--mesh-host-path",
                metavar="PATH",
                help="Container mode: where --mesh is on the host, to name it so in errors "
                "(generate sets it).",
            ),
        ] = None,
    ) -> None:
        """Run the mesh runtime in host mode: listeners, control plane, admin API.

        Host mode: upstreams are the static `endpoints` in mesh.yaml; no Docker needed. Edits to
        mesh.yaml apply live; a bad edit is rejected and traffic stays on the last good
        config. SIGHUP reloads now; SIGTERM/Ctrl-C drains and stops (twice: at once).

        Examples:

          localmesh run --mesh mesh.yaml

          localmesh run --mesh bench/mesh.yaml --admin 127.0.0.1:15001 --access-log off
        """
        from localmesh.runtime.app import RunOptions, Runtime, run

        try:
            drain_timeout = parse_duration(drain)
        except ValueError as exc:
            raise LocalmeshError(f"--drain-timeout: {exc}", hint="e.g. 5s, 500ms") from None
        if container and plan is None:
            from localmesh.compose.rewrite import CONTAINER_PLAN

            plan = Path(CONTAINER_PLAN)
        if plan is None and mesh is None:
            mesh = Path("mesh.yaml")
        if logging.getLogger().level > logging.INFO:
            logging.getLogger("localmesh").setLevel(logging.INFO)
        options = RunOptions(
            mesh=mesh,
            plan=plan,
            project=project,
            mesh_host_path=mesh_host_path,
            state_dir=state_dir,
            admin=admin,
            access_log=access_log,
            drain_timeout=drain_timeout,
        )

        def ready(runtime: Runtime) -> None:
            for line in runtime.banner():
                err_console.print(escape(line), highlight=False)

        run(options, ready)

    @app.command("status")
    def _status(
        *,
        admin: Admin = None,
        watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh live.")] = False,
        interval: Annotated[
            float,
            typer.Option("--interval", min=0.2, help="Seconds between refreshes (--watch)."),
        ] = 1.0,
        json_out: Json = False,
    ) -> None:
        """Services, endpoints with health, req/s, error rate, p99, last config error.

        Examples:

          localmesh status

          localmesh status --watch

          LOCALMESH_ADMIN=127.0.0.1:15001 localmesh status --json
        """
        client = AdminClient(admin_address(admin))
        first = first_status(client, admin)
        if json_out:
            print_json(first)
            return
        if not watch:
            console.print(render_status(first))
            return
        if not console.is_terminal:  # piped: a Live display would show nothing until the end
            try:
                doc = first
                while True:
                    console.print(render_status(doc))
                    time.sleep(interval)
                    doc = client.get("/status")
            except KeyboardInterrupt:
                return
        with Live(render_status(first), console=console, auto_refresh=False) as live:
            try:
                while True:
                    time.sleep(interval)
                    live.update(render_status(client.get("/status")), refresh=True)
            except KeyboardInterrupt:
                pass

    @app.command("config")
    def _config(*, admin: Admin = None, json_out: Json = False) -> None:
        """The active compiled snapshot: config, listeners, endpoints (secrets redacted).

        Examples:

          localmesh config

          localmesh config --json | jq '.listeners'
        """
        doc = AdminClient(admin_address(admin)).get("/config")
        if json_out:
            print_json(doc)
        else:
            console.print_json(data=doc)

    @app.command("logs")
    def _logs(
        *,
        admin: Admin = None,
        service: Annotated[
            str | None,
            typer.Option("--service", "-s", metavar="SERVICE", help="Only calls from or to it."),
        ] = None,
        status: Annotated[
            str | None,
            typer.Option(
                "--status", metavar="CODES", help="Only these statuses: 503, 5xx, '4xx,503'."
            ),
        ] = None,
        limit: Annotated[
            int, typer.Option("--limit", "-n", min=0, metavar="N", help="How many recent records.")
        ] = 50,
        follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing.")] = False,
        json_out: Json = False,
    ) -> None:
        """The access log (recent records, newest last), filtered by service and status.

        Records are in the order their requests ended; each shows when its request started
        (as Envoy logs). With a filter, older error records kept apart are searched too.

        Examples:

          localmesh logs -s api --status 5xx

          localmesh logs -f --json | jq .path
        """
        query = {"limit": str(limit)}
        if service:
            query["service"] = service
        if status:
            try:
                parse_status_filter(status)
            except ValueError as exc:
                raise LocalmeshError(f"--status: {exc}", hint="e.g. --status 5xx,429") from None
            query["status"] = status
        client = AdminClient(admin_address(admin))
        if not follow:
            records = client.get("/logs?" + urllib.parse.urlencode(query))["records"]
            for record in records:
                _print_record(record, json_out)
            if not records and not json_out and limit:
                wanted = ", ".join(f"{k} {v}" for k, v in query.items() if k != "limit")
                err_console.print(f"no records{f' ({wanted})' if wanted else ''} yet")
            return
        query["follow"] = "1"
        try:
            for raw in client.lines("/logs?" + urllib.parse.urlencode(query)):
                if raw.strip():
                    _print_record(json.loads(raw), json_out)
        except KeyboardInterrupt:
            pass


def _print_record(record: dict[str, Any], json_out: bool) -> None:
    if json_out:
        os.write(1, (json.dumps(record, separators=(",", ":")) + "\n").encode())
        return
    console.print(format_record(record), highlight=False, soft_wrap=True)


def format_record(record: dict[str, Any]) -> Text:
    """One access-log record as a line: time, caller → callee, request, status, timing."""
    when = record.get("time") or record.get("start_time") or ""
    status = record.get("status")
    style = (
        "red"
        if isinstance(status, int) and status >= 500
        else ("yellow" if isinstance(status, int) and status >= 400 else "green")
    )
    text = Text()
    text.append(f"{str(when)[:23]:<23} ", style="dim")
    text.append(f"{record.get('source', '-')} → {record.get('destination', '-')} ")
    method, path = record.get("method"), record.get("path")
    if method or path:
        text.append(f"{method or ''} {path or ''} ")
    text.append(str(status if status is not None else record.get("protocol", "tcp")), style=style)
    flags = record.get("flags") or record.get("response_flags")
    if flags and flags != "-":
        text.append(f" {flags}", style="yellow")
    duration = record.get("duration_ms", record.get("duration"))
    if duration is not None:
        text.append(f" {duration}ms", style="dim")
    upstream = record.get("upstream") or record.get("upstream_endpoint")
    if upstream:
        text.append(f" → {upstream}", style="dim")
    return text


def render_status(doc: dict[str, Any]) -> Group:
    """The status document as a header, warnings, and one row per service."""
    parts: list[Any] = []
    snap = doc.get("snapshot")
    ready = (
        "[green]ready[/]" if doc.get("ready") else f"[red]not ready[/] ({doc.get('ready_reason')})"
    )
    if snap:
        parts.append(
            Text.from_markup(
                f"localmesh {doc.get('version', '')} · snapshot [bold]v{snap['version']}[/] "
                f"({snap['hash']}) from {escape(str(snap['origin']))} · up "
                f"{_ago(doc.get('uptime', 0))} · {ready}"
            )
        )
    else:
        parts.append(
            Text.from_markup(f"localmesh {doc.get('version', '')} · no snapshot · {ready}")
        )
    if doc.get("serving_persisted"):
        parts.append(
            Text.from_markup(
                "[yellow]serving the persisted last good config: "
                f"{escape(str(doc.get('source')))} is invalid[/]"
            )
        )
    restart = doc.get("restart_required")
    if restart:
        parts.append(
            Text.from_markup(
                f"[yellow]restart needed: {escape(', '.join(restart))} changed, read only at "
                "start (localmesh run again; container mode: localmesh up)[/]"
            )
        )
    err = doc.get("last_error")
    if err:
        parts.append(
            Text.from_markup(
                f"[red]last config error[/] ({escape(str(err.get('trigger')))}, "
                f"{_ago(time.time() - float(err.get('at', time.time())))} ago):"
            )
        )
        problems = err.get("problems") or [{"message": err.get("message")}]
        for p in problems:
            where = f"{p['file']}:{p['line']}:{p['column']}: " if p.get("file") else ""
            hint = f" ({p['hint']})" if p.get("hint") else ""
            parts.append(Text(f"  {where}{p.get('message')}{hint}", style="red"))
    for svc in doc.get("services", []):
        failure = svc.get("discovery_error")
        if failure:
            for_how_long = _ago(time.time() - float(failure.get("since", time.time())))
            parts.append(
                Text(f"discovery: {failure.get('message')} (for {for_how_long})", style="red")
            )
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("SERVICE", "LISTENERS", "ENDPOINTS", "REQ/S", "ERRORS", "P99"):
        table.add_column(
            column, justify="right" if column in ("REQ/S", "ERRORS", "P99") else "left"
        )
    listeners: dict[str, list[str]] = {}
    for lst in doc.get("listeners", []):
        listeners.setdefault(lst["service"], []).append(
            f"{lst['port']}/{lst['protocol']} {lst.get('address') or '[red]unbound[/]'}"
        )
    for svc in doc.get("services", []):
        traffic = svc.get("traffic") or {}
        rps = traffic.get("requests_per_second")
        error_rate = traffic.get("error_rate")
        p99 = traffic.get("p99_ms")
        table.add_row(
            svc["name"] if svc.get("meshed", True) else f"[dim]{svc['name']} (unmeshed)[/]",
            "\n".join(listeners.get(svc["name"], [])) or "-",
            _endpoints(svc.get("endpoints", [])),
            _rate_cell(rps, traffic.get("connections_per_second")),
            _error_cell(error_rate),
            f"{p99:.1f}ms" if p99 is not None else "-",
        )
    parts.append(table)
    return Group(*parts)


def _endpoints(endpoints: list[dict[str, Any]]) -> str:
    if not endpoints:
        return "[red]none[/]"
    cells = []
    for ep in endpoints:
        health = str(ep.get("health", "unknown"))
        color = {"healthy": "green", "unknown": "white"}.get(health, "red")
        address = ep.get("address") or f"{ep.get('host')}:{ep.get('port')}"
        cells.append(f"[{color}]{escape(str(address))}[/] {health}")
    return "\n".join(cells)


def _rate_cell(rps: float | None, cps: float | None) -> str:
    """Requests per second; for TCP services (no requests), connections per second."""
    if rps:
        return f"{rps:.1f}"
    if cps:
        return f"{cps:.1f} conn/s"
    return "-"


def _error_cell(rate: float | None) -> str:
    if rate is None:
        return "-"
    color = "green" if rate == 0 else "yellow" if rate < 0.05 else "red"
    return f"[{color}]{rate * 100:.1f}%[/]"


def _ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
