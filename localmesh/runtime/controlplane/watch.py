"""Notice when mesh.yaml (or a file it includes, or a compose file) changes.

Polling, not inotify: Docker Desktop bind mounts drop inotify events, and a stat of a
handful of files every 250 ms costs nothing. A change is a different content hash, not a
different mtime (``touch`` or an editor rewriting the same bytes changes nothing), and it
is reported only once the content is *settled* (the same on two reads in a row). A file
replaced by rename (most editors) or written within the settle window is never seen
half-written; a writer that pauses longer mid-file can be (no settle time tells a pause
from the end), hence the docs' advice to write aside and rename. A file that disappears is
a change too (its fingerprint becomes "missing"); the reload then reports it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

Fingerprint = tuple[int, int, str] | None  # (mtime_ns, size, sha256) or missing


def fingerprint(path: Path) -> Fingerprint:
    try:
        st = os.stat(path)
        data = path.read_bytes()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, hashlib.sha256(data).hexdigest())


def _content(fp: Fingerprint) -> str | None:
    return None if fp is None else fp[2]


def same_content(a: dict[Path, Fingerprint], b: dict[Path, Fingerprint]) -> bool:
    return a.keys() == b.keys() and all(_content(a[p]) == _content(b[p]) for p in a)


class FileWatch:
    """Which watched files changed since they were last seen; stat first, hash if stat moved.

    The caller fingerprints the files *before* loading them and hands those fingerprints
    to ``reset`` after the load, so an edit made while a load was running is still seen
    as a change on the next poll.
    """

    def __init__(self) -> None:
        self._seen: dict[Path, Fingerprint] = {}

    @property
    def paths(self) -> tuple[Path, ...]:
        return tuple(self._seen)

    def reset(self, paths: Iterable[Path], seen: dict[Path, Fingerprint]) -> None:
        """Watch ``paths``, taking ``seen`` (or the current content) as already seen."""
        wanted = {Path(p).absolute() for p in paths}
        self._seen = {p: seen[p] if p in seen else fingerprint(p) for p in wanted}

    def changed(self) -> list[Path]:
        """Files whose content differs from what was seen; cheap when nothing moved."""
        out: list[Path] = []
        for path, seen in self._seen.items():
            try:
                st = os.stat(path)
                stat_same = seen is not None and (st.st_mtime_ns, st.st_size) == seen[:2]
            except OSError:
                stat_same = seen is None
            if stat_same:
                continue
            now = fingerprint(path)
            if _content(now) != _content(seen):
                out.append(path)
            else:
                self._seen[path] = now  # touched, same bytes: remember the new stat
        return out

    def fingerprints(self) -> dict[Path, Fingerprint]:
        return {p: fingerprint(p) for p in self._seen}
