"""The small value languages of mesh.yaml: durations, percentages, sizes, addresses.

Each parser takes the text a user wrote and returns the model's unit (seconds, 0..100,
bytes) or raises ``ValueError`` whose message says what was expected; the loader adds
the position. Kept apart from the loader so the runtime and tests can reuse them.
"""

from __future__ import annotations

import re

_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_UNIT_ORDER = ("h", "m", "s", "ms")

DURATION_HELP = "a number with a unit: 500ms, 2s, 1.5s, 1m, 1h30m"
PERCENT_HELP = "a number from 0 to 100, optionally with %: 5, 12.5, '5%'"
SIZE_HELP = "a byte count or a size with a unit: 65536, 64KiB, 1MiB, 10MB"

_SIZE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)\s*(B|KB|MB|GB|KiB|MiB|GiB|k|K|M|G)?$")
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
    "k": 1024,
    "K": 1024,
    "M": 1024**2,
    "G": 1024**3,
}

_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def parse_duration(text: str) -> float:
    """``'1h30m'`` -> 5400.0 seconds. Units in descending order, each at most once."""
    s = text.strip()
    if not s:
        raise ValueError("empty duration")
    pos = 0
    last = -1
    total = 0.0
    for m in _DURATION_PART.finditer(s):
        if m.start() != pos:
            break
        unit = m.group(2)
        order = _UNIT_ORDER.index(unit)
        if order <= last:
            raise ValueError(f"units must go from largest to smallest, each once: '{text}'")
        last = order
        total += float(m.group(1)) * _UNIT_SECONDS[unit]
        pos = m.end()
    if pos != len(s):
        raise ValueError(f"invalid duration '{text}'")
    return total


def format_duration(seconds: float) -> str:
    """The inverse of parse_duration, shortest form (for ``init`` and docs)."""
    ms = round(seconds * 1000)
    if ms % 1000:
        return f"{ms}ms"
    s = ms // 1000
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    parts = [f"{h}h" if h else "", f"{m}m" if m else "", f"{s}s" if s else ""]
    return "".join(parts) or "0s"


def parse_percent(text: str) -> float:
    """``'5%'`` or ``'12.5'`` -> 5.0 / 12.5; must lie in 0..100."""
    s = text.strip()
    if s.endswith("%"):
        s = s[:-1].strip()
    try:
        value = float(s)
    except ValueError:
        raise ValueError(f"invalid percentage '{text}'") from None
    if not 0.0 <= value <= 100.0:
        raise ValueError(f"percentage {text} is outside 0..100")
    return value


def parse_size(text: str) -> int:
    """``'64KiB'`` -> 65536 bytes."""
    m = _SIZE.match(text.strip())
    if not m:
        raise ValueError(f"invalid size '{text}'")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])


_STATUS_FILTER = re.compile(r"[1-5](?:xx|\d\d)")


def parse_status_filter(text: str) -> tuple[str, ...]:
    """``'4xx,503'`` -> ``('4xx', '503')``: codes 100-599 and classes 1xx-5xx."""
    items = tuple(s.strip().lower() for s in text.split(",") if s.strip())
    for item in items:
        if not _STATUS_FILTER.fullmatch(item):
            raise ValueError(f"invalid status '{item}': a code (503) or a class (5xx)")
    return items


def is_hostname(name: str, *, wildcard: bool = False) -> bool:
    """A DNS name (``a.localhost``); with ``wildcard``, also ``*.localhost``."""
    if wildcard and name.startswith("*."):
        name = name[2:]
    if not name or len(name) > 253:
        return False
    return all(_HOST_LABEL.match(label) for label in name.rstrip(".").split("."))
