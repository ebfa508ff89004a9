"""Clusters at run time: endpoint state plus the upstream connections to each endpoint.

A ``ClusterRuntime`` is one port of one service (``core.cluster``: Envoy's
``outbound|8000||api``) and lives across snapshots, so pools, ejections and health survive
a reload. It owns:

- per endpoint (``UpstreamHost``) a LIFO list of idle keep-alive connections: the most
  recently used connection is the least likely to have been closed by the upstream;
- the circuit breaker: a new connection is opened only below ``max_connections``; a request
  that finds none idle and no slot waits in a bounded pending queue (``max_pending_requests``)
  and is refused past it;
- the connect path (connect timeout, optional TLS origination); a failed connect or a
  reset mid-request is reported to ``on_failure`` (the data plane rate-limits it and tells
  discovery to look again).

Under mutual TLS (``tls_as`` set) a connection presents one caller's workload identity, so
it may only ever carry that caller's requests: each endpoint keeps one idle list per caller
workload (``UpstreamHost.pool``), a freed connection goes to a queued request of the same
caller only, and a request queued at the connection limit closes an idle connection (maybe
another caller's) to make room. Everywhere else every request shares the one list.

An ``UpstreamConnection`` parses responses with llhttp (httptools) and hands one response
head, its body chunks and its end to its current owner (an HTTP exchange). Writes to the
downstream are flushed once per read (``after_data``), so a small response costs one write.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, TypeAlias, cast

import httptools

from localmesh.config.model import Service
from localmesh.runtime.dataplane.batching import batched
from localmesh.runtime.dataplane.core import wire
from localmesh.runtime.dataplane.core.cluster import (
    ClusterState,
    EndpointState,
    cluster_name,
    port_endpoints,
    port_health_check,
)
from localmesh.runtime.dataplane.core.headers import HOP_BY_HOP, connection_tokens
from localmesh.runtime.dataplane.core.retry import Outcome
from localmesh.runtime.dataplane.tasks import spawn
from localmesh.runtime.snapshot import Endpoint

if TYPE_CHECKING:
    from localmesh.runtime.dataplane.http import Exchange

Headers = list[tuple[bytes, bytes]]
#: A response head's fields as they are written downstream: name, ": ", value, CRLF for
#: each, names as the upstream wrote them. Kept as wire pieces from the parser's callback
#: on, so the usual response makes no tuple per field and its head is one ``extend``.
Fields = list[bytes]
SEP: Final = b": "
CRLF: Final = b"\r\n"
NO_HEADERS: Final[Headers] = []  # never appended to


@dataclass(frozen=True, slots=True)
class UpstreamTLS:
    """How to originate TLS to a cluster's endpoints (see ``ingress/origination.py``)."""

    context: ssl.SSLContext
    server_hostname: Callable[[str], str | None]
    check_peer: Callable[[ssl.SSLObject | None], None]


# The request an upstream connection serves, and a request waiting for a connection, are
# always an ``http.Exchange``. Named as that class rather than as Protocols: compiled code
# calls a known class's methods directly, a Protocol's through attribute lookup (3% of the
# engine's instructions per request went there).
UpstreamOwner: TypeAlias = "Exchange"
Waiter: TypeAlias = "Exchange"


# A response head may be this long (Envoy's default max_response_headers_kb): past it the
# response is a protocol error (502), not a buffer that grows as long as the upstream writes.
MAX_RESPONSE_HEAD: Final = 60 * 1024


class HeadTooLarge(ValueError):
    """A response head over ``MAX_RESPONSE_HEAD``: counted per read while it is incomplete
    (one that never ends), and by its fields once complete (one that came in one read)."""

    def __init__(self) -> None:
        super().__init__(f"response head over {MAX_RESPONSE_HEAD // 1024} KiB")


class UnsupportedTransferCoding(ValueError):
    """A response transfer coding other than chunked (Envoy answers 502, flag UPE): the
    body is de-chunked and re-framed for the downstream, which would lose the coding."""

    def __init__(self, coding: bytes) -> None:
        super().__init__(f"transfer-encoding {coding.decode(errors='replace')} is not supported")


