"""Host matching, SNI/Host disagreement, redirects, and the XFCC identity: plain values."""

from __future__ import annotations

import pytest

from localmesh.config.model import ClientCerts, IngressHost
from localmesh.runtime.ingress.hosts import (
    find_host,
    match_host,
    misdirected,
    redirect_location,
)
from localmesh.runtime.ingress.identity import (
    client_identity,
    subject_string,
)

pytestmark = pytest.mark.unit

PATTERNS = ["shop.localhost", "*.localhost", "*.api.localhost"]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("shop.localhost", "shop.localhost"),
        ("blog.localhost", "*.localhost"),
        ("v1.api.localhost", "*.api.localhost"),
        ("a.b.localhost", "*.localhost"),
        ("localhost", None),
        ("shop.test", None),
        (None, None),
    ],
)
def test_exact_beats_wildcard_and_longest_suffix_wins(name: str | None, expected: str) -> None:
    assert match_host(name, PATTERNS) == expected


def test_a_required_host_without_a_client_cert_is_misdirected() -> None:
    hosts = (
        IngressHost("open.localhost", (), ClientCerts.OFF),
        IngressHost("admin.localhost", (), ClientCerts.REQUIRED),
    )
    admin = find_host("admin.localhost", hosts)
    assert misdirected(admin, verified_client=False)
    assert not misdirected(admin, verified_client=True)
    assert not misdirected(find_host("open.localhost", hosts), verified_client=False)
    assert not misdirected(find_host("other.localhost", hosts), verified_client=False)


@pytest.mark.parametrize(
    ("authority", "target", "port", "location"),
    [
        ("shop.localhost:8080", "/a?b=1", 8443, "https://shop.localhost:8443/a?b=1"),
        ("shop.localhost", "/", 443, "https://shop.localhost/"),
        ("[::1]:8080", "/x", 8443, "https://[::1]:8443/x"),
        ("", "*", 8443, "https://localhost:8443/"),
    ],
)
def test_redirect_location(authority: str, target: str, port: int, location: str) -> None:
    assert redirect_location(authority, target, port) == location


PEERCERT = {
    "subject": (
        (("organizationName", "localmesh client"),),
        (("organizationalUnitName", "shop"),),
        (("commonName", "alice, the admin"),),
    ),
    "subjectAltName": (("URI", "spiffe://shop/client/alice"), ("DNS", "alice.localhost")),
}


def test_identity_from_a_verified_peer_cert() -> None:
    ident = client_identity(PEERCERT, b"der-bytes")
    assert ident is not None
    assert ident.subject == r"CN=alice\, the admin,OU=shop,O=localmesh client"
    assert ident.spiffe_id == ident.principal == "spiffe://shop/client/alice"
    assert ident.xfcc() == (
        "Hash=" + ident.sha256 + ';Subject="CN=alice\\\\, the admin,OU=shop,O=localmesh client"'
        ";URI=spiffe://shop/client/alice;DNS=alice.localhost"
    )
    assert ident.client_name("shop") == "alice"
    assert ident.client_name("other") is None
    assert client_identity({}, b"") is None


def test_subject_with_multi_valued_rdn() -> None:
    assert subject_string(((("commonName", "a"), ("userId", "7")),)) == "CN=a+UID=7"
