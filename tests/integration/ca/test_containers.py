"""The files the generated compose project mounts: layout, modes, reuse, and real trust
inside a real container."""

from __future__ import annotations

import datetime as dt
import ssl
import stat
import subprocess
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509

from localmesh.ca.authority import CertificateAuthority, IssuedCert
from localmesh.ca.containers import (
    CONTAINER_BUNDLE,
    CONTAINER_CA,
    CONTAINER_CERT,
    CONTAINER_KEY,
    INGRESS_DIR,
    MESH_IDENTITY_DIR,
    MountedCertificates,
    write_container_certs,
)
from localmesh.ca.rotation import RotatingCert, Rotator, load_into
from localmesh.errors import CAError
from tests.integration.ca.tls_server import https_server


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_layout_modes_and_environment(local_ca: CertificateAuthority, tmp_path: Path) -> None:
    out = tmp_path / ".localmesh" / "certs"
    certs = write_container_certs(local_ca, out, "shop", ["api", "db"])
    assert _mode(out) == 0o700
    assert certs.ca.read_bytes() == local_ca.root_pem
    assert _mode(certs.ca) == 0o644
    bundle = certs.bundle.read_bytes()
    assert bundle.endswith(local_ca.root_pem)
    assert bundle.count(b"BEGIN CERTIFICATE") > 50  # the public roots are still there
    api = certs.services["api"]
    assert api.directory == out / "api"
    assert _mode(api.directory) == 0o700
    assert _mode(api.key) == 0o600
    cert = x509.load_pem_x509_certificate(api.cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://shop/svc/api"]
    assert certs.volumes("api") == [
        f"{out / 'trust'}:/etc/localmesh/trust:ro",
        f"{out / 'api'}:/etc/localmesh/identity:ro",
    ]
    env = api.environment()
    assert env["SSL_CERT_FILE"] == env["REQUESTS_CA_BUNDLE"] == env["CURL_CA_BUNDLE"]
    assert env["SSL_CERT_FILE"] == CONTAINER_BUNDLE
    assert env["NODE_EXTRA_CA_CERTS"] == CONTAINER_CA
    assert env["LOCALMESH_SPIFFE_ID"] == "spiffe://shop/svc/api"


def test_a_second_run_changes_nothing(local_ca: CertificateAuthority, tmp_path: Path) -> None:
    out = tmp_path / "certs"
    first = write_container_certs(local_ca, out, "shop", ["api"], mesh_identity="ingress")
    assert first.issued == ("api", MESH_IDENTITY_DIR)
    snapshot = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*.pem")}
    second = write_container_certs(local_ca, out, "shop", ["api"], mesh_identity="ingress")
    assert second.issued == ()
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*.pem")} == snapshot


def test_reissued_when_due_or_from_another_ca(
    local_ca: CertificateAuthority, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "certs"
    first = write_container_certs(local_ca, out, "shop", ["api"]).services["api"].cert.read_bytes()
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=17)  # past 2/3 of 24 h
    second = write_container_certs(local_ca, out, "shop", ["api"], now=later)
    assert second.issued == ("api",)
    assert second.services["api"].cert.read_bytes() != first
    monkeypatch.setenv("LOCALMESH_HOME", str(tmp_path / "other-home"))
    other, _ = CertificateAuthority.init()
    third = write_container_certs(other, out, "shop", ["api"], now=later)
    cert = x509.load_pem_x509_certificate(third.services["api"].cert.read_bytes())
    assert cert.issuer == other.intermediate.subject
    assert third.ca.read_bytes() == other.root_pem


def test_service_cert_serves_tls_that_ca_pem_verifies(
    local_ca: CertificateAuthority, tmp_path: Path
) -> None:
    api = write_container_certs(local_ca, tmp_path / "certs", "shop", ["api"]).services["api"]
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(api.cert, api.key)
    client = ssl.create_default_context(cafile=str(tmp_path / "certs" / "trust" / "ca.pem"))
    client.check_hostname = False  # workload certs carry a SPIFFE ID, not a host name
    with https_server(server_ctx) as srv:
        url = f"https://127.0.0.1:{srv.port}/"
        assert urllib.request.urlopen(url, context=client).read() == b"ok"


def test_mounted_workload_identities_follow_the_host(
    local_ca: CertificateAuthority, tmp_path: Path
) -> None:
    """Inside the mesh container a service's identity (and the mesh's own, in its reserved
    directory) is read from what the host wrote; re-reading it fails, with the hint, until
    the host has renewed it, then swaps in the new certificate."""
    out = tmp_path / "certs"
    certs = write_container_certs(local_ca, out, "shop", ["api"], mesh_identity="ingress")
    assert set(certs.services) == {"api"}  # the mesh's identity is not a service's
    mounted = MountedCertificates(out)
    api = mounted.workload("api", "spiffe://shop/svc/api")
    mesh = mounted.workload(MESH_IDENTITY_DIR, "spiffe://shop/svc/ingress")
    assert mesh.current.uris == ("spiffe://shop/svc/ingress",)
    with pytest.raises(CAError, match="not renewed yet"):
        api.rotate()
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=17)  # past 2/3 of 24 h
    write_container_certs(local_ca, out, "shop", ["api"], mesh_identity="ingress", now=later)
    first = api.current.serial
    assert api.rotate().serial != first
    with pytest.raises(CAError, match="is not spiffe://shop/svc/web"):
        mounted.workload("api", "spiffe://shop/svc/web")
    with pytest.raises(CAError, match="no usable workload identity spiffe://shop/svc/web") as err:
        mounted.workload("web", "spiffe://shop/svc/web")
    assert "run `localmesh up` again" in (err.value.hint or "")


