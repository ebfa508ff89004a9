"""Which names the CA may certify, and the SPIFFE identities it hands out (pure, no I/O).

The root is **name-constrained** (RFC 5280 §4.2.1.10) because ``localmesh ca trust`` puts it
into the host's trust store: if its key ever leaked, a certificate for a public site signed by
it must still be rejected. So DNS names are limited to suffixes that can never be public
(RFC 6761 ``localhost``/``.test``/``.invalid``, ``.internal``, mDNS ``.local``,
``.home.arpa``, ``.lan``) and IP addresses to loopback and private ranges. URIs are left
unconstrained: SPIFFE trust domains are chosen per mesh while the root outlives meshes, and a
URI SAN alone impersonates no web site.

Consequence, deliberate: workload certificates carry only their SPIFFE URI (and a
single-label common name, which OpenSSL does not treat as a host name); a peer verifies a
workload by its SPIFFE ID, not by the compose service name.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from localmesh.errors import CAError

#: DNS subtrees the root permits (a leading dot would exclude the bare name; OpenSSL and
#: browsers treat ``localhost`` as the name and every name below it).
PERMITTED_DNS: tuple[str, ...] = (
    "localhost",
    "test",
    "invalid",
    "internal",
    "local",
    "lan",
    "home.arpa",
)

#: IP subtrees the root permits: loopback, RFC 1918, CGNAT (Tailscale-style VPNs), ULA.
PERMITTED_IP: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("10.0.0.0/8"),
    ipaddress.ip_network("172.16.0.0/12"),
    ipaddress.ip_network("192.168.0.0/16"),
    ipaddress.ip_network("100.64.0.0/10"),
    ipaddress.ip_network("::1/128"),
    ipaddress.ip_network("fc00::/7"),
)

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_CLIENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
_SERVICE_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")


@dataclass(frozen=True, slots=True)
class HostName:
    """A name for a server certificate: a DNS name (maybe ``*.``-wildcarded) or an IP."""

    value: str
    is_ip: bool


#: What the ingress's default certificate names, besides ``ingress.extra_cert_hosts``: the
#: one a ClientHello gets without a known SNI (``curl https://127.0.0.1``, ``https://localhost``).
INGRESS_DEFAULT_NAMES = ("localhost", "127.0.0.1", "::1")


def parse_host(raw: str) -> HostName:
    """Normalise one ``--host``/``ingress.hosts`` entry; reject what no certificate can hold."""
    text = raw.strip().lower().rstrip(".")
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return HostName(str(ipaddress.ip_address(text)), is_ip=True)
    except ValueError:
        pass
    labels = text.split(".")
    body = labels[1:] if labels[0] == "*" else labels
    if not body or not all(_LABEL.match(label) for label in body):
        raise CAError(
            f"{raw!r} is not a valid host name for a certificate",
            hint="use names like app.localhost or *.localhost, or an IP address",
        )
    return HostName(text, is_ip=False)


def dns_permitted(name: str) -> bool:
    """Whether the name constraints allow ``name`` (wildcards checked by their parent)."""
    bare = name[2:] if name.startswith("*.") else name
    return any(bare == base or bare.endswith("." + base) for base in PERMITTED_DNS)


def ip_permitted(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return any(ip.version == net.version and ip in net for net in PERMITTED_IP)


def check_permitted(host: HostName) -> None:
    """Refuse, before signing, a name the root's constraints would make every client reject."""
    ok = ip_permitted(host.value) if host.is_ip else dns_permitted(host.value)
    if not ok:
        allowed = ", ".join(PERMITTED_DNS)
        raise CAError(
            f"the local CA may not certify {host.value!r}",
            hint=f"its root is limited to development names ({allowed}) and private/loopback IPs;"
            " pick a name like app.localhost",
        )


def workload_spiffe_id(trust_domain: str, service: str) -> str:
    """``spiffe://<trust_domain>/svc/<service>``: what policies and metrics call a workload."""
    _check_trust_domain(trust_domain)
    if not _SERVICE_NAME.match(service):
        raise CAError(f"{service!r} is not a valid service name for an identity")
    return f"spiffe://{trust_domain}/svc/{service}"


def client_spiffe_id(trust_domain: str, name: str) -> str:
    """``spiffe://<trust_domain>/client/<name>``: a person or test runner at the ingress."""
    _check_trust_domain(trust_domain)
    check_client_name(name)
    return f"spiffe://{trust_domain}/client/{name}"


def check_client_name(name: str) -> None:
    if not _CLIENT_NAME.match(name):
        raise CAError(
            f"{name!r} is not a valid client name",
            hint="use letters, digits, '-' and '_' (at most 63), e.g. alice or ci-runner",
        )


def _check_trust_domain(trust_domain: str) -> None:
    labels = trust_domain.lower().split(".")
    if trust_domain != trust_domain.lower() or not all(_LABEL.match(x) for x in labels):
        raise CAError(
            f"{trust_domain!r} is not a valid SPIFFE trust domain",
            hint="lower-case letters, digits, '-' and dots, e.g. localmesh or shop.local",
        )


#: The workload name the mesh presents when it calls as itself (the ingress gateway, or for
#: callers it cannot name): spiffe://<td>/svc/ingress.
INGRESS_IDENTITY = "ingress"
