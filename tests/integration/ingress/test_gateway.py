"""The ingress gateway end to end: real HTTPS through the data plane to real aiohttp backends.

mesh.yaml text → the control plane's compiler → ``IngressGateway.apply``; clients are aiohttp
(TLS with SNI, client certificates, WebSockets), curl and openssl s_client.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import io
import json
import shutil
import socket
import ssl
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509

from localmesh.ca.authority import CertificateAuthority
from localmesh.ca.containers import MountedCertificates, ingress_cert_names, write_container_certs
from localmesh.ca.rotation import Rotator, WorkloadIdentity
from localmesh.config.loader import parse_mesh_text
from localmesh.errors import CAError, RuntimeStartError
from localmesh.runtime.controlplane.compile import Inputs, compile_snapshot
from localmesh.runtime.ingress.gateway import HTTP_LISTENER, HTTPS_LISTENER, IngressGateway
from localmesh.runtime.ingress.identity import client_identity
from localmesh.runtime.snapshot import Snapshot
from localmesh.runtime.telemetry import AccessLog, MeshMetrics
from tests.integration.controlplane.support import running, until, write_atomic
from tests.integration.ingress.support import (
    LoopbackResolver,
    client_context,
    failing_app,
    headers_app,
    write_pair,
)
from tests.support.services import HttpBackend, free_port, run_http_backend

TD = "edge.test"
XFCC = "x-forwarded-client-cert"

MESH = """
mesh: {{name: edge, trust_domain: {td}}}
services:
  web:
    ports: [{{port: 8000, protocol: http}}]
    endpoints: ["127.0.0.1:{web}"]
  api:
    ports: [{{port: 8001, protocol: http}}]
    endpoints: ["127.0.0.1:{api}"]
  whoami:
    ports: [{{port: 8002, protocol: http}}]
    endpoints: ["127.0.0.1:{whoami}"]
  flaky:
    ports: [{{port: 8003, protocol: http}}]
    endpoints: ["127.0.0.1:{bad}", "127.0.0.1:{good}"]
    outlier_detection: false
  secret:
    ports: [{{port: 8004, protocol: http}}]
    endpoints: ["127.0.0.1:{secret}"]
policies:
  - {{name: alice-only, action: allow, to: [secret], from: ["client:alice"]}}
ingress:
  bind: 127.0.0.1
  https_port: {https}
  http_port: {http}
  redirect_http: {redirect}
  hosts:
    - host: shop.localhost
      client_certs: optional
      routes:
        - {{name: api, match: [{{path: {{prefix: /api/}}}}], route: [api]}}
        - {{name: whoami, match: [{{path: {{prefix: /whoami}}}}], route: [whoami]}}
        - name: flaky
          match: [{{path: {{prefix: /flaky}}}}]
          route: [flaky]
          retries: {{attempts: 3, retry_on: [5xx]}}
        - name: teapot
          match: [{{path: {{prefix: /teapot}}}}]
          route: [web]
          fault: {{abort: {{status: 418, percent: 100}}}}
        - name: slow
          match: [{{path: {{prefix: /delay/}}}}]
          route: [web]
          timeout: 200ms
        - {{name: secret, match: [{{path: {{prefix: /secret}}}}], route: [secret]}}
        - {{name: web, route: [web]}}
    - host: admin.localhost
      client_certs: {admin_certs}
      routes: [{{name: admin, route: [whoami]}}]
    - host: "*.apps.localhost"
      client_certs: {apps_certs}
      routes:
        - name: split
          route: [{{service: web, weight: 50}}, {{service: api, weight: 50}}]
