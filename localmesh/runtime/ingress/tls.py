"""The ingress's TLS contexts: one per host (its own certificate and client-cert policy).

``IngressTLS`` holds, for every ``ingress.hosts`` entry, a server context presenting a
certificate for that host and asking for client certificates as the host says
(``off``/``optional``/``required``), plus a default context (``localhost``, ``127.0.0.1``,
``::1`` and ``ingress.extra_cert_hosts``) for a ClientHello without a known SNI. Contexts
are picked *before* the handshake from the peeked ClientHello (see ``clienthello``).
Certificates are ``RotatingCert``s: re-issued at 2/3 of life, swapped in place.

Settings and why:
- TLS 1.2 and 1.3 only: 1.0/1.1 are deprecated by RFC 8996 and refused by every browser.
- TLS 1.2 suites: ECDHE with AES-GCM or ChaCha20-Poly1305 only (forward secrecy, AEAD);
  TLS 1.3's suites are all modern and left at OpenSSL's default.
- ALPN ``http/1.1``: the data plane speaks HTTP/1.1; advertising h2 would break clients.
- No compression (CRIME), no renegotiation (a DoS vector, and gone in TLS 1.3).
- Client certificates are verified against the mesh root only, never the system roots.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from localmesh.ca.authority import IssuedCert
from localmesh.ca.names import INGRESS_DEFAULT_NAMES
from localmesh.ca.rotation import RotatingCert, Rotator
from localmesh.config.model import ClientCerts, Ingress
from localmesh.runtime.ingress.clienthello import ClientHello
from localmesh.runtime.ingress.hosts import match_host

TLS12_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ]
)
ALPN = ("http/1.1",)
DEFAULT_NAMES = INGRESS_DEFAULT_NAMES

_VERIFY = {
    ClientCerts.OFF: ssl.CERT_NONE,
    ClientCerts.OPTIONAL: ssl.CERT_OPTIONAL,
    ClientCerts.REQUIRED: ssl.CERT_REQUIRED,
}


def server_context(client_certs: ClientCerts, client_ca_pem: bytes) -> ssl.SSLContext:
    """A bare server context with the settings above; attach a certificate to it."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.set_alpn_protocols(list(ALPN))
    ctx.verify_mode = _VERIFY[client_certs]
    if client_certs is not ClientCerts.OFF:
        ctx.load_verify_locations(cadata=client_ca_pem.decode())
    return ctx


class ServerCertIssuer(Protocol):
    """Where ingress certificates come from: the local CA (host mode), or inside the mesh
    container the certificate issued on the host (``ca.containers.MountedCertificates``)."""

    @property
    def root_pem(self) -> bytes: ...

    def issue_server(self, hosts: Iterable[str]) -> IssuedCert: ...


@dataclass(frozen=True, slots=True)
class Selected:
    """The context for one connection and the ingress host it was chosen for (None: default)."""

    context: ssl.SSLContext
    host: str | None
    client_certs: ClientCerts


class IngressTLS:
    """Per-host contexts and their rotating certificates; ``update`` follows new snapshots."""

    def __init__(self, ca: ServerCertIssuer, rotator: Rotator | None = None) -> None:
        self._ca = ca
        self._rotator = rotator
        self._certs: dict[tuple[str, ...], RotatingCert] = {}
        self._by_host: dict[str, Selected] = {}
        self._default: Selected | None = None
        self._default_names: tuple[str, ...] = DEFAULT_NAMES

    def update(self, ingress: Ingress) -> None:
        """Build contexts for ``ingress``; certificates for unchanged names are kept."""
        wanted: dict[tuple[str, ...], RotatingCert] = {}
        by_host: dict[str, Selected] = {}
        for entry in ingress.hosts:
            cert = self._cert((entry.host,), wanted)
            ctx = cert.attach(server_context(entry.client_certs, self._ca.root_pem))
            by_host[entry.host] = Selected(ctx, entry.host, entry.client_certs)
        default_names = tuple(dict.fromkeys((*DEFAULT_NAMES, *ingress.extra_cert_hosts)))
        default_cert = self._cert(default_names, wanted)
        self._default_names = default_names
        default_ctx = default_cert.attach(server_context(ClientCerts.OFF, self._ca.root_pem))
        for names, cert in self._certs.items():
            if names not in wanted and self._rotator is not None:
                self._rotator.remove(cert)
        self._certs = wanted
        self._by_host = by_host
        self._default = Selected(default_ctx, None, ClientCerts.OFF)

    def _cert(
        self, names: tuple[str, ...], wanted: dict[tuple[str, ...], RotatingCert]
    ) -> RotatingCert:
        cert = self._certs.get(names) or wanted.get(names)
        if cert is None:
            cert = RotatingCert(
                f"ingress {','.join(names)}", lambda: self._ca.issue_server(list(names))
            )
            if self._rotator is not None:
                self._rotator.add(cert)
        wanted[names] = cert
        return cert

    @property
    def hosts(self) -> Sequence[str]:
        return tuple(self._by_host)

    def select(self, hello: ClientHello | None) -> Selected:
        """The context for a ClientHello: its SNI's host, else the default."""
        assert self._default is not None, "update() first"
        host = match_host(hello.sni if hello else None, self._by_host)
        return self._by_host[host] if host is not None else self._default

    def certificate(self, host: str | None) -> RotatingCert:
        """The rotating certificate serving ``host`` (None: the default one)."""
        return self._certs[self._default_names if host is None else (host,)]
