"""``localmesh up`` and ``down``: the user's project, meshed, started and checked.

``up``::

    engine answers, Compose found ─▶ generate (CA, plan, certs, .localmesh/compose.yaml)
      ─▶ the mesh image, built if its tag is missing ─▶ host ports free?
      ─▶ docker compose up -d (its own waits for depends_on conditions)
      ─▶ wait until every container is running and healthy (or exited 0) ─▶ ready

``down`` runs ``docker compose down`` on the generated file, which names exactly what
``up`` created (the project's containers and networks, the mesh network included).

Compose failures come back as one-line user errors: a host port already taken, a subnet
that overlaps a network Docker already has, a container that is unhealthy, with the log
tail that says why. Deciding (readiness, classifying errors) is pure; ``ComposeRunner``
is the one place that runs Compose.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import docker.errors

from localmesh.compose import engine, image
from localmesh.compose.generate import STATE_DIR, GenerateOptions, GenerateResult, generate
from localmesh.compose.project import compose_command
from localmesh.errors import ComposeError, DockerError, LocalmeshError, RuntimeStartError

MESH_SERVICE = "localmesh"
LOG_TAIL = 8
TIMED_OUT = -1  # ComposeRunner.run: the command ran out of time and was stopped


class Ui(Protocol):
    """What ``up`` shows while it works; the CLI draws it with rich, tests record it."""

    def build_progress(self) -> image.BuildProgress: ...

    def waiting(self, text: str) -> None: ...

    def note(self, text: str) -> None: ...


# --- containers and readiness (pure) -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class ContainerState:
    """One row of ``docker compose ps -a --format json``."""

    service: str
    name: str
    state: str  # running, exited, restarting, created, ...
    health: str  # healthy, unhealthy, starting, "" (no healthcheck)
    exit_code: int = 0

    @classmethod
    def from_ps(cls, row: Mapping[str, Any]) -> ContainerState:
        return cls(
            service=str(row.get("Service", "")),
            name=str(row.get("Name", "")),
            state=str(row.get("State", "")),
            health=str(row.get("Health", "")),
            exit_code=int(row.get("ExitCode") or 0),
        )

    @property
    def ready(self) -> bool:
        if self.state == "exited":
            return self.exit_code == 0  # a one-shot job (migrations) that finished
        return self.state == "running" and self.health in ("", "healthy")

    @property
    def failed(self) -> bool:
        """Will not get ready by waiting (a restart policy shows as ``restarting``)."""
        return (self.state == "exited" and self.exit_code != 0) or self.state == "dead"

    @property
    def status(self) -> str:
        if self.state == "exited":
            return f"exited ({self.exit_code})"
        return f"{self.state} ({self.health})" if self.health else self.state


def parse_ps(output: str) -> list[ContainerState]:
    """Compose prints one JSON object per line (v2.21+) or one JSON array (older v2)."""
    text = output.strip()
    if not text:
        return []
    rows: list[Mapping[str, Any]]
    if text.startswith("["):
        rows = json.loads(text)
    else:
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return sorted((ContainerState.from_ps(r) for r in rows), key=lambda c: (c.service, c.name))


@dataclass(frozen=True, slots=True)
class Readiness:
    waiting: tuple[ContainerState, ...]
    failed: tuple[ContainerState, ...]
    missing: tuple[str, ...]  # expected services with no container at all

    @property
    def ready(self) -> bool:
        return not (self.waiting or self.failed or self.missing)

    def describe(self) -> str:
        parts = [f"{c.service} ({c.health or c.state})" for c in self.waiting]
        parts += [f"{c.service} ({c.status})" for c in self.failed]
        parts += [f"{s} (no container)" for s in self.missing]
        return ", ".join(parts)


def readiness(states: Sequence[ContainerState], expected: Sequence[str]) -> Readiness:
    seen = {c.service for c in states}
    return Readiness(
        waiting=tuple(c for c in states if not c.ready and not c.failed),
        failed=tuple(c for c in states if c.failed),
        missing=tuple(s for s in expected if s not in seen),
    )


# --- Compose failures as user errors (pure) ----------------------------------------------

_BIND = re.compile(
    r"(?:Bind for (?P<a>[\d.:\[\]a-f]+?):(?P<ap>\d+) failed: port is already allocated"
    r"|listen tcp[46]? (?P<b>[\d.:\[\]a-f]*?):(?P<bp>\d+): bind: address already in use)"
)
_POOL = re.compile(r"network (?P<net>\S+?):? .*(?:Pool overlaps|overlaps with)", re.IGNORECASE)
_UNHEALTHY = re.compile(r"container (?P<name>\S+) (?:is unhealthy|exited \(\d+\))")


def classify_failure(stderr: str, command: str = "docker compose up") -> LocalmeshError:
    """One user error for what Compose said (its last lines are the cause)."""
    bind = _BIND.search(stderr)
    if bind:
        host = bind.group("a") or bind.group("b") or "0.0.0.0"
        port = bind.group("ap") or bind.group("bp")
        return port_taken_error(host, int(port))
    pool = _POOL.search(stderr)
    if pool:
        return _overlap(pool.group("net"))
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    last = lines[-1] if lines else "(no output)"
    return ComposeError(f"{command} failed: {last}", hint=_tail_hint(lines))


def overlap_error(client: Any, generated: GenerateResult, network: str) -> DockerError:
    """Name the existing network that a user network's declared subnet collides with."""
    declared: list[ipaddress.IPv4Network] = []
    for key, net in generated.project.networks().items():
        if net.get("name", key) == network or key == network:
            for pool in (net.get("ipam") or {}).get("config") or ():
                with contextlib.suppress(ValueError, TypeError):
                    declared.append(ipaddress.IPv4Network(pool.get("subnet")))
    clashes: list[str] = []
    with contextlib.suppress(docker.errors.DockerException):
        for other in client.networks.list():
            for pool in (other.attrs.get("IPAM") or {}).get("Config") or ():
                with contextlib.suppress(ValueError, TypeError):
                    subnet = ipaddress.ip_network(pool.get("Subnet"))
                    if any(subnet.overlaps(d) for d in declared if subnet.version == 4):
                        clashes.append(f"{other.name} ({subnet})")
    if not clashes:
        return _overlap(network)
    mine = ", ".join(str(d) for d in declared)
    return _overlap(
        f"{network} ({mine})",
        f"the existing network {', '.join(clashes)}",
        f"docker network rm {clashes[0].split()[0]}",
    )


