"""Trust and identity inside containers: the files the generated compose project mounts.

Host side (``write_container_certs(ca, out_dir, ...)``, ``out_dir`` usually
``<project>/.localmesh/certs``)::

    trust/ca.pem            the mesh root alone                      (0644)
    trust/bundle.pem        the host's public roots + the mesh root  (0644)
    services/<service>/cert.pem  the service's workload cert + intermediate (0644)
    services/<service>/key.pem   its key                            (0600, directory 0700)
    ingress/cert.pem        with ingress hosts: one server cert naming every ingress name
    ingress/key.pem         (hosts, localhost/127.0.0.1/::1, extra_cert_hosts)
    signer/{cert,key}.pem   with ``signer=True``: the project's mesh signer (see
                            ``authority``), for the mesh container alone

Container side: ``trust/`` is mounted read-only at ``/etc/localmesh/trust`` and the
service's own directory at ``/etc/localmesh/identity``. Directories, not single files, are
mounted because a rotation replaces files by rename and a single-file bind mount would keep
showing the old inode; and one service's directory only, so no container sees another's key.

``bundle.pem`` (not ``ca.pem``) goes into ``SSL_CERT_FILE``/``REQUESTS_CA_BUNDLE``/
``CURL_CA_BUNDLE`` because those *replace* the default roots: with the mesh root alone, calls
to the public internet would stop verifying. ``NODE_EXTRA_CA_CERTS`` *adds* to Node's roots,
so it gets ``ca.pem``.

The mesh container gets the whole directory (read-only but for ``services/``) and never
the CA's keys, so its ingress serves the certificate issued here: ``MountedCertificates``
stands in for the CA there. That certificate lasts 30 days; ``localmesh up``/``generate``
renews it at 2/3 of its life, and a host added to a running mesh needs one of them to be
re-run. Being every
service's sidecar, the mesh container also originates mutual TLS as whichever service
calls: those identities it issues and rotates itself with the mesh signer
(``MountedCertificates.issue_workload``), so a detached project keeps them valid for as long
as the signer lasts (30 days, renewed like the ingress certificate). It also keeps the
apps' identity files current (``keep_identity_files``; ``services/`` is mounted writable
there), which the host writes on ``up``/``generate`` and every ten minutes while ``localmesh
up`` runs in the foreground (``compose.generate.renew_certs``).
"""

from __future__ import annotations

import datetime as dt
import logging
import ssl
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from localmesh.ca import files
from localmesh.ca.authority import WORKLOAD_LIFETIME, CertificateAuthority, IssuedCert, Issuer
from localmesh.ca.names import INGRESS_DEFAULT_NAMES, parse_host, workload_spiffe_id
from localmesh.ca.rotation import RotatingCert, Rotator, rotation_due
from localmesh.config.model import Ingress
from localmesh.errors import CAError

log = logging.getLogger(__name__)

