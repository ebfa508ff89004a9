"""Where and what ``generate`` writes: ``-o`` moves the compose file only, never onto a user's
file; with ``--json``, errors are JSON too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from localmesh.compose.generate import GenerateOptions, generate
from localmesh.compose.planner import EngineFacts
from localmesh.errors import ConfigError

FACTS = EngineFacts(reachable=False)


@pytest.fixture(autouse=True)
def _clean_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCALMESH_HOME", str(tmp_path_factory.getbasetemp() / "localmesh-home"))
    for var in list(os.environ):
        if var.startswith("COMPOSE_"):
            monkeypatch.delenv(var)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "shop"
    root.mkdir()
    (root / "compose.yaml").write_text("services:\n  web:\n    image: nginx\n")
    (root / ".gitignore").write_text("node_modules/\n")
    return root


def _generate(root: Path, output: str) -> Path:
    options = GenerateOptions(output=Path(output), base_image="base:1", cwd=root)
    return generate(options, facts=FACTS, image_tag="mesh:1").compose_file


def test_output_elsewhere_keeps_the_state_in_the_state_directory(project: Path) -> None:
    before = {p.name for p in project.iterdir()}
    written = _generate(project, "meshed.yaml")
    assert written == project / "meshed.yaml"
    assert {p.name for p in project.iterdir()} == before | {"meshed.yaml", ".localmesh"}
    assert (project / ".gitignore").read_text() == "node_modules/\n"
    state = project / ".localmesh"
    assert {"plan.json", "project.json", "certs", "runtime", ".gitignore"} <= {
        p.name for p in state.iterdir()
    }
    assert str(state / "plan.json") in written.read_text()
    _generate(project, "meshed.yaml")  # its own output is replaced


@pytest.mark.parametrize("output", ["compose.yaml", ".gitignore", ".localmesh"])
def test_output_never_replaces_a_file_generate_did_not_write(project: Path, output: str) -> None:
    (project / ".localmesh").mkdir(mode=0o700)
    before = (project / "compose.yaml").read_text()
    with pytest.raises(ConfigError, match=f"-o {project / output} "):
        _generate(project, output)
    assert (project / "compose.yaml").read_text() == before
    assert (project / ".gitignore").read_text() == "node_modules/\n"


@pytest.mark.parametrize(
    ("output", "directory"),
    [
        ("notes.txt/meshed.yaml", "notes.txt"),
        ("notes.txt/a/m.yaml", "notes.txt/a"),
        (None, ".localmesh"),
    ],
    ids=["output-under-a-file", "output-deeper", "state-directory"],
)
def test_a_directory_generate_cannot_create_is_a_user_error(
    project: Path, output: str | None, directory: str
) -> None:
    """One line and a hint, exit 2, nothing written; it was an internal error (exit 70)."""
    (project / "notes.txt").write_text("mine\n")
    if output is None:
        (project / ".localmesh").write_text("a file where the state directory goes\n")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "localmesh.cli.main",
            "generate",
            *(["-o", output] if output else []),
        ],
        cwd=project,
        env={**os.environ, "DOCKER_HOST": f"unix://{project}/no-engine.sock"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    error, hint = done.stderr.splitlines()
    what = f"-o {project / output}" if output else "the state directory"
    assert error == (
        f"error: {what}: cannot create the directory {project / directory}: a file is in the way"
    )
    assert hint.startswith("hint: ")
    assert (project / "notes.txt").read_text() == "mine\n"
    assert output is None or not (project / ".localmesh").exists()


def test_generate_json_errors_are_json_on_stdout(project: Path) -> None:
    (project / "compose.yaml").write_text("services:\n  web:\n    image: nginx\n    portz: []\n")
    done = subprocess.run(
        [sys.executable, "-m", "localmesh.cli.main", "generate", "--json"],
        cwd=project,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr == ""
    doc = json.loads(done.stdout)
    assert (doc["ok"], doc["exit_code"], doc["hint"]) == (
        False,
        2,
        "docker compose rejected the project",
    )
    [problem] = doc["problems"]
    assert (problem["line"], problem["column"], problem["key"]) == (4, 5, "portz")
