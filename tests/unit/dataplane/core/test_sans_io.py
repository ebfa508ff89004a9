"""The decision core stays free of I/O: no module under core/ imports asyncio, socket or ssl."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from localmesh.runtime.dataplane import core

pytestmark = pytest.mark.unit

FORBIDDEN = {"asyncio", "socket", "ssl", "uvloop", "selectors"}


def test_core_imports_no_io_module() -> None:
    root = Path(core.__file__).parent
    offenders = []
    for path in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert offenders == []
