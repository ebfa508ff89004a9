"""Compose projects as plain values: what ``docker compose config --format json`` returns."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from localmesh.compose.project import ComposeProject

MakeProject = Callable[..., ComposeProject]


@pytest.fixture
def make_project() -> MakeProject:
    def make(name: str = "shop", **services: dict[str, Any]) -> ComposeProject:
        model = {"name": name, "services": {k: dict(v) for k, v in services.items()}}
        return ComposeProject(name, Path("/p"), (Path("/p/compose.yaml"),), model)

    return make