def test_mounted_ingress_certificate_due_is_retried_not_rotated_in_a_loop(
    local_ca: CertificateAuthority, tmp_path: Path
) -> None:
    """A due ingress certificate read again unchanged is an error the rotator retries
    later; handed out again it would stay due and be rotated again at once, in a loop."""
    out = tmp_path / "certs"
    names = ["shop.localhost"]
    aged = dt.datetime.now(dt.UTC) - dt.timedelta(days=21)  # 21 of 30 days: due, still valid
    write_container_certs(local_ca, out, "shop", [], ingress_names=names, now=aged)
    mounted = MountedCertificates(out)
    reads: list[int] = []

    def load() -> IssuedCert:
        reads.append(1)
        return mounted.issue_server(names)

    cert = RotatingCert("ingress", load)  # a mesh container starting late still serves it
    rotator = Rotator()
    rotator.add(cert)
    assert rotator.rotate_due() == []  # due, not renewed on the host: refused
    assert rotator.rotate_due() == []  # and not read again before the retry time
    assert len(reads) == 2
    first = cert.current.serial
    renewed = write_container_certs(local_ca, out, "shop", [], ingress_names=names)
    assert renewed.issued == (INGRESS_DIR,)
    assert cert.rotate().serial != first


@pytest.mark.docker
def test_trust_inside_a_real_container(
    local_ca: CertificateAuthority, tmp_path: Path, docker_engine: str
) -> None:
    """curl and Python in a container trust the mesh via the env vars and mounts alone."""
    certs = write_container_certs(local_ca, tmp_path / "certs", "shop", ["api"])
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    load_into(server_ctx, local_ca.issue_server(["localhost", "127.0.0.1"]))
    script = (
        "set -e\n"
        'curl -sS "https://localhost:$PORT/"; echo\n'
        'python3 -c "import urllib.request,os; print(urllib.request.urlopen('
        "'https://localhost:'+os.environ['PORT']+'/').read().decode())\"\n"
        f"test -r {CONTAINER_CERT} && test -r {CONTAINER_KEY}\n"
        'echo "id=$LOCALMESH_SPIFFE_ID"\n'
    )
    with https_server(server_ctx) as srv:
        cmd = ["docker", "run", "--rm", "--network", "host", "-e", f"PORT={srv.port}"]
        for volume in certs.volumes("api"):
            cmd += ["-v", volume]
        for key, value in certs.services["api"].environment().items():
            cmd += ["-e", f"{key}={value}"]
        proc = subprocess.run(
            [*cmd, docker_engine, "sh", "-c", script],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["ok", "ok", "id=spiffe://shop/svc/api"]
