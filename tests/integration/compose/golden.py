"""Shared machinery of the golden-file tests: run a case, make its output machine-free.

A case is a directory under ``tests/data/compose/`` holding a compose project as a user
would write it, an optional ``case.json`` (command-line options, environment, the Docker
engine's networks and local images) and ``expected/`` (``compose.yaml`` and ``plan.json``,
or ``error.txt`` for a case that must fail). Regenerate every expected file with::

    LOCALMESH_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/integration/compose/test_golden.py

then review the diff: it is the change in behaviour.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from localmesh.compose.generate import GenerateOptions, GenerateResult, generate
from localmesh.compose.planner import EngineFacts

REPO = Path(__file__).resolve().parents[3]
CASES = REPO / "tests" / "data" / "compose"
SCHEMA = REPO / "tests" / "data" / "compose-spec" / "compose-spec.json"
UPDATE = os.environ.get("LOCALMESH_UPDATE_GOLDEN") == "1"
PROJECT_TOKEN = "@PROJECT@"
IMAGE = "localmesh-mesh:golden"
BASE_IMAGE = "localmesh-base:golden"
#: A fresh engine: only Docker's own networks exist.
FRESH_ENGINE = {"bridge": ("172.17.0.0/16",), "host": (), "none": ()}


@dataclass(frozen=True)
class Case:
    name: str
    source: Path
    spec: dict[str, Any]

    @property
    def expected(self) -> Path:
        return self.source / "expected"

    def options(self, cwd: Path) -> GenerateOptions:
        s = self.spec
        return GenerateOptions(
            files=tuple(Path(f) for f in s.get("files", ())),
            env_files=tuple(Path(f) for f in s.get("env_files", ())),
            project_name=s.get("project_name"),
            profiles=tuple(s.get("profiles", ())),
            mesh_file=Path(s["mesh"]) if "mesh" in s else None,
            base_image=BASE_IMAGE,
            subnet=s.get("subnet"),
            cwd=cwd,
        )

    def facts(self) -> EngineFacts:
        engine = self.spec.get("engine", {})
        if engine.get("reachable", True) is False:
            return EngineFacts(reachable=False)
        networks = {k: tuple(v) for k, v in engine.get("networks", {}).items()}
        return EngineFacts(
            networks={**FRESH_ENGINE, **networks},
            image_ports={k: tuple(v) for k, v in engine.get("image_ports", {}).items()},
        )


def all_cases() -> list[Case]:
    out = []
    for path in sorted(p for p in CASES.iterdir() if p.is_dir()):
        spec_file = path / "case.json"
        spec = json.loads(spec_file.read_text()) if spec_file.exists() else {}
        out.append(Case(path.name, path, spec))
    return out


def prepare(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Copy the case to ``tmp_path/<case>`` (its name is the default project name) and give
    Compose a clean environment plus the case's own variables."""
    work = tmp_path / case.name
    shutil.copytree(case.source, work, ignore=shutil.ignore_patterns("expected", "case.json"))
    for var in list(os.environ):
        if var.startswith("COMPOSE_") or var == "LOCALMESH_BASE_IMAGE":
            monkeypatch.delenv(var)
    for var, value in case.spec.get("env", {}).items():
        monkeypatch.setenv(var, value)
    return work


def run(case: Case, work: Path) -> GenerateResult:
    return generate(case.options(work), facts=case.facts(), image_tag=IMAGE)


def machine_free(text: str, work: Path) -> str:
    return text.replace(str(work), PROJECT_TOKEN)


def check_golden(path: Path, actual: str) -> None:
    """Compare with the expected file, or (re)write it when updating."""
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual)
        return
    if not path.exists():
        pytest.fail(f"{path} is missing: run with LOCALMESH_UPDATE_GOLDEN=1 and review it")
    expected = path.read_text()
    assert actual == expected, f"{path} differs (LOCALMESH_UPDATE_GOLDEN=1 regenerates it)"
