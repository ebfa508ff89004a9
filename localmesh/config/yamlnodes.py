"""mesh.yaml as a tree of positioned nodes, read with YAML 1.2 core scalars.

pyyaml implements YAML 1.1, where ``on`` is ``true``, ``22:22`` is ``1342`` and ``0755``
is octal. Those readings silently change what a user meant, so we compose the raw node
tree (which keeps line/column marks) with *no* implicit type resolution and type plain
scalars ourselves by the YAML 1.2 core schema. A scalar that YAML 1.1 would have read
differently keeps a ``quirk`` note, so a type error on it can explain itself instead of
guessing.

Also refused here, because pyyaml accepts them silently: duplicate keys (the last one
would win), several documents in one file, unknown tags, and alias bombs. Hostile input
that would crash a parser (nesting deep enough to exhaust Python's stack, integers longer
than Python converts) is a ConfigError with a position too: a reload must never die on it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import BaseResolver
from yaml.scanner import Scanner

from localmesh.errors import ConfigError, Position, Problem

_PLAIN = "!localmesh/plain"  # our tag for untyped plain scalars
_YAML = "tag:yaml.org,2002:"
_MAX_NODES = 200_000  # aliases may fan out; beyond this the file is an alias bomb
_MAX_DEPTH = 100  # composing and converting recurse per level; mesh.yaml needs about 10

_NULL = re.compile(r"^(?:~|null|Null|NULL|)$")
_TRUE = re.compile(r"^(?:true|True|TRUE)$")
_FALSE = re.compile(r"^(?:false|False|FALSE)$")
_INT = re.compile(r"^[-+]?[0-9]+$")
_OCT = re.compile(r"^0o[0-7]+$")
_HEX = re.compile(r"^0x[0-9a-fA-F]+$")
_FLOAT = re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$")
_INF = re.compile(r"^[-+]?\.(?:inf|Inf|INF)$")
_NAN = re.compile(r"^\.(?:nan|NaN|NAN)$")

# What YAML 1.1 (pyyaml's default) would have made of a plain scalar that 1.2 reads as text.
_YAML11_BOOL = re.compile(r"^(?:y|Y|yes|Yes|YES|n|N|no|No|NO|on|On|ON|off|Off|OFF)$")
_SEXAGESIMAL = re.compile(r"^[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?$")
_UNDERSCORE_NUM = re.compile(r"^[-+]?[0-9][0-9_]*_[0-9_]*(?:\.[0-9_]*)?$")
_LEADING_ZERO = re.compile(r"^[-+]?0[0-9]+$")


@dataclass(frozen=True, slots=True)
class Scalar:
    """A scalar with its YAML 1.2 value, the text as written, and where it is."""

    value: str | int | float | bool | None
    text: str
    position: Position
    quoted: bool = False
    quirk: str | None = None  # how YAML 1.1 would have misread it, if it would

    @property
    def is_null(self) -> bool:
        return self.value is None


@dataclass(frozen=True, slots=True)
class MapNode:
    """A mapping in source order; keys are their source text (``on:`` is the key 'on')."""

    items: tuple[tuple[Scalar, Node], ...]
    position: Position
    # keys that came from a merge (<<) keep the merged value's position, not a key of ours
    merged: frozenset[str] = field(default_factory=frozenset)

    def get(self, key: str) -> Node | None:
        for k, v in self.items:
            if k.text == key:
                return v
        return None


@dataclass(frozen=True, slots=True)
class SeqNode:
    items: tuple[Node, ...]
    position: Position


Node = Scalar | MapNode | SeqNode


def describe(node: Node) -> str:
    """A short phrase for 'got …' in messages."""
    if isinstance(node, MapNode):
        return "a mapping"
    if isinstance(node, SeqNode):
        return "a list"
    if node.value is None:
        return "nothing (null)"
    if isinstance(node.value, bool):
        return f"the boolean {node.text}"
    if isinstance(node.value, int | float):
        return f"the number {node.text}"
    return f"'{node.text}'"


def quirk_hint(node: Node) -> str | None:
    """Why a plain scalar is not what YAML 1.1 tools would say it is."""
    if not isinstance(node, Scalar) or node.quirk is None:
        return None
    return node.quirk


class _Loader(Reader, Scanner, Parser, Composer, BaseResolver):
    """pyyaml's composer with no implicit typing: plain scalars keep a marker tag."""

    def __init__(self, stream: str) -> None:
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)
        Composer.__init__(self)
        BaseResolver.__init__(self)
        self.depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        """pyyaml's, refusing nesting before it exhausts the stack (a RecursionError)."""
        if self.depth >= _MAX_DEPTH:
            mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
            raise yaml.composer.ComposerError(
                None, None, f"nested deeper than {_MAX_DEPTH} levels", mark
            )
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        if kind is yaml.ScalarNode and implicit[0]:
            return _PLAIN
        return super().resolve(kind, value, implicit)  # type: ignore[no-untyped-call]


