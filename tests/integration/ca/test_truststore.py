"""Trust stores with the real tools: update-ca-certificates and certutil on temporary roots,
plus one real round trip on this machine that is fully reverted."""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from localmesh.ca.authority import CertificateAuthority, fingerprint
from localmesh.ca.truststore import DebianStore, NssStore, TrustStores, nss_nickname
from tests.integration.ca.tls_server import https_server

PUBLIC_ROOT = "mozilla/ISRG_Root_X1.crt"


@pytest.fixture
def debian_root(tmp_path: Path) -> DebianStore:
    """A Debian trust-store tree under a temp dir holding one public root and a hook that
    records what it is told (as Debian's Java keystore hook does)."""
    root = tmp_path / "sysroot"
    for d in (
        "usr/share/ca-certificates/mozilla",
        "usr/local/share/ca-certificates",
        "etc/ssl/certs",
        "etc/ca-certificates/update.d",
    ):
        (root / d).mkdir(parents=True)
    shutil.copy(
        f"/usr/share/ca-certificates/{PUBLIC_ROOT}",
        root / "usr/share/ca-certificates" / PUBLIC_ROOT,
    )
    (root / "etc/ca-certificates.conf").write_text(PUBLIC_ROOT + "\n")
    hook = root / "etc/ca-certificates/update.d/record"
    hook.write_text(f"#!/bin/sh\ncat >> {root / 'hook.log'}\n")
    hook.chmod(0o755)
    store = DebianStore(prefix=root)
    assert store.available, "update-ca-certificates is required (apt install ca-certificates)"
    subprocess.run(
        [
            "update-ca-certificates",
            "--certsconf",
            str(root / "etc/ca-certificates.conf"),
            "--certsdir",
            str(root / "usr/share/ca-certificates"),
            "--localcertsdir",
            str(store.local_dir),
            "--etccertsdir",
            str(store.etc_certs),
            "--hooksdir",
            str(root / "etc/ca-certificates/update.d"),
        ],
        check=True,
        capture_output=True,
    )
    return store


def _links(store: DebianStore) -> dict[str, str]:
    return {p.name: os.readlink(p) for p in store.etc_certs.iterdir() if p.is_symlink()}


def _dangling(store: DebianStore) -> list[str]:
    return [p.name for p in store.etc_certs.iterdir() if p.is_symlink() and not p.exists()]


def _fetch(port: int, cafile: str | None) -> str:
    ctx = ssl.create_default_context(cafile=cafile)
    with urllib.request.urlopen(f"https://localhost:{port}/", context=ctx, timeout=5) as resp:
        body: bytes = resp.read()  # urlopen is typed as returning Any
        return body.decode()


def _server_context(ca: CertificateAuthority) -> ssl.SSLContext:
    from localmesh.ca.rotation import load_into

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    load_into(ctx, ca.issue_server(["localhost", "127.0.0.1"]))
    return ctx


def test_debian_store_install_and_revert(
    local_ca: CertificateAuthority, debian_root: DebianStore
) -> None:
    before_links = _links(debian_root)
    before_bundle = debian_root.bundle.read_bytes()
    fp = fingerprint(local_ca.root)

    change = debian_root.install(local_ca.root_pem, fp)
    assert change.action == "added"
    assert str(debian_root.bundle) in change.detail
    assert local_ca.root_pem.strip() in debian_root.bundle.read_bytes()
    assert debian_root.install(local_ca.root_pem, fp).action == "unchanged"
    hook_log = (debian_root.prefix / "hook.log").read_text()
    assert f"+{debian_root.etc_certs}/localmesh-{fp[:16]}.pem" in hook_log

    with https_server(_server_context(local_ca)) as srv:
        assert _fetch(srv.port, str(debian_root.bundle)) == "ok"
        changes = debian_root.uninstall()
        assert [c.action for c in changes].count("removed") >= 3
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            _fetch(srv.port, str(debian_root.bundle))

    assert debian_root.bundle.read_bytes() == before_bundle
    assert _links(debian_root) == before_links
    assert _dangling(debian_root) == []
    assert (
        f"-{debian_root.etc_certs}/localmesh-{fp[:16]}.pem"
        in (debian_root.prefix / "hook.log").read_text()
    )
    assert debian_root.uninstall()[0].action == "unchanged"