CONTAINER_TRUST_DIR = "/etc/localmesh/trust"
CONTAINER_IDENTITY_DIR = "/etc/localmesh/identity"
CONTAINER_CA = f"{CONTAINER_TRUST_DIR}/ca.pem"
CONTAINER_BUNDLE = f"{CONTAINER_TRUST_DIR}/bundle.pem"
CONTAINER_CERT = f"{CONTAINER_IDENTITY_DIR}/cert.pem"
CONTAINER_KEY = f"{CONTAINER_IDENTITY_DIR}/key.pem"
INGRESS_DIR = "ingress"
SIGNER_DIR = "signer"
# Services' identities live one level down, so no service name ("trust", "ingress", ...)
# can meet the mesh's own directories.
SERVICES_DIR = "services"


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
    ingress: Path | None = None  # the directory with the ingress cert, when there are hosts
    # what this call issued (new or due): service names, MESH_IDENTITY_DIR, INGRESS_DIR
    issued: tuple[str, ...] = ()

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
    ingress_names: Sequence[str] = (),
    signer: bool = False,
    lifetime: float = WORKLOAD_LIFETIME,
    now: dt.datetime | None = None,
) -> ContainerCerts:
    """Write the trust bundle, each service's workload identity, (``ingress_names``, see
    ``ingress_cert_names``) the ingress certificate and (``signer``) the mesh signer under
    ``out_dir``.

    An existing cert is kept while it is signed by the current intermediate (the signer: by
    the root), names the same identity and is not yet due for rotation, so running
    ``generate`` twice changes nothing.
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
    issued: list[str] = []
    files.ensure_private_dir(out_dir / SERVICES_DIR)  # mounted into the mesh container
    for service in services:
        directory = out_dir / SERVICES_DIR / service
        entry = ServiceCerts(service, workload_spiffe_id(trust_domain, service), directory)
        if not _still_good(ca, entry, now):
            files.ensure_private_dir(directory)
            ca.issue_workload(trust_domain, service, lifetime=lifetime, now=now).write(
                entry.cert, entry.key
            )
            issued.append(service)
        written[service] = entry
    ingress_dir = None
    if ingress_names:
        ingress_dir = out_dir / INGRESS_DIR
        cert, key = ingress_dir / "cert.pem", ingress_dir / "key.pem"
        found = _reusable(ca.intermediate, cert, key, now)
        if found is None or _server_names(found) != {parse_host(n).value for n in ingress_names}:
            files.ensure_private_dir(ingress_dir)
            ca.issue_server(ingress_names, now=now).write(cert, key)
            issued.append(INGRESS_DIR)
    if signer:
        signer_dir = out_dir / SIGNER_DIR
        cert, key = signer_dir / "cert.pem", signer_dir / "key.pem"
        found = _reusable(ca.root, cert, key, now)
        if found is None or _signer_domains(found) != [trust_domain]:
            files.ensure_private_dir(signer_dir)
            ca.issue_signer(trust_domain, now=now).write(cert, key)
            issued.append(SIGNER_DIR)
    return ContainerCerts(trust_dir, written, ingress_dir, tuple(issued))


def ingress_cert_names(ingress: Ingress) -> tuple[str, ...]:
    """Every name the ingress needs a certificate for (none without hosts)."""
    if not ingress.hosts:
        return ()
    names = (*(h.host for h in ingress.hosts), *INGRESS_DEFAULT_NAMES, *ingress.extra_cert_hosts)
    return tuple(dict.fromkeys(names))


def _write_if_changed(path: Path, data: bytes) -> None:
    if not path.exists() or path.read_bytes() != data:
        files.write_atomic(path, data, files.PUBLIC_FILE_MODE)


def _still_good(ca: CertificateAuthority, entry: ServiceCerts, now: dt.datetime) -> bool:
    cert = _reusable(ca.intermediate, entry.cert, entry.key, now)
    return cert is not None and _sans(cert).get_values_for_type(x509.UniformResourceIdentifier) == [
        entry.spiffe_id
    ]


def _reusable(
    issuer: x509.Certificate, cert_path: Path, key_path: Path, now: dt.datetime
) -> x509.Certificate | None:
    """A cert ``issuer`` signed, not yet due, matching its key (names are checked apart)."""
    if not (cert_path.exists() and key_path.exists()):
        return None
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    try:
        cert.verify_directly_issued_by(issuer)
        key = serialization.load_pem_private_key(files.read_private(key_path), password=None)
    except (ValueError, TypeError, InvalidSignature):
        return None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    same_key = key.public_key().public_bytes(serialization.Encoding.DER, spki) == (
        cert.public_key().public_bytes(serialization.Encoding.DER, spki)
    )
    due = rotation_due(cert.not_valid_before_utc, cert.not_valid_after_utc)
    return cert if same_key and now < due else None


def _signer_domains(cert: x509.Certificate) -> list[str]:
    """The trust domains a mesh signer may certify (its permitted URI hosts)."""
    try:
        constraints = cert.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return []
    permitted = constraints.permitted_subtrees or []
    return [n.value for n in permitted if isinstance(n, x509.UniformResourceIdentifier)]


def _sans(cert: x509.Certificate) -> x509.SubjectAlternativeName:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return x509.SubjectAlternativeName([])


def _server_names(cert: x509.Certificate) -> set[str]:
    """DNS names and IPs (normalised like ``parse_host``) a server certificate covers."""
    san = _sans(cert)
    ips = san.get_values_for_type(x509.IPAddress)
    return {*san.get_values_for_type(x509.DNSName), *(str(ip) for ip in ips)}


class MountedCertificates:
    """The CA's stand-in inside the mesh container, reading the certificates directory the
    host wrote (mounted read-only): the mesh root; the ingress certificate issued on the
    host, handed out for any names it covers (other names need the host to issue again);
    workload identities, issued here with the mesh signer.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @property
    def root_pem(self) -> bytes:
        return (self.directory / "trust" / "ca.pem").read_bytes()

    def issue_server(self, hosts: Iterable[str]) -> IssuedCert:
        """The ingress certificate on disk, as long as it names ``hosts``. Until the host
        has renewed a due one, rotations get it back and fail (``RotatingCert.rotate``)."""
        where = self.directory / INGRESS_DIR
        hint = "run `localmesh up` again: it issues the ingress certificate on the host"
        issued = _load_issued(where, "ingress certificate", hint)
        chain = (issued.cert, *issued.chain)
        missing = [h for h in hosts if parse_host(h).value not in _server_names(chain[0])]
        if missing:
            raise CAError(
                f"the ingress certificate issued on the host does not name {', '.join(missing)}",
                hint,
            )
        if dt.datetime.now(dt.UTC) >= rotation_due(issued.not_before, issued.not_after):
            log.warning("the ingress certificate in %s is due for renewal: %s", where, hint)
        return issued

    def issue_workload(
        self,
        trust_domain: str,
        service: str,
        *,
        lifetime: float = WORKLOAD_LIFETIME,
        now: dt.datetime | None = None,
    ) -> IssuedCert:
        """A workload identity issued here, with the mesh signer the host wrote (read each
        time: the host renews it). From the signer's 2/3 on, each issue says so in the log."""
        where = self.directory / SIGNER_DIR
        hint = "run `localmesh up` again: it renews the mesh signer on the host"
        signer = _load_issued(where, "mesh signer", hint)
        now = now or dt.datetime.now(dt.UTC)
        expiry = f"{signer.not_after:%Y-%m-%d %H:%M} UTC"
        if signer.not_after <= now:
            raise CAError(f"the mesh signer in {where} expired on {expiry}", hint)
        if now >= rotation_due(signer.not_before, signer.not_after):
            log.warning("the mesh signer expires on %s: %s", expiry, hint)
        issuer = Issuer(signer.cert, signer.key, (signer.cert,))
        return issuer.issue_workload(trust_domain, service, lifetime=lifetime, now=now)