"""


@dataclass
class Edge:
    gateway: IngressGateway
    ca: CertificateAuthority
    certs: dict[str, tuple[Path, Path]]
    backends: dict[str, HttpBackend]
    ports: dict[str, int]
    log: AccessLog

    @property
    def https(self) -> int:
        return self.gateway.addresses()[HTTPS_LISTENER][1]

    @property
    def http(self) -> int:
        return self.gateway.addresses()[HTTP_LISTENER][1]

    def url(self, host: str, path: str = "/", *, scheme: str = "https") -> str:
        port = self.https if scheme in ("https", "wss") else self.http
        return f"{scheme}://{host}:{port}{path}"

    def snapshot(self, version: int = 1, **changes: Any) -> Snapshot:
        values = {"redirect": "true", "apps_certs": "off", "admin_certs": "required"}
        return compile_mesh(MESH.format(td=TD, **{**self.ports, **values, **changes}), version)

    def context(self, client: str | None = None) -> ssl.SSLContext:
        return client_context(self.ca, self.certs[client] if client else None)


def compile_mesh(text: str, version: int = 1) -> Snapshot:
    """Compile like the control plane does, with every service listener on a free port."""
    snap = compile_snapshot(
        Inputs(parse_mesh_text(text, "mesh.yaml")), version=version, origin="test"
    )
    listeners = tuple(dataclasses.replace(spec, bind_port=0) for spec in snap.listeners)
    return dataclasses.replace(snap, listeners=listeners)


@pytest.fixture
def backends() -> Iterator[dict[str, HttpBackend]]:
    with contextlib.ExitStack() as stack:
        yield {
            "web": stack.enter_context(run_http_backend("web")),
            "api": stack.enter_context(run_http_backend("api")),
            "whoami": stack.enter_context(run_http_backend("whoami", headers_app)),
            "bad": stack.enter_context(run_http_backend("bad", failing_app)),
            "good": stack.enter_context(run_http_backend("good")),
            "secret": stack.enter_context(run_http_backend("secret")),
        }


@pytest.fixture
async def edge(
    local_ca: CertificateAuthority, backends: dict[str, HttpBackend], tmp_path: Path
) -> AsyncIterator[Edge]:
    ports = {name: b.port for name, b in backends.items()}
    ports |= {"https": free_port(), "http": free_port()}
    certs = {
        name: write_pair(local_ca.issue_client(TD, name), tmp_path / "clients", name)
        for name in ("alice", "bob")
    }
    log = AccessLog(io.StringIO())
    gateway = IngressGateway(MeshMetrics("edge", TD), log, ca=lambda: local_ca)
    running = Edge(gateway, local_ca, certs, backends, ports, log)
    await gateway.apply(running.snapshot())
    try:
        yield running
    finally:
        await gateway.close(drain_timeout=1.0)


@contextlib.asynccontextmanager
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(resolver=LoopbackResolver(), force_close=True)
    async with aiohttp.ClientSession(connector=connector) as s:
        yield s


async def get(
    edge: Edge, url: str, client: str | None = None, ctx: ssl.SSLContext | None = None, **kw: Any
) -> tuple[int, dict[str, str], bytes]:
    """One GET on a new connection (with ``client``'s certificate when given)."""
    async with session() as s, s.get(url, ssl=ctx or edge.context(client), **kw) as r:
        return r.status, dict(r.headers), await r.read()


async def run(*cmd: str, stdin: bytes = b"") -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate(stdin)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


def xfcc_values(body: bytes) -> list[str]:
    return [v for k, v in json.loads(body)["headers"] if k == XFCC]


# -- routing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "path", "served_by"),
    [
        ("shop.localhost", "/", {"web"}),
        ("shop.localhost", "/api/echo", {"api"}),
        ("shop.localhost", "/anything/else", {"web"}),
        ("x.apps.localhost", "/echo", {"web", "api"}),  # the wildcard host's 50/50 split
    ],
)
async def test_host_and_path_routing(edge: Edge, host: str, path: str, served_by: set[str]) -> None:
    status, headers, _ = await get(edge, edge.url(host, path))
    assert status == 200
    assert headers["x-backend"] in served_by


async def test_the_upstream_learns_the_edge_scheme_and_host(edge: Edge) -> None:
    status, _, body = await get(edge, edge.url("shop.localhost", "/whoami"))
    assert status == 200
    seen = dict(json.loads(body)["headers"])
    assert seen["x-forwarded-proto"] == "https"
    assert seen["host"] == f"shop.localhost:{edge.https}"
    assert XFCC not in seen  # no client certificate, no identity


async def test_split_reaches_both_services(edge: Edge) -> None:
    seen = set()
    async with session() as s:
        for _ in range(40):
            async with s.get(edge.url("v1.apps.localhost", "/"), ssl=edge.context()) as r:
                assert r.status == 200
                seen.add(r.headers["x-backend"])
            if seen == {"web", "api"}:
                break
    assert seen == {"web", "api"}


async def test_unknown_host_is_404_no_route(edge: Edge) -> None:
    ctx = edge.context()
    ctx.check_hostname = False  # the default certificate does not name it
    status, headers, _ = await get(edge, edge.url("nowhere.localhost", "/"), ctx=ctx)
    assert status == 404
    assert headers["x-localmesh-reason"] == "no-route"


# -- client certificates, identity, policy ------------------------------------------------


async def test_required_client_cert_is_enforced_and_identity_reaches_the_upstream(
    edge: Edge,
) -> None:
    with pytest.raises(aiohttp.ClientError):
        await get(edge, edge.url("admin.localhost", "/"))
    forged = {XFCC: "URI=spiffe://edge.test/client/root"}
    status, _, body = await get(edge, edge.url("admin.localhost", "/x"), "alice", headers=forged)
    assert status == 200
    (xfcc,) = xfcc_values(body)  # the forged one is gone, ours is the only one
    assert "URI=spiffe://edge.test/client/alice" in xfcc
    assert 'Subject="CN=alice,OU=edge.test,O=localmesh client"' in xfcc
    assert xfcc.startswith("Hash=")