# Response framings (how the downstream learns where the body ends).
FRAMING_LENGTH: Final = 0  # Content-Length
FRAMING_CHUNKED: Final = 1  # chunked (or must be re-framed as chunked)
FRAMING_NONE: Final = 2  # no body: HEAD, 1xx, 204, 304
FRAMING_CLOSE: Final = 3  # body until the upstream closes
REFRAMED: Final = frozenset({FRAMING_CHUNKED, FRAMING_CLOSE})  # sent chunked to HTTP/1.1 clients

NO_TOKENS: Final[frozenset[bytes]] = frozenset()  # a Connection header that names no extra headers
# Response header names are kept as the upstream wrote them. Only those at the lengths of
# the hop-by-hop names and of content-length (bit n set: length n) are looked at: any other
# name can be neither, and costs no lower() and no hash. Code comparing names (route
# header ops, the upgrade head) lower-cases them first: ``lowered``.
_LOWERED: Final = sum(1 << n for n in {*map(len, HOP_BY_HOP), len(b"content-length")})
# Connection header values that name no extra hop-by-hop header (nginx sends keep-alive)
_PLAIN_CONNECTION: Final = frozenset({b"keep-alive", b"close", b"upgrade"})
# Connection tokens that never remove a header: the framing is the mesh's to keep
# (RFC 9110 7.6.1), or the client would read the rest of the stream as this body.
_NOT_NOMINABLE: Final = _PLAIN_CONNECTION | {b"content-length", b"transfer-encoding"}


def lowered(headers: Headers) -> Headers:
    """Response headers with every name lower-cased (see ``_LOWERED``)."""
    return [(name.lower(), value) for name, value in headers]


def pairs(fields: Fields) -> Headers:
    """(name, value) of each field, for the rare heads that are edited (route header ops,
    upgrades)."""
    return [(fields[i], fields[i + 2]) for i in range(0, len(fields), 4)]


def add_fields(parts: list[bytes], headers: Headers) -> None:
    """Header lines as pieces of a later join (no bytes object per line)."""
    for name, value in headers:
        parts.append(name)
        parts.append(SEP)
        parts.append(value)
        parts.append(CRLF)


def as_fields(headers: Headers) -> Fields:
    fields: Fields = []
    add_fields(fields, headers)
    return fields


