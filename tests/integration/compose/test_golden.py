"""Golden files: real-world compose shapes through the real Compose v2, byte for byte.

Each case (``tests/data/compose/<case>/``) runs the whole ``generate`` with the Docker
engine's answers pinned by the case, then checks, beyond the expected bytes, what must hold
for every project: the output validates against the Compose schema, Compose reads it back
with every user value unchanged (the rewrite only adds), a second run writes the same bytes,
and the files are private. See ``golden.py`` for the layout and how to regenerate.
"""

from __future__ import annotations

import json
import stat
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from localmesh.compose.project import compose_command
from localmesh.compose.rewrite import present_dependencies
from localmesh.errors import LocalmeshError
from tests.integration.compose.golden import (
    SCHEMA,
    Case,
    all_cases,
    check_golden,
    machine_free,
    prepare,
    run,
)

CASES = all_cases()
#: Service keys the rewrite extends (never replaces) on a meshed service.
EXTENDED = {"networks", "extra_hosts", "depends_on", "volumes", "environment"}


@pytest.fixture(autouse=True)
def _ca_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCALMESH_HOME", str(tmp_path_factory.getbasetemp() / "localmesh-home"))


@pytest.fixture(scope="module")
def schema() -> Any:
    return json.loads(SCHEMA.read_text())


def test_there_are_at_least_twenty_successful_shapes() -> None:
    ok = [c for c in CASES if not (c.expected / "error.txt").exists()]
    assert len(ok) >= 20, [c.name for c in ok]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_golden(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, schema: Any) -> None:
    work = prepare(case, tmp_path, monkeypatch)
    if (case.expected / "error.txt").exists() or case.spec.get("error"):
        with pytest.raises(LocalmeshError) as err:
            run(case, work)
        check_golden(case.expected / "error.txt", machine_free(_error_text(err.value), work))
        assert not (work / ".localmesh" / "compose.yaml").exists()
        return

    result = run(case, work)
    compose_text = result.compose_file.read_text()
    plan_text = result.plan_file.read_text()
    check_golden(case.expected / "compose.yaml", machine_free(compose_text, work))
    check_golden(case.expected / "plan.json", machine_free(plan_text, work))

    document = yaml.safe_load(compose_text)
    jsonschema.Draft7Validator(schema).validate(document)
    unmeshed = {u.service for u in result.plan.unmeshed}
    read = _compose_reads(result.compose_file, result.project.profiles)
    _assert_additive(result.project.model, read, unmeshed)

    again = run(case, work)
    assert not again.changed
    assert result.compose_file.read_text() == compose_text
    assert result.plan_file.read_text() == plan_text
    for path in (result.compose_file, result.plan_file, result.project_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(result.compose_file.parent.stat().st_mode) == 0o700


def _error_text(exc: LocalmeshError) -> str:
    hint = f"\nhint: {exc.hint}" if exc.hint else ""
    return f"{type(exc).__name__}: {exc.message}{hint}\n"


def _compose_reads(path: Path, profiles: tuple[str, ...]) -> dict[str, Any]:
    """The output as ``docker compose`` reads it, with the profiles ``up`` passes."""
    flags = [arg for p in profiles for arg in ("--profile", p)]
    done = subprocess.run(
        [*compose_command(), "-f", str(path), *flags, "config", "--format", "json"],
        cwd=path.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    loaded: dict[str, Any] = json.loads(done.stdout)
    return loaded


def _assert_additive(
    before: Mapping[str, Any], after: Mapping[str, Any], unmeshed: set[str]
) -> None:
    """Compose's reading of the output keeps every value of the user's project, and
    services left alone are exactly as they were."""
    for key, value in before.items():
        if key == "services":
            continue
        if isinstance(value, Mapping) and key in ("networks", "volumes", "secrets", "configs"):
            for name, entry in value.items():
                assert after[key][name] == entry, (key, name)
        else:
            assert after[key] == value, key
    for name, service in before["services"].items():
        svc = present_dependencies(service, before["services"])  # the one removal
        out = after["services"][name]
        if name in unmeshed:
            assert out == svc, name
            continue
        for key, value in svc.items():
            if key not in EXTENDED or out[key] == value:
                assert out[key] == value, (name, key)
            elif isinstance(value, Mapping):
                assert {k: out[key][k] for k in value} == dict(value), (name, key)
            else:  # Compose sorts some lists (extra_hosts) when it reads them
                assert [v for v in value if v not in out[key]] == [], (name, key)
