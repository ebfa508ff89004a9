"""HTTP/1.1 proxying: the downstream connection and the exchange (one request's life).

Life of a request::

    HttpDownstream.data_received ─▶ llhttp ─▶ on_headers_complete ─▶ Exchange.start
      route (RouteSource ▶ VirtualHost ▶ RouteTable) ─▶ authz ─▶ rate limits ─▶ upstream head
      ─▶ attempt: fault dice ─▶ pick endpoint ─▶ pooled connection ─▶ write head + body
      ─▶ UpstreamConnection: response head ─▶ retry? ─▶ downstream head, body, end
      ─▶ metrics (plain ints), access log (buffered) ─▶ next pipelined request

Everything is callbacks on one event loop: no task per request, no per-request timers for
header/idle timeouts (the sweeper enforces them), one write per read in each direction.
Bodies stream with backpressure: when the upstream cannot take more we stop reading the
downstream, and the other way round. A request body is kept for replay (retries, mirrors)
only while it is at most ``REPLAY_LIMIT`` bytes; past that the request is not retried.

Locally generated responses (404 no route, 403 denied, 429, 503, 504, ...) carry
``x-localmesh-reason``. A request the mesh answers before reading its whole body closes
the connection afterwards: the unread body would otherwise be parsed as the next request.
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from collections.abc import Callable
from typing import Final, cast

import httptools

from localmesh.runtime.dataplane.batching import batched
from localmesh.runtime.dataplane.compiled import ListenerView, RouteTarget, VirtualHost
from localmesh.runtime.dataplane.context import DownstreamIdentity, ListenerContext
from localmesh.runtime.dataplane.core import wire
from localmesh.runtime.dataplane.core.balancer import hash_key
from localmesh.runtime.dataplane.core.fault import decide as decide_fault
from localmesh.runtime.dataplane.core.headers import HOP_BY_HOP, connection_tokens
from localmesh.runtime.dataplane.core.policy import UNKNOWN, Caller
from localmesh.runtime.dataplane.core.retry import Outcome, backoff, budget_allows, is_retriable
from localmesh.runtime.dataplane.core.routing import CompiledRoute, RouteMatcher
from localmesh.runtime.dataplane.core.uri import BadTarget, split_target, target_authority
from localmesh.runtime.dataplane.core.wire import STATUS_LINES
from localmesh.runtime.dataplane.mirror import send_mirror
from localmesh.runtime.dataplane.tasks import spawn
from localmesh.runtime.dataplane.upstream import (
    CRLF,
    NO_TOKENS,
    REFRAMED,
    SEP,
    Fields,
    Headers,
    UnsupportedTransferCoding,
    UpstreamConnection,
    UpstreamHost,
    add_fields,
    as_fields,
    lowered,
    pairs,
    unconnected_closing,
    unconnected_write,
)
from localmesh.runtime.telemetry import HttpEdge

REPLAY_LIMIT: Final = 64 * 1024  # request bodies up to this size can be retried and mirrored
HIGH_WATER: Final = 256 * 1024  # request bytes buffered while connecting before we stop reading
#: Route timeouts at least this long are enforced by the sweeper (within one tick, at most
#: 0.5 s late) instead of a timer per request; shorter ones get a precise timer.
COARSE_TIMEOUT: Final = 5.0
#: After a refusal the mesh stops sending, then reads and drops what the client still sends
#: for this long (Envoy's delayed_close_timeout) or this many bytes before it closes: closed
#: with those bytes unread, the socket resets, and the reset can destroy the response
#: before the client read it.
LINGER_SECONDS: Final = 1.0
LINGER_BYTES: Final = 4 * 1024 * 1024

# Why downstream reading is paused (a bit mask: resume only when all are cleared).
PAUSE_PIPELINE: Final = 1  # a later request arrived while one is in flight
PAUSE_UPSTREAM: Final = 2  # the upstream's write buffer is full, or we are still connecting
PAUSE_DONE: Final = 4  # the connection will close after the current response
PAUSE_UPGRADE: Final = 8  # an upgrade request waits for the upstream's 101

HTTP11: Final = b" HTTP/1.1\r\n"
CHUNK_END: Final = b"0\r\n\r\n"
CONTINUE_100: Final = b"HTTP/1.1 100 Continue\r\n\r\n"

# Request headers never copied upstream as they came: hop-by-hop, and those the mesh
# rewrites (forwarding) or replaces (an invalid traceparent; a valid one is re-added).
# A client's x-forwarded-client-cert never passes, on any listener (Envoy's SANITIZE):
# upstreams trust it as the mesh's statement of a verified certificate.
_DROPPED: Final = HOP_BY_HOP | {
    b"expect",
    b"http2-settings",  # an h2c upgrade is not offered upstream (as Envoy)
    b"traceparent",
    b"x-forwarded-client-cert",
    b"x-forwarded-for",
    b"x-forwarded-proto",
}
# Request headers the exchange reads on the way; the rest are copied without a look.
_SPECIAL: Final = _DROPPED | {
    b"content-length",
    b"x-request-id",
    b"x-b3-traceid",
    b"x-b3-spanid",
    b"x-b3-sampled",
    b"x-forwarded-host",
}
# What a Connection header may not remove (RFC 9110 7.6.1): the framing, Host, and every
# field the mesh reads; a client naming content-length would send its body upstream
# unframed, to be run as the next request.
_KEPT: Final = _SPECIAL | {b"host", b"close"}


_B3: Final = (b"x-b3-traceid", b"x-b3-spanid", b"x-b3-sampled")

#: A request target that is not a plain path: split_target looks at it (query, fragment,
#: absolute form, anything normalisation would change).
_NOT_PLAIN: Final = re.compile(rb"[?#%]|/[/.]").search
# Request header names as sent -> lower-cased: clients send the same few spellings, and a
# lookup costs less than lower() (a method call by name and a new object). Bounded, since
# the names are the client's to choose.
_LOWER_NAMES: Final[dict[bytes, bytes]] = {}
_LOWER_NAMES_MAX: Final = 512
#: The fewest bytes a header line adds to a head's count (a one-letter name, no value): the
#: header count is looked at only when the head grew enough to have passed its limit.
_MIN_HEADER_BYTES: Final = 5


class _Refuse(Exception):
    """Raised from a parser callback to answer with ``status`` and close."""

    def __init__(self, status: int, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.detail = detail


class HttpDownstream(asyncio.Protocol):
    """One downstream connection: parses requests, runs one exchange at a time."""

    __slots__ = (
        "_active",
        "_current",
        "_discarded",
        "_edges",
        "_feed",
        "_first_check_at",
        "_get_method",
        "_hbytes",
        "_head_check_at",
        "_head_read",
        "_headers",
        "_held",
        "_host",
        "_keeps_alive",
        "_max_hbytes",
        "_max_hcount",
        "_parser",
        "_paused",
        "_queue",
        "_refused",
        "_url",
        "_view",
        "caller",
        "connection_header",
        "ctx",
        "forwarded",
        "identity",
        "in_head",
        "peer_ip",
        "send",
        "transport",
        "transport_closing",
        "tunnel",
        "upgraded",
        "wait_since",
        "workload",
        "write_paused",
    )

    def __init__(self, ctx: ListenerContext) -> None:
        self.ctx = ctx
        self.transport: asyncio.Transport | None = None
        # the transport's and the parser's methods every request calls, bound once
        # (compiled code looks up a foreign object's method on its type per call)
        self.send: Callable[[bytes], None] = unconnected_write
        self.transport_closing: Callable[[], bool] = unconnected_closing
        self._parser = httptools.HttpRequestParser(self)
        self._feed: Callable[[bytes], None] = self._parser.feed_data
        self._get_method: Callable[[], bytes] = self._parser.get_method
        self._keeps_alive: Callable[[], bool] = self._parser.should_keep_alive
        self._url = b""
        self._headers: Headers = []
        self._host: bytes | None = None  # the request's Host (one at most)
        self._hbytes = 0
        self._head_read = 0  # bytes read while the head was incomplete (-1: began this read)
        self._max_hbytes = 0
        self._max_hcount = 0
        # the head size at which on_header looks at the size and the count limits
        self._first_check_at = self._head_check_at = 0
        self._active: Exchange | None = None
        self._current: Exchange | None = None
        self._queue: deque[Exchange] = deque()
        self._paused = 0
        self._view: ListenerView | None = None
        self._edges: dict[str, HttpEdge] = {}
        self.caller: Caller | None = None
        # whose workload identity mutual TLS origination presents ("": the mesh's own)
        self.workload = ""
        self.identity: DownstreamIdentity | None = None
        self.peer_ip = "unknown"
        self.forwarded = b""  # the x-forwarded-for/-proto lines most requests get
        self.tunnel: asyncio.Transport | None = None  # after an upgrade: the upstream
        self.upgraded = False
        self._held = b""  # bytes after an upgrade request's head: tunnel data only after a 101
        self.connection_header = False  # the request being parsed has a Connection header
        self._refused = False
        self._discarded = 0  # bytes read and dropped after a refusal (see _linger)
        self.write_paused = False
        # For the sweeper: the tick since which we wait for the next request (``in_head``
        # False: idle timeout) or for the rest of a request head (True: header timeout);
        # -1 while a request is being served.
        self.wait_since = 0
        self.in_head = False

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        raw = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self.transport = out = batched(raw)
        self.send = out.write
        self.transport_closing = raw.is_closing
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer_ip = str(peer[0])
        ctx = self.ctx
        self.forwarded = (
            b"x-forwarded-for: " + self.peer_ip.encode() + CRLF
            + b"x-forwarded-proto: " + ctx.scheme + CRLF
        )  # fmt: skip
        ctx.connections.add(self)
        if ctx.identify is not None:
            self.identity = ctx.identify(self.transport)
        self.wait_since = ctx.clock.ticks
        self._limit_head(ctx.view)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            self._discarded += len(data)
            if self._discarded > LINGER_BYTES and self.transport is not None:
                self.transport.close()
            return
        if self.upgraded:
            self._tunnel_data(data)
            return
        try:
            self._feed(data)
        except httptools.HttpParserUpgrade as exc:
            self._upgrade(data[int(exc.args[0]) :])
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _Refuse):
                self.refuse(cause.status, cause.reason, cause.detail)
            else:
                raise
        except httptools.HttpParserError as exc:
            self.refuse(400, "bad-request", str(exc))
            return
        if self.in_head and self._head_grew(len(data)):
            return
        ex = self._active
        if ex is not None and ex.unsent:
            ex.flush_up()

    def eof_received(self) -> bool | None:
        ex = self._current  # a request whose body is still arriving: it can never complete
        if ex is not None and ex is self._active:
            ex.downstream_lost()  # reset the upstream exchange (DC), no wait for a timeout
            return None
        if self._active is not None:
            self._paused |= PAUSE_DONE  # answer what was asked, then close
            return True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.ctx.connections.discard(self)
        if self.tunnel is not None:
            self.tunnel.close()
            self.tunnel = None
        active, self._active = self._active, None
        self._queue.clear()
        if active is not None:
            active.downstream_lost()

    def pause_writing(self) -> None:
        self.write_paused = True
        conn = self._active.conn if self._active is not None else None
        if conn is not None:
            conn.pause_reading()
        elif self.tunnel is not None:
            self.tunnel.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        conn = self._active.conn if self._active is not None else None
        if conn is not None:
            conn.resume_reading()
        elif self.tunnel is not None:
            self.tunnel.resume_reading()

    # -- llhttp callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._hbytes = 0
        self._head_check_at = self._first_check_at
        self._head_read = -1
        self._host = None
        self.connection_header = False
        self.in_head = True
        self.wait_since = self.ctx.clock.ticks

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._hbytes += len(url)
        if self._hbytes > self._max_hbytes:
            raise _Refuse(414 if len(self._url) > self._max_hbytes else 431, "headers-too-large")

    def on_header(self, name: bytes, value: bytes) -> None:
        low = _LOWER_NAMES.get(name)
        if low is None:
            low = name.lower()
            if len(_LOWER_NAMES) < _LOWER_NAMES_MAX:
                _LOWER_NAMES[name] = low
        name = low
        self._headers.append((name, value))
        if name == b"connection":
            self.connection_header = True
        elif name == b"host":
            if self._host is not None:  # which one would the upstream take? (RFC 9112 3.2)
                raise _Refuse(400, "bad-request", "more than one Host header")
            self._host = value
        self._hbytes += len(name) + len(value) + 4
        if self._hbytes > self._head_check_at:
            self._check_head()

    def _check_head(self) -> None:
        """The head grew past a checkpoint: refuse it if it is over the size or the count
        limit, else move the checkpoint to where the count could pass its limit next."""
        if self._hbytes > self._max_hbytes:
            raise _Refuse(431, "headers-too-large")
        room = self._max_hcount - len(self._headers)
        if room < 0:
            raise _Refuse(431, "too-many-headers", f"more than {self._max_hcount} header fields")
        self._head_check_at = min(
            self._max_hbytes, self._hbytes + _MIN_HEADER_BYTES * (room + 1) - 1
        )

    def _limit_head(self, view: ListenerView) -> None:
        self._max_hbytes = view.max_head
        self._max_hcount = view.max_headers
        self._first_check_at = min(view.max_head, _MIN_HEADER_BYTES * (view.max_headers + 1) - 1)

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.wait_since = -1
        keep_alive = self._keeps_alive()
        # keep-alive without a Connection header is HTTP/1.1 (llhttp's rule), so the costly
        # version string is only asked for the rest (Connection: close, HTTP/1.0, 0.9, 2.0)
        # and for a request without Host (or with an empty one)
        http11 = True
        if not keep_alive or self.connection_header or not self._host:
            http11 = self._http11()
        view = self.ctx.view
        if view is not self._view:
            self._adopt(view)
            if view.draining:
                keep_alive = False
        ex = Exchange(self, view, keep_alive, http11)
        self._current = ex
        if self._active is None:
            self._active = ex
            ex.start(ex.started)  # the same clock reading: no second one
        else:
            self._queue.append(ex)
            self.pause(PAUSE_PIPELINE)

    def _http11(self) -> bool:
        """HTTP/1.1 (True) or 1.0: llhttp also parses 0.9 request lines and 2.0, which are
        refused rather than proxied as 1.1, as is HTTP/1.1 without Host (RFC 9112 3.2).

        An empty Host names no authority (an http URI's host is never empty, RFC 9110
        4.2.1): it is dropped and the request is one without Host, unless its target is
        absolute and names one (then that is the Host, RFC 9112 3.2.2). Never copied, it
        cannot reach the upstream beside the Host the mesh adds for HTTP/1.0.
        """
        version = self._parser.get_http_version()
        host = self._host
        if host == b"":
            self._headers = [h for h in self._headers if h[0] != b"host"]
        if version == "1.1":
            if host is None or (not host and self._url[:1] in (b"/", b"*")):
                raise _Refuse(400, "bad-request", "HTTP/1.1 request without Host")
            return True
        if version != "1.0":
            raise _Refuse(505, "http-version-not-supported", f"HTTP/{version}")
        return False

    def on_body(self, body: bytes) -> None:
        ex = self._current
        if ex is not None:
            ex.request_body(body)

    def on_message_complete(self) -> None:
        ex, self._current = self._current, None
        if ex is not None:
            ex.request_complete()

    def _head_grew(self, n: int) -> bool:
        """A read ended inside a request head. llhttp hands a header over only once its
        line ends (httptools gathers it with ``+=``: quadratic), so a line that never ends
        is counted here, per read, and refused at the limit (True). The read the head
        began in is not counted (part of it may be the previous request): the limit
        holds to within one read."""
        if self._head_read < 0:
            self._head_read = 0
            return False
        self._head_read += n
        if self._head_read <= self._max_hbytes:
            return False
        self.refuse(431, "headers-too-large", "request head still growing")
        return True

    # -- exchanges --------------------------------------------------------------------------

    @property
    def closing(self) -> bool:
        """The downstream half-closed: answer what it asked, then close."""
        return bool(self._paused & PAUSE_DONE)

    @property
    def active(self) -> Exchange | None:
        """The exchange being served (None between requests)."""
        return self._active

    def tunnel_started(self, ex: Exchange) -> None:
        """The upstream answered 101: the held bytes are the tunnel's first."""
        if self._active is ex:
            self._active = None
        held, self._held = self._held, b""
        if held and self.tunnel is not None:
            self.tunnel.write(held)
        self.wait_since = self.ctx.clock.ticks  # a tunnel idle for idle_timeout is closed
        self.resume(PAUSE_UPGRADE)

    def _adopt(self, view: ListenerView) -> None:
        """First request under a new snapshot: re-resolve the caller and metric edges."""
        self._view = view
        ident = self.identity
        self.caller = caller = ident.caller if ident is not None else view.caller_for(self.peer_ip)
        # a sidecar speaks as the workload it serves, a gateway (or for a stranger) as itself
        self.workload = caller.name if caller.principal and not self.ctx.gateway else ""
        self._edges = {}
        self._limit_head(view)

    def edge(self, destination: str) -> HttpEdge:
        edge = self._edges.get(destination)
        if edge is None:
            assert self.caller is not None
            edge = self._edges[destination] = self.ctx.metrics.http_edge(
                self.caller.name, destination
            )
        return edge

    def exchange_done(self, ex: Exchange, close: bool) -> None:
        if self._active is not ex:
            return
        self._active = None
        transport = self.transport
        if transport is None or self.transport_closing():
            return
        if close or self._paused & PAUSE_DONE:
            self._queue.clear()
            if self._paused & PAUSE_DONE or (ex.req_complete and not self._refused):
                transport.close()
            else:  # the client's bytes are not all read (the body, a refused head)
                self._linger(transport)
            return
        if self._queue:
            nxt = self._queue.popleft()
            self._active = nxt
            nxt.start(self.ctx.now())
            if self._active is nxt:
                nxt.flush_up()
            return
        if not self.in_head:
            self.wait_since = self.ctx.clock.ticks
        if self._paused:
            if self._paused & PAUSE_PIPELINE:
                self.resume(PAUSE_PIPELINE)
            if self._paused & PAUSE_UPGRADE:  # the upgrade request (the last one) got no 101
                self._not_upgraded()

    def pause(self, why: int) -> None:
        if not self._paused and self.transport is not None:
            self.transport.pause_reading()
        self._paused |= why

    def resume(self, why: int) -> None:
        if not self._paused & why:
            return
        self._paused &= ~why
        if not self._paused and self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def refuse(self, status: int, reason: str, detail: str = "") -> None:
        """A broken or hostile request: answer once (if we still can) and close."""
        self._refused = True  # nothing more is parsed
        self.wait_since = -1
        self._queue.clear()
        active = self._active
        if active is not None:
            if active.response_started:
                active.abort_response(wire.DOWNSTREAM_PROTOCOL_ERROR)
            else:
                active.keep_alive = False
                active.local(status, reason, detail, wire.DOWNSTREAM_PROTOCOL_ERROR)
            return
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(wire.local_response(status, reason, detail, close=True))
            self._linger(transport)
        self._log_refusal(status, reason)

    def _linger(self, transport: asyncio.Transport) -> None:
        """Close after a response with the request not read to its end: stop sending (FIN),
        read and drop what still comes, close when the client does or at the bounds
        (``LINGER_SECONDS``, ``LINGER_BYTES``). Over TLS (no half-close) it just closes."""
        self._refused = True  # nothing more is parsed
        if not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        self._paused = 0
        transport.resume_reading()
        self.ctx.loop.call_later(LINGER_SECONDS, transport.close)

    def drain(self) -> None:
        """The listener is draining: close now if idle, else after the response in flight
        (with ``Connection: close``); a request still to come reads the draining view. A
        tunnel cannot be told: it is left to the drain timeout."""
        transport = self.transport
        if transport is None or transport.is_closing() or self.upgraded:
            return
        if self.wait_since >= 0 and not self.in_head:
            transport.close()
        elif self._active is not None:
            self._active.keep_alive = False

    def timed_out(self, idle: bool) -> None:
        """The sweeper found us waiting too long for a request head (408) or idle (a
        tunnel: no bytes either way, those from the upstream being noted on its side)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if idle:
            up = self.tunnel.get_protocol() if self.tunnel is not None else None
            if isinstance(up, UpstreamConnection) and up.relayed:
                up.relayed = False
                self.wait_since = self.ctx.clock.ticks
                return
            transport.close()
        else:
            self.refuse(408, "request-header-timeout")

    def _log_refusal(self, status: int, reason: str) -> None:
        view = self.ctx.view
        caller = self.caller or view.caller_for(self.peer_ip)
        if view.compiled.metrics:
            self.ctx.metrics.http_edge(caller.name, view.service).observe(
                status, wire.DOWNSTREAM_PROTOCOL_ERROR, 0.0, self._hbytes, 0
            )
        if view.compiled.access_log:
            self.ctx.access_log.log(
                {
                    "time": self.ctx.wall_time(self.ctx.now()),
                    "protocol": "http",
                    "listener": self.ctx.name,
                    "source": caller.name,
                    "destination": view.service,
                    "status": status,
                    "flags": wire.DOWNSTREAM_PROTOCOL_ERROR,
                    "reason": reason,
                    "peer": self.peer_ip,
                }
            )

    # -- upgrades (WebSocket and friends) ---------------------------------------------------

    def _upgrade(self, rest: bytes) -> None:
        """The parser stopped after a request asking to upgrade (the last one parsed).

        What follows is tunnel data only once the upstream agrees with a 101: written
        upstream before, it would run there as the next request whatever the upstream
        answers, unrouted and unchecked. So it is held and reading stops; an answer other
        than 101 ends in ``_not_upgraded`` (or the connection closes with it).
        """
        self._held = rest
        if self._queue or self._active is not None:
            self.upgraded = True
            self.pause(PAUSE_UPGRADE)
        else:  # already answered (a local response)
            self._not_upgraded()

    def _not_upgraded(self) -> None:
        """The upgrade request was answered without a 101 (an h2c upgrade the mesh
        strips, a local answer) and the connection stays: what came after it is parsed
        as the next request, by a new parser (llhttp's stopped at the upgrade)."""
        self.upgraded = False
        held, self._held = self._held, b""
        self._parser = parser = httptools.HttpRequestParser(self)
        self._feed = parser.feed_data
        self._get_method = parser.get_method
        self._keeps_alive = parser.should_keep_alive
        self.resume(PAUSE_UPGRADE)
        if held:
            self.data_received(held)

    def _tunnel_data(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.write(data)
            self.wait_since = self.ctx.clock.ticks
        else:  # read before reading stopped for the 101
            self._held += data


class Exchange:
    """One request from head to end of response, across retries.

    No ``__slots__`` on purpose: most attributes keep their class-level default for the
    whole request (no retry, no mirror, no fault), and an instance only stores what it
    changes, which makes creating one per request about half as costly.
    """

    # defaults, overridden per instance when they change
    http11 = True
    upgrade = False
    req_chunked = False
    req_complete = False
    conn: UpstreamConnection | None = None
    host: UpstreamHost | None = None
    target: RouteTarget | None = None
    route: CompiledRoute[RouteTarget] | None = None
    matcher: RouteMatcher[RouteTarget] | None = None
    mirror: RouteTarget | None = None
    status = 0
    flags = wire.NO_FLAGS
    resp_bytes = 0
    retries = 0
    response_started = False
    done = False
    close_after = False
    waiting = False
    request_id = b""
    request_id_made = False  # by the mesh: see AccessLog.http
    traceparent = b""
    upstream_address = ""
    deadline = 0.0  # ctx.now() after which the sweeper answers 504 (long timeouts)
    _unsent_bytes = 0
    _body_bytes = 0
    _wire_bytes = 0
    _complete = False
    _down_chunked = False
    _in_retry = False
    _try_timer: asyncio.TimerHandle | None = None
    _deadline_timer: asyncio.TimerHandle | None = None
    _backoff_timer: asyncio.TimerHandle | None = None

    def __init__(
        self, down: HttpDownstream, view: ListenerView, keep_alive: bool, http11: bool
    ) -> None:
        """A request whose head ``down``'s parser has just parsed."""
        self.down = down
        self.view = view
        self.method = method = down._get_method()
        self.url = down._url
        self.headers = down._headers
        self.keep_alive = keep_alive
        if not http11:
            self.http11 = False
        self.head_only = method == b"HEAD"
        self.req_bytes = down._hbytes
        self.unsent: list[bytes] = []
        self.wire: list[bytes] | None = []  # everything sent upstream, while replayable
        self.out: list[bytes] = []
        self.started = down.ctx.now()

    # -- request side -----------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Route, authorise, limit, build the upstream head, start the first attempt
        (``now``: ``ctx.now()``)."""
        down = self.down
        ctx = down.ctx
        view = self.view
        if self.method == b"CONNECT":
            self.keep_alive = False  # llhttp stops parsing after CONNECT, like an upgrade
            self.local(405, "method-not-allowed", "CONNECT is not proxied", wire.NO_FLAGS)
            return
        url = self.url
        if url[:1] == b"/" and _NOT_PLAIN(url) is None:  # nothing to split or normalise
            path, query = url, b""
        else:
            try:
                path, query = split_target(url)
                absolute = target_authority(url)
            except BadTarget as exc:
                self.local(400, "bad-request", str(exc), wire.DOWNSTREAM_PROTOCOL_ERROR)
                return
            if absolute is not None:  # the target's authority is the Host (RFC 9112 3.2.2)
                self.headers = [(b"host", absolute), *(h for h in self.headers if h[0] != b"host")]
        headers = self.headers
        authority = b""
        for name, value in headers:
            if name == b"host":
                authority = value
                break
        ident = down.identity
        if ident is not None and ident.misdirected is not None:
            wrong = ident.misdirected(authority)
            if wrong is not None:
                self.local(421, "misdirected", wrong, wire.NO_FLAGS)
                return
        vhost = view.routes.virtual_host(authority)
        caller = down.caller
        assert caller is not None
        matcher = (
            vhost.routes.match(self.method, path, query, headers, caller.name)
            if vhost is not None
            else None
        )
        if vhost is None or matcher is None:
            self.local(404, "no-route", f"{path.decode(errors='replace')}", wire.NO_ROUTE)
            return
        self.matcher = matcher
        route = self.route = matcher.route
        rng = ctx.rng
        target = self.target = route.targets[
            route.pick(rng.random()) if len(route.targets) > 1 else 0
        ]
        target.cluster.state.active_requests += 1  # undone in _finish
        if target.policy is not None:
            refused = target.policy.check(caller, self.method, path)
            if refused is not None:
                self.local(403, "denied", refused, wire.DENIED)
                return
        limited = vhost.rate_limiter is not None or route.rate_limit is not None
        if limited and self._rate_limited(vhost, route, caller):
            return
        limit = view.max_body
        upstream_path = matcher.rewrite(path) if route.rewrite is not None else path
        if not self._build_head(authority, upstream_path, query, route, limit):
            return
        if route.mirror is not None and rng.random() * 100.0 < route.mirror.percent:
            self.mirror = view.compiled.mirror_target(route.mirror)
        timeout = route.timeout
        if timeout:
            if timeout >= COARSE_TIMEOUT:  # the sweeper enforces it: no timer per request
                self.deadline = self.started + timeout
            else:
                self._deadline_timer = ctx.loop.call_later(timeout, self.deadline_passed)
        if self.mirror is not None and self.req_complete:
            self._maybe_mirror()
        if route.fault is None:
            self._attempt_upstream(now)
        else:
            self._attempt()

    def _rate_limited(
        self, vhost: VirtualHost, route: CompiledRoute[RouteTarget], caller: Caller
    ) -> bool:
        now = self.down.ctx.now()
        # per_source: per caller; callers from outside the mesh per address, so one noisy
        # client does not empty the bucket of every other unknown one
        source = caller.name if caller.name != UNKNOWN else self.down.peer_ip
        wait = 0.0
        if vhost.rate_limiter is not None:
            wait = vhost.rate_limiter.take(source, now)
        limiter = vhost.route_limiters.get(route.name)
        if not wait and limiter is not None:
            wait = limiter.take(source, now)
        if not wait:
            return False
        self.down.ctx.metrics.rate_limited(route.name)
        retry_after = str(max(1, int(wait + 0.999))).encode()
        self.local(
            429,
            "rate-limited",
            f"route {route.name}",
            wire.RATE_LIMITED,
            extra=((b"retry-after", retry_after),),
        )
        return True

    def _build_head(
        self,
        authority: bytes,
        path: bytes,
        query: bytes,
        route: CompiledRoute[RouteTarget],
        body_limit: int,
    ) -> bool:
        """Serialise the upstream request head once (retries and mirrors reuse it).

        Headers are copied through as they came unless one of them has to go (hop-by-hop,
        forwarding headers we rewrite, a traceparent we replace): only the few that
        ``_SPECIAL`` names are looked at one by one, and the copy is joined in C.
        """
        down = self.down
        ctx = down.ctx
        headers = out = self.headers
        xff = xfp = xfh = rid = tp = b3t = b3s = b3f = None
        tokens = NO_TOKENS
        upgrade_to = None
        expect = False
        content_length = -1
        sanitize = ctx.identify is not None
        drop = False  # some header must not be copied
        for name, value in headers:
            if name not in _SPECIAL:
                continue
            if name == b"x-forwarded-host":
                xfh = value
            elif name == b"content-length":
                content_length = int(value)
            elif name == b"x-request-id":
                rid = value
            elif name == b"x-b3-traceid":
                b3t = value
            elif name == b"x-b3-spanid":
                b3s = value
            elif name == b"x-b3-sampled":
                b3f = value
            else:  # not copied as they came
                drop = True
                if name == b"transfer-encoding":
                    if value != b"chunked" and value.lower() != b"chunked":
                        self._unsupported_coding(value)
                        return False
                    self.req_chunked = True
                elif name == b"connection":
                    tokens = connection_tokens(value)
                elif name == b"upgrade":
                    upgrade_to = value
                elif name == b"expect":
                    expect = value.lower() == b"100-continue"
                elif name == b"traceparent":
                    tp = value
                elif name == b"x-forwarded-for":
                    xff = value
                elif name == b"x-forwarded-proto":
                    xfp = value
                # others (keep-alive, te, trailer, proxy-connection, xfcc, ...): dropped
        if body_limit and content_length > body_limit:
            self.local(413, "body-too-large", f"limit {body_limit} bytes", wire.NO_FLAGS)
            return False
        if drop:
            gone = _DROPPED
            nominated = tokens - _KEPT
            if nominated:
                gone = gone | nominated
            out = [h for h in headers if h[0] not in gone]
        if route.request_ops is not None:
            out = route.request_ops.apply(out)
        ids = ctx.ids
        if tp is None and b3t is None:  # the common case: ids from a pre-drawn batch
            self.request_id_made = rid is None
            rid, traceparent, generated = ids.fresh(rid)
        else:
            rid, traceparent, generated = ids.ids(rid, tp, b3t, b3s, b3f)
            if tp is not None and traceparent == tp:
                out = [*out, (b"traceparent", tp)]
            if b3t is not None or b3s is not None or b3f is not None:
                # B3 headers the mesh had to make (the incoming ones were malformed) replace them
                made = [name for name in _B3 if b"\n" + name + b": " in b"\n" + generated]
                if made:
                    out = [h for h in out if h[0] not in made]
        self.request_id = rid
        self.traceparent = traceparent
        parts = (
            [self.method, b" ", path, b"?", query, HTTP11]
            if query
            else [self.method, b" ", path, HTTP11]
        )
        add_fields(parts, out)
        parts.append(generated)
        if xff is None and (xfp is None or sanitize):
            parts.append(down.forwarded)  # per connection: x-forwarded-for + -proto
        else:
            peer = down.peer_ip.encode()
            parts.append(b"x-forwarded-for: " + (xff + b", " + peer if xff else peer) + CRLF)
            proto = ctx.scheme if sanitize or xfp is None else xfp
            parts.append(b"x-forwarded-proto: " + proto + CRLF)
        if xfh is None and authority:
            parts.append(b"x-forwarded-host: " + authority + CRLF)
        elif not authority:  # HTTP/1.0 without Host: HTTP/1.1 upstreams require one
            target = self.target
            parts.append(b"host: " + (target.service if target else self.view.service).encode())
            parts.append(CRLF)
        ident = down.identity
        if ident is not None and ident.xfcc is not None:
            parts.append(b"x-forwarded-client-cert: " + ident.xfcc + CRLF)
        if upgrade_to is not None and b"upgrade" in tokens and upgrade_to.lower() != b"h2c":
            self.upgrade = True
            parts.append(b"connection: upgrade\r\nupgrade: " + upgrade_to + CRLF)
        if self.req_chunked:
            parts.append(b"transfer-encoding: chunked\r\n")
        parts.append(CRLF)
        head = b"".join(parts)
        unsent = self.unsent
        replay = self.wire
        assert replay is not None  # replayable until the head is out
        if unsent:  # body bytes that arrived before the head was built (pipelining)
            unsent.insert(0, head)
            replay.insert(0, head)
        else:
            unsent.append(head)
            replay.append(head)
        self._unsent_bytes += len(head)
        self._wire_bytes += len(head)
        if expect and not self.req_complete:
            transport = down.transport
            if transport is not None:
                transport.write(CONTINUE_100)
        return True

    def _unsupported_coding(self, coding: bytes) -> None:
        """501 to a transfer coding other than chunked (Envoy's rule, RFC 9112 6.1): the
        mesh de-chunks and re-frames bodies, so a coding under the chunks (``gzip,
        chunked``) would reach the upstream without its name, and its body undecodable."""
        self.local(
            501,
            "unsupported-transfer-encoding",
            f"transfer-encoding {coding.decode(errors='replace')}: only chunked is supported",
            wire.DOWNSTREAM_PROTOCOL_ERROR,
        )

    def request_body(self, chunk: bytes) -> None:
        if self.done:
            return
        n = len(chunk)
        self.req_bytes += n
        self._body_bytes += n
        limit = self.view.max_body
        if limit and self._body_bytes > limit:
            self._body_too_large(limit)
            return
        pieces = [b"%x\r\n" % n, chunk, CRLF] if self.req_chunked else [chunk]
        self.unsent += pieces
        self._unsent_bytes += n
        replay = self.wire
        if replay is not None:
            self._wire_bytes += n
            if self._wire_bytes > REPLAY_LIMIT:
                self.wire = None
            else:
                replay += pieces
        if self.conn is None and self._unsent_bytes > HIGH_WATER:
            self.down.pause(PAUSE_UPSTREAM)

    def request_complete(self) -> None:
        self.req_complete = True
        if self.done:
            return
        if self.req_chunked:
            self.unsent.append(CHUNK_END)
            if self.wire is not None:
                self.wire.append(CHUNK_END)
        if self.mirror is not None:
            self._maybe_mirror()

    def flush_up(self) -> None:
        """Write what the last read produced to the upstream, in one write."""
        conn = self.conn
        if conn is None or not self.unsent:
            return
        # a batched transport: dropped at the turn's end if the connection closed meanwhile
        unsent = self.unsent
        conn.send(unsent[0] if len(unsent) == 1 else b"".join(unsent))
        self.unsent = []
        self._unsent_bytes = 0

    def _body_too_large(self, limit: int) -> None:
        if self.response_started:
            self.abort_response(wire.NO_FLAGS)
            return
        self._drop_upstream()
        self.local(413, "body-too-large", f"limit {limit} bytes", wire.NO_FLAGS)

    def _maybe_mirror(self) -> None:
        target = self.mirror
        if target is None or self.wire is None:
            return
        self.mirror = None
        body = b"".join(self.wire[1:])
        head = _mirror_head(self.wire[0])
        spawn(send_mirror(target, head + body), name=f"mirror {target.service}")

    # -- attempts ---------------------------------------------------------------------------

    def _attempt(self) -> None:
        """An attempt after a backoff, or one whose route injects faults."""
        self._backoff_timer = None
        if self.done:
            return
        route = self.route
        assert route is not None
        if route.fault is not None:
            rng = self.down.ctx.rng
            assert self.down.caller is not None
            delay, abort = decide_fault(
                route.fault, self.down.caller.name, rng.random(), rng.random()
            )
            if delay:
                self.flags = wire.join_flags(self.flags, wire.FAULT_DELAY)
                self._backoff_timer = self.down.ctx.loop.call_later(
                    delay, self._after_fault_delay, abort
                )
                return
            if abort:
                self._fault_abort(abort)
                return
        self._attempt_upstream(self.down.ctx.now())

    def _after_fault_delay(self, abort: int) -> None:
        self._backoff_timer = None
        if self.done:
            return
        if abort:
            self._fault_abort(abort)
        else:
            self._attempt_upstream(self.down.ctx.now())

    def _fault_abort(self, status: int) -> None:
        """An injected abort is an upstream answer: the retry policy sees it."""
        if self._can_retry(Outcome.RESPONSE, status):
            self._retry()
            return
        flag = wire.FAULT_ABORT
        if self.retries:
            flag = wire.join_flags(flag, wire.UPSTREAM_RETRY_LIMIT)
        route_name = self.route.name if self.route else "-"
        self.local(
            status,
            "fault-abort",
            f"route {route_name}",
            flag,
        )

    def _attempt_upstream(self, now: float) -> None:
        target = self.target
        route = self.route
        assert target is not None
        assert route is not None
        key = hash_key(target.lb, self.headers, self.down.peer_ip) if target.hashed else None
        host = target.picker.pick(now, key)
        if host is None:
            self.local(
                503, "no-healthy-upstream", f"cluster {target.service}", wire.NO_HEALTHY_UPSTREAM
            )
            return
        self.host = host = cast(UpstreamHost, host)  # a cluster's endpoints are UpstreamHosts
        host.active_requests += 1
        host.total_requests += 1
        if route.per_try_timeout:
            self._try_timer = self.down.ctx.loop.call_at(
                now + route.per_try_timeout, self._on_try_timeout
            )
        target.cluster.acquire(self)

    def on_connection(self, conn: UpstreamConnection) -> None:
        """The pool (or a new connect) gave us a connection: send what we have."""
        if self.done or self.host is None:
            self.target.cluster.release(conn, self.down.ctx.now()) if self.target else conn.close()
            return
        if conn.host is not self.host:  # handed over from the pending queue
            self.host.active_requests -= 1
            self.host = conn.host
            self.host.active_requests += 1
        self.conn = conn
        self.upstream_address = conn.host.address
        conn.begin(self, self.head_only)
        self.flush_up()
        down = self.down
        if down._paused & PAUSE_UPSTREAM:
            down.resume(PAUSE_UPSTREAM)
        if down.write_paused:
            conn.pause_reading()

    def on_connect_failure(self, outcome: Outcome, detail: str) -> None:
        """The endpoint could not be reached: it counts against it; the route may retry."""
        if self.done:
            return
        if self.host is not None:
            self._report_failure(self.host)
        self._failed(
            outcome, 503, "upstream-connect-failure", detail, wire.UPSTREAM_CONNECT_FAILURE
        )

    def on_no_connection(self, reason: str, detail: str, flag: str) -> None:
        """The mesh itself refused to connect (circuit breaker, no caller identity): the
        endpoint is not to blame, and a retry would meet the same refusal."""
        if self.done:
            return
        target = self.target
        assert target is not None
        self._end_attempt()
        self.local(503, reason, f"cluster {target.service}: {detail}", flag)

    def _report_failure(self, host: UpstreamHost) -> None:
        target = self.target
        assert target is not None
        state = target.cluster.state
        if state.outlier is not None and state.report_failure(host, self.down.ctx.now()):
            self.down.ctx.metrics.ejection(target.service)

    def _failed(self, outcome: Outcome, status: int, reason: str, detail: str, flag: str) -> None:
        """An attempt ended without a usable response: retry it or answer locally."""
        self._end_attempt()
        if self._can_retry(outcome, status):
            self._retry()
            return
        if self.retries:
            flag = wire.join_flags(flag, wire.UPSTREAM_RETRY_LIMIT)
        self.local(status, reason, detail, flag)

    def _can_retry(self, outcome: Outcome, status: int) -> bool:
        route = self.route
        policy = route.retry if route is not None else None
        if policy is None or self.retries >= policy.attempts:
            return False
        if self.response_started or self.wire is None or self.upgrade:
            return False
        if not is_retriable(policy, outcome, status):
            return False
        state = self.target.cluster.state if self.target is not None else None
        if state is None:
            return False
        active_retries = state.active_retries - (1 if self._in_retry else 0)
        return budget_allows(policy, state.active_requests, active_retries)

    def _retry(self) -> None:
        route = self.route
        target = self.target
        assert route is not None
        assert route.retry is not None
        assert target is not None
        self.retries += 1
        if not self._in_retry:
            self._in_retry = True
            target.cluster.state.active_retries += 1
        self.down.ctx.metrics.retry(target.service)
        assert self.wire is not None
        self.unsent = list(self.wire)
        self._unsent_bytes = sum(map(len, self.unsent))
        delay = backoff(route.retry, self.retries - 1, self.down.ctx.rng.random())
        self._backoff_timer = self.down.ctx.loop.call_later(delay, self._attempt)

    def _end_attempt(self) -> None:
        """Release what the current attempt holds (not the connection: callers decide)."""
        if self._try_timer is not None:
            self._try_timer.cancel()
            self._try_timer = None
        if self.waiting and self.target is not None:
            self.target.cluster.forget(self)
        host = self.host
        if host is not None:
            self.host = None
            host.active_requests -= 1

    def _drop_upstream(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.abort()

    def _on_try_timeout(self) -> None:
        self._try_timer = None
        if self.done or self.response_started:
            return
        host = self.host
        self._drop_upstream()
        if host is not None:
            self._report_failure(host)
        self._failed(
            Outcome.TIMEOUT, 504, "upstream-timeout", "per-try timeout", wire.UPSTREAM_TIMEOUT
        )

    def deadline_passed(self) -> None:
        """The route timeout ran out: 504 before a response head; after it (a body that
        stalls or streams on), a reset, as Envoy's route timeout covers the whole response."""
        self._deadline_timer = None
        self.deadline = 0.0
        if self.done:
            return
        if self.response_started:
            self.abort_response(wire.UPSTREAM_TIMEOUT)
            return
        self._drop_upstream()
        self._end_attempt()
        if self._backoff_timer is not None:
            self._backoff_timer.cancel()
            self._backoff_timer = None
        timeout = self.route.timeout if self.route is not None else 0
        self.local(504, "upstream-timeout", f"no response within {timeout}s", wire.UPSTREAM_TIMEOUT)

    # -- response side (UpstreamOwner) ------------------------------------------------------

    def up_head(self, status: int, every: Headers, kept: Fields, framing: int) -> None:
        """The response head: ``every`` field as (name, value) for an upgrade (else empty),
        the ``kept`` ones (hop-by-hop dropped) as wire pieces."""
        if self._try_timer is not None:
            self._try_timer.cancel()
            self._try_timer = None
        host = self.host
        if status >= 500:
            if self._upstream_error(status):
                return
        else:
            if host is not None and (host.consecutive_5xx or host.consecutive_gateway):
                host.consecutive_5xx = host.consecutive_gateway = 0  # outlier streak broken
            if status >= 400 and self._retried_4xx(status):
                return
            if status == 101 and not self.upgrade:  # RFC 9110 15.2.2: no tunnel unasked
                self._drop_upstream()
                self._end_attempt()
                self.local(
                    502,
                    "upstream-protocol-error",
                    "101 to a request that did not ask to upgrade",
                    wire.UPSTREAM_PROTOCOL_ERROR,
                )
                return
        self.status = status
        self.response_started = True
        route = self.route
        ops = route.response_ops if route is not None else None
        if status == 101 or self.upgrade:  # a tunnel: the route timeout ends here
            if self._deadline_timer is not None:
                self._deadline_timer.cancel()
                self._deadline_timer = None
            self.deadline = 0.0
            self.out.append(
                self._upgrade_head(status, ops.apply(lowered(every)) if ops else lowered(every))
            )
            return
        if ops is not None:  # what the route sets or adds is filtered like the rest
            conn = self.conn
            hop = conn.connection_tokens if conn is not None and conn.connection_tokens else None
            kept = as_fields([
                h
                for h in ops.apply_keeping_case(pairs(kept))
                if h[0].lower() not in (hop or HOP_BY_HOP)
            ])  # fmt: skip
        out = self.out
        out.append(STATUS_LINES.get(status) or wire.status_line(status))
        out.extend(kept)  # pieces of the one write up_after_data joins
        if framing in REFRAMED:
            if self.http11:
                self._down_chunked = True
                out.append(b"transfer-encoding: chunked\r\n")
            else:
                self.keep_alive = False
        if not self.keep_alive or self.down._paused & PAUSE_DONE:
            out.append(b"connection: close\r\n")
        elif not self.http11:
            out.append(b"connection: keep-alive\r\n")
        out.append(CRLF)

    def _upstream_error(self, status: int) -> bool:
        """A 5xx head: outlier accounting, then retry if allowed (True: retried)."""
        target = self.target
        host = self.host
        assert target is not None
        state = target.cluster.state
        now = self.down.ctx.now()
        if (
            host is not None
            and state.outlier is not None
            and state.report_status(host, status, now)
        ):
            self.down.ctx.metrics.ejection(target.service)
        return self._retried(status)

    def _retried_4xx(self, status: int) -> bool:
        """A 4xx the route retries (``retriable_status_codes: [429]``): retry or give up."""
        route = self.route
        policy = route.retry if route is not None else None
        return (
            policy is not None
            and status in policy.retriable_status_codes
            and "retriable-status-codes" in policy.retry_on
            and self._retried(status)
        )

    def _retried(self, status: int) -> bool:
        """Retry after a response head with ``status`` if the route's policy says so."""
        if self._can_retry(Outcome.RESPONSE, status):
            self._drop_upstream()
            self._end_attempt()
            self._retry()
            return True
        if self.retries:
            self.flags = wire.join_flags(self.flags, wire.UPSTREAM_RETRY_LIMIT)
        return False

    def _upgrade_head(self, status: int, headers: Headers) -> bytes:
        """``headers``: the response's, names lower-cased."""
        if status != 101:
            self.keep_alive = False  # what followed the request is dropped, never forwarded
            lines = [n + SEP + v + CRLF for n, v in headers if n not in HOP_BY_HOP]
            lines.append(b"connection: close\r\n")
        else:
            lines = [
                n + SEP + v + CRLF for n, v in headers if n not in HOP_BY_HOP or n == b"upgrade"
            ]
            lines.append(b"connection: upgrade\r\n")
        return wire.status_line(status) + b"".join(lines) + CRLF

    def up_body(self, chunk: bytes) -> None:
        self.resp_bytes += len(chunk)
        if self._down_chunked:
            self.out += (b"%x\r\n" % len(chunk), chunk, CRLF)
        else:
            self.out.append(chunk)

    def up_complete(self) -> None:
        if self._down_chunked:
            self.out.append(CHUNK_END)
        self._complete = True

    def up_after_data(self) -> None:
        out = self.out
        if out:
            self.out = []
            # batched (or the TLS stream, which checks): see flush_up
            self.down.send(out[0] if len(out) == 1 else b"".join(out))
        if self._complete and not self.done:
            self._finish()

    def up_lost(self, conn: UpstreamConnection, exc: Exception | None) -> None:
        if self.done or conn is not self.conn:
            return
        self.conn = None
        host = self.host
        if self.response_started:
            self.up_after_data()
            self.abort_response(wire.UPSTREAM_TERMINATION)
            return
        if isinstance(exc, UnsupportedTransferCoding):  # a response the mesh cannot pass on
            if host is not None:
                self._report_failure(host)
            detail = str(exc)
            self._failed(
                Outcome.RESET, 502, "upstream-protocol-error", detail, wire.UPSTREAM_PROTOCOL_ERROR
            )
            return
        if host is not None and conn.served > 1 and self.wire is not None and self.retries == 0:
            # A keep-alive connection the upstream had already closed: not the upstream's
            # fault and not a retry. Drop its idle siblings too (likely stale as well).
            for idle in list(host.idle):
                idle.close()
            self._end_attempt()
            self.unsent = list(self.wire)
            self._unsent_bytes = sum(map(len, self.unsent))
            self._attempt_upstream(self.down.ctx.now())
            return
        if host is not None:
            self._report_failure(host)
        detail = str(exc) if exc is not None else "upstream closed the connection"
        self._failed(Outcome.RESET, 502, "upstream-reset", detail, wire.UPSTREAM_TERMINATION)

    def up_upgraded(self, conn: UpstreamConnection, rest: bytes) -> None:
        """101 Switching Protocols: from now on both connections are one byte tunnel."""
        down = self.down
        self.up_after_data()
        if self.status != 101 or down.transport is None:
            conn.abort()
            self.abort_response(wire.UPSTREAM_TERMINATION)
            return
        conn.owner = None
        conn.tunnel = down.transport
        down.tunnel = conn.transport
        down.upgraded = True
        self.conn = None
        self.flush_pending_tunnel(conn)
        if rest:
            down.transport.write(rest)
        self._finish_tunnel()

    def flush_pending_tunnel(self, conn: UpstreamConnection) -> None:
        if self.unsent and conn.transport is not None:
            conn.transport.write(b"".join(self.unsent))
        self.unsent = []

    def up_writable(self, writable: bool) -> None:
        if writable:
            self.down.resume(PAUSE_UPSTREAM)
        else:
            self.down.pause(PAUSE_UPSTREAM)

    # -- endings ----------------------------------------------------------------------------

    def local(
        self,
        status: int,
        reason: str,
        detail: str,
        flag: str,
        extra: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        """Answer from the mesh itself (never after a response head went out)."""
        if self.done:
            return
        if self.response_started:
            self.abort_response(flag)
            return
        close = not self.keep_alive or self._body_pending() or self.upgrade
        self.status = status
        self.flags = wire.join_flags(self.flags, flag)
        self.out.append(
            wire.local_response(
                status, reason, detail, close=close, head_only=self.head_only, extra=extra
            )
        )
        self.close_after = close
        self.up_after_data()
        self._finish()

    def abort_response(self, flag: str) -> None:
        """The response cannot be completed: reset the downstream (never a hang)."""
        if self.done:
            return
        self.flags = wire.join_flags(self.flags, flag)
        self._drop_upstream()
        transport = self.down.transport
        if transport is not None:
            transport.abort()
        self._finish()

    def downstream_lost(self) -> None:
        if self.done:
            return
        self.flags = wire.join_flags(self.flags, wire.DOWNSTREAM_TERMINATION)
        self._drop_upstream()
        self._finish()

    def _finish(self) -> None:
        self.done = True
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        if self._backoff_timer is not None:
            self._backoff_timer.cancel()
            self._backoff_timer = None
        now = self.down.ctx.now()
        conn = self.conn
        target = self.target
        if conn is not None:
            self.conn = None
            if self.req_complete and self._complete and target is not None:
                target.cluster.release(conn, now)
            else:
                conn.abort()
        if self._try_timer is not None or self.waiting:
            self._end_attempt()
        else:  # _end_attempt, inlined for the common case (no timer, not queued)
            host = self.host
            if host is not None:
                self.host = None
                host.active_requests -= 1
        if target is not None:
            state = target.cluster.state
            state.active_requests -= 1
            if self._in_retry:
                state.active_retries -= 1
        self._record(now)
        close = self.close_after or not self.keep_alive or self._body_pending()
        self.down.exchange_done(self, close)

    def _body_pending(self) -> bool:
        """Is part of the request body still unread (so the connection cannot be reused)?
        A request without Content-Length or chunked framing has no body at all."""
        if self.req_complete:
            return False
        for name, value in self.headers:
            if name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
                return True
        return False

    def _finish_tunnel(self) -> None:
        self.done = True
        self._end_attempt()
        target = self.target
        if target is not None:
            target.cluster.state.active_requests -= 1
            if self._in_retry:
                target.cluster.state.active_retries -= 1
        self._record(self.down.ctx.now())
        self.down.tunnel_started(self)

    def _record(self, now: float) -> None:
        down = self.down
        ctx = down.ctx
        target = self.target
        destination = target.service if target is not None else self.view.service
        compiled = self.view.compiled
        if compiled.metrics:
            edge = down._edges.get(destination) or down.edge(destination)
            edge.observe(
                self.status, self.flags, now - self.started, self.req_bytes, self.resp_bytes
            )
        if compiled.access_log:
            caller = down.caller
            route = self.route
            ctx.access_log.http(
                self.started,
                now,
                source=caller.name if caller is not None else "unknown",
                destination=destination,
                route=route.name if route is not None else None,
                method=self.method,
                target=self.url,
                status=self.status,
                flags=self.flags,
                request_bytes=self.req_bytes,
                response_bytes=self.resp_bytes,
                upstream=self.upstream_address,
                request_id=self.request_id,
                made=self.request_id_made,
                traceparent=self.traceparent,
                retries=self.retries,
            )


def _mirror_head(head: bytes) -> bytes:
    """The upstream head with ``Host`` suffixed ``-shadow`` (Envoy's mirror convention)."""
    start = head.find(b"\r\nhost: ")
    if start < 0:
        return head
    start += len(b"\r\nhost: ")
    end = head.index(CRLF, start)
    host, sep, port = head[start:end].partition(b":")
    return head[:start] + host + b"-shadow" + sep + port + head[end:]
