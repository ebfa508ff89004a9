"""The suite tests what ships: the mypyc-compiled hot path (setup.py), unless asked not to."""

from __future__ import annotations

import importlib
import os

import pytest

pytestmark = pytest.mark.unit

HOT = [
    "localmesh.runtime.dataplane.http",
    "localmesh.runtime.dataplane.upstream",
    "localmesh.runtime.dataplane.tcp",
    "localmesh.runtime.dataplane.core.routing",
    "localmesh.runtime.telemetry.accesslog",
    "localmesh.runtime.telemetry.metrics",
    "localmesh.runtime.ingress.tlsstream",
]


@pytest.mark.skipif(
    bool(os.environ.get("LOCALMESH_PURE")), reason="LOCALMESH_PURE=1: testing the sources"
)
@pytest.mark.parametrize("name", HOT)
def test_hot_path_module_is_compiled(name: str) -> None:
    module = importlib.import_module(name)
    assert str(module.__file__).endswith(".so"), (
        f"{name} runs from {module.__file__}: the install was built without mypyc "
        "(make venv builds it; LOCALMESH_PURE=1 to test the sources on purpose)"
    )
