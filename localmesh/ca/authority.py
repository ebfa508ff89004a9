"""The local certificate authority: a long-lived root and the intermediate that signs leaves.

Layout of ``$LOCALMESH_HOME/ca`` (0700)::

    root.pem            the trust anchor; the only thing `trust` installs or containers mount
    root-key.pem        0600; used only to sign the intermediate and mesh signers
    intermediate.pem    issues every leaf the host needs: ingress servers, workloads, clients
    intermediate-key.pem 0600

Why two levels: the root key stays cold on disk (touched once every couple of years), the
hot key that `localmesh run` holds in memory can be renewed without re-trusting anything.

A **mesh signer** (``issue_signer``) is a second, narrow intermediate for one project's mesh
container, which must keep issuing workload identities while nobody runs localmesh on the
host (``localmesh up -d``) and must never hold this CA's keys. Its name constraints permit
only ``spiffe://<trust_domain>`` URIs and exclude every DNS name and IP address, so its key
cannot certify a host name the developer's browser would trust; lasting 30 days, a lost key
soon signs nothing. Every lifetime below carries its reason.
"""

from __future__ import annotations

import datetime as dt
import getpass
import hashlib
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from localmesh.ca import files
from localmesh.ca.names import (
    PERMITTED_DNS,
    PERMITTED_IP,
    check_permitted,
    client_spiffe_id,
    parse_host,
    workload_spiffe_id,
)
from localmesh.errors import CAError

DAY = 24 * 3600.0
#: The root is re-trusted by hand, so it should outlive the machine: mkcert uses 10 years.
ROOT_LIFETIME = 10 * 365 * DAY
#: Renewed automatically from the root; 2 years keeps the hot key's exposure bounded.
INTERMEDIATE_LIFETIME = 2 * 365 * DAY
#: Renew the intermediate when less than this is left, so no leaf outlives its issuer.
INTERMEDIATE_RENEW_BEFORE = 60 * DAY
#: Ingress certificates are re-issued at every start and rotated while running; 30 days is
#: far below the 398-day ceiling browsers enforce.
SERVER_LIFETIME = 30 * DAY
#: SPIFFE's customary SVID lifetime; rotation at 2/3 leaves 8 h of slack for a stuck rotator.
WORKLOAD_LIFETIME = 1 * DAY
#: A mesh signer is renewed by `localmesh up`/`generate` at 2/3 of its life; 30 days lets a
#: detached project run a month without the host, and bounds a leaked key like the ingress's.
SIGNER_LIFETIME = 30 * DAY
#: People and test runners re-run `issue-client` rarely; a quarter keeps a lost key short-lived.
CLIENT_LIFETIME = 90 * DAY
#: Back-date leaves a little (at most 60 s) so a peer whose clock is slightly behind still
#: accepts a certificate issued this instant.
MAX_BACKDATE = 60.0

ROOT_CERT = "root.pem"
ROOT_KEY = "root-key.pem"
INTERMEDIATE_CERT = "intermediate.pem"
INTERMEDIATE_KEY = "intermediate-key.pem"


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER, hex: what `show` prints and trust-store entries are named after."""
    return cert.fingerprint(hashes.SHA256()).hex()


@dataclass(frozen=True, slots=True)
class IssuedCert:
    """A certificate, its key, and the intermediates a peer needs to reach the root."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    chain: tuple[x509.Certificate, ...]

    @property
    def cert_pem(self) -> bytes:
        """The leaf followed by its intermediates: what a TLS endpoint must send."""
        return b"".join(
            c.public_bytes(serialization.Encoding.PEM) for c in (self.cert, *self.chain)
        )

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @property
    def not_before(self) -> dt.datetime:
        return self.cert.not_valid_before_utc

    @property
    def not_after(self) -> dt.datetime:
        return self.cert.not_valid_after_utc

    @property
    def serial(self) -> int:
        return self.cert.serial_number

    @property
    def uris(self) -> tuple[str, ...]:
        try:
            san = self.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        except x509.ExtensionNotFound:
            return ()
        return tuple(san.value.get_values_for_type(x509.UniformResourceIdentifier))

    def write(self, cert_path: Path, key_path: Path, owner: tuple[int, int] | None = None) -> None:
        """Cert 0644 and key 0600; the key's directory must already be private."""
        files.write_atomic(key_path, self.key_pem, files.PRIVATE_FILE_MODE, owner)
        files.write_atomic(cert_path, self.cert_pem, files.PUBLIC_FILE_MODE, owner)


