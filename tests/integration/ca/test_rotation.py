"""Rotation with real TLS: the cert is swapped under live listeners without dropping anyone."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509

from localmesh.ca.authority import CertificateAuthority, IssuedCert
from localmesh.ca.rotation import (
    RETRY_AFTER,
    RotatingCert,
    Rotator,
    WorkloadIdentity,
    write_identity_files,
)
from localmesh.errors import CAError


def _client_context(ca: CertificateAuthority) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=ca.root_pem.decode())
    ctx.check_hostname = False  # workloads are verified by SPIFFE URI, checked below
    return ctx


def _peer(writer: asyncio.StreamWriter) -> x509.Certificate:
    obj = writer.get_extra_info("ssl_object")
    return x509.load_der_x509_certificate(obj.getpeercert(binary_form=True))


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while line := await reader.readline():
        writer.write(line)
        await writer.drain()
    writer.close()


async def _wait_for(cond: Callable[[], bool]) -> None:
    """Poll ``cond`` for up to 10 s."""
    deadline = time.monotonic() + 10.0
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_rotation_keeps_a_long_lived_connection_up(local_ca: CertificateAuthority) -> None:
    identity = WorkloadIdentity(local_ca, "localmesh", "api", lifetime=3.0)
    first_serial = identity.current.serial
    server = await asyncio.start_server(_echo, "127.0.0.1", 0, ssl=identity.server_context())
    port = server.sockets[0].getsockname()[1]
    rotator = Rotator()
    rotator.add(identity)
    task = asyncio.create_task(rotator.run(), name="rotator")
    try:
        r1, w1 = await asyncio.open_connection("127.0.0.1", port, ssl=_client_context(local_ca))
        assert _peer(w1).serial_number == first_serial
        w1.write(b"before\n")
        assert await r1.readline() == b"before\n"

        await _wait_for(lambda: identity.rotations >= 1)

        _, w2 = await asyncio.open_connection("127.0.0.1", port, ssl=_client_context(local_ca))
        fresh = _peer(w2)
        assert fresh.serial_number == identity.current.serial != first_serial
        uris = fresh.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert uris.get_values_for_type(x509.UniformResourceIdentifier) == [
            "spiffe://localmesh/svc/api"
        ]
        # The connection made before the swap still talks, with the cert it started with.
        w1.write(b"after\n")
        assert await r1.readline() == b"after\n"
        assert _peer(w1).serial_number == first_serial
        for w in (w1, w2):
            w.close()
            await w.wait_closed()
    finally:
        task.cancel()
        server.close()
        await server.wait_closed()


def test_a_failed_rotation_is_retried(local_ca: CertificateAuthority) -> None:
    clock = [dt.datetime.now(dt.UTC)]
    failures = [1]

    def issue() -> IssuedCert:
        if clock[0] > dt.datetime.now(dt.UTC) and failures[0]:
            failures[0] -= 1
            raise CAError("intermediate unreadable")
        return local_ca.issue_workload("localmesh", "web", lifetime=3600, now=clock[0])

    cert = RotatingCert("web", issue)
    rotator = Rotator(now=lambda: clock[0])
    rotator.add(cert)
    assert rotator.rotate_due() == []  # not due yet
    clock[0] = cert.due + dt.timedelta(seconds=1)
    assert rotator.rotate_due() == []  # due, but issuing failed
    assert cert.rotations == 0
    assert rotator.rotate_due() == []  # the retry waits RETRY_AFTER, not a busy loop
    clock[0] += dt.timedelta(seconds=RETRY_AFTER)
    assert rotator.rotate_due() == [cert]
    assert cert.rotations == 1


def test_identity_files_follow_rotation(local_ca: CertificateAuthority, tmp_path: Path) -> None:
    identity = WorkloadIdentity(local_ca, "localmesh", "db")
    out = tmp_path / "certs" / "db"
    identity.subscribe(write_identity_files(out))
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    assert stat.S_IMODE((out / "key.pem").stat().st_mode) == 0o600
    first = x509.load_pem_x509_certificate((out / "cert.pem").read_bytes())
    assert first.serial_number == identity.current.serial
    identity.rotate()
    second = x509.load_pem_x509_certificate((out / "cert.pem").read_bytes())
    assert second.serial_number == identity.current.serial != first.serial_number
    assert stat.S_IMODE((out / "key.pem").stat().st_mode) == 0o600
    # the key on disk is the new cert's key
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(out / "cert.pem", out / "key.pem")


@pytest.mark.parametrize("lifetime", [0.0, -5.0])
def test_nonsense_lifetimes_are_refused(local_ca: CertificateAuthority, lifetime: float) -> None:
    with pytest.raises(CAError, match="lifetime"):
        local_ca.issue_workload("localmesh", "x", lifetime=lifetime)
