"""`localmesh down -p NAME`, like `up -p NAME`: it stops the project up started here only."""

from __future__ import annotations

from pathlib import Path

import pytest

from localmesh.compose import lifecycle
from localmesh.compose.plan import MeshNetwork, MeshPlan, PublishedPorts
from tests.unit.cli.test_main import run


def test_down_p_stops_the_named_project_and_refuses_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / ".localmesh").mkdir()
    network = MeshNetwork(
        "localmesh",
        "shop2_localmesh",
        "10.240.0.0/24",
        "10.240.0.1",
        "10.240.0.2",
        "10.240.0.128/25",
        "10.240.0.16/28",
    )
    plan = MeshPlan(project="shop2", network=network, published=PublishedPorts(admin=15001))
    (tmp_path / ".localmesh" / "plan.json").write_text(plan.to_json())
    stopped: list[lifecycle.DownOptions] = []

    def down(options: lifecycle.DownOptions, ui: object) -> list[str]:
        stopped.append(options)
        return []

    monkeypatch.setattr(lifecycle, "down", down)
    monkeypatch.chdir(tmp_path)
    assert run(monkeypatch, "down", "-p", "shop") == 2
    assert "-p shop: the project `localmesh up` started here is shop2" in capsys.readouterr().err
    assert stopped == []
    assert run(monkeypatch, "down", "--project-name", "shop2") == 0
    assert len(stopped) == 1
