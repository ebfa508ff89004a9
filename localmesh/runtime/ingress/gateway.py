"""The ingress gateway: the edge listeners, served by the data plane's HTTP engine.

Life of an edge request::

    client ─TLS─▶ TLSListener: peek the ClientHello, the SNI host's context, handshake
        ─▶ the data plane's HTTP protocol (an external listener: Host → ingress.hosts routes,
           then timeouts, retries, splits, faults, rate limits, WebSockets like any call)
           identify, once per connection: a verified client certificate → the caller policy
           sees (``client:NAME`` → its name, else its SPIFFE ID or subject) and the
           ``x-forwarded-client-cert`` upstreams get (a client-sent one is always stripped);
           no certificate → the ``unknown`` caller, no XFCC
           each request: a ``Host`` that requires a client certificate the connection did not
           present → 421 (the client chose an SNI that asks for none: RFC 9110 §15.5.20)
    client ─plain HTTP─▶ 308 to HTTPS (``redirect_http``), or the same engine with scheme http

``IngressGateway`` owns the ``DataPlane`` and mirrors its API (``apply``, ``addresses``,
``clusters``, ``close``), so the runtime uses it in the data plane's place. ``apply`` keeps the
data plane's all-or-nothing promise: the ingress sockets a snapshot needs are bound, its
certificates issued and its upstream TLS contexts built *before* the data plane swaps; if
anything fails, nothing changes. The gateway also gives the data plane TLS origination
(``services.<name>.tls``; ``mutual`` presents the gateway's workload identity,
``spiffe://<td>/svc/ingress``). Every certificate rotates from one task while it runs.
Inside the mesh container the ingress certificate comes from the host and workload
identities from the mesh signer the host wrote (``MountedCertificates``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localmesh.ca.authority import CertificateAuthority
from localmesh.ca.containers import MountedCertificates, ingress_cert_names
from localmesh.ca.rotation import Rotator, WorkloadIdentities
from localmesh.compose.rewrite import CONTAINER_CERTS
from localmesh.config.model import ClientCerts, Ingress, Service, TLSMode
from localmesh.errors import LocalmeshError, RuntimeStartError
from localmesh.runtime.dataplane import (
    Caller,
    DataPlane,
    DownstreamIdentity,
    UpstreamFailureHook,
    UpstreamTLS,
)
from localmesh.runtime.dataplane.core.policy import UNKNOWN_CALLER
from localmesh.runtime.dataplane.core.uri import authority_host
from localmesh.runtime.ingress.hosts import find_host, misdirected
from localmesh.runtime.ingress.identity import client_identity
from localmesh.runtime.ingress.listener import TLSListener
from localmesh.runtime.ingress.origination import UpstreamTLSContexts
from localmesh.runtime.ingress.redirect import RedirectProtocol
from localmesh.runtime.ingress.tls import IngressTLS, Selected
from localmesh.runtime.snapshot import Snapshot
from localmesh.runtime.telemetry import AccessLog, MeshMetrics

log = logging.getLogger("localmesh.ingress")

HTTPS_LISTENER = "ingress-https"
HTTP_LISTENER = "ingress-http"
BACKLOG = 1024
MISDIRECTED_MEMO = 1024
#: bind() errors that blame the address (not this machine's), not the port.
_NOT_AN_ADDRESS = frozenset({errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT})

CertificateSource = CertificateAuthority | MountedCertificates
CALoader = Callable[[], CertificateSource]


def default_ca() -> CertificateSource:
    """The user's CA, created on first use (``$LOCALMESH_HOME/ca``); inside the mesh
    container, where the CA's keys never go, the certificates issued on the host for it."""
    mounted = Path(CONTAINER_CERTS)
    if (mounted / "trust").is_dir():
        return MountedCertificates(mounted)
    return CertificateAuthority.init()[0]


@dataclass(frozen=True, slots=True)
class _TLSSettings:
    """What the TLS contexts depend on; routes can change without touching certificates."""

    hosts: tuple[tuple[str, ClientCerts], ...]
    extra_cert_hosts: tuple[str, ...]

    @classmethod
    def of(cls, ingress: Ingress) -> _TLSSettings:
        return cls(tuple((h.host, h.client_certs) for h in ingress.hosts), ingress.extra_cert_hosts)


