"""ClientHello parsing on real hellos produced by Python's own TLS stack (no sockets)."""

from __future__ import annotations

import ssl

import pytest

from localmesh.runtime.ingress.clienthello import (
    TLS1_2,
    TLS1_3,
    ClientHello,
    Malformed,
    NeedMore,
    NotTLS,
    parse_client_hello,
)

pytestmark = pytest.mark.unit


def real_hello(
    sni: str | None = "app.localhost",
    alpn: list[str] | None = None,
    maximum: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED,
) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.maximum_version = maximum
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def test_sni_alpn_and_versions() -> None:
    parsed = parse_client_hello(real_hello("App.Localhost", ["http/1.1", "h2"]))
    assert isinstance(parsed, ClientHello)
    assert parsed.sni == "app.localhost"
    assert parsed.alpn == ("http/1.1", "h2")
    assert TLS1_3 in parsed.versions
    assert parsed.max_version == TLS1_3


def test_no_sni_when_connecting_by_address() -> None:
    parsed = parse_client_hello(real_hello(None))
    assert isinstance(parsed, ClientHello)
    assert parsed.sni is None


def test_tls12_only_client() -> None:
    parsed = parse_client_hello(real_hello(maximum=ssl.TLSVersion.TLSv1_2))
    assert isinstance(parsed, ClientHello)
    assert parsed.max_version == TLS1_2


def test_every_prefix_asks_for_more() -> None:
    hello = real_hello()
    for cut in (0, 1, 4, 5, 40, len(hello) - 1):
        assert isinstance(parse_client_hello(hello[:cut]), NeedMore)


def test_a_hello_split_over_two_records() -> None:
    hello = real_hello()
    body = hello[5:]
    half = len(body) // 2
    first = b"\x16\x03\x01" + half.to_bytes(2, "big") + body[:half]
    second = b"\x16\x03\x01" + (len(body) - half).to_bytes(2, "big") + body[half:]
    parsed = parse_client_hello(first + second)
    assert isinstance(parsed, ClientHello)
    assert parsed.sni == "app.localhost"
    assert isinstance(parse_client_hello(first), NeedMore)


@pytest.mark.parametrize(
    ("data", "http"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", True),
        (b"POST /a HTTP/1.1\r\n", True),
        (b"SSH-2.0-OpenSSH_9.2\r\n", False),
        (b"\x00\x01\x02", False),
    ],
)
def test_not_tls(data: bytes, http: bool) -> None:
    assert parse_client_hello(data) == NotTLS(http=http)


def test_malformed() -> None:
    assert isinstance(parse_client_hello(b"\x16\x03\x01\x00\x00"), Malformed)
    # a handshake record that carries a ServerHello (type 2)
    assert isinstance(parse_client_hello(b"\x16\x03\x03\x00\x04\x02\x00\x00\x00"), Malformed)
    # a ClientHello whose declared length is shorter than its fields
    bogus = b"\x16\x03\x01\x00\x08\x01\x00\x00\x04\x03\x03\x00\x00"
    assert isinstance(parse_client_hello(bogus), Malformed)