async def test_a_forged_xfcc_without_a_certificate_is_stripped(edge: Edge) -> None:
    forged = {XFCC: "URI=spiffe://edge.test/client/alice"}
    status, _, body = await get(edge, edge.url("shop.localhost", "/whoami"), headers=forged)
    assert status == 200
    assert xfcc_values(body) == []


async def test_policy_allows_only_the_named_client(edge: Edge) -> None:
    url = edge.url("shop.localhost", "/secret")
    status, _, _ = await get(edge, url, "alice")
    assert status == 200
    for client in ("bob", None):
        status, headers, _ = await get(edge, url, client)
        assert status == 403, client
        assert headers["x-localmesh-reason"] == "denied"
    assert edge.backends["secret"].hits == {"/secret": 1}


async def test_host_requiring_a_cert_on_a_connection_without_one_is_421(edge: Edge) -> None:
    # TLS for shop.localhost (no certificate asked), then Host: admin.localhost
    url = edge.url("shop.localhost", "/")
    status, headers, _ = await get(edge, url, headers={"Host": "admin.localhost"})
    assert status == 421
    assert headers["x-localmesh-reason"] == "misdirected"
    # the same trick with a verified certificate is not misdirected: alice may use admin
    status, _, body = await get(edge, url, "alice", headers={"Host": "admin.localhost"})
    assert status == 200
    assert json.loads(body)["backend"] == "whoami"


async def raw_status(port: int, head: bytes, ctx: ssl.SSLContext | None = None) -> bytes:
    """The status line's code for one raw request (TLS with SNI shop.localhost if ``ctx``)."""
    sni = "shop.localhost" if ctx is not None else None
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=sni)
    try:
        writer.write(head)
        return (await reader.readuntil(b"\r\n")).split(b" ")[1]
    finally:
        writer.close()


@pytest.mark.parametrize("plain", [False, True])
@pytest.mark.parametrize(
    "host", [b"admin.localhost:1:2", b"admin.localhost:8443:", b"admin.localhost::"]
)
async def test_a_malformed_host_never_reaches_a_host_that_requires_certs(
    edge: Edge, host: bytes, plain: bool
) -> None:
    # the router and the 421 check once read these differently: 200 from admin, no cert
    head = b"GET /whoami HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n"
    if plain:
        await edge.gateway.apply(edge.snapshot(version=2, redirect="false"))
        assert await raw_status(edge.http, head) == b"404"
    else:
        assert await raw_status(edge.https, head, edge.context()) == b"404"
    assert edge.backends["whoami"].hits == {}


