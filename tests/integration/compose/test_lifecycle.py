"""`localmesh up` / `down` failures on a real engine, through the real CLI.

Each failure must come back as one user error with a hint (no traceback), and an `up` that
failed before starting anything must leave nothing behind.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.services import free_port

pytestmark = [pytest.mark.docker, pytest.mark.slow]

LOCALMESH = [sys.executable, "-m", "localmesh.cli.main"]


@dataclass
class Run:
    code: int
    out: str
    err: str


def localmesh(cwd: Path, *args: str, env: dict[str, str] | None = None) -> Run:
    done = subprocess.run(
        [*LOCALMESH, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        timeout=300,
    )
    return Run(done.returncode, done.stdout, done.stderr)


def project_containers(name: str) -> list[str]:
    out = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={name}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.split()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, docker_engine: str) -> Path:
    monkeypatch.setenv("LOCALMESH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LOCALMESH_BASE_IMAGE", docker_engine)
    return tmp_path / "home"


def write_project(root: Path, name: str, base: str, extra: str = "", mesh: str = "") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "compose.yaml").write_text(
        f"name: {name}\n"
        "services:\n"
        "  app:\n"
        f"    image: {base}\n"
        '    command: ["python3", "-m", "http.server", "8000"]\n'
        "    expose: ['8000']\n" + extra
    )
    if mesh:
        (root / "mesh.yaml").write_text(mesh)
    return root


def test_no_engine_says_how_to_start_one(tmp_path: Path, home: Path, docker_engine: str) -> None:
    root = write_project(tmp_path / "p", "lmnoengine", docker_engine)
    run = localmesh(root, "up", "-d", env={"DOCKER_HOST": f"unix://{tmp_path}/no.sock"})
    assert run.code == 3, run.err
    assert "error: no Docker engine answers at unix://" in run.err
    assert "hint: start the engine" in run.err
    assert "Traceback" not in run.err


def test_a_taken_host_port_is_named_and_nothing_starts(
    tmp_path: Path, home: Path, docker_engine: str
) -> None:
    name = f"lmport{secrets.token_hex(3)}"
    admin = free_port()
    root = write_project(
        tmp_path / "p", name, docker_engine, mesh=f"mesh:\n  name: {name}\n  admin_port: {admin}\n"
    )
    with socket.create_server(("127.0.0.1", admin)):
        run = localmesh(root, "up", "-d")
    assert run.code == 3, run.err
    assert f"error: port 127.0.0.1:{admin} is already taken on this host" in run.err
    assert f"sport = :{admin}" in run.err
    assert project_containers(name) == []


@pytest.fixture
def taken_network() -> Iterator[str]:
    name = f"lmtest-taken-{secrets.token_hex(3)}"
    subprocess.run(
        ["docker", "network", "create", "--subnet", "10.99.160.0/24", name],
        capture_output=True,
        check=True,
    )
    yield "10.99.160.0/24"
    subprocess.run(["docker", "network", "rm", name], capture_output=True, check=False)


def test_a_user_network_whose_subnet_collides_is_named(
    tmp_path: Path, home: Path, docker_engine: str, taken_network: str
) -> None:
    name = f"lmnet{secrets.token_hex(3)}"
    root = write_project(
        tmp_path / "p",
        name,
        docker_engine,
        extra="    networks: [back]\n"
        "networks:\n"
        "  back:\n"
        f"    ipam: {{config: [{{subnet: '{taken_network}'}}]}}\n",
        mesh=f"mesh:\n  name: {name}\n  admin_port: {free_port()}\n",
    )
    try:
        run = localmesh(root, "up", "-d", "--timeout", "60")
        assert run.code in (2, 3), run.err
        assert "overlaps" in run.err
        assert f"the network {name}_back (10.99.160.0/24) overlaps the existing network" in run.err
        assert "docker network rm lmtest-taken-" in run.err
        assert "Traceback" not in run.err
    finally:
        localmesh(root, "down")
    assert project_containers(name) == []


def test_a_service_that_never_gets_healthy_is_reported_with_its_log(
    tmp_path: Path, home: Path, docker_engine: str
) -> None:
    name = f"lmslow{secrets.token_hex(3)}"
    admin = free_port()
    root = write_project(
        tmp_path / "p",
        name,
        docker_engine,
        extra="  stuck:\n"
        f"    image: {docker_engine}\n"
        "    profiles: [debug]\n"
        "    command: ['sh', '-c', 'echo warming up forever; sleep 600']\n"
        "    healthcheck: {test: ['CMD', 'false'], interval: 1s, retries: 1000}\n",
        mesh=f"mesh:\n  name: {name}\n  admin_port: {admin}\n",
    )
    try:
        run = localmesh(root, "up", "-d", "--profile", "debug", "--timeout", "25")
        assert run.code == 3, run.err
        assert "not ready after 25s" in run.err
        assert f"{name}-stuck-1: running (starting)" in run.err or "stuck (starting)" in run.err
        assert "warming up forever" in run.err
    finally:
        down = localmesh(root, "down")  # no --profile: still removes the debug service
    assert down.code == 0, down.err
    assert project_containers(name) == []


def test_running_out_of_time_inside_compose_up_is_not_ready_not_a_compose_failure(
    tmp_path: Path, home: Path, docker_engine: str
) -> None:
    """`docker compose up -d` itself blocks while a dependency is not healthy: the timeout
    that stops it is reported as "not ready" (exit 3) with what is waiting, not as a
    Compose failure (exit 2)."""
    name = f"lmwait{secrets.token_hex(3)}"
    admin = free_port()
    root = write_project(
        tmp_path / "p",
        name,
        docker_engine,
        extra="    depends_on: {slow: {condition: service_healthy}}\n"
        "  slow:\n"
        f"    image: {docker_engine}\n"
        "    command: ['sh', '-c', 'echo still starting; sleep 600']\n"
        "    healthcheck: {test: ['CMD', 'false'], interval: 1s, retries: 1000}\n",
        mesh=f"mesh:\n  name: {name}\n  admin_port: {admin}\n",
    )
    try:
        run = localmesh(root, "up", "-d", "--timeout", "12")
        assert run.code == 3, run.err
        assert "not ready after 12s" in run.err
        assert "still starting" in run.err
        assert "localmesh down" in run.err
    finally:
        down = localmesh(root, "down")
    assert down.code == 0, down.err
    assert project_containers(name) == []


def test_a_copy_with_the_same_project_name_does_not_take_the_running_one_over(
    tmp_path: Path, home: Path, docker_engine: str
) -> None:
    """Compose would recreate the running project's containers from the copy's files."""
    name = f"lmcopy{secrets.token_hex(3)}"
    mesh = f"mesh:\n  name: {name}\n  admin_port: {free_port()}\n"
    first = write_project(tmp_path / "first", name, docker_engine, mesh=mesh)
    copy = write_project(tmp_path / "copy", name, docker_engine, mesh=mesh)
    try:
        up = localmesh(first, "up", "-d", "--timeout", "120")
        assert up.code == 0, up.err
        running = project_containers(name)
        taken = localmesh(copy, "up", "-d")
        assert taken.code == 2, taken.err
        assert f"project {name} is already running from {first}" in taken.err
        assert "localmesh up -p NAME" in taken.err
        assert project_containers(name) == running  # untouched
    finally:
        down = localmesh(first, "down")
    assert down.code == 0, down.err
    assert project_containers(name) == []


def test_down_without_up_says_there_is_nothing_to_stop(tmp_path: Path, home: Path) -> None:
    run = localmesh(tmp_path, "down")
    assert run.code == 2
    assert "nothing to stop: .localmesh/compose.yaml does not exist" in run.err


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_foreground_up_follows_until_ctrl_c_then_stops_the_project(
    tmp_path: Path, home: Path, docker_engine: str, stop: signal.Signals
) -> None:
    name = f"lmfg{secrets.token_hex(3)}"
    admin = free_port()
    root = write_project(
        tmp_path / "p", name, docker_engine, mesh=f"mesh:\n  name: {name}\n  admin_port: {admin}\n"
    )
    env = {**os.environ, "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}
    # Ctrl-C as a terminal delivers it: a suite started in the background by a
    # non-interactive shell ignores SIGINT, `up` would inherit that (an ignored signal stays
    # ignored across exec, a handled one is reset), and the signal below would never arrive.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(
            [*LOCALMESH, "up"], cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        assert proc.stdout is not None
        seen = b""
        deadline = time.monotonic() + 240
        while b" is up in " not in seen:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, seen.decode(errors="replace")
            seen += line
            assert time.monotonic() < deadline, seen.decode(errors="replace")
        assert proc.poll() is None  # still following after the project is ready
        proc.send_signal(stop)
        rest, _ = proc.communicate(timeout=120)
        output = (seen + rest).decode(errors="replace")
        assert proc.returncode == 0, output
        assert "stopped; `localmesh down` removes the containers and networks" in output
        running = subprocess.run(
            ["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={name}"],
            capture_output=True, text=True, check=True,
        ).stdout.split()  # fmt: skip
        assert running == []
        assert project_containers(name) != []  # stopped, not removed: `down` does that
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        down = localmesh(root, "down")
    assert down.code == 0, down.err
    assert project_containers(name) == []