def _mark_position(filename: str, mark: Any) -> Position:
    return Position(filename, mark.line + 1, mark.column + 1)


def parse_yaml(text: str, filename: str) -> Node | None:
    """The file's single document as nodes; ``None`` for an empty file.

    Raises ConfigError (with every structural problem found) for YAML syntax errors,
    several documents, duplicate keys, unsupported tags, alias bombs, control characters,
    too deep nesting and too long numbers.
    """
    try:
        loader = _Loader(text)  # checks every character up front
    except yaml.reader.ReaderError as exc:
        before = text[: exc.position]
        pos = Position(filename, before.count("\n") + 1, len(before) - before.rfind("\n"))
        problem = Problem(f"character U+{exc.character:04X} is not allowed in YAML", pos)
        raise ConfigError(problem) from None
    try:
        root = loader.get_single_node()
    except yaml.composer.ComposerError as exc:
        if "expected a single document" in str(exc.context):
            mark = exc.problem_mark
            pos = _mark_position(filename, mark) if mark else Position(filename, 1, 1)
            raise ConfigError(
                Problem(
                    "mesh.yaml must hold one YAML document, found a second one",
                    pos,
                    hint="remove the '---' separator and everything after it, or merge them",
                )
            ) from None
        raise ConfigError(_yaml_problem(exc, filename)) from None
    except yaml.MarkedYAMLError as exc:
        raise ConfigError(_yaml_problem(exc, filename)) from None
    except yaml.YAMLError as exc:  # reader errors: bad bytes, control characters
        problem = Problem(f"not readable as YAML: {exc}", Position(filename, 1, 1))
        raise ConfigError(problem) from None
    finally:
        loader.dispose()
    if root is None:
        return None
    converter = _Converter(filename)
    node = converter.convert(root)
    if converter.problems:
        raise ConfigError(converter.problems)
    return node


def _yaml_problem(exc: yaml.MarkedYAMLError, filename: str) -> Problem:
    mark = exc.problem_mark or exc.context_mark
    pos = _mark_position(filename, mark) if mark else Position(filename, 1, 1)
    what = exc.problem or exc.context or "invalid YAML"
    hint = None
    if "expected <block end>" in what:
        hint = "check the indentation of this line against the lines above"
    elif "mapping values are not allowed" in what:
        hint = "a value containing ': ' must be quoted"
    elif "found character '\\t'" in what:
        hint = "indent with spaces, not tabs"
    return Problem(f"invalid YAML: {what}", pos, hint=hint)


