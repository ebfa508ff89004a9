"""Install the root into the host's trust stores, the way mkcert does, and take it out again.

Stores (each a small class with ``install``/``uninstall`` returning exactly what changed):

- **Debian/Ubuntu system store**: a file in ``/usr/local/share/ca-certificates`` and
  ``update-ca-certificates`` (OpenSSL, curl, Python, Go, ... read the resulting bundle).
- **NSS** (Firefox profiles, Chrome/Chromium's ``~/.pki/nssdb``) via ``certutil``, only when
  ``certutil`` is installed (package ``libnss3-tools``).
- **macOS**: changing the keychain needs an admin prompt, so the exact command is printed.

Every path is injectable (``DebianStore(prefix=...)``, ``NssStore(databases=...)``) so tests
run the real tools against a temporary root and never touch the machine's stores.
Anchors are recognised by name (``localmesh-*.crt``, nickname ``localmesh development CA *``),
so ``untrust`` works even after the CA directory was deleted.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from localmesh.errors import CAError

ANCHOR_PREFIX = "localmesh-"
_RUN_PARTS_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
NSS_NICK_PREFIX = "localmesh development CA"


@dataclass(frozen=True, slots=True)
class TrustChange:
    """One line of `trust`/`untrust` output: which store, what happened, where."""

    store: str
    action: str  # added | removed | unchanged | skipped | manual
    detail: str

    def __str__(self) -> str:
        return f"{self.store}: {self.action}: {self.detail}"


def anchor_file_name(fingerprint: str) -> str:
    return f"{ANCHOR_PREFIX}{fingerprint[:16]}.crt"


def nss_nickname(fingerprint: str) -> str:
    return f"{NSS_NICK_PREFIX} {fingerprint[:16]}"


def _which(name: str) -> str | None:
    """``shutil.which`` that also looks in sbin: a normal user's PATH often lacks it."""
    path = os.environ.get("PATH", os.defpath) + os.pathsep + "/usr/sbin:/sbin"
    return shutil.which(name, path=path)


def _run(cmd: list[str], what: str) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)
    except OSError as exc:
        raise CAError(f"could not run {cmd[0]}: {exc}") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise CAError(f"{what} failed (exit {proc.returncode}): {' / '.join(tail)}")
    return proc.stdout


def _permission_error(path: Path, exc: OSError) -> CAError:
    return CAError(
        f"cannot change {path}: {exc.strerror}",
        hint="the system trust store needs root: rerun as `sudo -E localmesh ca trust`"
        " (-E keeps LOCALMESH_HOME)",
    )


@dataclass(frozen=True, slots=True)
class DebianStore:
    """``/usr/local/share/ca-certificates`` + ``update-ca-certificates``, under ``prefix``."""

    prefix: Path = Path("/")
    command: str | None = field(default_factory=lambda: _which("update-ca-certificates"))

    @property
    def local_dir(self) -> Path:
        return self.prefix / "usr/local/share/ca-certificates"

    @property
    def etc_certs(self) -> Path:
        return self.prefix / "etc/ssl/certs"

    @property
    def bundle(self) -> Path:
        return self.etc_certs / "ca-certificates.crt"

    @property
    def available(self) -> bool:
        return self.command is not None and self.local_dir.parent.is_dir()

    def _update(self) -> None:
        assert self.command is not None
        p = self.prefix
        _run(
            [
                self.command,
                "--certsconf",
                str(p / "etc/ca-certificates.conf"),
                "--certsdir",
                str(p / "usr/share/ca-certificates"),
                "--localcertsdir",
                str(self.local_dir),
                "--etccertsdir",
                str(self.etc_certs),
                "--hooksdir",
                str(p / "etc/ca-certificates/update.d"),
            ],
            "update-ca-certificates",
        )

    def install(self, root_pem: bytes, fingerprint: str) -> TrustChange:
        name = "system (Debian)"
        if not self.available:
            return TrustChange(name, "skipped", "no update-ca-certificates here")
        target = self.local_dir / anchor_file_name(fingerprint)
        if target.exists() and target.read_bytes() == root_pem and self._in_bundle(root_pem):
            return TrustChange(name, "unchanged", f"{target} already installed")
        try:
            self.local_dir.mkdir(mode=0o755, exist_ok=True)
            target.write_bytes(root_pem)
            target.chmod(0o644)
        except PermissionError as exc:
            raise _permission_error(target, exc) from exc
        self._update()
        return TrustChange(
            name, "added", f"wrote {target}, ran update-ca-certificates (bundle {self.bundle})"
        )

    def uninstall(self) -> list[TrustChange]:
        name = "system (Debian)"
        if not self.available or not self.local_dir.is_dir():
            return [TrustChange(name, "skipped", "no update-ca-certificates here")]
        anchors = sorted(self.local_dir.glob(f"{ANCHOR_PREFIX}*.crt"))
        if not anchors:
            return [TrustChange(name, "unchanged", f"no localmesh root in {self.local_dir}")]
        changes = []
        removed_pems = []
        for anchor in anchors:
            try:
                anchor.unlink()
            except PermissionError as exc:
                raise _permission_error(anchor, exc) from exc
            changes.append(TrustChange(name, "removed", str(anchor)))
            removed_pems.append(self.etc_certs / f"{anchor.stem}.pem")
        # update-ca-certificates rebuilds the bundle but leaves the links it made for a
        # removed local anchor (its .pem link and the OpenSSL hash link to that) dangling,
        # and does not tell its hooks (Debian's Java keystore) about the removal: we do both.
        for link in sorted(self.etc_certs.iterdir()):
            if link.is_symlink() and Path(os.readlink(link)).name.startswith(ANCHOR_PREFIX):
                link.unlink()
                changes.append(TrustChange(name, "removed", f"link {link}"))
        self._update()
        changes.append(TrustChange(name, "removed", f"ran update-ca-certificates ({self.bundle})"))
        for hook in self._hooks():
            removal = "".join(f"-{pem}\n" for pem in removed_pems)
            proc = subprocess.run(
                [str(hook)], input=removal, capture_output=True, text=True, check=False, timeout=120
            )
            outcome = "" if proc.returncode == 0 else f" (it failed: exit {proc.returncode})"
            changes.append(TrustChange(name, "removed", f"told hook {hook}{outcome}"))
        return changes

    def _hooks(self) -> list[Path]:
        """What ``run-parts`` would run: executable files with plain names, in order."""
        hooks_dir = self.prefix / "etc/ca-certificates/update.d"
        if not hooks_dir.is_dir():
            return []
        return [
            p
            for p in sorted(hooks_dir.iterdir())
            if p.is_file() and os.access(p, os.X_OK) and _RUN_PARTS_NAME.match(p.name)
        ]

    def _in_bundle(self, root_pem: bytes) -> bool:
        try:
            return root_pem.strip() in self.bundle.read_bytes()
        except OSError:
            return False


