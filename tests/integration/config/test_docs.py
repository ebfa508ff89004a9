"""docs/mesh-yaml.md and the README stay true: examples validate, every field is documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from localmesh.compose.project import ComposeProject, load_project
from localmesh.config import loader, parse_mesh_text

REPO = Path(__file__).parents[3]
DATA = REPO / "tests" / "data" / "mesh"
DOC = (REPO / "docs" / "mesh-yaml.md").read_text()
README = (REPO / "README.md").read_text()
BLOCK = re.compile(r"```yaml\n(.*?)```", re.S)


def blocks(text: str) -> list[tuple[int, str]]:
    return [(text[: m.start()].count("\n") + 2, m.group(1)) for m in BLOCK.finditer(text)]


@pytest.fixture(scope="module")
def project() -> ComposeProject:
    return load_project([Path("compose.yaml")], cwd=DATA)


@pytest.mark.parametrize(("line", "text"), blocks(DOC), ids=[str(n) for n, _ in blocks(DOC)])
def test_every_doc_example_validates(line: int, text: str, project: ComposeProject) -> None:
    parse_mesh_text(text, f"docs/mesh-yaml.md@{line}", project)


def test_readme_glance_example_validates(project: ComposeProject) -> None:
    section = README.split("## mesh.yaml in one glance", 1)[1].split("\n## ", 1)[0]
    (example,) = [t for _, t in blocks(section)]
    config = parse_mesh_text(example, "README.md", project)
    api = config.service("api")
    assert api is not None
    assert [r.name for r in api.routes] == ["flaky-items", "default"]
    # the example must not 404 the shop: its last route catches every request
    assert api.routes[-1].matches == ()


@pytest.mark.parametrize(
    "keys",
    [
        loader.TOP_KEYS,
        loader.MESH_KEYS,
        loader.SERVICE_KEYS,
        loader.ROUTE_KEYS,
        loader.MATCH_KEYS,
        loader.DESTINATION_KEYS,
        loader.RETRY_KEYS,
        loader.POLICY_KEYS,
        loader.INGRESS_KEYS,
        loader.HOST_KEYS,
    ],
)
def test_every_field_is_documented(keys: tuple[str, ...]) -> None:
    missing = [k for k in keys if f"`{k}`" not in DOC]
    assert missing == []
