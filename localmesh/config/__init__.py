"""mesh.yaml: the typed model, loading with positions, validation, inference from compose.

Public entry points::

    load_mesh_file(path, project=None) -> MeshConfig     # raises ConfigError (every problem)
    parse_mesh_text(text, filename, project=None) -> MeshConfig
    infer_mesh(project) -> MeshConfig                    # zero-config, no mesh.yaml
    render_inferred(project) -> str                      # commented mesh.yaml for `init`
    analyze(config, project=None) -> list[Finding]       # warnings, never fatal
"""

from localmesh.config.analyze import analyze
from localmesh.config.infer import infer_mesh
from localmesh.config.loader import load_mesh_file, parse_mesh_text
from localmesh.config.render import render_inferred

__all__ = ["analyze", "infer_mesh", "load_mesh_file", "parse_mesh_text", "render_inferred"]
