"""Where the CA lives on disk and how its files are written and checked.

Private keys are 0600 in 0700 directories (what ssh and mkcert do): on a shared machine any
wider mode lets another user mint certificates the host trusts. We refuse to *use* a key with
looser permissions rather than silently fixing it, because a loose key may already have been
read; the hint says how to fix it once the user has decided it is safe.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

from localmesh.errors import CAError

HOME_ENV = "LOCALMESH_HOME"
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
PUBLIC_FILE_MODE = 0o644


def localmesh_home() -> Path:
    """``$LOCALMESH_HOME`` or ``~/.localmesh``: per user, shared by all of that user's meshes."""
    env = os.environ.get(HOME_ENV)
    return Path(env).expanduser() if env else Path.home() / ".localmesh"


def ca_dir() -> Path:
    return localmesh_home() / "ca"


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) 0700, or check an existing one is not group/other-open."""
    if not path.exists():
        try:
            path.mkdir(parents=True, mode=PRIVATE_DIR_MODE)
        except OSError as exc:  # a file where a directory should be, a read-only place
            raise CAError(
                f"cannot create {path}: {exc.strerror or exc}",
                hint=f"set {HOME_ENV} to a directory you can write (now: {localmesh_home()})",
            ) from None
        os.chmod(path, PRIVATE_DIR_MODE)  # mkdir's mode is filtered by the umask
    check_private(path)
    return path


def check_private(path: Path) -> None:
    """Refuse a key or key directory that group/others can use, or that another user owns."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise CAError(f"{path} is missing", hint="run `localmesh ca init`") from None
    mode = stat.S_IMODE(st.st_mode)
    want = PRIVATE_DIR_MODE if stat.S_ISDIR(st.st_mode) else PRIVATE_FILE_MODE
    if mode & 0o077:
        raise CAError(
            f"{path} has mode {mode:04o}; the CA refuses to use keys others can read",
            hint=f"if nobody else could have read it, run: chmod {want:o} {path}",
        )
    euid = os.geteuid()
    if euid not in (0, st.st_uid):
        raise CAError(
            f"{path} belongs to uid {st.st_uid}, not to you (uid {euid})",
            hint=f"use your own LOCALMESH_HOME, or chown {euid} {path}",
        )


def write_atomic(path: Path, data: bytes, mode: int, owner: tuple[int, int] | None = None) -> None:
    """Write via a same-directory temp file created with ``mode``, then rename over ``path``.

    The file never exists with a wider mode (no chmod after the fact), and a reader never
    sees half a certificate. ``owner`` (uid, gid) is for root writing into a user's
    directory (the mesh container): where it cannot be given, the file stays the writer's.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        if owner is not None:
            with contextlib.suppress(PermissionError):
                os.fchown(fd, *owner)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_private(path: Path) -> bytes:
    check_private(path)
    return path.read_bytes()
