"""The ceiling: a featureless uvloop + httptools keep-alive HTTP proxy (no routing, no
metrics, no access log, no header rules, no timeouts, no retries).

    python bench/baseline_proxy.py LISTEN_PORT UPSTREAM_HOST:PORT

What any Python proxy on this stack must do per request: parse the request head (llhttp),
serialise it upstream, parse the response head, serialise it downstream, copy the body.
Each downstream connection keeps one upstream keep-alive connection. Requests with bodies
and pipelining are out of scope: wrk's GETs are enough to show what the interpreter costs.
``bench/dataplane.py`` measures it in the same run as localmesh and HAProxy.
"""

from __future__ import annotations

import asyncio
import sys

import httptools
import uvloop


class Upstream(asyncio.Protocol):
    def __init__(self, down: Downstream) -> None:
        self.down = down
        self.parser = httptools.HttpResponseParser(self)
        self.headers: list[bytes] = []
        self.out: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)
        self.down.transport.write(b"".join(self.out))
        self.out = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers += (name, b": ", value, b"\r\n")

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        self.out += (b"HTTP/1.1 %d OK\r\n" % status, *self.headers, b"\r\n")
        self.headers = []

    def on_body(self, body: bytes) -> None:
        self.out.append(body)


class Downstream(asyncio.Protocol):
    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream_address = upstream
        self.parser = httptools.HttpRequestParser(self)
        self.up: Upstream | None = None
        self.url = b""
        self.headers: list[bytes] = []
        self.pending: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        asyncio.get_running_loop().create_task(self.connect())

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        _, up = await loop.create_connection(lambda: Upstream(self), *self.upstream_address)
        self.up = up
        if self.pending:
            up.transport.write(b"".join(self.pending))

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers += (name, b": ", value, b"\r\n")

    def on_headers_complete(self) -> None:
        head = b"".join([self.parser.get_method(), b" ", self.url, b" HTTP/1.1\r\n",
                         *self.headers, b"\r\n"])  # fmt: skip
        self.headers = []
        if self.up is None:
            self.pending.append(head)
        else:
            self.up.transport.write(head)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.up is not None:
            self.up.transport.close()


def main() -> None:
    port = int(sys.argv[1])
    host, _, up_port = sys.argv[2].rpartition(":")

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        upstream = (host, int(up_port))
        server = await loop.create_server(lambda: Downstream(upstream), "127.0.0.1", port)
        print("ready", flush=True)
        await server.serve_forever()

    uvloop.run(serve())


if __name__ == "__main__":
    main()