def _overlap(
    network: str,
    other: str = "a network Docker already has",
    remove: str = "docker network ls; docker network inspect NAME",
) -> DockerError:
    return DockerError(
        f"the network {network} overlaps {other}",
        hint=f"change its subnet in your compose file, or remove the other network ({remove})",
    )


def port_taken_error(host: str, port: int) -> DockerError:
    return DockerError(
        f"port {host}:{port} is already taken on this host",
        hint=f"stop what listens there (ss -ltnp 'sport = :{port}'), or change the port "
        "(mesh.yaml: ingress.https_port / ingress.http_port / mesh.admin_port)",
    )


def _tail_hint(lines: Sequence[str]) -> str:
    if len(lines) <= 1:
        return "run it again with --debug for more"
    return "Compose said:\n" + "\n".join(f"  | {ln}" for ln in lines[-LOG_TAIL:])


# --- running Compose ---------------------------------------------------------------------


@dataclass(frozen=True)
class ComposeRunner:
    """Compose on one generated file; every call names the file and the profiles."""

    compose_file: Path
    profiles: tuple[str, ...] = ()
    base: tuple[str, ...] = field(default_factory=lambda: tuple(compose_command()))

    def command(self, *args: str) -> list[str]:
        cmd = [*self.base, "-f", str(self.compose_file)]
        for p in self.profiles:
            cmd += ["--profile", p]
        return [*cmd, *args]

    def run(
        self,
        *args: str,
        on_line: Callable[[str], None] | None = None,
        timeout: float | None = None,
    ) -> tuple[int, str]:
        """Run and return ``(exit code, output)``; ``on_line`` sees each line as it comes.
        Past ``timeout`` the command is stopped and the code is ``TIMED_OUT``, whatever it
        exited with when stopped (Compose exits 1 or 130 on SIGTERM)."""
        proc = subprocess.Popen(
            self.command(*args),
            cwd=self.compose_file.parent,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        lines: list[str] = []

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line.rstrip("\n"))
                if on_line is not None:
                    on_line(line.strip())

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()
            proc.wait()
            code = TIMED_OUT
        reader.join(5)
        return code, "\n".join(lines)

    def check(self, *args: str, **kw: Any) -> str:
        code, out = self.run(*args, **kw)
        if code != 0:
            raise classify_failure(out, f"docker compose {args[0]}")
        return out

    def ps(self) -> list[ContainerState]:
        return parse_ps(self.check("ps", "-a", "--format", "json"))

    def services(self) -> list[str]:
        return self.check("config", "--services").split()

    def logs_tail(self, service: str, lines: int = LOG_TAIL) -> list[str]:
        code, out = self.run("logs", "--no-color", "--no-log-prefix", "--tail", str(lines), service)
        return out.splitlines()[-lines:] if code == 0 else []