async def test_a_host_that_starts_requiring_certs_is_421_on_open_connections(edge: Edge) -> None:
    await edge.gateway.apply(edge.snapshot(version=2, admin_certs="optional"))  # none required
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", edge.https, ssl=edge.context(), server_hostname="shop.localhost"
    )

    async def status_of_get(host: str) -> bytes:
        writer.write(f"GET / HTTP/1.1\r\nhost: {host}\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        return head.split(b" ")[1]

    try:
        assert await status_of_get("x.apps.localhost") == b"200"
        await edge.gateway.apply(
            edge.snapshot(version=3, admin_certs="optional", apps_certs="required")
        )
        assert await status_of_get("x.apps.localhost") == b"421"
    finally:
        writer.close()


# -- everything the data plane offers -----------------------------------------------------


async def test_retries_get_around_a_failing_endpoint(edge: Edge) -> None:
    async with session() as s:
        for _ in range(6):
            async with s.get(edge.url("shop.localhost", "/flaky"), ssl=edge.context()) as r:
                assert r.status == 200
                assert r.headers["x-backend"] == "good"
    assert edge.backends["bad"].hits.get("/flaky", 0) >= 1


async def test_fault_abort_and_timeout(edge: Edge) -> None:
    status, _, _ = await get(edge, edge.url("shop.localhost", "/teapot"))
    assert status == 418
    assert "/teapot" not in edge.backends["web"].hits
    status, headers, _ = await get(edge, edge.url("shop.localhost", "/delay/800"))
    assert status == 504
    assert "x-localmesh-reason" in headers


async def test_websocket_through_the_ingress(edge: Edge) -> None:
    async with (
        session() as s,
        s.ws_connect(edge.url("shop.localhost", "/ws", scheme="wss"), ssl=edge.context()) as ws,
    ):
        for text in ("hello", "again"):
            await ws.send_str(text)
            msg = await asyncio.wait_for(ws.receive(), 5)
            assert msg.data == f"web:{text}"


# -- plain HTTP -----------------------------------------------------------------------------


async def test_plain_http_is_redirected_with_308(edge: Edge) -> None:
    async with (
        session() as s,
        s.post(
            edge.url("shop.localhost", "/api/echo?q=1", scheme="http"),
            data=b"body",
            allow_redirects=False,
        ) as r,
    ):
        assert r.status == 308
        assert r.headers["location"] == f"https://shop.localhost:{edge.https}/api/echo?q=1"
    assert edge.backends["api"].hits == {}


async def test_a_target_split_across_reads_is_redirected_whole(edge: Edge) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.http)
    try:
        writer.write(b"GET /first-part")
        await asyncio.sleep(0.2)
        writer.write(b"/second-part?q=1 HTTP/1.1\r\nHost: shop.localhost\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
    finally:
        writer.close()
    location = f"https://shop.localhost:{edge.https}/first-part/second-part?q=1"
    assert f"location: {location}\r\n".encode() in head


async def plain_answer(edge: Edge, request: bytes) -> tuple[bytes, dict[bytes, bytes]]:
    """One raw request to the plain-HTTP port: the status code and the response headers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.http)
    try:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
    finally:
        writer.close()
    status, *lines = head.rstrip(b"\r\n").split(b"\r\n")
    return status.split(b" ")[1], dict(line.split(b": ", 1) for line in lines)


@pytest.mark.parametrize(
    ("request_head", "status"),
    [
        (b"GET /x HTTP/1.1\r\nHost: evil.example\r\n\r\n", b"404"),
        (b"GET /x HTTP/1.1\r\nHost: a/b?c\r\n\r\n", b"400"),
        (b"GET /x HTTP/1.1\r\nHost: shop.localhost:1:2\r\n\r\n", b"400"),
        (b"GET /x HTTP/1.1\r\nHost: shop.localhost\r\nHost: evil.example\r\n\r\n", b"400"),
        (b"GET /x HTTP/1.1\r\n\r\n", b"400"),
        (b"GET http://evil.example/x HTTP/1.1\r\nHost: shop.localhost\r\n\r\n", b"404"),
        (b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", b"405"),
    ],
)
async def test_plain_http_redirects_only_hosts_the_ingress_serves(
    edge: Edge, request_head: bytes, status: bytes
) -> None:
    got, headers = await plain_answer(edge, request_head)
    assert got == status
    assert b"location" not in headers
    if status == b"405":
        assert b"CONNECT" not in headers[b"allow"]


@pytest.mark.parametrize(
    ("target", "host", "location"),
    [
        (
            b"http://v1.apps.localhost/p?q=1",
            b"shop.localhost",
            "https://v1.apps.localhost:{}/p?q=1",
        ),
        (b"/y", b"localhost", "https://localhost:{}/y"),  # the default certificate's names
        (b"/y", b"[::1]:80", "https://[::1]:{}/y"),
    ],
)
async def test_plain_http_redirect_of_other_served_names(
    edge: Edge, target: bytes, host: bytes, location: str
) -> None:
    got, headers = await plain_answer(edge, b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, host))
    assert got == b"308"
    assert headers[b"location"] == location.format(edge.https).encode()


async def test_plain_http_served_when_redirect_is_off(edge: Edge) -> None:
    await edge.gateway.apply(edge.snapshot(version=2, redirect="false"))
    async with session() as s:
        async with s.get(edge.url("shop.localhost", "/whoami", scheme="http")) as r:
            assert r.status == 200
            assert ["x-forwarded-proto", "http"] in (await r.json())["headers"]
        # a host that requires a client certificate is never served without one
        async with s.get(edge.url("admin.localhost", "/", scheme="http")) as r:
            assert r.status == 421
    await edge.gateway.apply(edge.snapshot(version=3))
    async with (
        session() as s,
        s.get(edge.url("shop.localhost", "/", scheme="http"), allow_redirects=False) as r,
    ):
        assert r.status == 308


# -- the real command-line clients ----------------------------------------------------------


async def test_curl_with_a_client_certificate(edge: Edge) -> None:
    cert, key = edge.certs["alice"]
    base = ("curl", "-sS", "--cacert", str(edge.ca.root_path),
            "--resolve", f"admin.localhost:{edge.https}:127.0.0.1")  # fmt: skip
    url = edge.url("admin.localhost", "/curl")
    code, out = await run(*base, "--cert", str(cert), "--key", str(key), url)
    assert code == 0, out
    assert "spiffe://edge.test/client/alice" in "".join(xfcc_values(out.encode()))
    code, out = await run(*base, url)
    assert code != 0  # no certificate: the handshake is refused
    assert edge.backends["whoami"].hits == {"/curl": 1}


async def test_openssl_s_client_gets_a_response(edge: Edge) -> None:
    request = b"GET /api/echo HTTP/1.1\r\nHost: shop.localhost\r\nConnection: close\r\n\r\n"
    code, out = await run(
        "openssl", "s_client", "-connect", f"127.0.0.1:{edge.https}",
        "-servername", "shop.localhost", "-verify_hostname", "shop.localhost",
        "-CAfile", str(edge.ca.root_path), "-verify_return_error", "-quiet",
        stdin=request,
    )  # fmt: skip
    assert code == 0, out
    assert "HTTP/1.1 200 OK" in out
    assert "x-backend: api" in out.lower()


# -- apply: all or nothing ------------------------------------------------------------------


async def test_a_taken_ingress_port_rejects_the_snapshot_and_keeps_the_old_one(
    edge: Edge,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        with pytest.raises(RuntimeStartError, match=f"127.0.0.1:{busy} \\(HTTPS\\)"):
            await edge.gateway.apply(edge.snapshot(version=2, https=busy))
    assert edge.gateway.snapshot is not None
    assert edge.gateway.snapshot.version == 1
    status, _, _ = await get(edge, edge.url("shop.localhost", "/"))
    assert status == 200


async def test_a_data_plane_failure_leaves_the_ingress_as_it_was(edge: Edge) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        snap = edge.snapshot(version=2, https=free_port())
        web = next(s for s in snap.listeners if s.service == "web")
        busy = dataclasses.replace(web, bind_port=taken.getsockname()[1])
        listeners = tuple(busy if s is web else s for s in snap.listeners)
        with pytest.raises(RuntimeStartError, match="listener web:8000"):
            await edge.gateway.apply(dataclasses.replace(snap, listeners=listeners))
    assert edge.https == edge.ports["https"]  # the new HTTPS socket was closed, not swapped
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", snap.config.ingress.https_port)
    status, _, _ = await get(edge, edge.url("shop.localhost", "/"))
    assert status == 200


async def test_an_unusable_ca_is_a_start_error(tmp_path: Path) -> None:
    def broken() -> CertificateAuthority:
        raise CAError("intermediate-key.pem is readable by others", hint="chmod 600 it")

    text = MESH.format(
        td=TD, web=1, api=2, whoami=3, bad=4, good=5, secret=6, https=free_port(),
        http=free_port(), redirect="true", apps_certs="off", admin_certs="off",
    )  # fmt: skip
    gateway = IngressGateway(MeshMetrics("edge", TD), AccessLog(None), ca=broken)
    with pytest.raises(RuntimeStartError, match="the ingress needs the local CA: intermediate"):
        await gateway.apply(compile_mesh(text))
    assert gateway.snapshot is None
    assert gateway.addresses() == {}
    await gateway.close(0)


async def test_the_https_port_moves_on_reload(edge: Edge) -> None:
    old = edge.https
    new = free_port()
    await edge.gateway.apply(edge.snapshot(version=2, https=new))
    assert edge.https == new
    status, _, _ = await get(edge, edge.url("shop.localhost", "/"))
    assert status == 200
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", old)


# -- inside the runtime process -----------------------------------------------------------


async def test_the_runtime_serves_the_ingress_and_closes_it(
    local_ca: CertificateAuthority, http_backend: HttpBackend, tmp_path: Path
) -> None:
    https, http = free_port(), free_port()
    mesh = tmp_path / "mesh.yaml"
    mesh.write_text(
        "services:\n"
        "  web:\n"
        f'    ports: [{{port: 8000, listen: "127.0.0.1:{free_port()}"}}]\n'
        f'    endpoints: ["127.0.0.1:{http_backend.port}"]\n'
        "ingress:\n"
        f"  bind: 127.0.0.1\n  https_port: {https}\n  http_port: {http}\n"
        "  hosts: [{host: shop.localhost, routes: [{name: web, route: [web]}]}]\n"
    )
    async with running(mesh, tmp_path / "state") as runtime:
        assert runtime.dataplane is not None
        assert runtime.dataplane.addresses()[HTTPS_LISTENER] == ("127.0.0.1", https)
        ctx = client_context(local_ca)  # the runtime issued its certificate from this CA
        async with session() as s:
            async with s.get(f"https://shop.localhost:{https}/hello", ssl=ctx) as r:
                assert r.status == 200
                assert r.headers["x-backend"] == "backend"
            url = f"http://shop.localhost:{http}/hello"
            async with s.get(url, allow_redirects=False) as r:
                assert r.status == 308
    for port in (https, http):
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)


@contextlib.contextmanager
def holding(port: int) -> Iterator[None]:
    """Keep 127.0.0.1:``port`` from being bound, by listening on it unless another process
    already does."""
    with socket.socket() as sock:
        with contextlib.suppress(OSError):  # taken already: just as unusable
            sock.bind(("127.0.0.1", port))
            sock.listen()
        yield


def edge_mesh(backend: int, listen: int, ingress: str) -> str:
    """A one-service mesh.yaml whose ``ingress:`` section starts on line 5."""
    return (
        "services:\n"
        "  web:\n"
        f'    ports: [{{port: 8000, listen: "127.0.0.1:{listen}"}}]\n'
        f'    endpoints: ["127.0.0.1:{backend}"]\n'
        f"ingress:\n{ingress}"
        "  hosts: [{host: shop.localhost, routes: [{name: web, route: [web]}]}]\n"
    )


async def test_a_reload_whose_ingress_cannot_bind_points_at_the_setting(
    local_ca: CertificateAuthority, http_backend: HttpBackend, tmp_path: Path
) -> None:
    """A port taken: the problem is at that port's value; an address that is not this
    machine's: at ``bind``; left at a default: at ``ingress:``. The old edge keeps serving."""
    https, http, listen = free_port(), free_port(), free_port()
    mesh = tmp_path / "mesh.yaml"

    def write(ingress: str) -> None:
        write_atomic(mesh, edge_mesh(http_backend.port, listen, ingress))

    write(f"  bind: 127.0.0.1\n  https_port: {https}\n  http_port: {http}\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        async with running(mesh, tmp_path / "state") as runtime:
            plane = runtime.plane
            assert plane is not None

            async def rejected(ingress: str) -> dict[str, Any]:
                before = plane.counters.rejected
                write(ingress)
                await until(lambda: plane.counters.rejected > before, what="a rejection")
                [problem] = plane.status()["last_error"]["problems"]
                return problem  # type: ignore[no-any-return]

            problem = await rejected(
                f"  bind: 127.0.0.1\n  https_port: {busy}\n  http_port: {http}\n"
            )
            assert (problem["file"], problem["line"], problem["column"]) == (str(mesh), 7, 15)
            assert "address already in use" in problem["message"].lower()
            assert "ingress.https_port" in problem["hint"]

            problem = await rejected(
                f"  bind: 192.0.2.1\n  https_port: {https}\n  http_port: {http}\n"
            )  # TEST-NET-1: never an address of this machine
            assert (problem["line"], problem["column"]) == (6, 9)
            assert "ingress.bind" in problem["hint"]

            with holding(8080):  # http_port left at its default
                problem = await rejected(f"  bind: 127.0.0.1\n  https_port: {https}\n")
            assert (problem["line"], problem["column"]) == (5, 1)

            ctx = client_context(local_ca)
            async with session() as s, s.get(f"https://shop.localhost:{https}/", ssl=ctx) as r:
                assert r.status == 200


# -- TLS origination ------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def tls_workload(ca: CertificateAuthority, service: str) -> AsyncIterator[int]:
    """An aiohttp app serving TLS as ``service``'s workload identity, requiring a client
    certificate from the mesh CA and answering with the caller's SPIFFE ID."""

    async def whoami(request: web.Request) -> web.Response:
        assert request.transport is not None
        await asyncio.sleep(float(request.query.get("delay", "0")))
        tls: ssl.SSLObject = request.transport.get_extra_info("ssl_object")
        ident = client_identity(tls.getpeercert() or {}, tls.getpeercert(True) or b"")
        return web.Response(text=ident.principal if ident else "-")

    ctx = WorkloadIdentity(ca, TD, service).server_context()
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=ca.root_pem.decode())
    app = web.Application()
    app.router.add_get("/{tail:.*}", whoami)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    try:
        assert site._server is not None
        yield site._server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    finally:
        await runner.cleanup()


def callers_mesh(vault_port: int) -> str:
    """``web`` (endpoints on 127.0.0.2) and ``worker`` (127.0.0.3) calling ``vault`` over
    mutual TLS: in host mode a caller is known by the address it connects from."""
    return f"""
mesh: {{trust_domain: {TD}}}
services:
  web: {{ports: [8080], endpoints: ["127.0.0.2:8080"]}}
  worker: {{ports: [8081], endpoints: ["127.0.0.3:8081"]}}
  vault:
    ports: [8200]
    endpoints: ["127.0.0.1:{vault_port}"]
    tls: mutual
    retries: false
"""


async def test_mutual_tls_origination_presents_each_callers_identity(
    local_ca: CertificateAuthority,
) -> None:
    """A sidecar listener speaks as the workload calling it (known by source IP here: web's
    endpoints live on 127.0.0.2, worker's on 127.0.0.3), the gateway and unknown callers as
    the mesh's ``ingress``; pooled connections never carry another caller's requests."""
    async with tls_workload(local_ca, "vault") as port:
        text = (
            callers_mesh(port)
            + f"""\
    connection_pool: {{max_connections: 1}}
  imposter:  # the same server, which is not this service: its identity check fails
    ports: [8201]
    endpoints: ["127.0.0.1:{port}"]
    tls: mutual
    retries: false
ingress:
  bind: 127.0.0.1
  https_port: {free_port()}
  http_port: {free_port()}
  hosts:
    - host: vault.localhost
      routes:
        - {{name: imposter, match: [{{path: {{prefix: /imposter}}}}], route: [imposter]}}
        - {{name: vault, route: [vault]}}
"""
        )
        gateway = IngressGateway(MeshMetrics("edge", TD), AccessLog(None), ca=lambda: local_ca)
        await gateway.apply(compile_mesh(text))
        sessions = {
            ip: aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(ip, 0)))
            for ip in ("127.0.0.2", "127.0.0.3", "127.0.0.1")
        }
        try:
            vault = f"http://127.0.0.1:{gateway.addresses()['vault:8200'][1]}/"
            expected = {"127.0.0.2": "web", "127.0.0.3": "worker", "127.0.0.1": "ingress"}

            async def whoami(ip: str, delay: float = 0.0) -> str:
                async with sessions[ip].get(vault, params={"delay": str(delay)}) as r:
                    assert r.status == 200, await r.text()
                    return await r.text()

            for _ in range(3):  # keep-alive: each caller's pooled connection stays its own
                for ip, name in expected.items():
                    assert await whoami(ip) == f"spiffe://{TD}/svc/{name}"
            # one connection allowed: a request queued behind another caller's gets a
            # connection of its own identity, not the freed one
            # gather returns a list; typeshed types it as a tuple, which a list never equals
            got: Sequence[str] = await asyncio.gather(whoami("127.0.0.2", 0.2), whoami("127.0.0.3"))
            assert got == [f"spiffe://{TD}/svc/web", f"spiffe://{TD}/svc/worker"]

            port_https = gateway.addresses()[HTTPS_LISTENER][1]
            ctx = client_context(local_ca)
            async with session() as s:
                async with s.get(f"https://vault.localhost:{port_https}/", ssl=ctx) as r:
                    assert r.status == 200
                    assert await r.text() == f"spiffe://{TD}/svc/ingress"
                async with s.get(f"https://vault.localhost:{port_https}/imposter", ssl=ctx) as r:
                    assert r.status == 503
                    assert "expected spiffe://edge.test/svc/imposter" in await r.text()
        finally:
            for s in sessions.values():
                await s.close()
            await gateway.close(drain_timeout=1.0)


