"""The Docker side of the harness: an engine that answers and the locally built images.

Tests that need Docker use the ``docker_engine`` fixture. When no engine can be reached
the test FAILS with the reason (never skips): a green run must mean Docker was exercised.
``scripts/test.sh`` starts dockerd and builds the images before pytest runs.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BASE_IMAGE = os.environ.get("LOCALMESH_BASE_IMAGE", "localmesh-base:bookworm")


def docker_problem() -> str | None:
    """None when the engine answers and the base image exists, else what is wrong."""
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, check=False)
    if info.returncode != 0:
        return (
            "no Docker engine answers (`docker info` failed: "
            f"{info.stderr.strip()[-300:]}); run scripts/ensure-docker.sh as root"
        )
    build = subprocess.run(
        [str(REPO / "scripts" / "build-test-images.sh")],
        capture_output=True,
        text=True,
        check=False,
    )
    if build.returncode != 0:
        return f"building {BASE_IMAGE} failed: {(build.stdout + build.stderr)[-1000:]}"
    return None
