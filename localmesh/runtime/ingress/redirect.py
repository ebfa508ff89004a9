"""The plain-HTTP ingress listener when ``ingress.redirect_http`` is on: 308 to HTTPS
for the names the ingress serves (``hosts.redirect`` decides).

308 (not 301/302) so a POST stays a POST with its body (RFC 9110 §15.4.9). The request
head is parsed with llhttp (httptools), bounded in size and time like every data-plane
listener; the body is never read. One response per connection, then close: browsers
follow the redirect on a new TLS connection anyway. With ``redirect_http`` off, the data
plane's own HTTP listener serves the ingress routes on this port instead.
"""

from __future__ import annotations

import asyncio
import logging
from typing import cast

import httptools

from localmesh.runtime.ingress.hosts import redirect

log = logging.getLogger("localmesh.ingress")

MAX_HEAD = 64 * 1024
REASONS = {
    308: b"Permanent Redirect",
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    431: b"Request Header Fields Too Large",
}
#: Every method but CONNECT is redirected (RFC 9110 §15.5.6: a 405 lists what is allowed).
ALLOW = b"GET, HEAD, POST, PUT, DELETE, OPTIONS, TRACE, PATCH"


class RedirectProtocol(asyncio.Protocol):
    """Answers the first request on a connection with ``308 Location: https://...``
    (or why not: see ``hosts.redirect``); ``served``: the names it redirects."""

    def __init__(
        self, https_port: int, served: tuple[str, ...], header_timeout: float = 10.0
    ) -> None:
        self._https_port = https_port
        self._served = served
        self._header_timeout = header_timeout
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._hosts: list[bytes] = []
        self._size = 0
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._header_timeout, self._answer, 408, b"")

    def data_received(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > MAX_HEAD:
            self._answer(431, b"")
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.on_headers_complete()
        except httptools.HttpParserError:
            self._answer(400, b"")

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()

    # httptools callbacks
    def on_url(self, url: bytes) -> None:
        self._url += url  # llhttp hands the target over in pieces when it spans reads

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"host":
            self._hosts.append(value)

    def on_headers_complete(self) -> None:
        parser = self._parser
        status, location = redirect(
            parser.get_method(),
            self._url,
            self._hosts,
            http11=parser.get_http_version() == "1.1",
            served=self._served,
            https_port=self._https_port,
        )
        self._answer(status, location)

    def _answer(self, status: int, location: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if self._timer is not None:
            self._timer.cancel()
        head = b"HTTP/1.1 %d %s\r\n" % (status, REASONS[status])
        if location:
            head += b"location: " + location + b"\r\n"
        if status == 405:
            head += b"allow: " + ALLOW + b"\r\n"
        head += b"content-length: 0\r\nconnection: close\r\n\r\n"
        transport.write(head)
        transport.close()
        if status != 308:
            log.info(
                "ingress http listener answered %d to %s",
                status,
                transport.get_extra_info("peername"),
            )