# -- inside the mesh container: certificates issued on the host -----------------------------

CONTAINER_MESH = """
mesh: {{trust_domain: {td}}}
services:
  web:
    ports: [8000]
    endpoints: ["127.0.0.1:{web}"]
{extra_service}
ingress:
  bind: 127.0.0.1
  https_port: {https}
  http_port: {http}
  hosts:
    - {{host: shop.localhost, routes: [{{name: web, route: [web]}}]}}
    - {{host: admin.localhost, client_certs: required, routes: [{{name: web, route: [web]}}]}}
{extra_host}
"""


async def test_in_the_mesh_container_the_host_issued_certificate_is_served(
    local_ca: CertificateAuthority, http_backend: HttpBackend, tmp_path: Path
) -> None:
    values = {"td": TD, "web": http_backend.port, "https": free_port(), "http": free_port()}

    def snapshot(version: int, extra_service: str = "", extra_host: str = "") -> Snapshot:
        text = CONTAINER_MESH.format(**values, extra_service=extra_service, extra_host=extra_host)
        return compile_mesh(text, version)

    first = snapshot(1)
    certs = tmp_path / "certs"  # what `localmesh generate` writes and the container mounts
    names = ingress_cert_names(first.config.ingress)
    write_container_certs(local_ca, certs, TD, [], ingress_names=names)
    alice = write_pair(local_ca.issue_client(TD, "alice"), tmp_path / "clients", "alice")
    gateway = IngressGateway(
        MeshMetrics("edge", TD), AccessLog(None), ca=lambda: MountedCertificates(certs)
    )
    await gateway.apply(first)
    try:
        port = gateway.addresses()[HTTPS_LISTENER][1]
        async with session() as s:
            url = f"https://shop.localhost:{port}/"
            async with s.get(url, ssl=client_context(local_ca)) as r:
                assert r.status == 200
            url = f"https://admin.localhost:{port}/"
            async with s.get(url, ssl=client_context(local_ca, alice)) as r:
                assert r.status == 200  # client certificates verify against the mounted root
        new_host = "    - {host: new.localhost, routes: [{name: web, route: [web]}]}"
        with pytest.raises(RuntimeStartError, match=r"does not name new\.localhost"):
            await gateway.apply(snapshot(2, extra_host=new_host))
        # the host wrote no mesh signer: no identity to originate mutual TLS with
        mutual = "  vault:\n    ports: [8200]\n    endpoints: ['127.0.0.1:1']\n    tls: mutual"
        with pytest.raises(RuntimeStartError, match="no usable mesh signer"):
            await gateway.apply(snapshot(3, extra_service=mutual))
        assert gateway.snapshot is not None
        assert gateway.snapshot.version == 1
        status, _, _ = await get_with(local_ca, f"https://shop.localhost:{port}/")
        assert status == 200
    finally:
        await gateway.close(drain_timeout=1.0)


