"""A tiny threaded HTTPS server for trust tests: handshake, read a request, answer 200."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field


@dataclass
class TlsServer:
    host: str
    port: int
    peer_certs: list[Mapping[str, object]] = field(default_factory=list)


@contextlib.contextmanager
def https_server(ctx: ssl.SSLContext, host: str = "127.0.0.1") -> Iterator[TlsServer]:
    """Serve ``ctx`` on a free port; every connection gets one ``200 ok`` then is closed."""
    listener = socket.create_server((host, 0))
    listener.settimeout(0.2)
    server = TlsServer(host, listener.getsockname()[1])
    stop = threading.Event()

    def handle(conn: socket.socket) -> None:
        conn.settimeout(5)
        with contextlib.suppress(OSError), ctx.wrap_socket(conn, server_side=True) as tls:
            server.peer_certs.append(tls.getpeercert() or {})
            buf = b""
            while b"\r\n\r\n" not in buf:
                chunk = tls.recv(4096)
                if not chunk:
                    return
                buf += chunk
            tls.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        stop.set()
        thread.join(5)
        listener.close()