class IngressGateway:
    """The data plane plus the edge: HTTPS/HTTP listeners, certificates, their rotation."""

    def __init__(
        self,
        metrics: MeshMetrics,
        access_log: AccessLog,
        *,
        ca: CALoader = default_ca,
        handshake_timeout: float = 10.0,
        on_upstream_failure: UpstreamFailureHook | None = None,
        drain_timeout: float = 5.0,
    ) -> None:
        self.dataplane = DataPlane(
            metrics,
            access_log,
            upstream_tls=self._upstream_tls,
            on_upstream_failure=on_upstream_failure,
            drain_timeout=drain_timeout,
        )
        self._load_ca = ca
        self._ca: CertificateSource | None = None
        self._handshake_timeout = handshake_timeout
        self.rotator = Rotator()
        self._rotating: asyncio.Task[None] | None = None
        self.tls: IngressTLS | None = None
        self._tls_settings: _TLSSettings | None = None
        self._https: TLSListener | None = None
        self._http: socket.socket | None = None
        self._http_server: asyncio.Server | None = None
        self._https_protocol: Callable[[], asyncio.Protocol] | None = None
        self._plain_protocol: Callable[[], asyncio.Protocol] | None = None
        self._origination: UpstreamTLSContexts | None = None
        self._origination_domain = ""
        self._ingress = Ingress()
        # of the snapshot being applied: origination contexts are built before the swap
        self._trust_domain = ""
        self._workload_lifetime = 0.0
        # a connection's identity lives as long as it does: the check reads the current hosts
        self._anonymous = DownstreamIdentity(UNKNOWN_CALLER, None, misdirected=self._misdirected)
        self._misdirected_memo: dict[bytes, str | None] = {}
        self._any_required = False
        self._served: tuple[str, ...] = ()  # what plain HTTP redirects to HTTPS

    # -- the data plane's API ---------------------------------------------------------------

    @property
    def snapshot(self) -> Snapshot | None:
        return self.dataplane.snapshot

    async def apply(self, snapshot: Snapshot) -> None:
        """Bind what the snapshot's ingress needs, apply the data plane, then switch over."""
        ingress = snapshot.config.ingress
        previous_tls = self._tls_settings
        previous_mesh = (self._trust_domain, self._workload_lifetime)
        fresh_https: TLSListener | None = None
        fresh_http: socket.socket | None = None
        self._trust_domain = snapshot.config.mesh.trust_domain
        self._workload_lifetime = snapshot.config.mesh.workload_cert_lifetime
        try:
            self._prepare_origination(snapshot.config.services)
            if ingress.hosts:
                self._update_tls(ingress)
                if self._https is None or _port(ingress, True) != _port(self._ingress, True):
                    fresh_https = self._bind_https(ingress)
                if self._http is None or _port(ingress, False) != _port(self._ingress, False):
                    fresh_http = self._bind_http(ingress)
            await self.dataplane.apply(snapshot)
        except BaseException:
            if fresh_https is not None:
                await fresh_https.close()
            if fresh_http is not None:
                fresh_http.close()
            if previous_tls is not None and self.tls is not None:
                self._update_tls(self._ingress)  # certificates of unchanged names are kept
            self._trust_domain, self._workload_lifetime = previous_mesh
            raise
        # commit: nothing below can fail for a reason the snapshot could have avoided
        self._ingress = ingress
        self._misdirected_memo.clear()
        self._any_required = any(h.client_certs is ClientCerts.REQUIRED for h in ingress.hosts)
        self._served = ingress_cert_names(ingress)
        if self._rotating is None:
            self._rotating = asyncio.get_running_loop().create_task(
                self.rotator.run(), name="ingress certificate rotation"
            )
        if not ingress.hosts:
            await self._stop_edge()
            return
        self._ensure_protocols()
        if fresh_https is not None:
            old_https, self._https = self._https, fresh_https
            fresh_https.serve()
            if old_https is not None:
                await old_https.close()
        if fresh_http is not None:
            await self._serve_http(fresh_http)

    def addresses(self) -> dict[str, tuple[str, int]]:
        """The data plane's listeners plus ``ingress-https`` and ``ingress-http``."""
        bound = self.dataplane.addresses()
        if self._https is not None:
            bound[HTTPS_LISTENER] = self._https.address
        if self._http is not None:
            host, port = self._http.getsockname()[:2]
            bound[HTTP_LISTENER] = (str(host), int(port))
        return bound

    def clusters(self) -> list[dict[str, Any]]:
        return self.dataplane.clusters()

    async def close(self, drain_timeout: float = 5.0) -> None:
        """Stop accepting at the edge, then drain and close the data plane (edge included)."""
        await self._stop_edge()
        task, self._rotating = self._rotating, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.dataplane.close(drain_timeout)

    # -- TLS origination --------------------------------------------------------------------

    def _prepare_origination(self, services: tuple[Service, ...]) -> None:
        """Build the TLS contexts the data plane's commit asks for now, so it cannot fail
        half-way. Under mutual TLS those present the mesh's own identity; a calling
        service's context is made at its first connect (a failure fails that connect)."""
        for service in services:
            if service.tls.mode is not TLSMode.DISABLE:
                try:
                    self._origination_for(service, "")
                except LocalmeshError as exc:
                    raise RuntimeStartError(exc.message, exc.hint) from exc

    def _upstream_tls(self, service: Service, caller: str) -> UpstreamTLS | None:
        """The data plane's ``upstream_tls`` provider (contexts are cached per settings)."""
        try:
            return self._origination_for(service, caller)
        except LocalmeshError as exc:  # a caller this snapshot did not know (see above)
            raise OSError(exc.message) from exc

    def _origination_for(self, service: Service, caller: str) -> UpstreamTLS | None:
        if service.tls.mode is TLSMode.DISABLE:
            return None
        if self._origination is None or self._origination_domain != self._trust_domain:
            self._origination_domain = self._trust_domain
            ca = self._certificate_authority()
            lifetime = self._workload_lifetime
            identities = WorkloadIdentities(ca, self._trust_domain, self.rotator, lifetime).get
            self._origination = UpstreamTLSContexts(ca.root_pem, self._trust_domain, identities)
        origin = self._origination.get(service, caller=caller or None)
        assert origin is not None
        return UpstreamTLS(origin.context, origin.server_hostname, origin.check_peer)

    # -- internals --------------------------------------------------------------------------

    def _certificate_authority(self) -> CertificateSource:
        if self._ca is None:
            try:
                self._ca = self._load_ca()
            except LocalmeshError as exc:
                raise RuntimeStartError(
                    f"the ingress needs the local CA: {exc.message}", exc.hint
                ) from exc
        return self._ca

    def _update_tls(self, ingress: Ingress) -> None:
        settings = _TLSSettings.of(ingress)
        if self.tls is not None and settings == self._tls_settings:
            return
        if self.tls is None:
            # In the mesh container a rotation re-reads the certificate the host renewed.
            self.tls = IngressTLS(self._certificate_authority(), self.rotator)
        try:
            self.tls.update(ingress)
        except LocalmeshError as exc:
            raise RuntimeStartError(f"ingress certificates: {exc.message}", exc.hint) from exc
        self._tls_settings = settings

    def _bind_https(self, ingress: Ingress) -> TLSListener:
        assert self.tls is not None
        listener = TLSListener(
            self.tls, self._https_connection, handshake_timeout=self._handshake_timeout
        )
        _bind_or_explain(lambda: listener.bind(ingress.bind, ingress.https_port), ingress, "HTTPS")
        return listener

    def _bind_http(self, ingress: Ingress) -> socket.socket:
        family = socket.AF_INET6 if ":" in ingress.bind else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)

        def bind() -> tuple[str, int]:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((ingress.bind, ingress.http_port))
            sock.listen(BACKLOG)
            sock.setblocking(False)
            return ingress.bind, ingress.http_port

        try:
            _bind_or_explain(bind, ingress, "HTTP")
        except BaseException:
            sock.close()
            raise
        return sock

    async def _serve_http(self, sock: socket.socket) -> None:
        old_server, old_sock = self._http_server, self._http
        loop = asyncio.get_running_loop()
        self._http = sock
        self._http_server = await loop.create_server(self._http_connection, sock=sock)
        if old_server is not None:
            old_server.close()
        if old_sock is not None:
            old_sock.close()

    def _ensure_protocols(self) -> None:
        """The data plane's HTTP engine for edge connections (made once; follows snapshots)."""
        if self._https_protocol is None:
            self._https_protocol = self.dataplane.http_protocol_factory(
                HTTPS_LISTENER, scheme=b"https", identify=self._identify
            )
        if self._plain_protocol is None:
            self._plain_protocol = self.dataplane.http_protocol_factory(
                HTTP_LISTENER, scheme=b"http", identify=self._identify
            )

    def _https_connection(self, selected: Selected) -> asyncio.Protocol:
        assert self._https_protocol is not None
        return self._https_protocol()

    def _http_connection(self) -> asyncio.Protocol:
        """Plain HTTP: 308 to HTTPS, or (``redirect_http: false``) served like HTTPS."""
        ingress = self._ingress
        if ingress.redirect_http:
            https_port = self._https.address[1] if self._https else ingress.https_port
            return RedirectProtocol(https_port, self._served)
        assert self._plain_protocol is not None
        return self._plain_protocol()

    def _identify(self, transport: asyncio.Transport) -> DownstreamIdentity:
        """Once per connection: who the verified client certificate says the caller is."""
        tls = transport.get_extra_info("ssl_object")
        ident = None
        if tls is not None:
            ident = client_identity(tls.getpeercert() or {}, tls.getpeercert(True) or b"")
        if ident is None:
            return self._anonymous
        name = ident.client_name(self._trust_domain) or ident.principal
        return DownstreamIdentity(Caller(name, ident.principal), ident.xfcc().encode())

    def _misdirected(self, authority: bytes) -> str | None:
        """For a connection without a client certificate: is this ``Host`` one needing it?
        Memoised per ``Host`` value (bounded: random ``Host``s only cost a recomputation)."""
        if not self._any_required:
            return None
        memo = self._misdirected_memo
        if authority in memo:
            return memo[authority]
        name = authority_host(authority)  # as the router reads it; None: it routes nowhere
        host = find_host(name.decode("latin-1") if name else None, self._ingress.hosts)
        reason = None
        if host is not None and misdirected(host, verified_client=False):
            reason = f"{host.host} requires a client certificate: connect with it as the TLS SNI"
        if len(memo) >= MISDIRECTED_MEMO:
            memo.clear()
        memo[authority] = reason
        return reason

    async def _stop_edge(self) -> None:
        """Stop accepting edge connections; those already served drain with the data plane."""
        https, self._https = self._https, None
        if https is not None:
            await https.close()
        server, self._http_server = self._http_server, None
        if server is not None:
            server.close()
        sock, self._http = self._http, None
        if sock is not None:
            sock.close()


def _port(ingress: Ingress, https: bool) -> tuple[str, int]:
    return ingress.bind, ingress.https_port if https else ingress.http_port


def _bind_or_explain(bind: Callable[[], tuple[str, int]], ingress: Ingress, what: str) -> None:
    """Bind, or raise a ``RuntimeStartError`` at the mesh.yaml line to change: ``bind`` when
    the address is not this machine's, else the port (each falls back to ``ingress:``)."""
    try:
        bind()
    except OSError as exc:
        port_key = f"{what.lower()}_port"
        port = ingress.https_port if what == "HTTPS" else ingress.http_port
        at = ingress.positions
        if isinstance(exc, socket.gaierror) or exc.errno in _NOT_AN_ADDRESS:
            position = at.bind or at.section
            hint = "ingress.bind must be an address of this machine (0.0.0.0: all of them)"
        else:
            position = (at.https_port if what == "HTTPS" else at.http_port) or at.section
            hint = f"another process holds the port; set ingress.{port_key} to a free one"
        raise RuntimeStartError(
            f"the ingress cannot listen on {ingress.bind}:{port} ({what}): {exc.strerror or exc}",
            hint=hint,
            position=position,
        ) from exc