def default_nss_databases(home: Path | None = None) -> tuple[Path, ...]:
    """Chrome/Chromium's shared DB and every Firefox profile (deb and snap) that has one."""
    home = home or Path.home()
    candidates = [home / ".pki/nssdb"]
    for profiles in (home / ".mozilla/firefox", home / "snap/firefox/common/.mozilla/firefox"):
        if profiles.is_dir():
            candidates.extend(sorted(p for p in profiles.iterdir() if p.is_dir()))
    return tuple(p for p in candidates if (p / "cert9.db").exists())


@dataclass(frozen=True, slots=True)
class NssStore:
    """NSS databases (``cert9.db``) changed with ``certutil``."""

    databases: tuple[Path, ...] = field(default_factory=default_nss_databases)
    command: str | None = field(default_factory=lambda: _which("certutil"))

    def install(self, root_pem: bytes, fingerprint: str, root_path: Path) -> list[TrustChange]:
        if self.command is None:
            return [TrustChange("NSS", "skipped", "certutil not found (apt install libnss3-tools)")]
        if not self.databases:
            return [TrustChange("NSS", "skipped", "no Firefox/Chrome NSS database found")]
        nick = nss_nickname(fingerprint)
        changes = []
        for db in self.databases:
            if nick in self._nicknames(db):
                changes.append(TrustChange("NSS", "unchanged", f"{db} already trusts {nick!r}"))
                continue
            _run(
                [
                    self.command,
                    "-A",
                    "-d",
                    f"sql:{db}",
                    "-t",
                    "C,,",
                    "-n",
                    nick,
                    "-i",
                    str(root_path),
                ],
                f"certutil -A on {db}",
            )
            changes.append(TrustChange("NSS", "added", f"{nick!r} to {db}"))
        return changes

    def uninstall(self) -> list[TrustChange]:
        if self.command is None:
            return [TrustChange("NSS", "skipped", "certutil not found")]
        changes = []
        for db in self.databases:
            for nick in self._nicknames(db):
                if nick.startswith(NSS_NICK_PREFIX):
                    _run(
                        [self.command, "-D", "-d", f"sql:{db}", "-n", nick], f"certutil -D on {db}"
                    )
                    changes.append(TrustChange("NSS", "removed", f"{nick!r} from {db}"))
        return changes or [TrustChange("NSS", "unchanged", "no localmesh root in any NSS database")]

    def _nicknames(self, db: Path) -> list[str]:
        assert self.command is not None
        out = _run([self.command, "-L", "-d", f"sql:{db}"], f"certutil -L on {db}")
        # Lines look like "<nickname padded with spaces>   C,,"; the last field is the trust.
        names = []
        for line in out.splitlines():
            parts = line.rsplit(None, 1)
            if len(parts) == 2 and "," in parts[1]:
                names.append(parts[0].strip())
        return names


def macos_instructions(root_path: Path, install: bool) -> TrustChange:
    """The keychain needs an admin prompt: say exactly what to run instead of running it."""
    if install:
        cmd = (
            "sudo security add-trusted-cert -d -r trustRoot "
            f"-k /Library/Keychains/System.keychain {root_path}"
        )
    else:
        cmd = f"sudo security remove-trusted-cert -d {root_path}"
    return TrustChange("macOS keychain", "manual", f"run: {cmd}")


@dataclass(frozen=True, slots=True)
class TrustStores:
    """The stores `trust`/`untrust` act on; tests build one pointing at temporary paths."""

    system: DebianStore = field(default_factory=DebianStore)
    nss: NssStore = field(default_factory=NssStore)
    platform: str = sys.platform

    def install(self, root_pem: bytes, fingerprint: str, root_path: Path) -> list[TrustChange]:
        if self.platform == "darwin":
            return [
                macos_instructions(root_path, True),
                *self.nss.install(root_pem, fingerprint, root_path),
            ]
        return [
            self.system.install(root_pem, fingerprint),
            *self.nss.install(root_pem, fingerprint, root_path),
        ]

    def uninstall(self, root_path: Path) -> list[TrustChange]:
        if self.platform == "darwin":
            return [macos_instructions(root_path, False), *self.nss.uninstall()]
        return [*self.system.uninstall(), *self.nss.uninstall()]
