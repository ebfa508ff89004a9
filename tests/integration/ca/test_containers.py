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
    SIGNER_DIR,
    MountedCertificates,
    keep_identity_files,
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
    assert api.directory == out / "services" / "api"
    assert _mode(api.directory) == 0o700
    assert _mode(api.key) == 0o600
    cert = x509.load_pem_x509_certificate(api.cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://shop/svc/api"]
    assert certs.volumes("api") == [
        f"{out / 'trust'}:/etc/localmesh/trust:ro",
        f"{out / 'services' / 'api'}:/etc/localmesh/identity:ro",
    ]
    env = api.environment()
    assert env["SSL_CERT_FILE"] == env["REQUESTS_CA_BUNDLE"] == env["CURL_CA_BUNDLE"]
    assert env["SSL_CERT_FILE"] == CONTAINER_BUNDLE
    assert env["NODE_EXTRA_CA_CERTS"] == CONTAINER_CA
    assert env["LOCALMESH_SPIFFE_ID"] == "spiffe://shop/svc/api"


def test_a_second_run_changes_nothing(local_ca: CertificateAuthority, tmp_path: Path) -> None:
    out = tmp_path / "certs"
    first = write_container_certs(local_ca, out, "shop", ["api"], signer=True)
    assert first.issued == ("api", SIGNER_DIR)
    assert _mode(out / SIGNER_DIR) == 0o700
    assert _mode(out / SIGNER_DIR / "key.pem") == 0o600
    snapshot = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*.pem")}
    second = write_container_certs(local_ca, out, "shop", ["api"], signer=True)
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


def test_no_service_name_meets_the_mesh_s_own_directories(
    local_ca: CertificateAuthority, tmp_path: Path
) -> None:
    """Services named like the trust, ingress or signer directories keep their own: a key
    in trust/ would be mounted into every container."""
    out = tmp_path / "certs"
    names = ["shop.localhost"]
    services = ["trust", "ingress", "signer"]
    certs = write_container_certs(local_ca, out, "shop", services, ingress_names=names, signer=True)
    assert sorted(p.name for p in (out / "trust").iterdir()) == ["bundle.pem", "ca.pem"]
    for service in services:
        cert = x509.load_pem_x509_certificate(certs.services[service].cert.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
            f"spiffe://shop/svc/{service}"
        ]
    served = MountedCertificates(out).issue_server(names).cert
    assert served.subject.rfc4514_string().startswith("CN=shop.localhost,")


def test_the_mesh_container_issues_identities_with_the_signer_the_host_renews(
    local_ca: CertificateAuthority, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Inside the mesh container workload identities are issued from the mounted mesh
    signer, read again on each issue, so a signer the host renewed is used from then on.
    A due signer still issues (with a warning in the log); a missing or expired one is an
    error with the hint, which the rotator retries."""
    out = tmp_path / "certs"
    mounted = MountedCertificates(out)
    with pytest.raises(CAError, match="no usable mesh signer") as err:
        mounted.issue_workload("shop", "api")
    assert "run `localmesh up` again" in (err.value.hint or "")
    aged = dt.datetime.now(dt.UTC) - dt.timedelta(days=21)  # due at day 20 of 30
    write_container_certs(local_ca, out, "shop", [], signer=True, now=aged)
    first_signer = x509.load_pem_x509_certificate((out / SIGNER_DIR / "cert.pem").read_bytes())
    svid = mounted.issue_workload("shop", "api", lifetime=3600)
    assert svid.uris == ("spiffe://shop/svc/api",)
    assert svid.cert.issuer == first_signer.subject
    assert svid.chain == (first_signer,)
    assert (svid.not_after - svid.not_before).total_seconds() <= 3600 + 60
    assert "the mesh signer expires on" in caplog.text
    renewed = write_container_certs(local_ca, out, "shop", [], signer=True)
    assert renewed.issued == (SIGNER_DIR,)
    second = mounted.issue_workload("shop", "api")
    assert second.chain[0].serial_number != first_signer.serial_number
    second.cert.verify_directly_issued_by(second.chain[0])
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=31)
    with pytest.raises(CAError, match=r"the mesh signer in .* expired on"):
        mounted.issue_workload("shop", "api", now=later)
    other_domain = write_container_certs(local_ca, out, "bank", [], signer=True)
    assert other_domain.issued == (SIGNER_DIR,)  # a changed trust domain gets its own signer


def test_the_mesh_container_keeps_the_apps_identity_files_current(
    local_ca: CertificateAuthority, tmp_path: Path
) -> None:
    """A detached project's apps that re-read their identity files stay valid: the mesh
    container rewrites a due one with the signer (owned like its directory), leaves fresh
    ones alone, and the host's next `generate` takes over again without complaint."""
    out = tmp_path / "certs"
    aged = dt.datetime.now(dt.UTC) - dt.timedelta(hours=17)  # due at 16 of 24 hours
    write_container_certs(local_ca, out, "shop", ["api", "web"], signer=True, now=aged)
    write_container_certs(local_ca, out, "shop", ["web"], signer=True)  # web renewed
    services = out / "services"
    before = {s: (services / s / "cert.pem").read_bytes() for s in ("api", "web")}
    mounted = MountedCertificates(out)
    rotator = keep_identity_files(mounted, "shop", ["api", "web", "ghost"], 24 * 3600.0)
    assert [c.name for c in rotator.rotate_due()] == ["spiffe://shop/svc/api"]
    api = services / "api"
    cert = x509.load_pem_x509_certificate((api / "cert.pem").read_bytes())
    signer = x509.load_pem_x509_certificate((out / SIGNER_DIR / "cert.pem").read_bytes())
    assert cert.issuer == signer.subject
    assert _mode(api / "key.pem") == 0o600
    assert (api / "key.pem").stat().st_uid == api.stat().st_uid
    assert (services / "web" / "cert.pem").read_bytes() == before["web"]
    assert rotator.rotate_due() == []
    again = write_container_certs(local_ca, out, "shop", ["api", "web"], signer=True)
    assert again.issued == ("api",)  # the host's own again (the signer's is not its)


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