@dataclass(frozen=True, slots=True)
class Issuer:
    """A CA certificate with its key, signing leaves: the CA's intermediate on the host, a
    mesh signer in the mesh container. ``chain`` is what a leaf sends after itself."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    chain: tuple[x509.Certificate, ...]

    def issue_workload(
        self,
        trust_domain: str,
        service: str,
        *,
        lifetime: float = WORKLOAD_LIFETIME,
        now: dt.datetime | None = None,
    ) -> IssuedCert:
        """An X.509 SVID: the SPIFFE URI is the identity; usable as TLS server and client."""
        spiffe = workload_spiffe_id(trust_domain, service)
        return self.issue(
            # A dot would make OpenSSL read the CN as a host name and check it against the
            # root's DNS constraints; the CN is informational, the URI is the identity.
            subject=_name(O="localmesh workload", OU=trust_domain, CN=service.replace(".", "_")),
            sans=[x509.UniformResourceIdentifier(spiffe)],
            usages=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
            lifetime=lifetime,
            now=now,
        )

    def issue(
        self,
        *,
        subject: x509.Name,
        sans: list[x509.GeneralName],
        usages: list[x509.ObjectIdentifier],
        lifetime: float,
        now: dt.datetime | None,
    ) -> IssuedCert:
        if lifetime <= 0:
            raise CAError(f"certificate lifetime must be positive, not {lifetime}")
        now = now or _utcnow()
        not_before = now - dt.timedelta(seconds=min(MAX_BACKDATE, lifetime / 100))
        # No leaf outlives its issuer.
        not_after = min(now + dt.timedelta(seconds=lifetime), self.cert.not_valid_after_utc)
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        cert = builder.sign(self.key, hashes.SHA256())
        return IssuedCert(cert=cert, key=key, chain=self.chain)


@dataclass(frozen=True, slots=True)
class CAInfo:
    """What `localmesh ca show` reports."""

    directory: Path
    root_subject: str
    root_fingerprint: str
    root_not_after: dt.datetime
    intermediate_subject: str
    intermediate_not_after: dt.datetime
    permitted_dns: tuple[str, ...]
    permitted_ip: tuple[str, ...]

    def as_dict(self) -> dict[str, object]:
        return {
            "directory": str(self.directory),
            "root": {
                "subject": self.root_subject,
                "sha256": self.root_fingerprint,
                "not_after": self.root_not_after.isoformat(),
                "path": str(self.directory / ROOT_CERT),
            },
            "intermediate": {
                "subject": self.intermediate_subject,
                "not_after": self.intermediate_not_after.isoformat(),
            },
            "name_constraints": {"dns": list(self.permitted_dns), "ip": list(self.permitted_ip)},
        }


class CertificateAuthority:
    """Issues every certificate of the mesh from the intermediate; see the module docstring."""

    def __init__(
        self,
        directory: Path,
        root: x509.Certificate,
        intermediate: x509.Certificate,
        intermediate_key: ec.EllipticCurvePrivateKey,
    ) -> None:
        self.directory = directory
        self.root = root
        self.intermediate = intermediate
        self._issuer = Issuer(intermediate, intermediate_key, (intermediate,))

    # --- lifecycle ------------------------------------------------------------------------

    @classmethod
    def init(cls, directory: Path | None = None) -> tuple[CertificateAuthority, bool]:
        """Load the CA, creating it first if there is none. Returns it and whether it is new."""
        directory = directory or files.ca_dir()
        if (directory / ROOT_CERT).exists():
            return cls.load(directory), False
        files.ensure_private_dir(directory)
        now = _utcnow()
        root_key = ec.generate_private_key(ec.SECP256R1())
        root = _make_root(root_key, now)
        files.write_atomic(directory / ROOT_KEY, _key_pem(root_key), files.PRIVATE_FILE_MODE)
        files.write_atomic(directory / ROOT_CERT, _cert_pem(root), files.PUBLIC_FILE_MODE)
        inter, inter_key = _renew_intermediate(directory, root, root_key, now)
        return cls(directory, root, inter, inter_key), True

    @classmethod
    def load(cls, directory: Path | None = None) -> CertificateAuthority:
        """Load an existing CA (refusing loose key permissions); renew a dying intermediate."""
        directory = directory or files.ca_dir()
        if not (directory / ROOT_CERT).exists():
            raise CAError(f"no local CA in {directory}", hint="run `localmesh ca init`")
        files.check_private(directory)
        files.check_private(directory / ROOT_KEY)
        root = x509.load_pem_x509_certificate((directory / ROOT_CERT).read_bytes())
        now = _utcnow()
        if root.not_valid_after_utc <= now:
            raise CAError(
                f"the local root CA in {directory} expired on {root.not_valid_after_utc:%Y-%m-%d}",
                hint=f"run `localmesh ca untrust`, move {directory} away, then `localmesh ca init`",
            )
        inter_path = directory / INTERMEDIATE_CERT
        inter: x509.Certificate | None = None
        if inter_path.exists():
            inter = x509.load_pem_x509_certificate(inter_path.read_bytes())
        remaining = (inter.not_valid_after_utc - now).total_seconds() if inter else -1.0
        if inter is None or remaining < INTERMEDIATE_RENEW_BEFORE:
            root_key = _load_key(directory / ROOT_KEY)
            inter, inter_key = _renew_intermediate(directory, root, root_key, now)
        else:
            inter_key = _load_key(directory / INTERMEDIATE_KEY)
        return cls(directory, root, inter, inter_key)

    # --- what it tells -----------------------------------------------------------------------

    @property
    def root_pem(self) -> bytes:
        return _cert_pem(self.root)

    @property
    def root_path(self) -> Path:
        return self.directory / ROOT_CERT

    def info(self) -> CAInfo:
        return CAInfo(
            directory=self.directory,
            root_subject=self.root.subject.rfc4514_string(),
            root_fingerprint=fingerprint(self.root),
            root_not_after=self.root.not_valid_after_utc,
            intermediate_subject=self.intermediate.subject.rfc4514_string(),
            intermediate_not_after=self.intermediate.not_valid_after_utc,
            permitted_dns=PERMITTED_DNS,
            permitted_ip=tuple(str(n) for n in PERMITTED_IP),
        )

    # --- issuing -----------------------------------------------------------------------------

    def issue_server(
        self,
        hosts: Iterable[str],
        *,
        lifetime: float = SERVER_LIFETIME,
        now: dt.datetime | None = None,
    ) -> IssuedCert:
        """A TLS server certificate for host names, ``*.`` wildcards and IP addresses."""
        names = [parse_host(h) for h in hosts]
        if not names:
            raise CAError("a server certificate needs at least one host name")
        for name in names:
            check_permitted(name)
        sans: list[x509.GeneralName] = []
        for name in dict.fromkeys(names):
            if name.is_ip:
                sans.append(x509.IPAddress(ipaddress.ip_address(name.value)))
            else:
                sans.append(x509.DNSName(name.value))
        first = next((n.value for n in names if not n.is_ip), names[0].value)
        return self._issuer.issue(
            subject=_name(O="localmesh development certificate", CN=first),
            sans=sans,
            usages=[ExtendedKeyUsageOID.SERVER_AUTH],
            lifetime=lifetime,
            now=now,
        )

    def issue_workload(
        self,
        trust_domain: str,
        service: str,
        *,
        lifetime: float = WORKLOAD_LIFETIME,
        now: dt.datetime | None = None,
    ) -> IssuedCert:
        """A service's SPIFFE identity (see ``Issuer.issue_workload``)."""
        return self._issuer.issue_workload(trust_domain, service, lifetime=lifetime, now=now)

    def issue_client(
        self,
        trust_domain: str,
        name: str,
        *,
        lifetime: float = CLIENT_LIFETIME,
        now: dt.datetime | None = None,
    ) -> IssuedCert:
        """A client certificate for a person or test runner: ``spiffe://<td>/client/<name>``."""
        spiffe = client_spiffe_id(trust_domain, name)
        return self._issuer.issue(
            subject=_name(O="localmesh client", OU=trust_domain, CN=name),
            sans=[x509.UniformResourceIdentifier(spiffe)],
            usages=[ExtendedKeyUsageOID.CLIENT_AUTH],
            lifetime=lifetime,
            now=now,
        )

    def issue_signer(
        self,
        trust_domain: str,
        *,
        lifetime: float = SIGNER_LIFETIME,
        now: dt.datetime | None = None,
    ) -> IssuedCert:
        """A mesh signer for ``trust_domain`` (see the module docstring), signed by the root:
        the root allows one CA below it on a path, and the signer is that CA."""
        workload_spiffe_id(trust_domain, "x")  # the trust domain's syntax, checked up front
        root_key = _load_key(self.directory / ROOT_KEY)
        now = now or _utcnow()
        key = ec.generate_private_key(ec.SECP256R1())
        not_after = min(now + dt.timedelta(seconds=lifetime), self.root.not_valid_after_utc)
        constraints = x509.NameConstraints(
            permitted_subtrees=[x509.UniformResourceIdentifier(trust_domain)],
            excluded_subtrees=[
                x509.DNSName(""),  # the empty name matches every DNS name
                x509.IPAddress(ipaddress.ip_network("0.0.0.0/0")),
                x509.IPAddress(ipaddress.ip_network("::/0")),
            ],
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(O="localmesh mesh signer", OU=trust_domain, CN="mesh signer"))
            .issuer_name(self.root.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(seconds=MAX_BACKDATE))
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .add_extension(constraints, critical=True)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()),
                critical=False,
            )
            .sign(root_key, hashes.SHA256())
        )
        return IssuedCert(cert=cert, key=key, chain=())


