"""The one-line summary `validate` prints."""

from __future__ import annotations

import pytest

from localmesh.cli.config_cmds import _summary
from localmesh.config.loader import parse_mesh_text

pytestmark = pytest.mark.unit


def test_counts_agree_with_their_nouns() -> None:
    one = parse_mesh_text(
        "services:\n  api:\n    ports: [8000]\n    routes: [{name: all}]\n", "mesh.yaml"
    )
    assert _summary(one) == "1 service (1 meshed), 1 route, 0 policies, 0 ingress hosts"
    two = parse_mesh_text("services:\n  a: {ports: [1]}\n  b: {ports: [2]}\n", "mesh.yaml")
    assert _summary(two).startswith("2 services (2 meshed), 0 routes, ")
