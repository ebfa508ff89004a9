"""Which ingress host a name belongs to, and what that host demands (sans-IO).

A **host** is one ``ingress.hosts`` entry: an exact name (``shop.localhost``) or a wildcard
(``*.localhost``, Envoy semantics: any name below the suffix; the longest suffix wins; an
exact entry beats every wildcard). The same lookup serves the TLS side (SNI → certificate
and client-certificate policy) and the HTTP side (``Host`` → routes).

SNI and ``Host`` can disagree: a client could open TLS for a host that does not ask for a
certificate and then send ``Host:`` of one that requires it. ``misdirected`` catches that
per request; the answer is ``421 Misdirected Request`` (RFC 9110 §15.5.20), which tells a
client to open a new connection for that host. A ``Host`` is read with the data plane's
``authority_host``, the function its router uses, so the check sees the host routed to.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from localmesh.config.model import ClientCerts, IngressHost
from localmesh.runtime.dataplane.core.uri import authority_host


def match_host(name: str | None, patterns: Iterable[str]) -> str | None:
    """The pattern serving ``name``: exact first, else the longest matching ``*.`` suffix."""
    if not name:
        return None
    best: str | None = None
    for pattern in patterns:
        if pattern == name:
            return pattern
        wildcard = pattern.startswith("*.") and name.endswith(pattern[1:])
        if wildcard and (best is None or len(pattern) > len(best)):
            best = pattern
    return best


def find_host(name: str | None, hosts: Sequence[IngressHost]) -> IngressHost | None:
    chosen = match_host(name, (h.host for h in hosts))
    return next((h for h in hosts if h.host == chosen), None)


def misdirected(request_host: IngressHost | None, verified_client: bool) -> bool:
    """A request for a host that requires a client certificate, on a connection without one."""
    return (
        request_host is not None
        and request_host.client_certs is ClientCerts.REQUIRED
        and not verified_client
    )


def redirect_location(authority: str, target: str, https_port: int) -> str:
    """Where a plain-HTTP request goes: same host and target, HTTPS port (omitted if 443)."""
    host = (authority_host(authority.encode("latin-1")) or b"localhost").decode("latin-1")
    if ":" in host:
        host = f"[{host}]"
    port = "" if https_port == 443 else f":{https_port}"
    path = target if target.startswith("/") else "/"
    return f"https://{host}{port}{path}"
