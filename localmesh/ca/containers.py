"""Trust and identity inside containers: the files the generated compose project mounts.

Host side (``write_container_certs(ca, out_dir, ...)``, ``out_dir`` usually
``<project>/.localmesh/certs``)::

    trust/ca.pem            the mesh root alone                      (0644)
    trust/bundle.pem        the host's public roots + the mesh root  (0644)
    <service>/cert.pem      the service's workload cert + intermediate (0644)
    <service>/key.pem       its key                                  (0600, directory 0700)

Container side: ``trust/`` is mounted read-only at ``/etc/localmesh/trust`` and the
service's own directory at ``/etc/localmesh/identity``. Directories, not single files, are
mounted because a rotation replaces files by rename and a single-file bind mount would keep
showing the old inode; and one service's directory only, so no container sees another's key.

``bundle.pem`` (not ``ca.pem``) goes into ``SSL_CERT_FILE``/``REQUESTS_CA_BUNDLE``/
``CURL_CA_BUNDLE`` because those *replace* the default roots: with the mesh root alone, calls
to the public internet would stop verifying. ``NODE_EXTRA_CA_CERTS`` *adds* to Node's roots,
so it gets ``ca.pem``.
"""

from __future__ import annotations

import datetime as dt
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from localmesh.ca import files
from localmesh.ca.authority import WORKLOAD_LIFETIME, CertificateAuthority
from localmesh.ca.names import workload_spiffe_id
from localmesh.ca.rotation import rotation_due

CONTAINER_TRUST_DIR = "/etc/localmesh/trust"
CONTAINER_IDENTITY_DIR = "/etc/localmesh/identity"
CONTAINER_CA = f"{CONTAINER_TRUST_DIR}/ca.pem"
CONTAINER_BUNDLE = f"{CONTAINER_TRUST_DIR}/bundle.pem"
CONTAINER_CERT = f"{CONTAINER_IDENTITY_DIR}/cert.pem"
CONTAINER_KEY = f"{CONTAINER_IDENTITY_DIR}/key.pem"


def trust_environment() -> dict[str, str]:
    """The variables common runtimes read for their CA roots (same for every service)."""
    return {
        "SSL_CERT_FILE": CONTAINER_BUNDLE,  # OpenSSL: Python ssl, Ruby, PHP, Go on Linux
        "REQUESTS_CA_BUNDLE": CONTAINER_BUNDLE,  # Python requests (ignores SSL_CERT_FILE)
        "CURL_CA_BUNDLE": CONTAINER_BUNDLE,  # curl and libcurl users
        "NODE_EXTRA_CA_CERTS": CONTAINER_CA,  # Node adds these to its built-in roots
    }


@dataclass(frozen=True, slots=True)
class ServiceCerts:
    service: str
    spiffe_id: str
    directory: Path

    @property
    def cert(self) -> Path:
        return self.directory / "cert.pem"

    @property
    def key(self) -> Path:
        return self.directory / "key.pem"

    def environment(self) -> dict[str, str]:
        """Trust variables plus where this service finds its own identity."""
        return {
            **trust_environment(),
            "LOCALMESH_CERT_FILE": CONTAINER_CERT,
            "LOCALMESH_KEY_FILE": CONTAINER_KEY,
            "LOCALMESH_SPIFFE_ID": self.spiffe_id,
        }


@dataclass(frozen=True, slots=True)
class ContainerCerts:
    """What ``write_container_certs`` wrote, and how compose should mount it."""

    trust_dir: Path
    services: Mapping[str, ServiceCerts]

    @property
    def ca(self) -> Path:
        return self.trust_dir / "ca.pem"

    @property
    def bundle(self) -> Path:
        return self.trust_dir / "bundle.pem"

    def volumes(self, service: str) -> list[str]:
        """Compose short-syntax volumes (``host:container:ro``) for one service."""
        own = self.services[service]
        return [
            f"{self.trust_dir}:{CONTAINER_TRUST_DIR}:ro",
            f"{own.directory}:{CONTAINER_IDENTITY_DIR}:ro",
        ]


def system_roots_pem() -> bytes:
    """The host's default public roots (what the bundle adds the mesh root to)."""
    cafile = ssl.get_default_verify_paths().cafile
    if cafile and Path(cafile).is_file():
        return Path(cafile).read_bytes()
    ctx = ssl.create_default_context()
    ders = ctx.get_ca_certs(binary_form=True)
    return b"".join(ssl.DER_cert_to_PEM_cert(d).encode() for d in ders)


def write_container_certs(
    ca: CertificateAuthority,
    out_dir: Path,
    trust_domain: str,
    services: Iterable[str],
    *,
    lifetime: float = WORKLOAD_LIFETIME,
    now: dt.datetime | None = None,
) -> ContainerCerts:
    """Write the trust bundle and each service's workload identity under ``out_dir``.

    A service's existing cert is kept while it is signed by the current intermediate and
    not yet due for rotation, so running ``generate`` twice changes nothing on disk.
    """
    now = now or dt.datetime.now(dt.UTC)
    files.ensure_private_dir(out_dir)
    trust_dir = out_dir / "trust"
    trust_dir.mkdir(mode=0o755, exist_ok=True)
    root = ca.root_pem
    _write_if_changed(trust_dir / "ca.pem", root)
    system = system_roots_pem()
    _write_if_changed(trust_dir / "bundle.pem", system.rstrip(b"\n") + b"\n" + root)
    written: dict[str, ServiceCerts] = {}
    for service in services:
        entry = ServiceCerts(service, workload_spiffe_id(trust_domain, service), out_dir / service)
        if not _still_good(ca, entry, now):
            files.ensure_private_dir(entry.directory)
            ca.issue_workload(trust_domain, service, lifetime=lifetime, now=now).write(
                entry.cert, entry.key
            )
        written[service] = entry
    return ContainerCerts(trust_dir, written)


def _write_if_changed(path: Path, data: bytes) -> None:
    if not path.exists() or path.read_bytes() != data:
        files.write_atomic(path, data, files.PUBLIC_FILE_MODE)


def _still_good(ca: CertificateAuthority, entry: ServiceCerts, now: dt.datetime) -> bool:
    """Reuse a cert that is ours, for this identity, not yet due, and matches its key."""
    if not (entry.cert.exists() and entry.key.exists()):
        return False
    cert = x509.load_pem_x509_certificate(entry.cert.read_bytes())
    try:
        cert.verify_directly_issued_by(ca.intermediate)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        key = serialization.load_pem_private_key(files.read_private(entry.key), password=None)
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    same_key = key.public_key().public_bytes(serialization.Encoding.DER, spki) == (
        cert.public_key().public_bytes(serialization.Encoding.DER, spki)
    )
    due = rotation_due(cert.not_valid_before_utc, cert.not_valid_after_utc)
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    return same_key and uris == [entry.spiffe_id] and now < due