async def test_in_the_mesh_container_mutual_tls_presents_identities_from_the_mesh_signer(
    local_ca: CertificateAuthority, tmp_path: Path
) -> None:
    """No CA keys in the container: each caller's identity is issued there with the mesh
    signer the host wrote, the mesh's own for the gateway. Without a signer the call is
    refused by the mesh, which does not hold that against the endpoint (no outlier
    ejection); once the host has written one again, the next call gets its identity."""
    async with tls_workload(local_ca, "vault") as port:
        text = callers_mesh(port)
        certs = tmp_path / "certs"
        write_container_certs(local_ca, certs, TD, [], signer=True)
        gateway = IngressGateway(
            MeshMetrics("edge", TD), AccessLog(None), ca=lambda: MountedCertificates(certs)
        )
        await gateway.apply(compile_mesh(text))
        try:
            vault = f"http://127.0.0.1:{gateway.addresses()['vault:8200'][1]}/"

            async def call(ip: str, status: int, text: str) -> None:
                connector = aiohttp.TCPConnector(local_addr=(ip, 0))
                async with aiohttp.ClientSession(connector=connector) as s, s.get(vault) as r:
                    assert r.status == status
                    assert text in await r.text()
                    if status == 503:
                        assert r.headers["x-localmesh-reason"] == "no-identity"

            await call("127.0.0.2", 200, f"spiffe://{TD}/svc/web")
            await call("127.0.0.4", 200, f"spiffe://{TD}/svc/ingress")  # a caller it cannot name
            shutil.rmtree(certs / "signer")  # e.g. a project generated by an older version
            for _ in range(6):  # more than outlier detection's 5 consecutive gateway errors
                await call("127.0.0.3", 503, "no usable mesh signer")
            await call("127.0.0.2", 200, f"spiffe://{TD}/svc/web")  # the endpoint stays in
            write_container_certs(local_ca, certs, TD, [], signer=True)
            await call("127.0.0.3", 200, f"spiffe://{TD}/svc/worker")
        finally:
            await gateway.close(drain_timeout=1.0)


