"""The corpus of broken mesh.yaml files: each gives exactly the problems its .expected lists.

Every file is checked against a real compose project (normalised by the real Compose v2),
the way ``localmesh validate`` checks it; a handful go through the CLI itself to prove
exit code 2, one line per problem, and no traceback.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from localmesh.compose.project import ComposeProject, load_project
from localmesh.config import load_mesh_file
from localmesh.errors import ConfigError

DATA = Path(__file__).parents[2] / "data" / "mesh"
BAD = sorted((DATA / "bad").glob("*.yaml"))
GOOD = sorted((DATA / "good").glob("*.yaml"))


@pytest.fixture(scope="module")
def project() -> ComposeProject:
    return load_project([Path("compose.yaml")], cwd=DATA)


def test_the_corpus_is_big_enough() -> None:
    assert len(BAD) >= 25
    assert all(p.with_suffix(".expected").is_file() for p in BAD)


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_broken_file_gives_its_expected_problems(path: Path, project: ComposeProject) -> None:
    with pytest.raises(ConfigError) as err:
        load_mesh_file(path, project)
    problems = err.value.problems
    for p in problems:
        assert p.position is not None
        assert p.position.file == str(path)
    got = [str(p).removeprefix(f"{path}:") for p in problems]
    assert got == path.with_suffix(".expected").read_text().splitlines()


@pytest.mark.parametrize("path", GOOD, ids=[p.stem for p in GOOD])
def test_good_file_loads(path: Path, project: ComposeProject) -> None:
    config = load_mesh_file(path, project)
    assert config.source == str(path)
    assert {s.name for s in config.services} >= set(project.services())


def _validate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "localmesh.cli.main", "validate", *args],
        cwd=DATA,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


@pytest.mark.parametrize(
    "name",
    [
        "01-near-miss-key",
        "08-sexagesimal-port",
        "12-route-after-catch-all",
        "24-yaml-syntax-error",
        "32-several-problems",
        "40-merge-key-unknown",
    ],
)
def test_cli_validate_exits_2_with_every_problem_and_no_traceback(name: str) -> None:
    rel = f"bad/{name}.yaml"
    before = sorted(p.name for p in DATA.rglob("*"))
    done = _validate("--mesh", rel)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
    text = " ".join(done.stderr.split())  # rich may wrap long lines on a narrow terminal
    for line in (DATA / "bad" / f"{name}.expected").read_text().splitlines():
        assert f"error: {rel}:{' '.join(line.split())}" in text
    assert sorted(p.name for p in DATA.rglob("*")) == before  # nothing written


def test_cli_validate_json_lists_problems_with_positions() -> None:
    import json

    done = _validate("--mesh", "bad/32-several-problems.yaml", "--json")
    assert done.returncode == 2
    report = json.loads(done.stdout)
    assert report["valid"] is False
    assert [(p["line"], p["column"], p["key"]) for p in report["problems"]] == [
        (3, 14, "mesh.peer_auth"),
        (6, 14, "services.api.timeout"),
        (7, 25, "services.api.retries.attempts"),
        (7, 45, "services.api.retries.retry_on[1]"),
        (9, 20, "services.web.load_balancer"),
    ]
    assert report["compose_files"] == [str(DATA / "compose.yaml")]
