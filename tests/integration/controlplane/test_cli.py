"""`localmesh run` as a user runs it (a process, signals) and the CLI that talks to it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.services import HttpBackend, free_port, run_http_backend

LOCALMESH = [sys.executable, "-m", "localmesh.cli.main"]


def mesh_yaml(port: int, backend: HttpBackend, extra: str = "") -> str:
    return f"""\
mesh:
  name: shop
services:
  api:
    ports: [{{port: 8000, listen: "127.0.0.1:{port}"}}]
    endpoints: ["{backend.host}:{backend.port}"]
    routes:
      - name: all
        route: [{{service: api}}]
        headers: {{request: {{set: {{authorization: "Bearer hush", x-tag: "{extra or "one"}"}}}}}}
"""


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_ready(admin: str, proc: subprocess.Popen[bytes], limit: float = 20.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"localmesh run exited {proc.returncode}")
        try:
            if get(f"http://{admin}/readyz")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError("never ready")


def cli(*args: str, admin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LOCALMESH, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "LOCALMESH_ADMIN": admin, "COLUMNS": "200"},
        timeout=30,
        check=False,
    )


@pytest.fixture
def backend() -> Iterator[HttpBackend]:
    with run_http_backend("api") as b:
        yield b


def test_run_serves_reloads_on_sighup_and_stops_cleanly(
    tmp_path: Path, backend: HttpBackend
) -> None:
    mesh = tmp_path / "mesh.yaml"
    port, admin_port = free_port(), free_port()
    admin = f"127.0.0.1:{admin_port}"
    mesh.write_text(mesh_yaml(port, backend))
    log_file = tmp_path / "access.log"
    proc = subprocess.Popen(
        [*LOCALMESH, "run", "--mesh", str(mesh), "--admin", admin, "--access-log", str(log_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_ready(admin, proc)
        status, body = get(f"http://127.0.0.1:{port}/echo")
        assert status == 200
        assert json.loads(body)["headers"]["x-tag"] == "one"

        # status --json / table, config, logs
        doc = json.loads(cli("status", "--json", admin=admin).stdout)
        assert doc["snapshot"]["version"] == 1
        table = cli("status", admin=admin)
        assert table.returncode == 0
        assert "api" in table.stdout
        assert f"127.0.0.1:{port}" in table.stdout
        # piped, --watch prints each refresh (a live display would print nothing)
        watch = subprocess.Popen(
            [*LOCALMESH, "status", "--watch", "--interval", "0.3"],
            stdout=subprocess.PIPE,
            env={**os.environ, "LOCALMESH_ADMIN": admin, "COLUMNS": "200"},
        )
        time.sleep(2.5)
        watch.send_signal(signal.SIGINT)
        out, _ = watch.communicate(timeout=10)
        assert watch.returncode == 0
        assert out.decode().count("snapshot v1") >= 2
        config = cli("config", "--json", admin=admin)
        assert "hush" not in config.stdout
        assert json.loads(config.stdout)["listeners"][0]["bind_port"] == port
        get(f"http://127.0.0.1:{port}/status/503")
        deadline = time.monotonic() + 5
        while True:
            logs = cli("logs", "--json", "--status", "5xx", admin=admin)
            lines = [json.loads(x) for x in logs.stdout.splitlines() if x.strip()]
            if lines or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert lines
        assert all(rec["status"] == 503 for rec in lines)
        assert cli("logs", "--service", "api", admin=admin).returncode == 0
        assert cli("logs", "--service", "unknown", admin=admin).returncode == 0  # outsiders
        # a service the mesh does not know is an error, not "no records" or a silent follow
        for follow in ([], ["--follow"]):
            nope = cli("logs", "-s", "nope", *follow, admin=admin)
            assert nope.returncode == 2
            assert nope.stderr.splitlines() == [
                "error: no service 'nope' in the mesh, and no call from or to it is logged",
                "hint: services: api, unknown",
            ]

        # SIGHUP reloads at once (the watcher would too)
        mesh.write_text(mesh_yaml(port, backend, extra="two"))
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while json.loads(get(f"http://127.0.0.1:{port}/echo")[1])["headers"]["x-tag"] != "two":
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err.decode()
    assert f"admin API   http://{admin}" in err.decode()
    records = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert any(r.get("status") == 503 for r in records)


def test_run_with_a_broken_mesh_and_no_state_exits_2_with_the_position(tmp_path: Path) -> None:
    mesh = tmp_path / "mesh.yaml"

    def localmesh(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*LOCALMESH, *args], capture_output=True, text=True, timeout=30, check=False
        )

    def run() -> subprocess.CompletedProcess[str]:
        return localmesh("run", "--mesh", str(mesh), "--admin", f"127.0.0.1:{free_port()}")

    mesh.write_text("services:\n  api:\n    portz: [80]\n")
    done = run()
    assert done.returncode == 2
    assert f"{mesh}:3:5" in done.stderr
    assert "Traceback" not in done.stderr
    # valid YAML the compiler refuses (no default listener above port 55535): nothing was
    # active before, so the hint must not say the previous configuration stays active
    mesh.write_text("services:\n  api:\n    ports: [60000]\n    endpoints: ['127.0.0.1:9']\n")
    done = run()
    assert done.returncode == 2
    assert "no default host-mode listener above port 55535" in done.stderr
    assert "stays active" not in done.stderr
    assert "Traceback" not in done.stderr
    # and validate finds it first: without a compose project it checks host mode's listeners
    checked = localmesh("validate", "--no-compose", "--mesh", str(mesh))
    assert checked.returncode == 2
    assert f"{mesh}:2:3: api:60000: no default host-mode listener" in checked.stderr


def test_run_whose_port_is_taken_exits_3_with_the_position(
    tmp_path: Path, backend: HttpBackend
) -> None:
    mesh = tmp_path / "mesh.yaml"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        mesh.write_text(mesh_yaml(taken.getsockname()[1], backend))
        done = subprocess.run(
            [*LOCALMESH, "run", "--mesh", str(mesh), "--admin", f"127.0.0.1:{free_port()}"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert done.returncode == 3
    # at the port's listen: value, as a rejected reload says it
    assert f"error: {mesh}:5:34: listener api:8000: cannot listen on" in done.stderr
    assert "Traceback" not in done.stderr


def test_client_commands_say_when_no_runtime_answers() -> None:
    done = cli("status", admin=f"127.0.0.1:{free_port()}")
    assert done.returncode == 3  # an environment problem, not bad input
    assert "cannot reach the admin API" in done.stderr
    assert "Traceback" not in done.stderr


def test_status_table_shows_traffic_errors_and_the_persisted_warning() -> None:
    from rich.console import Console

    from localmesh.cli.runtime_cmds import format_record, render_status

    doc = {
        "version": "0.1.0",
        "source": "mesh.yaml",
        "ready": True,
        "ready_reason": "ok",
        "uptime": 125,
        "snapshot": {"version": 4, "hash": "abcd", "origin": "persisted"},
        "serving_persisted": True,
        "restart_required": ["mesh.admin_port"],
        "last_error": {
            "message": "bad",
            "trigger": "start",
            "at": time.time() - 3,
            "problems": [
                {
                    "file": "/p/mesh.yaml",
                    "line": 8,
                    "column": 5,
                    "message": "unknown key",
                    "hint": "did you mean 'retries'?",
                }
            ],
        },
        "listeners": [
            {"service": "api", "port": 8000, "protocol": "http", "address": "127.0.0.1:18000"}
        ],
        "services": [
            {
                "name": "api",
                "meshed": True,
                "endpoints": [
                    {"address": "127.0.0.1:9001", "health": "healthy"},
                    {"address": "127.0.0.1:9002", "health": "ejected"},
                ],
                "traffic": {"requests_per_second": 41.5, "error_rate": 0.25, "p99_ms": 23.4},
            },
            {
                "name": "db",
                "meshed": True,
                "endpoints": [],
                "traffic": None,
                "discovery_error": {
                    "message": "looking up db.shop_localmesh failed: Temporary failure",
                    "since": time.time() - 65,
                },
            },
            {
                "name": "cache",
                "meshed": True,
                "endpoints": [{"address": "127.0.0.1:6379", "health": "unknown"}],
                "traffic": {"requests_per_second": 0.0, "connections_per_second": 2.5},
            },
        ],
    }
    console = Console(record=True, width=160)
    console.print(render_status(doc))
    text = console.export_text()
    assert "snapshot v4 (abcd) from persisted · up 2m05s · ready" in text
    assert "serving the persisted last good config: mesh.yaml is invalid" in text
    assert "restart needed: mesh.admin_port changed, read only at start" in text
    assert "/p/mesh.yaml:8:5: unknown key (did you mean 'retries'?)" in text
    assert "8000/http 127.0.0.1:18000" in text
    assert "127.0.0.1:9002 ejected" in text
    assert "41.5" in text
    assert "25.0%" in text
    assert "23.4ms" in text
    assert "none" in text  # db has no endpoint
    assert "discovery: looking up db.shop_localmesh failed: Temporary failure (for 1m05s)" in text
    assert "2.5 conn/s" in text

    line = format_record(
        {
            "time": "2026-01-01T00:00:00.000Z",
            "source": "web",
            "destination": "api",
            "method": "GET",
            "path": "/x",
            "status": 503,
            "flags": "UF",
            "duration_ms": 12,
        }
    ).plain
    assert line.startswith("2026-01-01T00:00:00.000 web → api GET /x 503 UF 12ms")
