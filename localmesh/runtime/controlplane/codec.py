"""Plain JSON for the frozen config model: persistence of the last good snapshot and /config.

``encode`` walks any frozen dataclass tree of the model (``MeshConfig`` and everything in
it, ``Position`` included) into JSON values; ``decode(cls, data)`` rebuilds it from the type
hints, so a value encoded today decodes equal tomorrow. Fields missing from ``data`` take
their model default, which keeps a state file written before a new optional field was
added readable. ``redact`` hides values that look like credentials before anything leaves
the process (admin API, CLI), while the persisted file keeps them (0600, our own dir).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import types
import typing
from collections.abc import Mapping
from enum import Enum
from functools import cache
from typing import TYPE_CHECKING, Any, TypeVar, Union

if TYPE_CHECKING:
    from localmesh.runtime.snapshot import Snapshot

T = TypeVar("T")

Json = Any  # a JSON value: None | bool | int | float | str | list[Json] | dict[str, Json]

REDACTED = "<redacted>"
_SECRET_NAME = re.compile(
    r"pass(word|wd)?|secret|token|api[-_]?key|auth(orization)?|cookie|credential|private[-_]?key",
    re.IGNORECASE,
)


def encode(value: object) -> Json:
    """A JSON value for a model value (dataclasses become objects, tuples lists)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, frozenset | set):
        return sorted((encode(v) for v in value), key=repr)
    if isinstance(value, tuple | list):
        return [encode(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): encode(v) for k, v in value.items()}
    raise TypeError(f"cannot encode {type(value).__name__}")


def decode(cls: type[T], data: Json) -> T:
    """Rebuild a ``cls`` value from ``encode``'s output; raises ValueError on a mismatch."""
    return typing.cast(T, _decode(cls, data, cls.__name__))


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _decode(tp: Any, data: Json, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if data is None and type(None) in args:
            return None
        errors: list[str] = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _decode(arg, data, where)
            except (ValueError, TypeError) as exc:
                errors.append(str(exc))
        raise ValueError(f"{where}: no variant of {tp} fits: {'; '.join(errors)}")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(data, list):
            raise ValueError(f"{where}: expected a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode(args[0], v, f"{where}[{i}]") for i, v in enumerate(data))
        if len(args) != len(data):
            raise ValueError(f"{where}: expected {len(args)} items")
        return tuple(
            _decode(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, data, strict=True))
        )
    if origin is frozenset:
        (arg,) = typing.get_args(tp)
        if not isinstance(data, list):
            raise ValueError(f"{where}: expected a list")
        return frozenset(_decode(arg, v, where) for v in data)
    if isinstance(tp, type) and issubclass(tp, Enum):
        return tp(data)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected an object for {tp.__name__}")
        hints = _hints(tp)
        kwargs = {
            f.name: _decode(hints[f.name], data[f.name], f"{where}.{f.name}")
            for f in dataclasses.fields(tp)
            if f.name in data
        }
        return tp(**kwargs)
    if tp is float:
        if isinstance(data, bool) or not isinstance(data, int | float):
            raise ValueError(f"{where}: expected a number")
        return float(data)
    if tp in (int, str, bool):
        if type(data) is not tp:
            raise ValueError(f"{where}: expected {tp.__name__}")
        return data
    raise TypeError(f"{where}: unsupported type {tp!r}")


def content_hash(snapshot: Snapshot) -> str:
    """A hash of what a snapshot does, stable across processes and restarts.

    ``Snapshot.hash`` hashes ``repr()``, and a frozenset's repr order depends on the
    per-process string hash seed, so equal snapshots can hash differently in two runs
    (or even in one). This hashes the canonical JSON instead, without source positions:
    an edit that only moves lines (a comment added on top) changes nothing.
    """
    doc = [
        _strip_positions(encode(snapshot.config)),
        encode(snapshot.listeners),
        encode(snapshot.endpoints),
        encode(snapshot.sources),
        encode(snapshot.vips),
    ]
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _strip_positions(data: Json) -> Json:
    if isinstance(data, dict):
        return {
            k: _strip_positions(v) for k, v in data.items() if k not in ("position", "positions")
        }
    if isinstance(data, list):
        return [_strip_positions(v) for v in data]
    return data


# Model fields whose names look secret but hold settings (the PeerAuthentication mode).
_NOT_SECRET = frozenset({"peer_auth"})


def is_secret_name(name: str) -> bool:
    return name not in _NOT_SECRET and bool(_SECRET_NAME.search(name))


def redact(data: Json) -> Json:
    """Hide credential-looking values in encoded config.

    Three shapes carry them: a key named like a secret (``POSTGRES_PASSWORD: ...``), a
    header operation ``set``/``add`` pair ``[name, value]`` whose name is one
    (``authorization``), and a header match on such a header (its expected value).
    Matching shapes instead of every two-string list keeps ``sources: [auth, api]`` intact.
    """
    if isinstance(data, list):
        return [redact(v) for v in data]
    if not isinstance(data, dict):
        return data
    out: dict[str, Json] = {}
    for key, value in data.items():
        if is_secret_name(key) and isinstance(value, str):
            out[key] = REDACTED
        elif key in ("set", "add") and isinstance(value, list):
            out[key] = [_redact_pair(p) for p in value]
        else:
            out[key] = redact(value)
    name, match = data.get("name"), out.get("match")
    if isinstance(name, str) and is_secret_name(name) and isinstance(match, dict):
        out["match"] = {**match, "value": REDACTED}
    return out


def _redact_pair(pair: Json) -> Json:
    if isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str):
        return [pair[0], REDACTED] if is_secret_name(pair[0]) else pair
    return redact(pair)
