"""The HTTPS listener: accept, peek at the ClientHello, pick the host's context, hand over.

Life of a downstream connection::

    accept ─▶ peek (MSG_PEEK, nothing consumed) ─▶ parse_client_hello
        ├─ not TLS ........ plain HTTP? answer 400 "plain HTTP sent to the HTTPS port"; close
        ├─ malformed ...... close
        ├─ no hello in time close ("handshake stalled")
        └─ ClientHello ──▶ IngressTLS.select(SNI) ──▶ loop.connect_accepted_socket(
                             TLSStream(host context, protocol_factory(selected)), sock)
                             ├─ ok: the data plane's HTTP protocol serves it
                             └─ refused by OpenSSL: logged with the reason (old TLS
                                version, missing/foreign/expired client cert, timeout)

Nothing here blocks: waiting for a ClientHello is a reader callback plus a deadline timer,
and each handshake runs in its own task, so one stalled or hostile client never holds up
another. Every refusal is logged once with its reason and counted in ``stats``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Callable

from localmesh.runtime.ingress.clienthello import (
    TLS1_2,
    ClientHello,
    Malformed,
    NeedMore,
    NotTLS,
    parse_client_hello,
    version_name,
)
from localmesh.runtime.ingress.tls import IngressTLS, Selected
from localmesh.runtime.ingress.tlsstream import TLSStream

log = logging.getLogger("localmesh.ingress")

PEEK_BYTES = 16 * 1024 + 5
#: Accept at most this many connections per readiness callback, then let the loop breathe.
ACCEPT_BATCH = 64
#: Re-peek a partial ClientHello after this long (the socket stays readable meanwhile, so
#: waiting on readiness would spin).
PARTIAL_RETRY = 0.005

PLAIN_HTTP_RESPONSE = (
    b"HTTP/1.1 400 Bad Request\r\n"
    b"content-type: text/plain\r\n"
    b"x-localmesh-reason: plain-http-on-https-port\r\n"
    b"connection: close\r\n"
    b"content-length: 44\r\n\r\n"
    b"this port speaks HTTPS: use https:// instead"
)

ProtocolFactory = Callable[[Selected], asyncio.Protocol]


def failure_reason(exc: BaseException) -> str:
    """A short, human reason for a refused handshake (what the log line says)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"client certificate rejected: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or str(exc)
        known = {
            "UNSUPPORTED_PROTOCOL": "TLS version below 1.2 refused",
            "PEER_DID_NOT_RETURN_A_CERTIFICATE": "client certificate required, none sent",
            "NO_SHARED_CIPHER": "no cipher in common",
            "TLSV1_ALERT_UNKNOWN_CA": "client does not trust our certificate (unknown CA)",
            "SSLV3_ALERT_BAD_CERTIFICATE": "client rejected our certificate",
            "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "client rejected our certificate",
            "WRONG_VERSION_NUMBER": "not a TLS record",
            "NO_APPLICATION_PROTOCOL": "no ALPN protocol in common (we speak http/1.1)",
        }
        return known.get(reason, f"TLS error {reason}")
    # asyncio's and uvloop's SSL protocols abort a slow handshake with this error and text.
    timed_out = isinstance(exc, ConnectionAbortedError) and "taking longer" in str(exc)
    if timed_out or isinstance(exc, TimeoutError):
        return "TLS handshake timed out"
    if isinstance(exc, ConnectionError | EOFError):
        return "client closed the connection during the handshake"
    return f"{type(exc).__name__}: {exc}"


