"""The last known good inputs, persisted so a restart with a broken mesh.yaml still serves.

After every snapshot the data plane accepted, the inputs it was compiled from (the
validated ``MeshConfig``, the normalised compose project if any, the VIP plan) are written
to ``<state dir>/last-good.json``. Inputs, not the compiled snapshot: a restart recompiles
them with fresh discovery, so endpoints that moved while we were down are found, while the
mesh rules stay exactly the ones that last worked.

The file is written atomically (temporary file + rename) and 0600: a compose project's
normalised model inlines environment values and secrets.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localmesh.compose.project import ComposeProject
from localmesh.config.model import MeshConfig
from localmesh.runtime.controlplane.codec import decode, encode
from localmesh.runtime.controlplane.compile import Inputs

FORMAT = 1
FILENAME = "last-good.json"


@dataclass(frozen=True, slots=True)
class Persisted:
    """What a restart needs: the inputs and which snapshot they last produced."""

    inputs: Inputs
    version: int
    hash: str
    created: float  # when that snapshot was compiled
    source: str  # the mesh.yaml path it came from


class LastGoodStore:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / FILENAME

    def save(self, inputs: Inputs, *, version: int, hash: str, created: float) -> None:
        doc = {
            "format": FORMAT,
            "version": version,
            "hash": hash,
            "created": created,
            "source": inputs.config.source,
            "config": encode(inputs.config),
            "project": _encode_project(inputs.project),
            "vips": dict(inputs.vips),
        }
        self.state_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".last-good.", dir=self.state_dir)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(doc, f, separators=(",", ":"))
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def load(self) -> Persisted | None:
        """The persisted inputs, or None when there are none or they cannot be read.

        An unreadable file is not fatal: it only means there is no fallback.
        """
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            return None
        try:
            inputs = Inputs(
                config=decode(MeshConfig, doc["config"]),
                project=_decode_project(doc.get("project")),
                vips={str(k): str(v) for k, v in (doc.get("vips") or {}).items()},
            )
            return Persisted(
                inputs=inputs,
                version=int(doc["version"]),
                hash=str(doc["hash"]),
                created=float(doc["created"]),
                source=str(doc.get("source", "")),
            )
        except (KeyError, TypeError, ValueError):
            return None


def _encode_project(project: ComposeProject | None) -> dict[str, Any] | None:
    if project is None:
        return None
    return {
        "name": project.name,
        "working_dir": str(project.working_dir),
        "files": [str(f) for f in project.files],
        "model": project.model,
    }


def _decode_project(doc: Any) -> ComposeProject | None:
    if doc is None:
        return None
    return ComposeProject(
        name=str(doc["name"]),
        working_dir=Path(doc["working_dir"]),
        files=tuple(Path(f) for f in doc["files"]),
        model=doc["model"],
    )
