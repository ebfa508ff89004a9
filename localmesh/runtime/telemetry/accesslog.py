"""The JSON access log: one line per request or connection, written off the hot path.

A request's line is formatted when it ends (after its response went out) into the pending
batch, as bytes pieces: no dict, no str per number, no tuple that outlives the request.
``run()`` (a task the runtime owns) joins and writes the batch every ``flush_interval``,
and under load every ``batch_limit`` records, so the sink is written a few hundred lines
at a time rather than once per request.

The last ``ring_size`` records serve ``localmesh logs`` and the admin API without reading
files. They are kept as the text each flush wrote (one bytes object per batch), parsed
back only when asked for. Under load they are a short window (2000 records: 50 ms at
40k requests/s), so the last ``error_ring_size`` error records (status 400 and up, or a
response flag) are also kept apart, line by line: a filtered search goes on into them,
and the one failed request of a test run is still found after the run. Records kept as
objects (a tuple and its bytes per request, thousands of them alive) scattered the
allocator's memory: in A/B runs of the HTTPS benchmark, a build keeping 50 instead of 2000
of them served 2-4% more requests.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Callable, Iterator
from json.encoder import encode_basestring_ascii as _quote
from typing import Any, BinaryIO, Final, TextIO

Record = dict[str, Any]

# (source, destination, route, method, request target, status, flags, upstream)
_Repeated = tuple[str, str, "str | None", bytes, bytes, int, str, str]

# One encoder for every dict record: json.dumps with arguments builds a new encoder per
# call, which measured about twice the cost per record (11.6 vs 6.4 µs).
_encode = json.JSONEncoder(separators=(",", ":")).encode

_QUOTED_MAX: Final = 4096

# Lines are made as bytes pieces joined once per batch: no str per number or id, no decode
# of the ids, no line objects. Tables for the numbers most lines carry.
# Measured in place, a line's cost grows with its pieces more than a microbenchmark shows,
# so the usual values come with their labels: one piece each.
_MILLIS_B: Final = tuple(f'.{ms:03d}Z",'.encode() for ms in range(1000))
_MICROS_B: Final = tuple(f".{us:03d}".encode() for us in range(1000))
_SMALL: Final = tuple(str(n).encode() for n in range(1024))
_RESPONSE_BYTES: Final = b',"response_bytes":'
_RESPONSE_B: Final = tuple(_RESPONSE_BYTES + n for n in _SMALL)
_DURATION: Final = b',"duration_ms":'
_DURATION_B: Final = tuple(_DURATION + n for n in _SMALL)
_IDS: Final = b',"request_id":"'
_TRACEPARENT: Final = b'","traceparent":"'
_IDS_END: Final = b'"}\n'
_END: Final = b"}\n"
_NO_FLAGS: Final = "-"


def _int(n: int) -> bytes:
    return _SMALL[n] if 0 <= n < 1024 else str(n).encode()


class AccessLog:
    """The mesh's one access log: every listener's records, one sink, one ring."""

    def __init__(
        self,
        sink: TextIO | None = None,
        *,
        enabled: bool = True,
        ring_size: int = 2000,
        error_ring_size: int = 1000,
        flush_interval: float = 0.1,
        batch_limit: int = 256,
    ) -> None:
        self.sink = sink
        self.enabled = enabled
        self.flush_interval = flush_interval
        self.batch_limit = batch_limit
        self.ring_size = ring_size
        self._pending: list[bytes] = []  # the pieces of the lines not written yet
        self._pending_records = 0
        # (how many records, their JSON lines), oldest first; see the module docstring
        self._ring: deque[tuple[int, bytes]] = deque()
        self._ring_records = 0
        self._made = 0  # records made so far: the last one's sequence number
        # (sequence number, JSON line) of the latest error records, oldest first
        self._errors: deque[tuple[int, bytes]] = deque(maxlen=error_ring_size)
        self._listeners: list[Callable[[Record], None]] = []
        # exchanges are timed with time.monotonic() (ListenerContext.now)
        self._wall_offset = time.time() - time.monotonic()
        self._line_at = -1  # the second _line_second formats: b'{"time":"<date>T<time>'
        self._line_second = b""
        self._line_ms = -1  # the millisecond _line_start formats: _line_second + '.mmmZ",'
        self._line_start = b""
        # the JSON of the fields most lines repeat, see http()
        self._quoted: dict[_Repeated, tuple[bytes, bytes, bytes]] = {}

    def log(self, record: Record) -> None:
        """Any record (a TCP connection, a refusal): one JSON object per line."""
        if self.enabled:
            line = _encode(record).encode("ascii") + b"\n"
            self._pending.append(line)
            status = record.get("status")
            flags = record.get("flags", _NO_FLAGS)
            if (isinstance(status, int) and status >= 400) or flags != _NO_FLAGS:
                self._errors.append((self._made + 1, line))
            self._added()

    def _added(self) -> None:
        self._made += 1
        self._pending_records += 1
        if self._pending_records >= self.batch_limit:
            self.flush()

    def flush(self) -> None:
        """Write and publish every pending record (also called once at shutdown)."""
        count = self._pending_records
        if not count:
            return
        text = b"".join(self._pending)
        self._pending = []
        self._pending_records = 0
        self._keep(count, text)
        sink = self.sink
        if sink is not None:
            binary: BinaryIO | None = getattr(sink, "buffer", None)
            if binary is None:  # e.g. a StringIO
                sink.write(text.decode("ascii"))
            else:
                sink.flush()  # whatever else was written to it (stdout) goes first
                binary.write(text)
                binary.flush()
        if self._listeners:
            records: list[Record] = [json.loads(line) for line in text.splitlines()]
            for listener in list(self._listeners):
                for record in records:
                    listener(record)

    async def run(self) -> None:
        """Flush forever; cancel to stop (the caller then calls ``flush()`` once more)."""
        while True:
            await asyncio.sleep(self.flush_interval)
            self.flush()

    def _keep(self, count: int, text: bytes) -> None:
        """Add a flushed batch to the ring; drop the oldest batches no longer needed."""
        ring = self._ring
        ring.append((count, text))
        self._ring_records += count
        while len(ring) > 1 and self._ring_records - ring[0][0] >= self.ring_size:
            self._ring_records -= ring.popleft()[0]

    def recent(
        self, limit: int = 100, match: Callable[[Record], bool] | None = None
    ) -> list[Record]:
        """Newest-last records among the last ``ring_size`` that satisfy ``match``; with a
        ``match``, also among the older error records kept apart (see the module docstring).
        """
        self.flush()
        found: list[Record] = []
        seq = self._made  # the sequence number of the newest line not searched yet
        for line in self._ring_lines():
            if len(found) >= limit or self._made - seq >= self.ring_size:
                break
            seq -= 1
            record: Record = json.loads(line)
            if match is None or match(record):
                found.append(record)
        if match is not None:
            for made, line in reversed(self._errors):
                if len(found) >= limit:
                    break
                if made <= seq:  # older than the window searched above
                    record = json.loads(line)
                    if match(record):
                        found.append(record)
        return found[::-1]

    def _ring_lines(self) -> Iterator[bytes]:
        """The ring's lines, newest first."""
        for _, text in reversed(self._ring):
            yield from reversed(text.splitlines())

    def subscribe(self, listener: Callable[[Record], None]) -> Callable[[], None]:
        """Call ``listener`` for every flushed record; returns the unsubscribe function."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    # -- HTTP exchanges ---------------------------------------------------------------------

    def http(
        self,
        started: float,
        finished: float,
        *,
        source: str,
        destination: str,
        route: str | None,
        method: bytes,
        target: bytes,
        status: int,
        flags: str,
        request_bytes: int,
        response_bytes: int,
        upstream: str,
        request_id: bytes,
        made: bool,
        traceparent: bytes,
        retries: int,
    ) -> None:
        """One HTTP exchange: ``started``/``finished`` from ``time.monotonic()``, the raw request
        target, ``upstream`` "" for none, ``made``: the mesh made ``request_id`` (hex and
        dashes: written without a quoting pass), ``traceparent`` b"" for none."""
        if not self.enabled:
            return
        out = self._pending
        first = len(out)
        millis = int((started + self._wall_offset) * 1000.0)
        if millis != self._line_ms:  # a new millisecond: about 1 line in 40 under load
            self._line_ms = millis
            second = millis // 1000
            if second != self._line_at:
                self._line_at = second
                text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
                self._line_second = b'{"time":"' + text.encode("ascii")
            self._line_start = self._line_second + _MILLIS_B[millis % 1000]
        micros = int((finished - started) * 1e6 + 0.5)
        # the same few names, methods, paths, statuses, flags and upstreams on every line:
        # formatted once, found with one lookup
        known = self._quoted
        key = (source, destination, route, method, target, status, flags, upstream)
        fixed = known.get(key)
        if fixed is None:
            if len(known) > _QUOTED_MAX:
                known.clear()
            fixed = known[key] = _fixed(key)
        head, head_no_body, upstream_q = fixed
        out.append(self._line_start)
        if request_bytes:
            out.append(head)
            out.append(_int(request_bytes))
        else:
            out.append(head_no_body)
        if 0 <= response_bytes < 1024:
            out.append(_RESPONSE_B[response_bytes])
        else:
            out.append(_RESPONSE_BYTES)
            out.append(_int(response_bytes))
        whole_ms = micros // 1000
        if whole_ms < 1024:
            out.append(_DURATION_B[whole_ms])
        else:
            out.append(_DURATION)
            out.append(_int(whole_ms))
        out.append(_MICROS_B[micros % 1000])
        out.append(upstream_q)
        # the mesh only sends traceparents it made or validated: hex and dashes
        if made and traceparent:  # the usual line: both ids need no quoting pass
            out.append(_IDS)
            out.append(request_id)
            out.append(_TRACEPARENT)
            out.append(traceparent)
            out.append(_IDS_END if not retries else b'"' + _retries(retries))
        else:
            rid_q = _quote(request_id.decode("latin-1")) if request_id else "null"
            tp_q = f'"{traceparent.decode("ascii")}"' if traceparent else "null"
            out.append(f',"request_id":{rid_q},"traceparent":{tp_q}'.encode("ascii"))
            out.append(_retries(retries) if retries else _END)
        if status >= 400 or flags != _NO_FLAGS:
            self._errors.append((self._made + 1, b"".join(out[first:])))
        self._added()


def _fixed(key: _Repeated) -> tuple[bytes, bytes, bytes]:
    """The JSON of a line's repeated fields: from "source" to "request_bytes":, the same
    with 0 request bytes, and the upstream."""
    source, destination, route, method, target, status, flags, upstream = key
    head = (
        f'"source":{_quote(source)},"destination":{_quote(destination)},'
        f'"route":{"null" if route is None else _quote(route)},'
        f'"method":{_quote(method.decode("latin-1"))},'
        f'"path":{_quote(target.decode("latin-1"))},"status":{status},'
        f'"flags":{_quote(flags)},"request_bytes":'
    )
    upstream_q = _quote(upstream) if upstream else "null"
    head_b = head.encode("ascii")
    return head_b, head_b + b"0", f',"upstream":{upstream_q}'.encode("ascii")


def _retries(retries: int) -> bytes:
    return b',"retries":' + str(retries).encode() + _END
