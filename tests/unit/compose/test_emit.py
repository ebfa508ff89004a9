"""The YAML writer: every value reads back as itself in YAML 1.1 and 1.2 readers."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from localmesh.compose import emit

pytestmark = pytest.mark.unit

TRAPS = [
    "on",
    "off",
    "yes",
    "No",
    "y",
    "~",
    "null",
    "22:22",
    "0o17",
    "012",
    "1e3",
    ".inf",
    "true",
    "",
    " lead",
    "trail ",
    "#x",
    "- x",
    "a: b",
    "{x}",
    "[x]",
    "*ref",
    "&a",
    "!tag",
    "%x",
    "@x",
    "`x",
    "$$HOME",
    'quote"inside',
    "back\\slash",
    "tab\there",
    "nl\nhere",
]


def test_strings_that_yaml_would_retype_stay_strings() -> None:
    doc = {"env": {f"K{i}": v for i, v in enumerate(TRAPS)}, "list": TRAPS}
    assert yaml.safe_load(emit.dump(doc)) == doc


def test_unicode_is_kept_readable_and_unsafe_code_points_escaped() -> None:
    value = "héllo wörld ✓ 😀 \u2028 \x85 \x7f \ufeff"
    text = emit.dump({"v": value})
    assert "héllo wörld ✓ 😀" in text
    for raw in ("\u2028", "\x85", "\x7f", "\ufeff"):
        assert raw not in text
    assert yaml.safe_load(text) == {"v": value}


@pytest.mark.parametrize(
    ("name", "written"),
    [
        ("image", "image"),
        ("dev.localmesh.role", "dev.localmesh.role"),
        ("on", '"on"'),
        ("8080/tcp", '"8080/tcp"'),
        ("with space", '"with space"'),
        ("x-localmesh", "x-localmesh"),
    ],
)
def test_keys_are_plain_only_when_unambiguous(name: str, written: str) -> None:
    assert emit.dump({name: 1}) == f"{written}: 1\n"


def test_block_layout_of_nested_values() -> None:
    doc: dict[str, Any] = {
        "a": {"b": None, "c": [], "d": {}},
        "seq": [[1, 2], {"k": True, "l": [0.5]}, "s"],
    }
    assert emit.dump(doc, "made by a test\nsecond line") == (
        "# made by a test\n"
        "# second line\n"
        "a:\n"
        "  b: null\n"
        "  c: []\n"
        "  d: {}\n"
        "seq:\n"
        "  - - 1\n"
        "    - 2\n"
        "  - k: true\n"
        "    l:\n"
        "      - 0.5\n"
        '  - "s"\n'
    )
    assert yaml.safe_load(emit.dump(doc)) == doc


def test_unknown_types_are_a_bug_not_silently_stringified() -> None:
    with pytest.raises(TypeError):
        emit.dump({"x": object()})
