"""Where the compose templates are, in a source checkout and in an installed wheel alike.

The project keeps them in top-level ``compose-templates/`` (the Dockerfile of the mesh
image and the mesh service ``generate`` adds). ``localmesh/templates`` is a symlink to it,
which setuptools follows when it builds a wheel (``package-data: templates/*``), so an
installed localmesh carries real copies inside the package.
"""

from __future__ import annotations

from pathlib import Path

import localmesh


def templates_dir() -> Path:
    """``localmesh/templates``: the files themselves in a wheel install, the symlink to
    ``compose-templates/`` in a checkout or editable install."""
    return Path(localmesh.__file__).resolve().parent / "templates"