def test_nss_database_with_real_certutil(local_ca: CertificateAuthority, tmp_path: Path) -> None:
    certutil = shutil.which("certutil")
    assert certutil, "certutil is required for this test: apt install libnss3-tools"
    db = tmp_path / "nssdb"
    db.mkdir()
    subprocess.run([certutil, "-N", "-d", f"sql:{db}", "--empty-password"], check=True)
    store = NssStore(databases=(db,), command=certutil)
    fp = fingerprint(local_ca.root)

    added = store.install(local_ca.root_pem, fp, local_ca.root_path)
    assert [c.action for c in added] == ["added"]
    listing = subprocess.run(
        [certutil, "-L", "-d", f"sql:{db}"], check=True, capture_output=True, text=True
    ).stdout
    assert nss_nickname(fp) in listing
    assert [c.action for c in store.install(local_ca.root_pem, fp, local_ca.root_path)] == [
        "unchanged"
    ]
    assert [c.action for c in store.uninstall()] == ["removed"]
    listing = subprocess.run(
        [certutil, "-L", "-d", f"sql:{db}"], check=True, capture_output=True, text=True
    ).stdout
    assert "localmesh" not in listing


def test_macos_gets_the_exact_command(local_ca: CertificateAuthority, tmp_path: Path) -> None:
    stores = TrustStores(
        system=DebianStore(prefix=tmp_path, command=None),
        nss=NssStore(databases=(), command=None),
        platform="darwin",
    )
    changes = stores.install(local_ca.root_pem, fingerprint(local_ca.root), local_ca.root_path)
    assert changes[0].action == "manual"
    assert "security add-trusted-cert -d -r trustRoot" in changes[0].detail
    assert str(local_ca.root_path) in changes[0].detail
    assert changes[1].action == "skipped"
    assert "remove-trusted-cert" in stores.uninstall(local_ca.root_path)[0].detail


def _contents(store: DebianStore) -> dict[str, bytes]:
    """Every entry of /etc/ssl/certs with what it resolves to (links or files alike)."""
    return {p.name: p.read_bytes() for p in store.etc_certs.iterdir() if p.is_file() and p.exists()}


@pytest.fixture
def system_snapshot() -> Iterator[None]:
    """Record this machine's store; afterwards undo any leftover and prove nothing changed.

    update-ca-certificates turns a plain ``.pem`` that someone copied into /etc/ssl/certs
    for a local anchor into a link to that anchor (same bytes); put such files back too.
    """
    store = DebianStore()
    before = _contents(store)
    plain = {p.name for p in store.etc_certs.iterdir() if not p.is_symlink() and p.is_file()}
    before_bundle = store.bundle.read_bytes()
    yield
    if list(store.local_dir.glob("localmesh-*.crt")):
        store.uninstall()
    for name in plain:
        path = store.etc_certs / name
        if path.is_symlink():
            data = path.read_bytes()
            path.unlink()
            path.write_bytes(data)
    assert list(store.local_dir.glob("localmesh-*.crt")) == []
    assert store.bundle.read_bytes() == before_bundle
    assert _contents(store) == before
    assert {p.name for p in store.etc_certs.iterdir() if not p.is_symlink()} >= plain


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "localmesh.cli.main", *args],
        capture_output=True,
        text=True,
        check=False,
        env=os.environ.copy(),
    )


@pytest.mark.usefixtures("system_snapshot")
@pytest.mark.skipif(os.geteuid() != 0, reason="changing the system trust store needs root")
def test_real_round_trip_on_this_machine(local_ca: CertificateAuthority) -> None:
    fp = fingerprint(local_ca.root)
    with https_server(_server_context(local_ca)) as srv:
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            _fetch(srv.port, None)
        trusted = _cli("ca", "trust")
        assert trusted.returncode == 0, trusted.stderr
        anchor = f"/usr/local/share/ca-certificates/localmesh-{fp[:16]}.crt"
        assert f"system (Debian): added: wrote {anchor}" in trusted.stdout
        assert _fetch(srv.port, None) == "ok"  # Python's default trust
        curl = subprocess.run(
            ["curl", "-sS", f"https://localhost:{srv.port}/"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert curl.stdout == "ok", curl.stderr
        assert "trusted" in _cli("ca", "show").stdout

        untrusted = _cli("ca", "untrust")
        assert untrusted.returncode == 0, untrusted.stderr
        assert "removed" in untrusted.stdout
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            _fetch(srv.port, None)