def keep_identity_files(
    certs: MountedCertificates, trust_domain: str, services: Iterable[str], lifetime: float
) -> Rotator:
    """In the mesh container: a rotator keeping each app's identity files
    (``services/<service>/``, mounted writable there) current with the mesh signer.

    Each starts from the file the host wrote and is issued anew only when due, written back
    owned like its directory (the host's user, not the container's root), so an app that
    re-reads its files stays valid in a detached project. A service without a directory
    is not the mesh's to keep; one that cannot be kept now is logged and left to the host.
    """
    rotator = Rotator()
    for service in services:
        directory = certs.directory / SERVICES_DIR / service
        if not directory.is_dir():
            continue
        spiffe_id = workload_spiffe_id(trust_domain, service)
        issue = _identity_files(certs, directory, trust_domain, service, lifetime)
        try:
            rotator.add(RotatingCert(spiffe_id, issue))
        except (CAError, OSError) as exc:
            log.warning("cannot keep the identity files of %s current: %s", service, exc)
    return rotator


def _identity_files(
    certs: MountedCertificates, directory: Path, trust_domain: str, service: str, lifetime: float
) -> Callable[[], IssuedCert]:
    spiffe_id = workload_spiffe_id(trust_domain, service)
    started = False

    def issue() -> IssuedCert:
        nonlocal started
        if not started:
            started = True
            try:
                found = _load_issued(directory, "identity", "")
            except CAError:
                pass
            else:
                if found.uris == (spiffe_id,):
                    return found  # the host's, until it falls due
        issued = certs.issue_workload(trust_domain, service, lifetime=lifetime)
        st = directory.stat()
        issued.write(directory / "cert.pem", directory / "key.pem", (st.st_uid, st.st_gid))
        return issued

    return issue


def _load_issued(where: Path, what: str, hint: str) -> IssuedCert:
    try:
        chain = x509.load_pem_x509_certificates((where / "cert.pem").read_bytes())
        key = serialization.load_pem_private_key((where / "key.pem").read_bytes(), None)
    except (OSError, ValueError) as exc:
        raise CAError(f"no usable {what} in {where}: {exc}", hint) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CAError(f"the key of the {what} in {where} is not an ECDSA key", hint)
    return IssuedCert(chain[0], key, tuple(chain[1:]))