class UpstreamHost(EndpointState):
    """An endpoint plus its idle keep-alive connections."""

    __slots__ = ("idle", "idle_as")

    def __init__(self, host: str, port: int, labels: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(host, port, labels)
        self.idle: list[UpstreamConnection] = []  # connections any request may use
        self.idle_as: dict[str, list[UpstreamConnection]] = {}  # mutual TLS: per caller

    def pool(self, workload: str) -> list[UpstreamConnection]:
        """The idle list of connections presenting ``workload`` ("": the shared list)."""
        if not workload:
            return self.idle
        pool = self.idle_as.get(workload)
        if pool is None:
            pool = self.idle_as[workload] = []
        return pool

    def pools(self) -> list[list[UpstreamConnection]]:
        return [self.idle, *self.idle_as.values()]


def unconnected_write(data: bytes) -> None:
    """A protocol's bound ``transport.write`` before it has a transport: drops the bytes."""


def unconnected_closing() -> bool:
    """A protocol's bound ``transport.is_closing`` before it has a transport."""
    return True


class UpstreamConnection(asyncio.Protocol):
    __slots__ = (
        "_bodyless",
        "_feed",
        "_fields",
        "_framing",
        "_head_bytes",
        "_interim",
        "_keeps_alive",
        "_replace_parser",
        "_status",
        "_status_code",
        "cluster",
        "connection_tokens",
        "host",
        "idle_since",
        "keep_alive",
        "owner",
        "parser",
        "pool",
        "reading_paused",
        "relayed",
        "send",
        "served",
        "transport",
        "transport_closing",
        "tunnel",
        "workload",
    )

    def __init__(self, cluster: ClusterRuntime, host: UpstreamHost, workload: str = "") -> None:
        self.cluster = cluster
        self.host = host
        self.workload = workload  # whose identity it presents (mutual TLS), else ""
        self.pool = host.pool(workload)  # the idle list it returns to
        self.transport: asyncio.Transport | None = None
        # bound once, see HttpDownstream.__init__
        self.send: Callable[[bytes], None] = unconnected_write
        self.transport_closing: Callable[[], bool] = unconnected_closing
        self._new_parser()
        self.owner: UpstreamOwner | None = None
        self.tunnel: asyncio.Transport | None = None  # after an upgrade: the downstream
        self.relayed = False  # tunnel bytes came since the downstream's idle check
        self.served = 0
        self.idle_since = 0.0
        self.reading_paused = False  # by the downstream's backpressure
        self._fields: Fields = []
        self._head_bytes = -1  # read while the response head is not complete; -1: not reading one
        self._bodyless = False
        # names a response's Connection header adds to the hop-by-hop set (rare)
        self.connection_tokens = NO_TOKENS
        self._framing = FRAMING_LENGTH
        self._interim = False
        self._replace_parser = False
        self._status = 0
        self.keep_alive = False  # the last response allows reusing the connection

    def _new_parser(self) -> None:
        """A fresh response parser, with the methods every response calls bound."""
        self.parser = parser = httptools.HttpResponseParser(self)
        self._feed: Callable[[bytes], None] = parser.feed_data
        self._status_code: Callable[[], int] = parser.get_status_code
        self._keeps_alive: Callable[[], bool] = parser.should_keep_alive

    # -- the exchange side ------------------------------------------------------------------

    def begin(self, owner: UpstreamOwner, bodyless: bool) -> None:
        """Serve one request; ``bodyless``: the response has no body whatever it says (HEAD)."""
        self.owner = owner
        self.served += 1
        self._fields = []
        self._head_bytes = 0
        self._bodyless = bodyless
        self._framing = FRAMING_LENGTH
        self.connection_tokens = NO_TOKENS

    def pause_reading(self) -> None:
        """The downstream cannot take more: stop reading the response."""
        if not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused and self.transport is not None:
            self.reading_paused = False
            if not self.transport.is_closing():
                self.transport.resume_reading()

    def close(self) -> None:
        self.owner = None
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.owner = None
        if self.transport is not None:
            self.transport.abort()

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        raw = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self.transport = out = batched(raw)
        self.send = out.write
        self.transport_closing = raw.is_closing

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.write(data)
            self.relayed = True
            return
        owner = self.owner
        if owner is None:  # unsolicited bytes on an idle connection: it is broken
            self.abort()
            return
        try:
            self._feed(data)
        except httptools.HttpParserUpgrade as exc:
            offset = int(exc.args[0])
            if self.owner is owner:
                owner.up_upgraded(self, data[offset:])
            return
        except httptools.HttpParserError as exc:
            cause = exc.__context__  # what a callback raised
            if isinstance(cause, (HeadTooLarge, UnsupportedTransferCoding)):
                self._protocol_error(owner, cause)
            else:
                self._protocol_error(owner, exc)
            return
        if self._head_bytes >= 0:  # still in the head: llhttp would buffer it without end
            self._head_bytes += len(data)
            if self._head_bytes > MAX_RESPONSE_HEAD:
                self._protocol_error(owner, HeadTooLarge())
                return
        if self._replace_parser:  # after a HEAD response llhttp still waits for the body
            self._replace_parser = False
            self._new_parser()
        owner.up_after_data()

    def _protocol_error(self, owner: UpstreamOwner, exc: Exception) -> None:
        assert self.transport is not None
        if self.owner is owner:
            self.owner = None
            self.transport.abort()
            owner.up_lost(self, exc)
        else:  # bytes after a response that completed in this read: it is delivered, and
            # the connection, out of step with the upstream, is not reused
            self.transport.abort()
            owner.up_after_data()

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.cluster.connection_closed(self)
        if self.tunnel is not None:
            self.tunnel.close()
            self.tunnel = None
            return
        owner = self.owner
        if owner is None:
            return
        if self._framing == FRAMING_CLOSE and exc is None:
            self.owner = None
            owner.up_complete()
            owner.up_after_data()
            return
        self.owner = None
        if exc is not None:
            self.cluster.upstream_failed()
        owner.up_lost(self, exc)

    def pause_writing(self) -> None:
        if self.tunnel is not None:
            self.tunnel.pause_reading()
        elif self.owner is not None:
            self.owner.up_writable(False)

    def resume_writing(self) -> None:
        if self.tunnel is not None:
            self.tunnel.resume_reading()
        elif self.owner is not None:
            self.owner.up_writable(True)

    # -- llhttp callbacks -------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        fields = self._fields
        fields.append(name)
        fields.append(SEP)
        fields.append(value)
        fields.append(CRLF)

    def on_headers_complete(self) -> None:
        owner = self.owner
        if owner is None:
            return
        status = self._status = self._status_code()
        if 100 <= status < 200 and status != 101:
            self._interim = True  # 100/102/103: dropped, the final response follows
            self._fields = []
            return
        fields = self._fields
        self._head_bytes = -1
        self.keep_alive = self._keeps_alive()  # llhttp forgets it at the end
        # an upgrade's head is made from every field, hop-by-hop ones included
        every = pairs(fields) if status == 101 or owner.upgrade else NO_HEADERS
        framing = FRAMING_CLOSE
        size = 0  # a head that came in one read
        # One pass, from the end, finds the framing and drops the hop-by-hop fields (so an
        # index not yet visited stays valid).
        i = len(fields) - 4
        while i >= 0:
            name = fields[i]
            size += len(name) + len(fields[i + 2]) + 4
            if (_LOWERED >> len(name)) & 1:
                # The usual spellings are compared as they are, the rest lower-cased.
                # (Compared, not looked up in a set: each name is a new object, hashing it
                # costs more.)
                if name == b"Content-Length" or name == b"content-length":  # noqa: PLR1714
                    low = b"content-length"
                elif name == b"Connection" or name == b"connection":  # noqa: PLR1714
                    low = b"connection"
                else:
                    low = name.lower()
                if low == b"content-length":
                    framing = FRAMING_LENGTH
                elif low in HOP_BY_HOP:
                    value = fields[i + 2]
                    if low == b"connection":
                        if (
                            value != b"keep-alive"  # noqa: PLR1714
                            and value != b"close"
                            and value.lower() not in _PLAIN_CONNECTION
                        ):
                            extra = connection_tokens(value) - _NOT_NOMINABLE
                            if extra:
                                self.connection_tokens = extra | HOP_BY_HOP
                    elif low == b"transfer-encoding":
                        if value.lower() != b"chunked":
                            raise UnsupportedTransferCoding(value)
                        framing = FRAMING_CHUNKED
                    del fields[i : i + 4]
            i -= 4
        if size > MAX_RESPONSE_HEAD:
            raise HeadTooLarge  # out of feed_data as the cause of a parser error
        if self.connection_tokens:  # ``Connection: x-foo`` names more hop-by-hop headers
            tokens = self.connection_tokens
            fields = as_fields([h for h in pairs(fields) if h[0].lower() not in tokens])
        if self._bodyless or status in (204, 304):
            framing = FRAMING_NONE
        self._framing = framing
        owner.up_head(status, every, fields, framing)
        if self._bodyless and self.owner is owner:
            self._replace_parser = True
            self._framing = FRAMING_LENGTH
            self.owner = None
            owner.up_complete()

    def on_body(self, body: bytes) -> None:
        if self.owner is not None:
            self.owner.up_body(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        if self._status == 101:  # the parser raises HttpParserUpgrade next: a tunnel
            return
        owner = self.owner
        if owner is not None:
            self._framing = FRAMING_LENGTH
            self.owner = None
            owner.up_complete()


class ClusterRuntime:
    """One service port's endpoints, pools and circuit breaker, kept across snapshots.

    ``name`` is the service (what metrics and health-check ``Host`` headers say); the
    cluster's own name, ``state.name``, adds the port. ``port`` defaults to the service's
    first port.
    """

    def __init__(self, service: Service, port: int | None = None) -> None:
        self.name = service.name
        self.port = port if port is not None else (service.ports[0].port if service.ports else 0)
        self.service = service
        self.state = ClusterState(
            cluster_name(service.name, self.port),
            service.connection_pool,
            service.outlier_detection,
            port_health_check(service, self.port),
        )
        self.tls: UpstreamTLS | None = None
        # mutual TLS: the origination presenting a caller's workload identity ("": the mesh's)
        self.tls_as: Callable[[str], UpstreamTLS | None] | None = None
        self._waiters: deque[Waiter] = deque()
        self.on_failure: Callable[[ClusterRuntime], None] | None = None

    # -- snapshots --------------------------------------------------------------------------

    def update(self, service: Service, endpoints: tuple[Endpoint, ...]) -> None:
        """The service's endpoints in a snapshot: this cluster keeps those serving its port."""
        self.service = service
        self.state.configure(
            service.connection_pool,
            service.outlier_detection,
            port_health_check(service, self.port),
        )
        removed = self.state.set_endpoints(
            UpstreamHost(e.host, e.port, e.labels)
            for e in port_endpoints(service, endpoints, self.port)
        )
        for host in removed:
            assert isinstance(host, UpstreamHost)
            self._close_idle(host)

    @property
    def hosts(self) -> list[UpstreamHost]:
        return self.state.endpoints  # type: ignore[return-value]

    def describe(self, now: float) -> dict[str, object]:
        return {**self.state.describe(now), "service": self.name, "port": self.port}

    def upstream_failed(self) -> None:
        """A connect failed or a connection was reset under a request."""
        if self.on_failure is not None:
            self.on_failure(self)

    # -- connections ------------------------------------------------------------------------

    def acquire(self, waiter: Waiter) -> None:
        """Give ``waiter`` a connection now, or when one frees up; or refuse it (overflow)."""
        host = waiter.host
        assert host is not None
        idle = host.idle if self.tls_as is None else host.pool(waiter.down.workload)
        while idle:
            conn = idle.pop()
            if not conn.transport_closing():  # still open
                waiter.on_connection(conn)
                return
        state = self.state
        if state.can_connect():
            self._open(waiter)
        elif state.can_queue():
            state.pending += 1
            waiter.waiting = True
            self._waiters.append(waiter)
            if self.tls_as is not None:
                self._close_one_idle()  # it may be another caller's: it frees a slot
        else:
            waiter.on_no_connection("circuit-open", "overflow", wire.UPSTREAM_OVERFLOW)

    def forget(self, waiter: Waiter) -> None:
        """A queued request gave up (timeout, downstream gone)."""
        if waiter.waiting:
            waiter.waiting = False
            self.state.pending -= 1
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    def _next_waiter(self) -> Waiter | None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if waiter.waiting:
                waiter.waiting = False
                self.state.pending -= 1
                return waiter
        return None

    def _close_one_idle(self) -> None:
        for host in self.hosts:
            for idle in host.pools():
                for conn in idle:
                    if conn.transport is not None and not conn.transport.is_closing():
                        conn.close()  # connection_closed then opens one for the queue
                        return

    def _next_waiter_as(self, workload: str) -> Waiter | None:
        """The first queued request of ``workload``'s caller (mutual TLS)."""
        for waiter in self._waiters:
            if waiter.waiting and waiter.down.workload == workload:
                self.forget(waiter)
                return waiter
        return None

    def release(self, conn: UpstreamConnection, now: float) -> None:
        """A request finished cleanly on ``conn``: reuse it, park it, or close it."""
        limit = self.state.max_requests_per_connection
        if conn.transport_closing() or (
            conn.served and (not conn.keep_alive or (limit and conn.served >= limit))
        ):
            conn.close()
            return
        if conn.reading_paused:  # a response that ended under backpressure left it paused
            conn.resume_reading()
        if self._waiters:
            if self.tls_as is None:
                waiter = self._next_waiter()
            else:
                waiter = self._next_waiter_as(conn.workload)
                if waiter is None and any(w.waiting for w in self._waiters):
                    conn.close()  # only other callers wait: its slot serves them better
                    return
            if waiter is not None:
                waiter.on_connection(conn)
                return
        conn.idle_since = now
        conn.pool.append(conn)

    def connection_closed(self, conn: UpstreamConnection) -> None:
        self.state.connections -= 1
        idle = conn.pool
        if conn in idle:
            idle.remove(conn)
        if self._waiters and self.state.can_connect():
            waiter = self._next_waiter()
            if waiter is not None:
                self._open(waiter)

    def _open(self, waiter: Waiter) -> None:
        self.state.connections += 1
        spawn(self._connect(waiter), name=f"connect {self.name}")

    async def _connect(self, waiter: Waiter) -> None:
        host = waiter.host
        assert host is not None
        loop = asyncio.get_running_loop()
        tls = self.tls
        workload = ""
        if self.tls_as is not None:
            workload = waiter.down.workload
            try:
                tls = self.tls_as(workload)
            except OSError as exc:
                # the caller has no identity to present: nothing is wrong with the endpoint,
                # so no outlier report, no retry, no new discovery
                self._connect_ended()
                waiter.on_no_connection("no-identity", str(exc), wire.UPSTREAM_CONNECT_FAILURE)
                return
        try:
            async with asyncio.timeout(self.state.pool.connect_timeout):
                if tls is None:
                    _, proto = await loop.create_connection(
                        lambda: UpstreamConnection(self, host), host.host, host.port
                    )
                else:
                    transport, proto = await loop.create_connection(
                        lambda: UpstreamConnection(self, host, workload),
                        host.host,
                        host.port,
                        ssl=tls.context,
                        server_hostname=tls.server_hostname(host.host),
                    )
                    tls.check_peer(transport.get_extra_info("ssl_object"))
        except (OSError, TimeoutError) as exc:
            self._connect_ended()
            self.upstream_failed()
            detail = "connect timeout" if isinstance(exc, TimeoutError) else str(exc)
            waiter.on_connect_failure(Outcome.CONNECT_FAILURE, detail)
            return
        waiter.on_connection(proto)

    def _connect_ended(self) -> None:
        """A connect gave up its slot: a queued request may use it."""
        self.state.connections -= 1
        if self._waiters and self.state.can_connect():
            queued = self._next_waiter()
            if queued is not None:
                self._open(queued)

    async def open_stream(
        self, host: UpstreamHost, factory: Callable[[], asyncio.Protocol]
    ) -> tuple[asyncio.Transport, asyncio.Protocol]:
        """A raw connection (TCP relay) counted against ``max_connections``."""
        loop = asyncio.get_running_loop()
        self.state.connections += 1
        try:
            async with asyncio.timeout(self.state.pool.connect_timeout):
                return await loop.create_connection(factory, host.host, host.port)
        except BaseException as exc:
            self.state.connections -= 1
            if isinstance(exc, OSError | TimeoutError):
                self.upstream_failed()
            raise

    # -- housekeeping -----------------------------------------------------------------------

    def sweep(self, now: float) -> None:
        """Close connections idle for longer than the pool's ``idle_timeout``."""
        limit = now - self.state.pool.idle_timeout
        for host in self.hosts:
            for idle in host.pools():
                if idle and idle[0].idle_since < limit:
                    for conn in [c for c in idle if c.idle_since < limit]:
                        conn.close()

    def _close_idle(self, host: UpstreamHost) -> None:
        for idle in host.pools():
            for conn in list(idle):
                conn.close()

    def close(self) -> None:
        for host in self.hosts:
            self._close_idle(host)
        while self._next_waiter() is not None:
            pass
