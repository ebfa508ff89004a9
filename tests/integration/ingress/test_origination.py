"""TLS origination to real TLS upstreams: mesh-CA identity checks, mTLS, configured bundles."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from localmesh.ca.authority import CertificateAuthority
from localmesh.ca.rotation import Rotator, WorkloadIdentities, load_into
from localmesh.config.model import Service, TLSMode, UpstreamTLS
from localmesh.errors import CAError
from localmesh.runtime.ingress.identity import client_identity
from localmesh.runtime.ingress.origination import (
    UpstreamIdentityError,
    UpstreamTLSContexts,
)


async def _whoami(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Upstream that answers with the SPIFFE ID of the client that called it (or '-')."""
    obj = writer.get_extra_info("ssl_object")
    ident = client_identity(obj.getpeercert() or {}, obj.getpeercert(True) or b"")
    await reader.readline()
    writer.write(((ident.principal if ident else "-") + "\n").encode())
    await writer.drain()
    writer.close()


@pytest.fixture
async def upstream(local_ca: CertificateAuthority) -> AsyncIterator[tuple[int, WorkloadIdentities]]:
    """``api`` serving TLS with its workload identity, asking (optionally) for client certs."""
    identities = WorkloadIdentities(local_ca, "localmesh", Rotator())
    ctx = identities.get("api").server_context()
    ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.load_verify_locations(cadata=local_ca.root_pem.decode())
    server = await asyncio.start_server(_whoami, "127.0.0.1", 0, ssl=ctx)
    yield server.sockets[0].getsockname()[1], identities
    server.close()
    await server.wait_closed()


async def _call(
    port: int, contexts: UpstreamTLSContexts, service: Service, caller: str | None
) -> str:
    origin = contexts.get(service, caller)
    assert origin is not None
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=origin.context, server_hostname=origin.server_hostname("127.0.0.1")
    )
    try:
        origin.check_peer(writer.get_extra_info("ssl_object"))
        writer.write(b"hi\n")
        return (await reader.readline()).decode().strip()
    finally:
        writer.close()


async def test_simple_verifies_the_workload_identity(
    local_ca: CertificateAuthority, upstream: tuple[int, WorkloadIdentities]
) -> None:
    port, identities = upstream
    contexts = UpstreamTLSContexts(local_ca.root_pem, "localmesh", identities.get)
    simple = UpstreamTLS(mode=TLSMode.SIMPLE)
    assert await _call(port, contexts, Service("api", tls=simple), "web") == "-"
    # the same server reached as if it were "db": it chains to the mesh CA but is not db
    with pytest.raises(UpstreamIdentityError, match="expected spiffe://localmesh/svc/db"):
        await _call(port, contexts, Service("db", tls=simple), "web")
    assert contexts.get(Service("api"), "web") is None  # tls disabled: plain TCP
    assert contexts.get(Service("api", tls=simple), "web") is contexts.get(
        Service("api", tls=simple), "other"
    )  # built once, shared


async def test_mutual_presents_the_callers_identity(
    local_ca: CertificateAuthority, upstream: tuple[int, WorkloadIdentities]
) -> None:
    port, identities = upstream
    contexts = UpstreamTLSContexts(local_ca.root_pem, "localmesh", identities.get)
    mutual = Service("api", tls=UpstreamTLS(mode=TLSMode.MUTUAL))
    assert await _call(port, contexts, mutual, "web") == "spiffe://localmesh/svc/web"
    assert await _call(port, contexts, mutual, None) == "spiffe://localmesh/svc/ingress"
    # after the caller's identity rotates, new connections present the new cert
    identities.get("web").rotate()
    assert await _call(port, contexts, mutual, "web") == "spiffe://localmesh/svc/web"


async def test_configured_bundle_checks_the_host_name(
    local_ca: CertificateAuthority, tmp_path: Path
) -> None:
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    load_into(server_ctx, local_ca.issue_server(["legacy.internal"]))
    server = await asyncio.start_server(_whoami, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(local_ca.root_pem)
    identities = WorkloadIdentities(local_ca, "localmesh", Rotator())
    contexts = UpstreamTLSContexts(local_ca.root_pem, "localmesh", identities.get)
    try:
        right = Service("legacy", tls=UpstreamTLS(TLSMode.SIMPLE, str(bundle), "legacy.internal"))
        assert await _call(port, contexts, right, "web") == "-"
        wrong = Service("legacy", tls=UpstreamTLS(TLSMode.SIMPLE, str(bundle), "other.internal"))
        with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
            await _call(port, contexts, wrong, "web")
        missing = Service("x", tls=UpstreamTLS(TLSMode.SIMPLE, str(tmp_path / "nope.pem")))
        with pytest.raises(CAError, match="cannot load the CA bundle"):
            contexts.get(missing, "web")
    finally:
        server.close()
        await server.wait_closed()


async def test_an_expired_upstream_cert_is_refused(local_ca: CertificateAuthority) -> None:
    old = local_ca.issue_workload(
        "localmesh", "api", lifetime=60, now=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    )
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    load_into(server_ctx, old)
    server = await asyncio.start_server(_whoami, "127.0.0.1", 0, ssl=server_ctx)
    contexts = UpstreamTLSContexts(
        local_ca.root_pem, "localmesh", WorkloadIdentities(local_ca, "localmesh", Rotator()).get
    )
    try:
        with pytest.raises(ssl.SSLCertVerificationError, match="certificate has expired"):
            await _call(
                server.sockets[0].getsockname()[1],
                contexts,
                Service("api", tls=UpstreamTLS(TLSMode.SIMPLE)),
                "web",
            )
    finally:
        server.close()
        await server.wait_closed()
