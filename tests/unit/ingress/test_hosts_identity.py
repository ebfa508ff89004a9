"""Host matching, SNI/Host disagreement, redirects, and the XFCC identity: plain values."""

from __future__ import annotations

import pytest

from localmesh.config.model import ClientCerts, IngressHost
from localmesh.runtime.ingress.hosts import (
    find_host,
    match_host,
    misdirected,
    redirect,
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


SERVED = ("shop.localhost", "*.apps.localhost", "localhost", "127.0.0.1", "::1")


@pytest.mark.parametrize(
    ("method", "target", "hosts", "http11", "answer"),
    [
        (b"POST", b"/a?b=1", [b"Shop.localhost:8080"], True, "https://shop.localhost:8443/a?b=1"),
        (b"GET", b"/", [b"[::1]:8080"], True, "https://[::1]:8443/"),
        (b"GET", b"/", [b"localhost"], False, "https://localhost:8443/"),
        (b"GET", b"/", [b"x.apps.localhost."], True, "https://x.apps.localhost:8443/"),
        # absolute form: the target's authority and path, Host ignored (RFC 9112 §3.2.2)
        (b"GET", b"http://x.apps.localhost/p?q", [b"shop.localhost"], True,
         "https://x.apps.localhost:8443/p?q"),
        (b"GET", b"HTTPS://127.0.0.1:80?q", [b"shop.localhost"], True,
         "https://127.0.0.1:8443/?q"),
        (b"GET", b"/", [b"evil.example"], True, 404),
        (b"GET", b"http://evil.example/", [b"shop.localhost"], True, 404),
        (b"GET", b"/", [b""], True, 404),
        (b"GET", b"/", [], False, 404),  # HTTP/1.0 without Host: no host named
        (b"GET", b"/x", [b"a/b?c"], True, 400),
        (b"GET", b"/x", [b"shop.localhost:1:2"], True, 400),
        (b"GET", b"/x", [], True, 400),
        (b"GET", b"/x", [b"shop.localhost", b"shop.localhost"], True, 400),
        (b"GET", b"http://user@shop.localhost/", [b"shop.localhost"], True, 400),
        (b"GET", b"http:///p", [b"shop.localhost"], True, 400),
        (b"GET", b"ftp://shop.localhost/p", [b"shop.localhost"], True, 400),
        (b"OPTIONS", b"*", [b"shop.localhost"], True, 400),
        (b"CONNECT", b"shop.localhost:443", [b"shop.localhost"], True, 405),
    ],
)  # fmt: skip
def test_redirect(
    method: bytes, target: bytes, hosts: list[bytes], http11: bool, answer: str | int
) -> None:
    expected = (308, answer.encode()) if isinstance(answer, str) else (answer, b"")
    got = redirect(method, target, hosts, http11=http11, served=SERVED, https_port=8443)
    assert got == expected


def test_redirect_to_443_leaves_the_port_out() -> None:
    got = redirect(b"GET", b"/", [b"shop.localhost"], http11=True, served=SERVED, https_port=443)
    assert got == (308, b"https://shop.localhost/")


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