# --- up / down ---------------------------------------------------------------------------


@dataclass(frozen=True)
class UpOptions:
    generate: GenerateOptions = field(default_factory=GenerateOptions)
    compose_args: tuple[str, ...] = ()  # passed to `docker compose up` (--build, --scale ...)
    timeout: float = 180.0


@dataclass(frozen=True)
class UpResult:
    generated: GenerateResult
    runner: ComposeRunner
    containers: tuple[ContainerState, ...]
    image_built: bool
    took: float

    @property
    def ingress_urls(self) -> list[str]:
        published = self.generated.plan.published
        if published.https is None:
            return []
        port = "" if published.https == 443 else f":{published.https}"
        return [
            f"https://{h.host.replace('*', 'app')}{port}/"
            for h in self.generated.mesh.ingress.hosts
        ]

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.generated.plan.published.admin}/"


def up(options: UpOptions, ui: Ui) -> UpResult:
    started = time.monotonic()
    client = engine.connect()
    compose_command()  # Compose missing: say so before any work
    gen_opts = options.generate
    recipe = image.image_recipe(gen_opts.base_image)
    ui.waiting("generating the meshed project")
    generated = generate(gen_opts, image_tag=recipe.tag)
    if generated.ca_created:
        ui.note("created a local CA (trust it with `localmesh ca trust`)")
    built = image.ensure_mesh_image(client, recipe, ui.build_progress())
    runner = ComposeRunner(generated.compose_file, generated.project.profiles)
    check_project_owner(client, generated)
    check_host_ports(client, generated)
    deadline = started + options.timeout

    def progress(line: str) -> None:
        if line:
            ui.waiting(f"docker compose up: {line}")

    code, out = runner.run(
        "up", "-d", "--remove-orphans", *options.compose_args,
        on_line=progress, timeout=max(1.0, deadline - time.monotonic()),
    )  # fmt: skip
    if code != 0:
        if code == TIMED_OUT:
            reason = f"not ready after {options.timeout:.0f}s"
            raise not_ready_error(runner, runner.ps(), runner.services(), reason)
        unhealthy = _UNHEALTHY.search(out)
        if unhealthy:
            reason = f"failed: {unhealthy.group(0)}"
            raise not_ready_error(runner, runner.ps(), runner.services(), reason)
        pool = _POOL.search(out)
        if pool:
            raise overlap_error(client, generated, pool.group("net"))
        raise classify_failure(out)
    containers = wait_ready(runner, ui, deadline, options.timeout)
    return UpResult(generated, runner, tuple(containers), built, time.monotonic() - started)


def wait_ready(
    runner: ComposeRunner, ui: Ui, deadline: float, timeout: float, poll: float = 0.5
) -> list[ContainerState]:
    """Poll until every container is ready; fail early on one that cannot become ready."""
    expected = runner.services()
    while True:
        states = runner.ps()
        state = readiness(states, expected)
        if state.ready:
            return states
        if state.failed:
            raise not_ready_error(runner, states, expected, "failed")
        if time.monotonic() > deadline:
            raise not_ready_error(runner, states, expected, f"not ready after {timeout:.0f}s")
        ui.waiting(f"waiting for {state.describe()}")
        time.sleep(poll)


