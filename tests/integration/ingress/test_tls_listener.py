"""The HTTPS listener with real handshakes: Python ssl clients, openssl s_client and curl.

The HTTP side is a stand-in (``WhoAmI``) that reports which host's context served the
connection and the verified client identity; routing through the data plane is tested
where the two are wired together.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from cryptography import x509

from localmesh.ca.authority import CertificateAuthority
from localmesh.config.model import ClientCerts, Ingress, IngressHost
from localmesh.runtime.ingress.listener import TLSListener
from localmesh.runtime.ingress.tls import IngressTLS
from tests.integration.ingress.support import (
    Running,
    WhoAmI,
    client_context,
    fetch,
    write_pair,
)
from tests.unit.ingress.test_clienthello import real_hello

HOSTS = (
    IngressHost("open.localhost", (), ClientCerts.OFF),
    IngressHost("opt.localhost", (), ClientCerts.OPTIONAL),
    IngressHost("mtls.localhost", (), ClientCerts.REQUIRED),
    IngressHost("*.apps.localhost", (), ClientCerts.OFF),
)
HANDSHAKE_TIMEOUT = 1.0


@pytest.fixture
async def ingress(local_ca: CertificateAuthority) -> AsyncIterator[Running]:
    tls = IngressTLS(local_ca)
    tls.update(Ingress(hosts=HOSTS, extra_cert_hosts=("shop.test",)))
    listener = TLSListener(tls, WhoAmI, handshake_timeout=HANDSHAKE_TIMEOUT)
    _, port = await listener.start("127.0.0.1", 0)
    yield Running(listener, port, local_ca)
    await listener.close()


async def run(*cmd: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


async def until(cond: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def _sans(der: bytes) -> list[str]:
    san = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    return [str(v.value) for v in san.value]


@pytest.mark.parametrize(
    ("sni", "host", "sans"),
    [
        ("open.localhost", "open.localhost", ["open.localhost"]),
        ("opt.localhost", "opt.localhost", ["opt.localhost"]),
        ("x.apps.localhost", "*.apps.localhost", ["*.apps.localhost"]),
        (None, None, ["localhost", "127.0.0.1", "::1", "shop.test"]),
        ("unknown.localhost", None, ["localhost", "127.0.0.1", "::1", "shop.test"]),
    ],
)
async def test_sni_picks_a_cert_that_chains_to_the_root(
    ingress: Running, sni: str | None, host: str | None, sans: list[str]
) -> None:
    ctx = client_context(ingress.ca)
    if sni == "unknown.localhost":
        ctx.check_hostname = False  # the default cert does not name it; the chain still verifies
    got = await asyncio.to_thread(fetch, ingress.port, sni, ctx)
    assert got.body["host"] == host
    assert _sans(got.peer_der) == sans
    assert got.alpn == "http/1.1"  # h2 offered first, refused
    assert got.version == "TLSv1.3"


async def test_openssl_s_client_verifies_the_chain(ingress: Running) -> None:
    code, out = await run(
        "openssl", "s_client", "-connect", f"127.0.0.1:{ingress.port}",
        "-servername", "open.localhost", "-verify_hostname", "open.localhost",
        "-CAfile", str(ingress.ca.root_path), "-verify_return_error", "-alpn", "http/1.1",
        "-showcerts",
    )  # fmt: skip
    assert code == 0, out
    assert "Verify return code: 0 (ok)" in out
    assert "ALPN protocol: http/1.1" in out
    assert "localmesh intermediate" in out  # the chain is sent, not just the leaf


async def test_tls12_is_accepted_and_tls11_refused(
    ingress: Running, caplog: pytest.LogCaptureFixture
) -> None:
    base = ("openssl", "s_client", "-connect", f"127.0.0.1:{ingress.port}", "-servername",
            "open.localhost", "-CAfile", str(ingress.ca.root_path))  # fmt: skip
    code, out = await run(*base, "-tls1_2")
    assert code == 0, out
    assert "TLSv1.2" in out
    # SECLEVEL=0 so the *client* is willing to offer TLS 1.1 at all (OpenSSL 3 refuses to).
    code, out = await run(*base, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
    assert code != 0
    assert "no peer certificate available" in out
    reason = "client offers TLS 1.1 at most; TLS 1.2+ required"
    await until(lambda: ingress.listener.stats[reason] == 1, "the refusal to be counted")
    assert reason in caplog.text


async def test_required_client_cert_is_enforced(ingress: Running, tmp_path: Path) -> None:
    with pytest.raises(OSError):  # noqa: PT011 - reset or alert, depending on timing
        await asyncio.to_thread(fetch, ingress.port, "mtls.localhost", client_context(ingress.ca))
    reason = "client certificate required, none sent"
    await until(lambda: ingress.listener.stats[reason] == 1, "the refusal to be counted")

    alice = write_pair(ingress.ca.issue_client("localmesh", "alice"), tmp_path, "alice")
    got = await asyncio.to_thread(
        fetch, ingress.port, "mtls.localhost", client_context(ingress.ca, alice)
    )
    assert got.body == {"host": "mtls.localhost", "identity": "spiffe://localmesh/client/alice"}

    root = str(ingress.ca.root_path)
    resolve = f"mtls.localhost:{ingress.port}:127.0.0.1"
    url = f"https://mtls.localhost:{ingress.port}/"
    code, _ = await run("curl", "-sS", "--cacert", root, "--resolve", resolve, url)
    assert code != 0
    code, out = await run(
        "curl", "-sS", "--cacert", root, "--resolve", resolve, url,
        "--cert", str(alice[0]), "--key", str(alice[1]),
    )  # fmt: skip
    assert code == 0, out
    assert "spiffe://localmesh/client/alice" in out


async def test_optional_host_works_with_and_without_a_cert(
    ingress: Running, tmp_path: Path
) -> None:
    got = await asyncio.to_thread(fetch, ingress.port, "opt.localhost", client_context(ingress.ca))
    assert got.body == {"host": "opt.localhost", "identity": None}
    bob = write_pair(ingress.ca.issue_client("localmesh", "bob"), tmp_path, "bob")
    got = await asyncio.to_thread(
        fetch, ingress.port, "opt.localhost", client_context(ingress.ca, bob)
    )
    assert got.body["identity"] == "spiffe://localmesh/client/bob"


def _bad_certs(ca: CertificateAuthority, tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    foreign, _ = CertificateAuthority.init(tmp_path / "foreign-ca")
    now = time.time()
    import datetime as dt

    past = dt.datetime.fromtimestamp(now - 7200, dt.UTC)
    future = dt.datetime.fromtimestamp(now + 7200, dt.UTC)
    return {
        "unable to get local issuer certificate": write_pair(
            foreign.issue_client("localmesh", "mallory"), tmp_path, "foreign"
        ),
        "certificate has expired": write_pair(
            ca.issue_client("localmesh", "old", lifetime=3600, now=past), tmp_path, "expired"
        ),
        "certificate is not yet valid": write_pair(
            ca.issue_client("localmesh", "early", lifetime=3600, now=future), tmp_path, "early"
        ),
    }


@pytest.mark.parametrize("sni", ["mtls.localhost", "opt.localhost"])
async def test_foreign_expired_and_early_client_certs_are_refused(
    ingress: Running, tmp_path: Path, sni: str
) -> None:
    for why, pair in _bad_certs(ingress.ca, tmp_path).items():
        with pytest.raises(OSError):  # noqa: PT011
            await asyncio.to_thread(fetch, ingress.port, sni, client_context(ingress.ca, pair))
        reason = f"client certificate rejected: {why}"
        await until(lambda r=reason: ingress.listener.stats[r] == 1, reason)  # type: ignore[misc]
    # and the listener still serves everyone else
    got = await asyncio.to_thread(fetch, ingress.port, "open.localhost", client_context(ingress.ca))
    assert got.body["host"] == "open.localhost"


async def test_plain_http_on_the_tls_port(ingress: Running) -> None:
    def plain() -> bytes:
        with socket.create_connection(("127.0.0.1", ingress.port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: open.localhost\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
            return data

    answer = await asyncio.to_thread(plain)
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert answer.endswith(b"use https:// instead")
    assert ingress.listener.stats["plain HTTP on the HTTPS port"] == 1
    got = await asyncio.to_thread(fetch, ingress.port, "open.localhost", client_context(ingress.ca))
    assert got.body["host"] == "open.localhost"


async def test_stalled_handshakes_do_not_hold_up_anyone(
    ingress: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "localmesh.ingress")
    hello = real_hello("open.localhost")
    stalls = []
    for sent in (b"", hello[:20], hello):  # silent, half a hello, a hello and then nothing
        s = socket.create_connection(("127.0.0.1", ingress.port))
        s.sendall(sent)
        stalls.append(s)
    started = time.monotonic()
    got = await asyncio.to_thread(fetch, ingress.port, "open.localhost", client_context(ingress.ca))
    assert got.body["host"] == "open.localhost"
    assert time.monotonic() - started < HANDSHAKE_TIMEOUT  # served while the others stall

    def closed_by_server(s: socket.socket) -> bool:
        s.settimeout(5)
        try:
            while s.recv(4096):  # the hello-sender may get handshake bytes first
                pass
        except OSError:
            pass
        return True

    for s in stalls:
        assert await asyncio.to_thread(closed_by_server, s)
        s.close()
    stalled = f"no complete ClientHello within {HANDSHAKE_TIMEOUT:g}s (stalled)"
    await until(lambda: ingress.listener.stats[stalled] == 2, "two stalled refusals")
    await until(
        lambda: ingress.listener.stats["TLS handshake timed out"] == 1, "a handshake timeout"
    )
    assert stalled in caplog.text
