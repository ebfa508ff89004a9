"""The CA on a real disk, checked with the real ``openssl`` binary."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from localmesh.ca import authority
from localmesh.ca.authority import CertificateAuthority, IssuedCert, Issuer
from localmesh.errors import CAError


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def openssl_verify(ca: CertificateAuthority, issued: IssuedCert, tmp: Path) -> str:
    """``openssl verify`` of the leaf against the root alone, intermediates as untrusted."""
    leaf = tmp / f"leaf-{issued.serial:x}.pem"
    leaf.write_bytes(issued.cert_pem)
    proc = subprocess.run(
        ["openssl", "verify", "-CAfile", str(ca.root_path), "-untrusted", str(leaf), str(leaf)],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.stdout + proc.stderr


def _sans(cert: x509.Certificate) -> x509.SubjectAlternativeName:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def test_init_lays_out_private_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCALMESH_HOME", str(tmp_path / "home"))
    ca, created = CertificateAuthority.init()
    assert created
    d = tmp_path / "home" / "ca"
    assert ca.directory == d
    assert _mode(d) == 0o700
    assert _mode(d / "root-key.pem") == 0o600
    assert _mode(d / "intermediate-key.pem") == 0o600
    assert _mode(d / "root.pem") == 0o644
    again, created_again = CertificateAuthority.init()
    assert not created_again
    assert authority.fingerprint(again.root) == authority.fingerprint(ca.root)


def test_default_home_is_dot_localmesh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOCALMESH_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    ca, _ = CertificateAuthority.init()
    assert ca.directory == tmp_path / ".localmesh" / "ca"


def test_root_is_a_name_constrained_p256_ca(local_ca: CertificateAuthority) -> None:
    root = local_ca.root
    assert root.signature_hash_algorithm is not None
    assert root.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    bc = root.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical
    assert bc.value.ca
    assert bc.value.path_length == 1
    nc = root.extensions.get_extension_for_class(x509.NameConstraints)
    assert nc.critical
    assert x509.DNSName("localhost") in (nc.value.permitted_subtrees or [])
    inter = local_ca.intermediate
    assert inter.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    assert inter.issuer == root.subject


@pytest.mark.parametrize(
    "which", ["root-key.pem", "intermediate-key.pem", "."], ids=["root", "intermediate", "dir"]
)
def test_loose_permissions_are_refused_with_a_hint(
    local_ca: CertificateAuthority, which: str
) -> None:
    target = local_ca.directory / which
    os.chmod(target, 0o755 if which == "." else 0o644)
    with pytest.raises(CAError) as err:
        CertificateAuthority.load()
    assert "refuses" in err.value.message
    assert err.value.hint is not None
    assert "chmod" in err.value.hint


def test_missing_ca_says_how_to_create_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCALMESH_HOME", str(tmp_path))
    with pytest.raises(CAError, match="no local CA") as err:
        CertificateAuthority.load()
    assert err.value.hint == "run `localmesh ca init`"


def test_server_cert_chains_to_root_with_the_right_sans(
    local_ca: CertificateAuthority, tmp_path: Path
) -> None:
    issued = local_ca.issue_server(["app.localhost", "*.localhost", "127.0.0.1", "::1"])
    assert ": OK" in openssl_verify(local_ca, issued, tmp_path)
    sans = _sans(issued.cert)
    assert sans.get_values_for_type(x509.DNSName) == ["app.localhost", "*.localhost"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    eku = issued.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    life = issued.not_after - issued.not_before
    assert dt.timedelta(days=30) <= life <= dt.timedelta(days=30, minutes=1)


def test_workload_cert_is_an_x509_svid(local_ca: CertificateAuthority, tmp_path: Path) -> None:
    issued = local_ca.issue_workload("shop", "api.v1")
    assert ": OK" in openssl_verify(local_ca, issued, tmp_path)
    assert issued.uris == ("spiffe://shop/svc/api.v1",)
    assert _sans(issued.cert).get_values_for_type(x509.DNSName) == []
    eku = set(issued.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    assert eku == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    life = issued.not_after - issued.not_before
    assert dt.timedelta(hours=24) <= life <= dt.timedelta(hours=24, minutes=1)


def test_client_cert_names_a_client_identity(
    local_ca: CertificateAuthority, tmp_path: Path
) -> None:
    issued = local_ca.issue_client("localmesh", "alice")
    assert ": OK" in openssl_verify(local_ca, issued, tmp_path)
    assert issued.uris == ("spiffe://localmesh/client/alice",)
    cn = issued.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == "alice"


def test_public_names_are_refused_before_signing(local_ca: CertificateAuthority) -> None:
    with pytest.raises(CAError, match=r"may not certify 'example\.com'"):
        local_ca.issue_server(["app.localhost", "example.com"])
    with pytest.raises(CAError, match=r"may not certify '8\.8\.8\.8'"):
        local_ca.issue_server(["8.8.8.8"])


def test_the_root_constraints_hold_even_for_a_cert_signed_anyway(
    local_ca: CertificateAuthority, tmp_path: Path
) -> None:
    """If the intermediate key leaked, a cert for a public name still fails verification."""
    forged = local_ca._issuer.issue(
        subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bank")]),
        sans=[x509.DNSName("www.bank.example.com")],
        usages=[ExtendedKeyUsageOID.SERVER_AUTH],
        lifetime=3600,
        now=None,
    )
    out = openssl_verify(local_ca, forged, tmp_path)
    assert "permitted subtree violation" in out


def test_a_mesh_signer_certifies_workloads_of_its_trust_domain_only(
    local_ca: CertificateAuthority, tmp_path: Path
) -> None:
    """What the mesh container holds: its leaves verify against the root; a leaf for a host
    name, an address or another trust domain fails, even when signed anyway."""
    issued = local_ca.issue_signer("shop")
    signer = issued.cert
    assert signer.issuer == local_ca.root.subject
    basic = signer.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical
    assert basic.value.ca
    assert basic.value.path_length == 0
    days = (signer.not_valid_after_utc - signer.not_valid_before_utc).days
    assert days == 30
    issuer = Issuer(signer, issued.key, (signer,))
    svid = issuer.issue_workload("shop", "api")
    assert svid.uris == ("spiffe://shop/svc/api",)
    assert svid.chain == (signer,)
    assert svid.cert_pem.endswith(issued.cert_pem)  # the leaf, then the signer
    assert "OK" in openssl_verify(local_ca, svid, tmp_path)

    def forged(*sans: x509.GeneralName) -> IssuedCert:
        return issuer.issue(
            subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]),
            sans=list(sans),
            usages=[ExtendedKeyUsageOID.SERVER_AUTH],
            lifetime=3600,
            now=None,
        )

    uri = x509.UniformResourceIdentifier
    for bad, error in [
        (forged(x509.DNSName("web.localhost")), "excluded subtree violation"),
        (forged(x509.IPAddress(ipaddress.ip_address("127.0.0.1"))), "excluded subtree violation"),
        (forged(uri("spiffe://bank/svc/api")), "permitted subtree violation"),
    ]:
        assert error in openssl_verify(local_ca, bad, tmp_path)


def test_expired_leaf_fails_verification(local_ca: CertificateAuthority, tmp_path: Path) -> None:
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
    issued = local_ca.issue_client("localmesh", "old", lifetime=3600, now=past)
    assert "certificate has expired" in openssl_verify(local_ca, issued, tmp_path)


def test_a_dying_intermediate_is_renewed_on_load(local_ca: CertificateAuthority) -> None:
    root_key = authority._load_key(local_ca.directory / authority.ROOT_KEY)
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(
        seconds=authority.INTERMEDIATE_LIFETIME - 86400
    )
    old, _ = authority._renew_intermediate(local_ca.directory, local_ca.root, root_key, long_ago)
    loaded = CertificateAuthority.load()
    assert loaded.intermediate.serial_number != old.serial_number
    assert loaded.intermediate.not_valid_after_utc > dt.datetime.now(dt.UTC) + dt.timedelta(
        days=365
    )
    assert _mode(local_ca.directory / authority.INTERMEDIATE_KEY) == 0o600


def test_leaves_never_outlive_the_intermediate(local_ca: CertificateAuthority) -> None:
    issued = local_ca.issue_client("localmesh", "forever", lifetime=100 * 365 * 86400.0)
    assert issued.not_after == local_ca.intermediate.not_valid_after_utc
