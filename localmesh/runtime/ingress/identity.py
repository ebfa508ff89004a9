"""Who a verified client certificate says the downstream is, and how upstreams learn it (sans-IO).

The ingress passes a verified client identity upstream in ``x-forwarded-client-cert``
(XFCC), in Envoy's format so apps written for Istio read it unchanged::

    Hash=<sha256 of the DER, hex>;Subject="CN=alice,OU=shop,O=localmesh client";URI=spiffe://shop/client/alice

Envoy's ``SANITIZE_SET`` rule applies: whatever XFCC a client sends is removed, and only the
mesh sets it, only from a certificate that passed verification. Without that, any client
could claim any identity by sending the header. The data plane applies it while it copies
the request head (one pass over the headers): ``DownstreamIdentity.xfcc`` is this module's
``xfcc()`` for a verified client, None otherwise, and a client's own XFCC never passes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

_RDN_SHORT = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "stateOrProvinceName": "ST",
    "localityName": "L",
    "emailAddress": "emailAddress",
    "domainComponent": "DC",
    "userId": "UID",
}


@dataclass(frozen=True, slots=True)
class ClientIdentity:
    """A downstream's verified certificate, reduced to what policy and upstreams use."""

    subject: str  # RFC 4514 (most specific first), as Envoy prints it
    uris: tuple[str, ...]
    dns: tuple[str, ...]
    sha256: str

    @property
    def spiffe_id(self) -> str | None:
        return next((u for u in self.uris if u.startswith("spiffe://")), None)

    def client_name(self, trust_domain: str) -> str | None:
        """``alice`` for ``spiffe://<trust_domain>/client/alice`` (what policies may name)."""
        prefix = f"spiffe://{trust_domain}/client/"
        spiffe = self.spiffe_id
        return spiffe[len(prefix) :] if spiffe and spiffe.startswith(prefix) else None

    @property
    def principal(self) -> str:
        """What authorization policies match: the SPIFFE ID, else the subject."""
        return self.spiffe_id or self.subject

    def xfcc(self) -> str:
        parts = [f"Hash={self.sha256}", f"Subject={_quote(self.subject)}"]
        parts += [f"URI={_quote(u)}" for u in self.uris]
        parts += [f"DNS={_quote(d)}" for d in self.dns]
        return ";".join(parts)


def _quote(value: str) -> str:
    """Envoy quotes a value holding ``,;=`` or quotes, escaping inner quotes."""
    if any(c in value for c in ',;="'):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return value


def _escape_rdn(value: str) -> str:
    out = value
    for ch in ("\\", ",", "+", '"', "<", ">", ";", "="):
        out = out.replace(ch, "\\" + ch)
    if out.startswith((" ", "#")):
        out = "\\" + out
    if out.endswith(" "):
        out = out[:-1] + "\\ "
    return out


def subject_string(subject: Sequence[Sequence[tuple[str, str]]]) -> str:
    """``ssl.getpeercert()['subject']`` (RDNs, least specific first) as RFC 4514."""
    rdns = []
    for rdn in reversed(subject):
        rdns.append("+".join(f"{_RDN_SHORT.get(k, k)}={_escape_rdn(v)}" for k, v in rdn))
    return ",".join(rdns)


def client_identity(peercert: Mapping[str, Any], der: bytes) -> ClientIdentity | None:
    """From ``getpeercert()`` (only filled once OpenSSL verified the chain) and the DER."""
    if not peercert or not der:
        return None
    sans: Iterable[tuple[str, str]] = peercert.get("subjectAltName", ())
    return ClientIdentity(
        subject=subject_string(peercert.get("subject", ())),
        uris=tuple(v for k, v in sans if k == "URI"),
        dns=tuple(v for k, v in sans if k == "DNS"),
        sha256=hashlib.sha256(der).hexdigest(),
    )