class TLSListener:
    """Serves one bound HTTPS socket; see the module docstring."""

    def __init__(
        self,
        tls: IngressTLS,
        protocol_factory: ProtocolFactory,
        *,
        handshake_timeout: float = 10.0,
    ) -> None:
        self.tls = tls
        self._factory = protocol_factory
        self._timeout = handshake_timeout
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: dict[int, tuple[socket.socket, str, asyncio.TimerHandle]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.stats: collections.Counter[str] = collections.Counter()

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Bind and start accepting; returns the bound address (port 0 picks one)."""
        bound = self.bind(host, port)
        self.serve()
        return bound

    def bind(self, host: str, port: int) -> tuple[str, int]:
        """Bind and listen without accepting yet (so a reload can fail before it commits)."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(1024)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        return self.address

    def serve(self) -> None:
        """Start accepting on the bound socket."""
        assert self._sock is not None, "bind() first"
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._sock.fileno(), self._accept)

    @property
    def address(self) -> tuple[str, int]:
        assert self._sock is not None
        bound = self._sock.getsockname()
        return str(bound[0]), int(bound[1])

    async def close(self) -> None:
        """Stop accepting, drop connections still before their handshake, end handshakes."""
        if self._sock is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        for fd in list(self._pending):
            self._drop(fd)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- accept and peek ----------------------------------------------------------------------

    def _accept(self) -> None:
        assert self._sock is not None
        assert self._loop is not None
        for _ in range(ACCEPT_BATCH):
            try:
                conn, addr = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: log, keep the listener alive
                log.warning("ingress accept failed: %s", exc)
                return
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            peer = f"{addr[0]}:{addr[1]}"
            fd = conn.fileno()
            timer = self._loop.call_later(self._timeout, self._stalled, fd)
            self._pending[fd] = (conn, peer, timer)
            self._peek(fd)

    def _peek(self, fd: int) -> None:
        entry = self._pending.get(fd)
        if entry is None:
            return
        conn, _peer, _timer = entry
        try:
            data = conn.recv(PEEK_BYTES, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            self._wait_readable(fd)
            return
        except OSError as exc:
            self._refuse(fd, None, f"socket error before the handshake: {exc}")
            return
        if not data:
            self._refuse(fd, None, "closed before sending a ClientHello", quiet=True)
            return
        parsed = parse_client_hello(data)
        if isinstance(parsed, NeedMore):
            assert self._loop is not None
            self._unwatch(fd)
            self._loop.call_later(PARTIAL_RETRY, self._peek, fd)
        elif isinstance(parsed, NotTLS):
            self._refuse_plaintext(fd, parsed.http)
        elif isinstance(parsed, Malformed):
            self._refuse(fd, None, parsed.reason)
        else:
            self._handshake(fd, parsed)

    def _wait_readable(self, fd: int) -> None:
        assert self._loop is not None
        self._loop.add_reader(fd, self._on_readable, fd)

    def _on_readable(self, fd: int) -> None:
        self._unwatch(fd)
        self._peek(fd)

    def _unwatch(self, fd: int) -> None:
        assert self._loop is not None
        self._loop.remove_reader(fd)

    def _stalled(self, fd: int) -> None:
        self._refuse(fd, None, f"no complete ClientHello within {self._timeout:g}s (stalled)")

    def _drop(self, fd: int) -> tuple[socket.socket, str] | None:
        entry = self._pending.pop(fd, None)
        if entry is None:
            return None
        conn, peer, timer = entry
        timer.cancel()
        self._unwatch(fd)
        return conn, peer

    def _refuse(self, fd: int, sni: str | None, reason: str, *, quiet: bool = False) -> None:
        dropped = self._drop(fd)
        if dropped is None:
            return
        conn, peer = dropped
        conn.close()
        self._count(peer, sni, reason, quiet=quiet)

    def _refuse_plaintext(self, fd: int, http: bool) -> None:
        dropped = self._drop(fd)
        if dropped is None:
            return
        conn, peer = dropped
        with contextlib.suppress(OSError):
            conn.recv(PEEK_BYTES)  # consume the request so close() sends FIN, not RST
            if http:
                conn.send(PLAIN_HTTP_RESPONSE)
            conn.shutdown(socket.SHUT_WR)
        conn.close()
        what = "plain HTTP" if http else "non-TLS bytes"
        self._count(peer, None, f"{what} on the HTTPS port")

    def _count(self, peer: str, sni: str | None, reason: str, *, quiet: bool = False) -> None:
        self.stats[reason] += 1
        level = logging.DEBUG if quiet else logging.WARNING
        log.log(level, "ingress refused %s (sni=%s): %s", peer, sni or "-", reason)

    # --- handshake ----------------------------------------------------------------------------

    def _handshake(self, fd: int, hello: ClientHello) -> None:
        entry = self._pending.get(fd)
        assert entry is not None
        assert self._loop is not None
        conn, peer, timer = entry
        remaining = max(0.1, timer.when() - self._loop.time())
        self._drop(fd)
        selected = self.tls.select(hello)
        task = self._loop.create_task(
            self._start_tls(conn, peer, hello, selected, remaining), name=f"ingress-tls {peer}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _start_tls(
        self,
        conn: socket.socket,
        peer: str,
        hello: ClientHello,
        selected: Selected,
        handshake_timeout: float,
    ) -> None:
        assert self._loop is not None
        started = time.monotonic()
        handshake: asyncio.Future[None] = self._loop.create_future()
        try:
            await self._loop.connect_accepted_socket(
                lambda: TLSStream(
                    selected.context,
                    lambda: self._factory(selected),
                    handshake,
                    handshake_timeout,
                ),
                conn,
            )
            await handshake
        except (OSError, TimeoutError, EOFError) as exc:
            reason = failure_reason(exc)
            if hello.max_version < TLS1_2:
                reason = (
                    f"client offers {version_name(hello.max_version)} at most; TLS 1.2+ required"
                )
            # The transport owns (and has closed) the socket now; closing it here could
            # close a descriptor number the loop already reused.
            self._count(peer, hello.sni, reason)
            return
        except Exception:  # a bug in the protocol: log it, keep the listener serving
            log.exception("ingress: failed to start serving %s (sni=%s)", peer, hello.sni)
            return
        self.stats["handshakes"] += 1
        took = 1e3 * (time.monotonic() - started)
        log.debug("ingress TLS from %s sni=%s in %.1f ms", peer, hello.sni, took)
