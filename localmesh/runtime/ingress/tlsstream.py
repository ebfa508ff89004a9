"""TLS termination for the ingress: an ``SSLObject`` over memory BIOs between the accepted
socket's transport and the HTTP engine, which sees a transport of plaintext.

Why not the event loop's TLS (``connect_accepted_socket(ssl=...)``): uvloop's SSL protocol
ends every read by catching an ``SSLWantReadError`` (an exception with a formatted message,
made per request) and allocates a 256 KiB buffer per read; measured, that cost about 7 µs per
keep-alive request where HAProxy spends 2. Here a read stops once both BIOs are drained, so
the common request raises nothing, and a read asks for no more than the bytes that arrived.

Life of a connection::

    connection_made ─▶ do_handshake ◀─ data_received (ClientHello, client Finished …)
        ├─ fails (alert sent, then closed) ......... ``handshake`` future gets the error
        ├─ no handshake within ``timeout`` ......... TimeoutError, closed
        └─ done ─▶ app = app_factory(); app.connection_made(self); ``handshake`` resolves
                   data_received ─▶ read records ─▶ app.data_received(plaintext)
                   app writes ─▶ encrypt ─▶ raw transport
                   close ─▶ close_notify ─▶ raw close;   peer close_notify or EOF ─▶ app EOF
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable
from typing import Any, Final, cast

from localmesh.runtime.dataplane.batching import batched

#: The largest plaintext one TLS record carries: a read asks for no more.
RECORD_SIZE: Final = 16 * 1024


class TLSStream(asyncio.Protocol, asyncio.Transport):
    """The raw transport's protocol and the app protocol's transport."""

    #: its records go out through a batched raw transport: the app need not batch again
    batches_writes = True

    def __init__(
        self,
        context: ssl.SSLContext,
        app_factory: Callable[[], asyncio.Protocol],
        handshake: asyncio.Future[None],
        timeout: float,
    ) -> None:
        super().__init__()
        self._context = context
        self._app_factory = app_factory
        self._app: asyncio.Protocol | None = None
        self.handshake = handshake
        self._timeout = timeout
        self._timer: asyncio.TimerHandle | None = None
        self._incoming = incoming = ssl.MemoryBIO()
        self._outgoing = outgoing = ssl.MemoryBIO()
        self._sslobj = context.wrap_bio(incoming, outgoing, server_side=True)
        # Records are read and written through the C object under ``ssl.SSLObject`` (stable
        # since Python 3.7): the public methods only forward to it, one Python call each.
        tls: Any = self._sslobj._sslobj  # type: ignore[attr-defined]
        # The calls every request makes, bound once: compiled code calls a method of a
        # foreign object by looking it up on its type first, each time.
        self._feed: Callable[[bytes], int] = incoming.write
        self._decrypt: Callable[[int], bytes] = tls.read
        self._encrypt: Callable[[bytes | bytearray | memoryview], int] = tls.write
        self._take_records: Callable[[], bytes] = outgoing.read
        self._deliver: Callable[[bytes], None] = _unset
        self._send: Callable[[bytes], None] = _unset
        self._raw_closing: Callable[[], bool] = _no_transport
        self._raw: asyncio.Transport | None = None
        self._closing = False

    # -- the raw side (asyncio.Protocol) ----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        raw = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self._raw = out = batched(raw)
        self._send = out.write
        self._raw_closing = raw.is_closing
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._timeout, self._timed_out)

    def data_received(self, data: bytes) -> None:
        self._feed(data)
        if self._app is None:
            self._do_handshake()
        else:
            self._read()

    def eof_received(self) -> bool | None:
        if self._app is None:
            self._failed(EOFError("the client closed the connection"))
            return False
        return self._app.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._app is None:
            if not self.handshake.done():
                self.handshake.set_exception(exc or ConnectionResetError("connection lost"))
            return
        self._closing = True
        self._app.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._app is not None:
            self._app.pause_writing()

    def resume_writing(self) -> None:
        if self._app is not None:
            self._app.resume_writing()

    # -- handshake --------------------------------------------------------------------------

    def _do_handshake(self) -> None:
        try:
            self._sslobj.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except (ssl.SSLError, ValueError) as exc:
            self._flush()  # the alert tells the client why
            self._failed(exc)
            return
        self._flush()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._app = app = self._app_factory()
        self._deliver = app.data_received
        app.connection_made(self)
        if not self.handshake.done():
            self.handshake.set_result(None)
        if self._incoming.pending or self._sslobj.pending():
            self._read()  # application data sent along with the client's Finished

    def _timed_out(self) -> None:
        self._timer = None
        if self._app is None:
            self._failed(TimeoutError("TLS handshake timed out"))

    def _failed(self, exc: BaseException) -> None:
        if not self.handshake.done():
            self.handshake.set_exception(exc)
        if self._raw is not None and not self._raw.is_closing():
            self._raw.close()  # after the pending alert is written

    # -- records ----------------------------------------------------------------------------

    def _read(self) -> None:
        app = self._app
        assert app is not None
        incoming = self._incoming
        decrypt = self._decrypt
        while not self._closing:
            # Ask for no more than can be there: a record's plaintext is shorter than the
            # record (or than what is already decrypted and pending), so a small request
            # gets a small buffer, not a 16 KiB one to shrink.
            size = min(incoming.pending or self._sslobj.pending(), RECORD_SIZE)
            if not size:
                break
            try:
                data = decrypt(size)
            except ssl.SSLWantReadError:
                break  # the rest of a record is still on its way
            except ssl.SSLZeroReturnError:  # close_notify
                data = b""
            except ssl.SSLError:
                self.abort()  # a corrupt or forged record: nothing more can be trusted
                return
            if not data:
                self._flush()
                if not app.eof_received():
                    self.close()
                return
            self._deliver(data)
            if len(data) < size and not incoming.pending:
                # The record ended before the buffer did, so nothing decrypted is left, and
                # no bytes wait: done, without the read that would raise SSLWantReadError
                # or an SSL_pending call (each SSL call releases and retakes the GIL).
                break
        if self._outgoing.pending:  # e.g. TLS 1.3 session tickets or key updates
            self._flush()

    def _flush(self) -> None:
        # held until the loop's turn ends, and dropped then if the socket closed meanwhile
        if self._outgoing.pending:
            self._send(self._take_records())

    # -- the app side (asyncio.Transport) ---------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or not data:
            return
        self._encrypt(data)
        self._send(self._take_records())  # see _flush

    def is_closing(self) -> bool:
        return self._closing or self._raw_closing()

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        with contextlib.suppress(ssl.SSLError, ValueError):
            self._sslobj.unwrap()  # queues our close_notify; the peer's need not come
        self._flush()
        if self._raw is not None:
            self._raw.close()

    def abort(self) -> None:
        self._closing = True
        if self._raw is not None:
            self._raw.abort()

    def pause_reading(self) -> None:
        if self._raw is not None:
            self._raw.pause_reading()

    def resume_reading(self) -> None:
        if self._raw is not None:
            self._raw.resume_reading()

    def is_reading(self) -> bool:
        return self._raw is not None and self._raw.is_reading()

    def can_write_eof(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return self._raw.get_write_buffer_size() if self._raw is not None else 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if self._raw is not None:
            self._raw.set_write_buffer_limits(high, low)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self._sslobj
        if name == "sslcontext":
            return self._context
        if name == "peercert":
            return self._sslobj.getpeercert()
        if name == "cipher":
            return self._sslobj.cipher()
        if name == "compression":
            return self._sslobj.compression()
        return self._raw.get_extra_info(name, default) if self._raw is not None else default


def _unset(data: bytes) -> None:
    """Stands in for the raw transport's and the app's methods until they are known."""


def _no_transport() -> bool:
    """``is_closing`` before there is a raw transport: nothing can be written yet."""
    return True
