"""The local certificate authority: root + intermediate, leaf issuing, rotation, trust stores.

Words: the **root** is the trust anchor (name-constrained, installed by ``ca trust``); the
**intermediate** signs every leaf; a **workload identity** is a service's SPIFFE certificate
(``spiffe://<trust_domain>/svc/<service>``); a **client certificate** identifies a person or
test runner at the ingress (``spiffe://<trust_domain>/client/<name>``).
"""

from localmesh.ca.authority import CAInfo, CertificateAuthority, IssuedCert, fingerprint
from localmesh.ca.containers import ContainerCerts, trust_environment, write_container_certs
from localmesh.ca.names import client_spiffe_id, workload_spiffe_id
from localmesh.ca.rotation import RotatingCert, Rotator, WorkloadIdentity, write_identity_files

__all__ = [
    "CAInfo",
    "CertificateAuthority",
    "ContainerCerts",
    "IssuedCert",
    "RotatingCert",
    "Rotator",
    "WorkloadIdentity",
    "client_spiffe_id",
    "fingerprint",
    "trust_environment",
    "workload_spiffe_id",
    "write_container_certs",
    "write_identity_files",
]
