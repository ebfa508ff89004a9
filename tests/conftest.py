"""Fixtures for real components: Postgres, Redis, HTTP backends, the Docker engine."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import localmesh
from localmesh.ca.authority import CertificateAuthority
from tests.support.docker import BASE_IMAGE, docker_problem
from tests.support.services import (
    HttpBackend,
    Postgres,
    Redis,
    run_http_backend,
    run_postgres,
    run_redis,
)


def pytest_sessionstart(session: pytest.Session) -> None:
    """Refuse to test stale compiled modules: an edited .py beside its older mypyc build
    would be shadowed by it, and the suite would pass on code that no longer exists."""
    root = Path(localmesh.__file__).parent
    stale = [
        str(source.relative_to(root.parent))
        for ext in root.rglob("*.cpython-*.so")
        if (source := ext.with_name(ext.name.split(".")[0] + ".py")).exists()
        and source.stat().st_mtime > ext.stat().st_mtime
    ]
    if stale:
        pytest.exit(
            f"compiled modules are older than their sources ({', '.join(sorted(stale))}): "
            "rebuild with `make venv`, or remove them (`make pure`) to test the sources",
            returncode=4,
        )


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    with run_postgres() as pg:
        yield pg


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Redis]:
    with run_redis() as r:
        yield r


@pytest.fixture
def http_backend() -> Iterator[HttpBackend]:
    with run_http_backend("backend") as b:
        yield b


@pytest.fixture
def local_ca(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> CertificateAuthority:
    """A fresh local CA in a temporary LOCALMESH_HOME (never the user's ~/.localmesh)."""
    home = tmp_path_factory.mktemp("localmesh-home")
    monkeypatch.setenv("LOCALMESH_HOME", str(home))
    ca, _ = CertificateAuthority.init()
    return ca


@pytest.fixture(scope="session")
def docker_engine() -> str:
    """The base image tag, once the engine answers; fails loudly otherwise."""
    problem = docker_problem()
    if problem is not None:
        pytest.fail(f"Docker is required for this test and is not available: {problem}")
    return BASE_IMAGE
