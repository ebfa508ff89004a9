"""Helpers for ingress tests: a running TLS listener, blocking TLS clients (run in threads),
an aiohttp resolver for ``*.localhost`` names and small backends."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from localmesh.ca.authority import CertificateAuthority, IssuedCert
from localmesh.runtime.ingress.identity import client_identity
from localmesh.runtime.ingress.listener import TLSListener
from localmesh.runtime.ingress.tls import Selected
from tests.support.services import HttpBackend


class WhoAmI(asyncio.Protocol):
    """Stands in for the data plane's HTTP protocol at the TLS level: answers every request
    with the ingress host the connection was selected for and the verified client identity."""

    def __init__(self, selected: Selected) -> None:
        self.selected = selected
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            _, self.buf = self.buf.split(b"\r\n\r\n", 1)
            assert self.transport is not None
            obj = self.transport.get_extra_info("ssl_object")
            ident = client_identity(obj.getpeercert() or {}, obj.getpeercert(True) or b"")
            body = json.dumps(
                {"host": self.selected.host, "identity": ident.principal if ident else None}
            ).encode()
            self.transport.write(
                b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
            )


@dataclass
class Running:
    listener: TLSListener
    port: int
    ca: CertificateAuthority


def client_context(
    ca: CertificateAuthority, cert: tuple[Path, Path] | None = None
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=ca.root_pem.decode())
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    if cert is not None:
        ctx.load_cert_chain(*cert)
    return ctx


def write_pair(issued: IssuedCert, directory: Path, name: str) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    pair = (directory / f"{name}.pem", directory / f"{name}-key.pem")
    issued.write(*pair)
    return pair


@dataclass
class Fetched:
    body: dict[str, object]
    peer_der: bytes
    alpn: str | None
    version: str | None


def fetch(port: int, sni: str | None, ctx: ssl.SSLContext, requests: int = 1) -> Fetched:
    """Blocking: TLS to 127.0.0.1:port with ``sni`` (hostname-checked), ``requests`` GETs."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=sni or "127.0.0.1") as tls,
    ):
        body: dict[str, object] = {}
        for _ in range(requests):
            tls.sendall(f"GET / HTTP/1.1\r\nhost: {sni or 'x'}\r\n\r\n".encode())
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = tls.recv(4096)
                if not chunk:
                    raise ConnectionResetError("closed before the response")
                head += chunk
            header, rest = head.split(b"\r\n\r\n", 1)
            length = int(header.split(b"content-length: ")[1].split(b"\r\n")[0])
            while len(rest) < length:
                rest += tls.recv(4096)
            body = json.loads(rest)
        return Fetched(
            body, tls.getpeercert(True) or b"", tls.selected_alpn_protocol(), tls.version()
        )


class LoopbackResolver(AbstractResolver):
    """aiohttp resolver sending every name (``shop.localhost``, ...) to 127.0.0.1, so the
    URL's host is the SNI, the certificate name checked and the ``Host`` header at once."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(
                hostname=host,
                host="127.0.0.1",
                port=port,
                family=socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
        ]

    async def close(self) -> None:
        return None


def headers_app(backend: HttpBackend) -> web.Application:
    """Answers every request with the list of its header pairs (duplicates kept) and name."""

    async def handle(request: web.Request) -> web.Response:
        backend.hits[request.path] = backend.hits.get(request.path, 0) + 1
        pairs = [[k.lower(), v] for k, v in request.headers.items()]
        return web.json_response({"backend": backend.name, "headers": pairs})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def failing_app(backend: HttpBackend) -> web.Application:
    """Answers everything with 503: the bad endpoint a retry must get around."""

    async def handle(request: web.Request) -> web.Response:
        backend.hits[request.path] = backend.hits.get(request.path, 0) + 1
        return web.Response(status=503, text=backend.name, headers={"x-backend": backend.name})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app
