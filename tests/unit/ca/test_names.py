"""Which names the CA may certify and the identities it hands out: plain values only."""

from __future__ import annotations

import pytest

from localmesh.ca.names import (
    HostName,
    check_permitted,
    client_spiffe_id,
    dns_permitted,
    ip_permitted,
    parse_host,
    workload_spiffe_id,
)
from localmesh.errors import CAError

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("App.Localhost.", HostName("app.localhost", is_ip=False)),
        ("*.localhost", HostName("*.localhost", is_ip=False)),
        ("127.0.0.1", HostName("127.0.0.1", is_ip=True)),
        ("[::1]", HostName("::1", is_ip=True)),
        ("0:0:0:0:0:0:0:1", HostName("::1", is_ip=True)),
        ("localhost", HostName("localhost", is_ip=False)),
    ],
)
def test_parse_host_normalises(raw: str, expected: HostName) -> None:
    assert parse_host(raw) == expected


@pytest.mark.parametrize("raw", ["", "*", "a..localhost", "-a.localhost", "a_b.localhost", "*.*.x"])
def test_parse_host_rejects_what_no_certificate_can_hold(raw: str) -> None:
    with pytest.raises(CAError, match="not a valid host name"):
        parse_host(raw)


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("localhost", True),
        ("app.localhost", True),
        ("*.localhost", True),
        ("db.internal", True),
        ("printer.home.arpa", True),
        ("shop.test", True),
        ("example.com", False),
        ("localhost.evil.com", False),
        ("notlocalhost", False),
        ("*.com", False),
    ],
)
def test_dns_constraints(name: str, ok: bool) -> None:
    assert dns_permitted(name) is ok


@pytest.mark.parametrize(
    ("ip", "ok"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("10.9.8.7", True),
        ("172.31.0.1", True),
        ("172.32.0.1", False),
        ("192.168.1.1", True),
        ("fd00::5", True),
        ("8.8.8.8", False),
        ("2001:db8::1", False),
    ],
)
def test_ip_constraints(ip: str, ok: bool) -> None:
    assert ip_permitted(ip) is ok


def test_a_public_name_is_refused_with_a_hint() -> None:
    with pytest.raises(CAError) as err:
        check_permitted(parse_host("www.example.com"))
    assert "www.example.com" in err.value.message
    assert err.value.hint is not None
    assert "localhost" in err.value.hint


def test_spiffe_ids() -> None:
    assert workload_spiffe_id("shop", "api") == "spiffe://shop/svc/api"
    assert client_spiffe_id("shop.local", "ci-runner") == "spiffe://shop.local/client/ci-runner"


@pytest.mark.parametrize("name", ["alice.example", "", "a b", "-x", "x" * 64, "bob/1"])
def test_client_names_that_could_pass_for_hosts_or_paths_are_refused(name: str) -> None:
    with pytest.raises(CAError, match="not a valid client name"):
        client_spiffe_id("localmesh", name)


@pytest.mark.parametrize("domain", ["Shop", "sh op", "", "a..b"])
def test_bad_trust_domains(domain: str) -> None:
    with pytest.raises(CAError, match="trust domain"):
        workload_spiffe_id(domain, "api")