# --- building blocks ---------------------------------------------------------------------------


def _name(**attrs: str) -> x509.Name:
    oids = {"O": NameOID.ORGANIZATION_NAME, "OU": NameOID.ORGANIZATIONAL_UNIT_NAME}
    oids["CN"] = NameOID.COMMON_NAME
    return x509.Name([x509.NameAttribute(oids[k], v) for k, v in attrs.items()])


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _owner() -> str:
    """``user@host`` as mkcert does: tells apart roots of several machines in one browser."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _make_root(key: ec.EllipticCurvePrivateKey, now: dt.datetime) -> x509.Certificate:
    pub = key.public_key()
    short = hashlib.sha256(
        pub.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    ).hexdigest()[:8]
    subject = _name(O="localmesh development CA", OU=_owner(), CN=f"localmesh root {short}")
    constraints = x509.NameConstraints(
        permitted_subtrees=[
            *(x509.DNSName(d) for d in PERMITTED_DNS),
            *(x509.IPAddress(n) for n in PERMITTED_IP),
        ],
        excluded_subtrees=None,
    )
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(pub)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(seconds=MAX_BACKDATE))
        .not_valid_after(now + dt.timedelta(seconds=ROOT_LIFETIME))
        # path_length=1: the root may sign intermediates, intermediates only leaves.
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(constraints, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
        .sign(key, hashes.SHA256())
    )


def _renew_intermediate(
    directory: Path,
    root: x509.Certificate,
    root_key: ec.EllipticCurvePrivateKey,
    now: dt.datetime,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    not_after = min(now + dt.timedelta(seconds=INTERMEDIATE_LIFETIME), root.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            _name(O="localmesh development CA", CN=f"localmesh intermediate {now:%Y%m%d}")
        )
        .issuer_name(root.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(seconds=MAX_BACKDATE))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()),
            critical=False,
        )
        .sign(root_key, hashes.SHA256())
    )
    files.write_atomic(directory / INTERMEDIATE_KEY, _key_pem(key), files.PRIVATE_FILE_MODE)
    files.write_atomic(directory / INTERMEDIATE_CERT, _cert_pem(cert), files.PUBLIC_FILE_MODE)
    return cert, key


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(files.read_private(path), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CAError(
            f"{path} is not an EC private key", hint="re-create the CA: `localmesh ca init`"
        )
    return key
