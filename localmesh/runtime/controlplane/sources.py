"""Where the control plane reads its inputs from.

``MeshFileSource`` is host mode: one mesh.yaml with static endpoints, no compose project.
Loading runs in a worker thread (``asyncio.to_thread``), so it may block on file I/O.
"""

from __future__ import annotations

from pathlib import Path

from localmesh.config import load_mesh_file
from localmesh.runtime.controlplane.compile import Inputs
from localmesh.runtime.controlplane.plane import Loaded, config_files


class MeshFileSource:
    """A mesh.yaml file; every file its config has positions in is watched too."""

    def __init__(self, path: Path) -> None:
        self.path = path.absolute()
        self.label = self.path.name

    def paths(self) -> tuple[Path, ...]:
        return (self.path,)

    def load(self) -> Loaded:
        config = load_mesh_file(self.path)
        files = {self.path, *(p.absolute() for p in config_files(config))}
        return Loaded(Inputs(config), tuple(sorted(files)))
