"""Building the mesh image on a real engine: offline install, caching by tag, clear failures."""

from __future__ import annotations

import io
import subprocess
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

import localmesh
from localmesh.compose import engine, image
from localmesh.errors import DockerError

pytestmark = [pytest.mark.docker, pytest.mark.slow]


class Recorder:
    def __init__(self) -> None:
        self.phases: list[str] = []
        self.steps: list[tuple[int, int]] = []

    def phase(self, text: str) -> None:
        self.phases.append(text)

    def step(self, done: int, total: int, text: str) -> None:
        self.steps.append((done, total))


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCALMESH_HOME", str(tmp_path / "home"))


def test_image_runs_the_installed_cli_and_is_built_once(docker_engine: str) -> None:
    client = engine.connect()
    recipe = image.image_recipe(docker_engine)
    tag = recipe.tag
    image.ensure_mesh_image(client, recipe, Recorder())
    out = subprocess.run(
        ["docker", "run", "--rm", tag, "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"localmesh {localmesh.__version__}"
    tools = subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "--entrypoint",
            "sh",
            tag,
            "-c",
            "command -v ip && command -v iptables",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert len(tools.stdout.split()) == 2
    again = Recorder()
    assert image.ensure_mesh_image(client, recipe, again) is False
    assert again.phases == []


@pytest.fixture
def base_without_venv(docker_engine: str) -> Iterator[str]:
    """A base image whose python3 cannot make a venv: the build itself must fail."""
    client = docker.from_env()
    tag = "localmesh-test-novenv:1"
    dockerfile = f"FROM {docker_engine}\nRUN rm -rf /usr/lib/python3.11/venv\n"
    client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True)
    yield tag
    client.images.remove(tag, force=True)


def test_build_failure_reports_the_log_tail(base_without_venv: str, tmp_path: Path) -> None:
    progress = Recorder()
    with pytest.raises(DockerError) as caught:
        image.ensure_mesh_image(engine.connect(), image.image_recipe(base_without_venv), progress)
    err = caught.value
    assert "building the mesh image" in err.message
    assert "  | " in err.message
    assert "venv" in err.message
    assert err.hint is not None
    assert "mesh-image-build.log" in err.hint
    assert (tmp_path / "home" / "logs" / "mesh-image-build.log").read_text().strip()
    assert progress.steps, "the progress bar saw build steps"


def test_base_image_without_python_is_refused_with_a_hint(docker_engine: str) -> None:
    client = docker.from_env()
    tag = "localmesh-test-nopython:1"
    client.images.build(
        fileobj=io.BytesIO(f"FROM {docker_engine}\nRUN rm -f /usr/bin/python3*\n".encode()),
        tag=tag,
        rm=True,
    )
    try:
        with pytest.raises(DockerError) as caught:
            image.ensure_mesh_image(engine.connect(), image.image_recipe(tag), Recorder())
    finally:
        client.images.remove(tag, force=True)
    assert "cannot use base image" in caught.value.message
    assert caught.value.hint is not None
    assert "--base-image" in caught.value.hint
