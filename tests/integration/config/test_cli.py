"""``localmesh init``, ``validate`` and ``analyze`` as a user runs them: real CLI, real Compose."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parents[3]
EXAMPLES = sorted(p.parent for p in (REPO / "examples").glob("*/compose.yaml"))

COMPOSE = """\
name: demo
services:
  web:
    image: nginx
    ports: ["8080:80"]
  api:
    image: busybox
    expose: ["8000"]
  db:
    image: postgres:15
  dns:
    image: busybox
    ports: ["53:53/udp"]
  metrics:
    image: busybox
    network_mode: host
"""


def localmesh(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "localmesh.cli.main", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert "Traceback" not in done.stderr
    return done


@pytest.fixture
def project_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("COMPOSE_FILE", raising=False)
    (tmp_path / "compose.yaml").write_text(COMPOSE)
    return tmp_path


def test_init_writes_a_mesh_that_validates_and_never_overwrites(project_dir: Path) -> None:
    done = localmesh(project_dir, "init")
    assert done.returncode == 0, done.stderr
    mesh = project_dir / "mesh.yaml"
    text = mesh.read_text()
    db_port = "      - {port: 5432, protocol: postgres}   # from well-known-image; protocol by"
    assert f"{db_port} image postgres" in text
    assert "meshed: false   # it uses network_mode: host" in text
    assert "db: 5432/postgres" in done.stdout

    done = localmesh(project_dir, "validate")
    assert (done.returncode, done.stderr) == (0, "")
    assert "valid: mesh.yaml: 5 services (3 meshed)" in done.stdout  # dns (UDP), metrics

    mesh.write_text(text + "# mine\n")
    done = localmesh(project_dir, "init")
    assert done.returncode == 2
    assert "mesh.yaml already exists; not overwriting it" in done.stderr
    assert "--force" in done.stderr
    assert mesh.read_text().endswith("# mine\n")

    assert localmesh(project_dir, "init", "--force").returncode == 0
    assert mesh.read_text() == text
    assert sorted(p.name for p in project_dir.iterdir()) == ["compose.yaml", "mesh.yaml"]


def test_init_stdout_and_other_paths(project_dir: Path) -> None:
    done = localmesh(project_dir, "init", "--stdout")
    assert done.returncode == 0
    assert done.stdout.startswith("# mesh.yaml for the compose project 'demo'")
    assert not (project_dir / "mesh.yaml").exists()
    done = localmesh(project_dir, "init", "--mesh", "conf/mesh.yaml")
    assert done.returncode == 0
    assert (project_dir / "conf" / "mesh.yaml").is_file()


def test_compose_options_reach_compose(project_dir: Path) -> None:
    """-f, --env-file, -p and --profile mean what they mean to docker compose."""
    (project_dir / "debug.yaml").write_text(
        "services:\n  debug:\n    image: busybox\n    profiles: [debug]\n"
        "    environment: {API: 'http://api:${API_PORT:?}'}\n"
    )
    (project_dir / "ports.env").write_text("API_PORT=8001\n")
    args = ("-f", "compose.yaml", "-f", "debug.yaml", "--env-file", "ports.env")
    plain = localmesh(project_dir, "init", "--stdout", *args)
    assert plain.returncode == 0, plain.stderr
    assert "  debug:" not in plain.stdout
    done = localmesh(project_dir, "init", "--stdout", *args, "-p", "other", "--profile", "debug")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("# mesh.yaml for the compose project 'other'")
    assert "  debug:" in done.stdout
    assert "{port: 8001, protocol: http}   # from env:debug" in done.stdout
    checked = localmesh(project_dir, "validate", "--json", *args, "--profile", "debug")
    assert checked.returncode == 0, checked.stderr
    assert "debug" in json.loads(checked.stdout)["services"]


def test_init_without_a_compose_project_fails_cleanly(tmp_path: Path) -> None:
    done = localmesh(tmp_path, "init")
    assert done.returncode == 2
    assert f"error: no compose file in {tmp_path}" in " ".join(done.stderr.split())
    assert list(tmp_path.iterdir()) == []


def test_validate_without_mesh_yaml_checks_the_inferred_mesh(project_dir: Path) -> None:
    done = localmesh(project_dir, "validate", "--json")
    assert done.returncode == 0
    report = json.loads(done.stdout)
    assert report["valid"] is True
    assert report["mesh"] is None
    assert report["services"] == ["api", "db", "dns", "metrics", "web"]


def test_validate_checks_references_against_compose(project_dir: Path) -> None:
    (project_dir / "mesh.yaml").write_text(
        "services:\n  web:\n    routes:\n      - route: [{service: apii}]\n"
    )
    done = localmesh(project_dir, "validate")
    assert done.returncode == 2
    assert (
        "error: mesh.yaml:4:27: services.web.routes[0].route[0].service: service 'apii' does "
        "not exist (did you mean 'api'?)"
    ) in " ".join(done.stderr.split())
    # host mode: mesh.yaml alone knows no 'api' at all
    done = localmesh(project_dir, "validate", "--no-compose")
    assert done.returncode == 2
    assert "service 'apii' does not exist (known services: web)" in " ".join(done.stderr.split())


def test_validate_reports_a_missing_mesh_file(project_dir: Path) -> None:
    done = localmesh(project_dir, "validate", "--mesh", "nope.yaml")
    assert done.returncode == 2
    assert "mesh file not found: nope.yaml" in done.stderr


def test_analyze_json(project_dir: Path) -> None:
    (project_dir / "mesh.yaml").write_text(
        "services:\n  api:\n    routes:\n"
        "      - {name: a, match: [{path: {prefix: /a}}]}\n"
        "      - {name: ab, match: [{path: {prefix: /a/b}}]}\n"
        "policies:\n  - {name: lockdown, action: deny, to: [db]}\n"
    )
    done = localmesh(project_dir, "analyze", "--json")
    assert done.returncode == 0, done.stderr
    findings = json.loads(done.stdout)["findings"]
    assert [(f["code"], Path(f["file"]).name, f["line"]) for f in findings] == [
        ("shadowed-route", "mesh.yaml", 5),
        ("no-default-route", "mesh.yaml", 5),
        ("deny-all", "mesh.yaml", 7),
        ("unreachable-service", "compose.yaml", 9),
        ("udp-upstream", "compose.yaml", 13),
        ("unmeshed-network-mode", "compose.yaml", 16),
    ]
    human = localmesh(project_dir, "analyze")
    assert human.returncode == 0
    assert "6 findings" in human.stdout
    assert "[deny-all]" in human.stderr


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_init_on_each_example_writes_a_valid_mesh(example: Path, tmp_path: Path) -> None:
    out = tmp_path / "mesh.yaml"
    compose = str(example / "compose.yaml")
    done = localmesh(example, "init", "-f", compose, "--mesh", str(out))
    assert done.returncode == 0, done.stderr
    done = localmesh(example, "validate", "-f", compose, "--mesh", str(out))
    assert done.returncode == 0, done.stderr


def test_examples_exist() -> None:
    assert EXAMPLES, "no examples/*/compose.yaml found"
