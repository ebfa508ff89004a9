"""Write a compose document as YAML that no YAML reader can misread.

The document is Compose's normalised JSON plus our additions, never the user's YAML text.
Every string value is written double-quoted with explicit escapes, so neither YAML 1.1
(pyyaml: ``on`` -> true, ``22:22`` -> 1342) nor YAML 1.2 (Compose's go-yaml: ``0o17`` ->
15) can turn it into something else; keys are plain only when they read the same in both.
Block style, keys in the order given, so the same document is always the same bytes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-/]*$")
# Words some YAML version resolves to a bool or null: keys like these are quoted.
_RESERVED = frozenset({"y", "n", "yes", "no", "on", "off", "true", "false", "null", "~"})
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r", "\0": "\\0"}


def quote(text: str) -> str:
    """A YAML double-quoted scalar: printable ASCII and safe Unicode as is, the rest escaped."""
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif 0x20 <= code <= 0x7E or (
            (0xA0 <= code <= 0xD7FF and code not in (0x2028, 0x2029))
            or (0xE000 <= code <= 0xFFFD and code != 0xFEFF)
            or code >= 0x10000
        ):
            out.append(ch)
        elif code <= 0xFF:
            out.append(f"\\x{code:02x}")
        else:  # above 0xFFFF everything is printable, so four digits always suffice
            out.append(f"\\u{code:04x}")
    out.append('"')
    return "".join(out)


def key(name: object) -> str:
    text = str(name)
    if _PLAIN_KEY.match(text) and text.lower() not in _RESERVED:
        return text
    return quote(text)


def scalar(value: Any) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return ".nan"
        if math.isinf(value):
            return ".inf" if value > 0 else "-.inf"
        return repr(value)
    if isinstance(value, str):
        return quote(value)
    raise TypeError(f"cannot write {type(value).__name__} as YAML")


def dump(document: Mapping[str, Any], header: str = "") -> str:
    """The whole document; ``header`` lines become ``#`` comments at the top."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    _mapping(document, 0, lines)
    return "\n".join(lines) + "\n"


def _inline(value: Any) -> str | None:
    """The one-line form of a value, or None if it needs a block."""
    if isinstance(value, Mapping):
        return "{}" if not value else None
    if isinstance(value, (list, tuple)):
        return "[]" if not value else None
    return scalar(value)


def _mapping(m: Mapping[str, Any], indent: int, lines: list[str]) -> None:
    pad = " " * indent
    for k, v in m.items():
        inline = _inline(v)
        if inline is not None:
            lines.append(f"{pad}{key(k)}: {inline}")
        elif isinstance(v, Mapping):
            lines.append(f"{pad}{key(k)}:")
            _mapping(v, indent + 2, lines)
        else:
            lines.append(f"{pad}{key(k)}:")
            _sequence(v, indent + 2, lines)


def _sequence(items: Sequence[Any], indent: int, lines: list[str]) -> None:
    pad = " " * indent
    for item in items:
        inline = _inline(item)
        if inline is not None:
            lines.append(f"{pad}- {inline}")
            continue
        # a block inside a list item: write it one level deeper, then hang its first
        # line on the dash ("- key: value" / "- - item")
        inner: list[str] = []
        if isinstance(item, Mapping):
            _mapping(item, indent + 2, inner)
        else:
            _sequence(item, indent + 2, inner)
        inner[0] = f"{pad}- {inner[0][indent + 2 :]}"
        lines.extend(inner)
