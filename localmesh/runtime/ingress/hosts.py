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

import re
from collections.abc import Iterable, Sequence

from localmesh.config.model import ClientCerts, IngressHost
from localmesh.runtime.dataplane.core.uri import authority_host

#: An absolute-form request target (RFC 9112 §3.2.2): its authority, then the rest.
_ABSOLUTE = re.compile(rb"https?://([^/?#]*)(.*)", re.IGNORECASE | re.DOTALL)


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


def redirect(
    method: bytes,
    target: bytes,
    hosts: Sequence[bytes],
    *,
    http11: bool,
    served: Sequence[str],
    https_port: int,
) -> tuple[int, bytes]:
    """What the plain-HTTP listener answers (``redirect_http``): ``(status, location)``.

    308 to the same host and target on the HTTPS port (omitted if 443) when the host is one
    ``served`` (the names the ingress holds certificates for), so the redirect never points
    a client at a name the ingress cannot serve. The host is the target's for an
    absolute-form target, else ``Host``'s (RFC 9112 §3.2.2). Otherwise:
    - 404 for another host: what Envoy answers when no virtual host matches; 421 would
      tell the client to retry on a new connection, which cannot help on plain HTTP;
    - 400 for HTTP/1.1 without ``Host``, two of them, a malformed one (RFC 9112 §3.2),
      or a target that is neither a path nor an ``http(s)://`` URL with a host;
    - 405 for CONNECT: it asks for a tunnel, there is nothing to redirect.
    """
    if method == b"CONNECT":
        return 405, b""
    if len(hosts) > 1 or (http11 and not hosts):
        return 400, b""
    host = authority_host(hosts[0] if hosts else b"")
    if host is None:
        return 400, b""
    path = target
    if not target.startswith(b"/"):
        absolute = _ABSOLUTE.fullmatch(target)
        host = authority_host(absolute[1]) if absolute is not None else None
        if not host or absolute is None:  # an http(s) URL must name a host (RFC 9110 §4.2.1)
            return 400, b""
        path = absolute[2] if absolute[2].startswith(b"/") else b"/" + absolute[2]
    if match_host(host.decode("latin-1"), served) is None:
        return 404, b""
    if b":" in host:
        host = b"[" + host + b"]"
    port = b"" if https_port == 443 else b":%d" % https_port
    return 308, b"https://" + host + port + path
