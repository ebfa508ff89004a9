"""TLS origination to upstreams that serve TLS, for the data plane to call when it connects.

``service.tls.mode`` (Istio DestinationRule ``tls.mode``):

- ``simple``: verify the upstream. Against the **mesh CA** (``ca_file`` unset) the upstream
  must present the workload identity ``spiffe://<trust_domain>/svc/<service>``: mesh certs
  carry no host name, so the SPIFFE URI is what is checked (after the handshake: Python's
  ssl has no verify callback). Against a **configured bundle** (``ca_file``) it is an outside
  server: ordinary host-name verification of ``sni`` or the endpoint's host.
- ``mutual``: the same, presenting the *caller's* workload identity as client certificate
  (rotating with it: the context is attached to the caller's identity, a ``RotatingCert``).

Contexts are built once per (service TLS settings, caller) and cached: building one loads
the trust roots, which costs far more than a handshake. Usage::

    origin = upstream_tls.get(service, caller="web")          # None: plain TCP
    transport, proto = await loop.create_connection(
        factory, host, port, ssl=origin.context, server_hostname=origin.server_hostname(host))
    origin.check_peer(transport.get_extra_info("ssl_object"))  # raises UpstreamIdentityError
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from localmesh.ca.names import INGRESS_IDENTITY, workload_spiffe_id
from localmesh.ca.rotation import RotatingCert
from localmesh.config.model import Service, TLSMode, UpstreamTLS
from localmesh.errors import CAError
from localmesh.runtime.ingress.tls import ALPN


class UpstreamIdentityError(ssl.SSLCertVerificationError):
    """The upstream's certificate chains to the mesh CA but names another workload.

    An ``OSError`` like every TLS failure, so the data plane counts it as a connect failure.
    """


@dataclass(frozen=True, slots=True)
class Origination:
    context: ssl.SSLContext
    expected_identity: str | None  # the SPIFFE ID the upstream must present
    sni: str | None
    verify_hostname: bool

    def server_hostname(self, endpoint_host: str) -> str | None:
        """What to pass as ``server_hostname`` when connecting to ``endpoint_host``."""
        if self.sni is not None:
            return self.sni
        return endpoint_host if self.verify_hostname else None

    def check_peer(self, ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> None:
        """After the handshake: the peer must be the workload we meant to reach."""
        if self.expected_identity is None:
            return
        cert: dict[str, Any] = (ssl_object.getpeercert() if ssl_object else None) or {}
        sans: tuple[tuple[str, str], ...] = cert.get("subjectAltName", ())
        uris = [value for kind, value in sans if kind == "URI"]
        if self.expected_identity not in uris:
            raise UpstreamIdentityError(
                f"upstream presented {uris or 'no SPIFFE ID'}, expected {self.expected_identity}"
            )


def origination(
    tls: UpstreamTLS,
    *,
    service: str,
    trust_domain: str,
    mesh_root_pem: bytes,
    caller: RotatingCert | None,
) -> Origination | None:
    """Build the client context for one upstream service; None when TLS is disabled."""
    if tls.mode is TLSMode.DISABLE:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(list(ALPN))
    mesh_ca = tls.ca_file is None
    if mesh_ca:
        ctx.load_verify_locations(cadata=mesh_root_pem.decode())
        ctx.check_hostname = False  # mesh certs carry a SPIFFE ID, checked by check_peer
    else:
        try:
            ctx.load_verify_locations(cafile=tls.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise CAError(
                f"cannot load the CA bundle {tls.ca_file} for service {service}: {exc}",
                hint="services.<name>.tls.ca_file must be a PEM file of CA certificates",
            ) from exc
    if tls.mode is TLSMode.MUTUAL:
        if caller is None:
            raise CAError(f"mutual TLS to {service} needs a caller identity")
        caller.attach(ctx)
    return Origination(
        context=ctx,
        expected_identity=workload_spiffe_id(trust_domain, service) if mesh_ca else None,
        sni=tls.sni,
        verify_hostname=not mesh_ca,
    )


class UpstreamTLSContexts:
    """Cache of ``origination`` per (service, its TLS settings, caller)."""

    def __init__(
        self,
        mesh_root_pem: bytes,
        trust_domain: str,
        identities: Callable[[str], RotatingCert],
    ) -> None:
        self._root = mesh_root_pem
        self._trust_domain = trust_domain
        self._identities = identities
        self._cache: dict[tuple[str, UpstreamTLS, str | None], Origination | None] = {}

    def get(self, service: Service, caller: str | None) -> Origination | None:
        """``caller`` is the calling service (None at the ingress: the gateway's own identity)."""
        if service.tls.mode is TLSMode.DISABLE:
            return None
        key = (service.name, service.tls, caller if service.tls.mode is TLSMode.MUTUAL else None)
        if key not in self._cache:
            identity = None
            if service.tls.mode is TLSMode.MUTUAL:
                identity = self._identities(caller or INGRESS_IDENTITY)
            self._cache[key] = origination(
                service.tls,
                service=service.name,
                trust_domain=self._trust_domain,
                mesh_root_pem=self._root,
                caller=identity,
            )
        return self._cache[key]