class _Converter:
    """yaml.Node graph -> our nodes, with YAML 1.2 scalars and structural checks."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.problems: list[Problem] = []
        self.count = 0
        self.active: set[int] = set()  # ids of nodes on the current path (alias cycles)
        self.depth = 0  # aliases nest composed trees: each within _MAX_DEPTH, not their sum

    def pos(self, node: yaml.Node) -> Position:
        return _mark_position(self.filename, node.start_mark)

    def convert(self, node: yaml.Node) -> Node:
        self.count += 1
        if self.count > _MAX_NODES:
            self.problems.append(
                Problem("too many nodes: aliases expand beyond 200000 values", self.pos(node))
            )
            raise ConfigError(self.problems)
        if id(node) in self.active:
            self.problems.append(Problem("an alias refers to its own anchor", self.pos(node)))
            return Scalar(None, "", self.pos(node))
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node)
        if self.depth >= _MAX_DEPTH:
            self.problems.append(
                Problem(f"nested deeper than {_MAX_DEPTH} levels (through aliases)", self.pos(node))
            )
            raise ConfigError(self.problems)
        self.active.add(id(node))
        self.depth += 1
        try:
            if isinstance(node, yaml.SequenceNode):
                self.check_collection_tag(node, "seq")
                return SeqNode(tuple(self.convert(i) for i in node.value), self.pos(node))
            assert isinstance(node, yaml.MappingNode)
            self.check_collection_tag(node, "map")
            return self.mapping(node)
        finally:
            self.active.discard(id(node))
            self.depth -= 1

    def check_collection_tag(self, node: yaml.Node, expected: str) -> None:
        if node.tag != _YAML + expected:
            self.problems.append(
                Problem(f"unsupported YAML tag {node.tag}", self.pos(node), hint="remove the tag")
            )

    def mapping(self, node: yaml.MappingNode) -> MapNode:
        own: list[tuple[Scalar, Node]] = []
        merged: list[tuple[Scalar, Node]] = []
        seen: dict[str, Scalar] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                self.problems.append(
                    Problem(
                        "mapping keys must be plain words, not lists or mappings",
                        self.pos(key_node),
                    )
                )
                continue
            key = self.scalar(key_node)
            if key.text == "<<" and not key.quoted:
                merged.extend(self.merge_source(value_node))
                continue
            if key.text in seen:
                first = seen[key.text].position
                self.problems.append(
                    Problem(
                        f"duplicate key '{key.text}' (first at line {first.line})",
                        key.position,
                        key=key.text,
                        hint="YAML keeps only the last one; remove or merge the duplicate",
                    )
                )
                continue
            seen[key.text] = key
            own.append((key, self.convert(value_node)))
        # explicit keys override merged ones (YAML merge-key semantics)
        merged_keys: set[str] = set()
        for key, value in merged:
            if key.text not in seen and key.text not in merged_keys:
                merged_keys.add(key.text)
                own.append((key, value))
        return MapNode(tuple(own), self.pos(node), frozenset(merged_keys))

    def merge_source(self, node: yaml.Node) -> list[tuple[Scalar, Node]]:
        sources = node.value if isinstance(node, yaml.SequenceNode) else [node]
        out: list[tuple[Scalar, Node]] = []
        for src in sources:
            converted = self.convert(src)
            if not isinstance(converted, MapNode):
                self.problems.append(
                    Problem("'<<' merges mappings only (an alias like *defaults)", self.pos(src))
                )
                continue
            out.extend(converted.items)
        return out

    def scalar(self, node: yaml.ScalarNode) -> Scalar:
        pos = self.pos(node)
        text = str(node.value)
        if node.tag == _PLAIN:
            value, quirk = self.resolve(text, pos)
            return Scalar(value, text, pos, quoted=False, quirk=quirk)
        quoted = node.style in ("'", '"', "|", ">")
        if node.tag in (_YAML + "str", "!"):
            return Scalar(text, text, pos, quoted=quoted)
        explicit = {
            _YAML + "int": int,
            _YAML + "float": float,
            _YAML + "bool": bool,
            _YAML + "null": type(None),
        }.get(node.tag)
        if explicit is not None:
            value, _ = self.resolve(text, pos)
            if isinstance(value, explicit) and not (explicit is int and isinstance(value, bool)):
                return Scalar(value, text, pos, quoted=quoted)
            if explicit is float and isinstance(value, int) and not isinstance(value, bool):
                return Scalar(float(value), text, pos, quoted=quoted)
            self.problems.append(Problem(f"'{text}' is not a valid {node.tag}", pos))
            return Scalar(text, text, pos, quoted=quoted)
        self.problems.append(
            Problem(f"unsupported YAML tag {node.tag}", pos, hint="remove the tag")
        )
        return Scalar(text, text, pos, quoted=quoted)

    def resolve(
        self, text: str, pos: Position
    ) -> tuple[str | int | float | bool | None, str | None]:
        try:
            return resolve_plain(text)
        except ValueError:  # an integer beyond Python's 4300-digit conversion limit
            self.problems.append(Problem("number too long", pos))
            return text, None


def resolve_plain(text: str) -> tuple[str | int | float | bool | None, str | None]:
    """A plain scalar's YAML 1.2 core-schema value, and a note if YAML 1.1 differs."""
    if _NULL.match(text):
        return None, None
    if _TRUE.match(text):
        return True, None
    if _FALSE.match(text):
        return False, None
    if _INT.match(text):
        quirk = None
        if _LEADING_ZERO.match(text):
            quirk = f"YAML 1.1 tools read {text} as an octal number; write {int(text, 10)} or 0o…"
        return int(text, 10), quirk
    if _OCT.match(text):
        return int(text[2:], 8), None
    if _HEX.match(text):
        return int(text[2:], 16), None
    if _FLOAT.match(text):
        return float(text), None
    if _INF.match(text):
        return (-math.inf if text.startswith("-") else math.inf), None
    if _NAN.match(text):
        return math.nan, None
    if _YAML11_BOOL.match(text):
        return text, f"'{text}' is text here, not a boolean (YAML 1.2); write true or false"
    if _SEXAGESIMAL.match(text):
        return text, (f"'{text}' is text here; YAML 1.1 tools would read it as a base-60 number")
    if _UNDERSCORE_NUM.match(text):
        return text, f"'{text}' is text here; write the number without underscores"
    return text, None
