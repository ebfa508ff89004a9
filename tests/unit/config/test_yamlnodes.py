"""YAML 1.2 scalars over pyyaml's composer, with positions, and what pyyaml would let slip."""

from __future__ import annotations

import math

import pytest

from localmesh.config.yamlnodes import MapNode, Scalar, SeqNode, parse_yaml, resolve_plain
from localmesh.errors import ConfigError


def scalar(text: str) -> Scalar:
    root = parse_yaml(f"k: {text}\n", "m.yaml")
    assert isinstance(root, MapNode)
    value = root.get("k")
    assert isinstance(value, Scalar)
    return value


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("true", True),
        ("False", False),
        ("~", None),
        ("null", None),
        ("", None),
        ("12", 12),
        ("-3", -3),
        ("0o17", 15),
        ("0x1F", 31),
        ("1.5", 1.5),
        ("1e3", 1000.0),
        ("abc", "abc"),
        ("'12'", "12"),
        ('"true"', "true"),
    ],
)
def test_yaml_12_core_scalars(text: str, value: object) -> None:
    got = scalar(text).value
    assert got == value
    assert type(got) is type(value)


@pytest.mark.parametrize("word", ["yes", "No", "on", "OFF", "y", "n"])
def test_yaml_11_booleans_stay_text_with_a_note(word: str) -> None:
    s = scalar(word)
    assert s.value == word
    assert s.quirk is not None
    assert "not a boolean" in s.quirk


def test_sexagesimal_and_octal_are_not_silently_numbers() -> None:
    s = scalar("22:22")
    assert s.value == "22:22"
    assert s.quirk is not None
    assert "base-60" in s.quirk
    octal = scalar("0755")
    assert octal.value == 755
    assert octal.quirk is not None
    assert "octal" in octal.quirk
    assert scalar("1_000").value == "1_000"


def test_special_floats() -> None:
    assert scalar(".inf").value == math.inf
    v = scalar(".nan").value
    assert isinstance(v, float)
    assert math.isnan(v)
    assert resolve_plain("-.Inf") == (-math.inf, None)


def test_explicit_tags_are_honoured() -> None:
    assert scalar("!!str 22:22").value == "22:22"
    assert scalar("!!int '8000'").value == 8000
    assert scalar("!!float 1").value == 1.0
    with pytest.raises(ConfigError, match=r"not a valid tag:yaml\.org,2002:int"):
        parse_yaml("k: !!int abc\n", "m.yaml")
    with pytest.raises(ConfigError, match="unsupported YAML tag !custom"):
        parse_yaml("k: !custom x\n", "m.yaml")


def test_positions_are_one_based_and_keys_keep_their_text() -> None:
    root = parse_yaml("a:\n  on: [1, two]\n", "m.yaml")
    assert isinstance(root, MapNode)
    inner = root.get("a")
    assert isinstance(inner, MapNode)
    key, seq = inner.items[0]
    assert key.text == "on"
    assert (key.position.line, key.position.column) == (2, 3)
    assert isinstance(seq, SeqNode)
    assert (seq.items[1].position.line, seq.items[1].position.column) == (2, 11)


def test_duplicate_keys_are_errors_not_last_wins() -> None:
    with pytest.raises(ConfigError) as err:
        parse_yaml("a: 1\nb: 2\na: 3\n", "m.yaml")
    (problem,) = err.value.problems
    assert str(problem).startswith("m.yaml:3:1: duplicate key 'a' (first at line 1)")


def test_merge_keys_and_aliases() -> None:
    root = parse_yaml("x: &d {a: 1, b: 2}\ny:\n  <<: *d\n  b: 3\n", "m.yaml")
    assert isinstance(root, MapNode)
    y = root.get("y")
    assert isinstance(y, MapNode)
    assert [(k.text, v.value) for k, v in y.items if isinstance(v, Scalar)] == [("b", 3), ("a", 1)]
    assert y.merged == frozenset({"a"})


def test_recursive_alias_and_alias_bomb_are_refused() -> None:
    with pytest.raises(ConfigError, match="refers to its own anchor"):
        parse_yaml("a: &a [1, *a]\n", "m.yaml")
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n"
        for p, c in zip("abcdef", "bcdefg", strict=True)
    )
    with pytest.raises(ConfigError, match="too many nodes"):
        parse_yaml(bomb, "m.yaml")


def test_syntax_errors_and_documents() -> None:
    assert parse_yaml("", "m.yaml") is None
    assert parse_yaml("# only a comment\n", "m.yaml") is None
    with pytest.raises(ConfigError) as err:
        parse_yaml("a: [1, 2\n", "m.yaml")
    assert err.value.problems[0].position is not None
    assert err.value.problems[0].message.startswith("invalid YAML")
    with pytest.raises(ConfigError, match="one YAML document"):
        parse_yaml("a: 1\n---\nb: 2\n", "m.yaml")
    with pytest.raises(ConfigError, match="tabs"):
        parse_yaml("a:\n\tb: 1\n", "m.yaml")


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        ("x-deep: " + "[" * 600 + "]" * 600 + "\n", (1, 108), "nested deeper than 100"),
        ("x-deep: " + "{a: " * 600 + "1" + "}" * 600 + "\n", (1, 402), "nested deeper than 100"),
        (
            "x:" + "".join("\n" + " " * i + f"k{i}:" for i in range(1, 600)) + " 1\n",
            (100, 100),
            "nested deeper than 100",
        ),
        (
            "a0: &a0 "
            + "[" * 90
            + "1"
            + "]" * 90
            + "\n"
            + "".join(
                f"a{i}: &a{i} " + "[" * 90 + f"*a{i - 1}" + "]" * 90 + "\n" for i in range(1, 20)
            ),
            (1, 18),
            "through aliases",
        ),
        ("mesh:\n  admin_port: " + "9" * 5000 + "\n", (2, 15), "number too long"),
        ("mesh:\n  name: a\x00b\n", (2, 10), "U+0000 is not allowed"),
    ],
    ids=["flow", "flow-map", "block", "alias-chain", "long-int", "nul"],
)
def test_hostile_input_is_a_config_error_with_a_position_not_a_crash(
    text: str, where: tuple[int, int], message: str
) -> None:
    """Python's stack and int conversion limits must not escape as RecursionError or
    ValueError: a reload that raises those used to kill the runtime's file watch."""
    with pytest.raises(ConfigError) as err:
        parse_yaml(text, "m.yaml")
    problem = err.value.problems[0]
    assert problem.position is not None
    assert (problem.position.line, problem.position.column) == where
    assert message in problem.message


def test_a_quoted_long_number_is_just_text() -> None:
    assert scalar('"' + "9" * 5000 + '"').value == "9" * 5000