async def test_in_the_mesh_container_the_ingress_certificate_the_host_renewed_is_swapped_in(
    local_ca: CertificateAuthority, http_backend: HttpBackend, tmp_path: Path
) -> None:
    """At 2/3 of its life the mounted ingress certificate is read again: refused while the
    host has not renewed it (the old one keeps serving), swapped in once it has, without a
    restart of the mesh container."""
    values = {"td": TD, "web": http_backend.port, "https": free_port(), "http": free_port()}
    snapshot = compile_mesh(CONTAINER_MESH.format(**values, extra_service="", extra_host=""), 1)
    certs = tmp_path / "certs"
    names = ingress_cert_names(snapshot.config.ingress)
    aged = dt.datetime.now(dt.UTC) - dt.timedelta(days=21)  # due at day 20 of 30
    write_container_certs(local_ca, certs, TD, [], ingress_names=names, now=aged)
    gateway = IngressGateway(
        MeshMetrics("edge", TD), AccessLog(None), ca=lambda: MountedCertificates(certs)
    )
    skew = dt.timedelta()
    gateway.rotator = Rotator(now=lambda: dt.datetime.now(dt.UTC) + skew)
    await gateway.apply(snapshot)
    try:
        port = gateway.addresses()[HTTPS_LISTENER][1]

        async def served_serial() -> int:
            ctx = client_context(local_ca)
            _, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=ctx, server_hostname="shop.localhost"
            )
            ssl_object = writer.get_extra_info("ssl_object")
            der = ssl_object.getpeercert(binary_form=True)
            writer.close()
            return x509.load_der_x509_certificate(der).serial_number

        old = await served_serial()  # a container (re)started late still serves it
        assert gateway.rotator.rotate_due() == []  # not renewed on the host yet
        assert await served_serial() == old
        write_container_certs(local_ca, certs, TD, [], ingress_names=names)
        skew = dt.timedelta(minutes=6)  # past the retry delay
        rotated = {c.name for c in gateway.rotator.rotate_due()}
        assert rotated == {
            "ingress shop.localhost",
            "ingress admin.localhost",
            "ingress localhost,127.0.0.1,::1",
        }
        assert await served_serial() != old
    finally:
        await gateway.close(drain_timeout=1.0)


async def get_with(ca: CertificateAuthority, url: str) -> tuple[int, dict[str, str], bytes]:
    async with session() as s, s.get(url, ssl=client_context(ca)) as r:
        return r.status, dict(r.headers), await r.read()
