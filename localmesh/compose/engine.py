"""The Docker engine, reached through the Docker SDK, with failures turned into user errors.

Only the host side uses this (building the mesh image, checking what ``up`` started); the
mesh container itself never talks to the engine and needs no Docker socket.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import docker
import docker.errors

from localmesh.errors import DockerError


def start_hint() -> str:
    """How to get an engine on this kind of machine."""
    if sys.platform == "darwin":
        return "start Docker Desktop (or colima start) and retry"
    if os.geteuid() == 0:
        return "start the engine (systemctl start docker, or dockerd &) and retry"
    return (
        "start the engine (sudo systemctl start docker) and make sure you may use it "
        "(sudo usermod -aG docker $USER, then log in again)"
    )


def connect() -> Any:
    """A Docker SDK client whose engine answered a ping; DockerError with a hint otherwise."""
    where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        raise DockerError(
            f"no Docker engine answers at {where} ({_short(exc)})", hint=start_hint()
        ) from None
    return client


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[-1][:200] if text else type(exc).__name__