def not_ready_error(
    runner: ComposeRunner, states: Sequence[ContainerState], expected: Sequence[str], reason: str
) -> RuntimeStartError:
    """What is not ready, why we stopped waiting, and the last lines its containers logged."""
    state = readiness(states, expected)
    lines: list[str] = []
    for c in (*state.failed, *state.waiting):
        lines.append(f"{c.name}: {c.status}")
        lines += [f"  | {ln}" for ln in runner.logs_tail(c.service)]
    lines += [f"{s}: no container" for s in state.missing]
    what = state.describe() or "the project"
    return RuntimeStartError(
        f"{what}: {reason}\n" + "\n".join(lines),
        hint="see `docker compose -f "
        f"{_relative(runner.compose_file)} logs SERVICE`; the project is left running "
        "for you to look at (`localmesh down` stops it)",
    )


def check_host_ports(client: Any, generated: GenerateResult) -> None:
    """The mesh's host ports must be free, unless this project already holds them."""
    published = generated.plan.published
    ports = [p for p in (published.admin, published.https, published.http) if p is not None]
    held = _ports_held_by(client, generated.plan.project)
    for port in ports:
        if port in held:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            # SO_REUSEADDR as every server sets it: connections of a just-stopped mesh in
            # TIME_WAIT must not count as "taken"; a listening socket still does.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                raise port_taken_error("127.0.0.1", port) from None


def check_project_owner(client: Any, generated: GenerateResult) -> None:
    """A project name already running from another directory is refused: Compose would
    silently recreate that project's containers from this directory's files."""
    mine = {str(generated.compose_file), str(generated.compose_file.resolve())}
    for container in _running(client, generated.plan.project):
        files = (container.labels or {}).get("com.docker.compose.project.config_files", "")
        if files and not mine & set(files.split(",")):
            where = Path(files.split(",")[0]).parent
            if where.name == ".localmesh":
                where = where.parent
            raise ComposeError(
                f"project {generated.plan.project} is already running from {where}",
                hint=f"stop it there first (`localmesh down` in {where}), or give this copy "
                "its own name: `localmesh up -p NAME`",
            )


def _running(client: Any, project: str) -> list[Any]:
    """The project's running containers (none when the engine does not answer: the
    checks that use them then leave the verdict to Compose)."""
    try:
        return list(
            client.containers.list(filters={"label": f"com.docker.compose.project={project}"})
        )
    except docker.errors.DockerException:
        return []


def _ports_held_by(client: Any, project: str) -> set[int]:
    held: set[int] = set()
    for container in _running(client, project):
        for bindings in (container.ports or {}).values():
            held.update(int(b["HostPort"]) for b in bindings or () if b.get("HostPort"))
    return held


@dataclass(frozen=True)
class DownOptions:
    cwd: Path | None = None
    output: Path | None = None  # the generated compose file; default .localmesh/compose.yaml
    volumes: bool = False


def down(options: DownOptions, ui: Ui) -> list[str]:
    """Stop and remove what ``up`` started; returns Compose's lines about what it removed."""
    engine.connect()
    cwd = (options.cwd or Path.cwd()).resolve()
    compose_file = cwd / (options.output or Path(STATE_DIR) / "compose.yaml")
    if not compose_file.is_file():
        raise LocalmeshError(
            f"nothing to stop: {_relative(compose_file)} does not exist",
            hint="run `localmesh down` in the directory where you ran `localmesh up`",
        )
    # Every profile: a service `up` started under --profile is still part of the project,
    # and Compose's down would otherwise leave it (and so its networks) behind.
    runner = ComposeRunner(compose_file, ("*",))
    args = ["down", "--remove-orphans", *(["--volumes"] if options.volumes else [])]
    removed: list[str] = []

    def progress(line: str) -> None:
        if line:
            ui.waiting(line)
            if line.endswith("Removed"):
                removed.append(line.removesuffix("Removed").strip())

    runner.check(*args, on_line=progress)
    return removed


def _relative(path: Path) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:
        return str(path)
