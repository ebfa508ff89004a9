"""A wheel built from a clean tree carries the compose templates that ``generate`` and
the image build read, and the mypyc-compiled hot path (setup.py).

The templates live in top-level ``compose-templates/``; ``localmesh/templates`` links to
it and setuptools copies the files through the link. Building needs the build backend
(setuptools, mypy) from the package index, as installing the project does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from localmesh.compose.templates import templates_dir

REPO = Path(__file__).resolve().parents[3]
TEMPLATES = sorted(p.name for p in (REPO / "compose-templates").iterdir())


def test_the_templates_are_found_in_a_checkout() -> None:
    assert sorted(p.name for p in templates_dir().iterdir()) == TEMPLATES
    assert {"Dockerfile", "mesh-service.yaml"} <= set(TEMPLATES)


def build_wheel(tmp_path: Path, env: dict[str, str] | None = None) -> set[str]:
    """Build a wheel from a copy of the tree as git would check it out; its member names."""
    source = tmp_path / "src"  # the templates link stays a link
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(REPO / name, source / name)
    for name in ("localmesh", "compose-templates"):
        shutil.copytree(
            REPO / name,
            source / name,
            symlinks=True,
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so"),
        )
    assert (source / "localmesh" / "templates").is_symlink()
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(source), "-w", "dist"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        env={**os.environ, **(env or {})},
    )
    assert done.returncode == 0, done.stderr
    [wheel] = (tmp_path / "dist").glob("localmesh-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        for name in TEMPLATES:
            member = f"localmesh/templates/{name}"
            assert zf.read(member) == (REPO / "compose-templates" / name).read_bytes()
        return set(zf.namelist())


@pytest.mark.slow
def test_a_built_wheel_carries_the_templates_and_the_compiled_hot_path(tmp_path: Path) -> None:
    names = build_wheel(tmp_path)
    if not os.environ.get("LOCALMESH_PURE"):
        assert "localmesh/_speedups__mypyc" in " ".join(names)
        assert any(n.startswith("localmesh/runtime/dataplane/http.cpython-") for n in names)
    assert "localmesh/runtime/dataplane/http.py" in names  # the source ships beside it


@pytest.mark.slow
def test_without_a_c_compiler_the_sources_install(tmp_path: Path) -> None:
    names = build_wheel(tmp_path, env={"CC": "/bin/false"})
    assert not [n for n in names if n.endswith(".so")]
    assert "localmesh/runtime/dataplane/http.py" in names
