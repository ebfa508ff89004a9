"""The ingress certificate for the mesh container: issued on the host by
``write_container_certs``, served there through ``MountedCertificates`` (no CA keys inside)."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import pytest
from cryptography import x509

from localmesh.ca.authority import CertificateAuthority
from localmesh.ca.containers import (
    MountedCertificates,
    ingress_cert_names,
    write_container_certs,
)
from localmesh.config.model import Ingress, IngressHost
from localmesh.errors import CAError

INGRESS = Ingress(
    hosts=(IngressHost("shop.localhost", ()), IngressHost("*.apps.localhost", ())),
    extra_cert_hosts=("shop.test",),
)


def _sans(pem: bytes) -> list[str]:
    cert = x509.load_pem_x509_certificates(pem)[0]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(v.value) for v in san]


def test_names_cover_hosts_defaults_and_extras() -> None:
    assert ingress_cert_names(INGRESS) == (
        "shop.localhost", "*.apps.localhost", "localhost", "127.0.0.1", "::1", "shop.test",
    )  # fmt: skip
    assert ingress_cert_names(Ingress()) == ()


def test_written_once_kept_and_reissued_when_names_change(
    local_ca: CertificateAuthority, tmp_path: Path
) -> None:
    out = tmp_path / "certs"
    certs = write_container_certs(
        local_ca, out, "shop", [], ingress_names=ingress_cert_names(INGRESS)
    )
    assert certs.ingress == out / "ingress"
    cert, key = out / "ingress" / "cert.pem", out / "ingress" / "key.pem"
    assert _sans(cert.read_bytes()) == list(ingress_cert_names(INGRESS))
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    first = cert.read_bytes()
    write_container_certs(local_ca, out, "shop", [], ingress_names=ingress_cert_names(INGRESS))
    assert cert.read_bytes() == first  # a rerun changes nothing
    more = ("extra.localhost", *ingress_cert_names(INGRESS))
    write_container_certs(local_ca, out, "shop", [], ingress_names=more)
    assert _sans(cert.read_bytes())[0] == "extra.localhost"
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=21)  # past 2/3 of 30 days
    renewed = cert.read_bytes()
    write_container_certs(local_ca, out, "shop", [], ingress_names=more, now=later)
    assert cert.read_bytes() != renewed
    assert write_container_certs(local_ca, tmp_path / "none", "shop", []).ingress is None


def test_mounted_certificates_hand_out_what_the_host_issued(
    local_ca: CertificateAuthority, tmp_path: Path
) -> None:
    out = tmp_path / "certs"
    write_container_certs(local_ca, out, "shop", [], ingress_names=ingress_cert_names(INGRESS))
    mounted = MountedCertificates(out)
    assert mounted.root_pem == local_ca.root_pem
    issued = mounted.issue_server(["*.apps.localhost", "127.0.0.1", "::1"])
    assert issued.cert_pem == (out / "ingress" / "cert.pem").read_bytes()
    assert len(issued.chain) == 1  # the intermediate travels with it
    with pytest.raises(CAError, match=r"does not name new\.localhost") as refused:
        mounted.issue_server(["new.localhost"])
    assert refused.value.hint is not None
    assert "localmesh up" in refused.value.hint
    with pytest.raises(CAError, match="no usable ingress certificate"):
        MountedCertificates(tmp_path / "empty").issue_server(["shop.localhost"])
