"""The JSON access log: one line per request or connection, written off the hot path.

``log()`` only appends the record to a list; ``run()`` (a task the runtime owns) serialises
and writes pending records every ``flush_interval``, so a request never waits for its own
line. Under load a flush also happens every ``batch_limit`` records: formatting 0.1 s of
traffic at once (thousands of lines) stalled every request that arrived meanwhile, which
was most of the proxy's p99; a few hundred lines at a time keep the stall well under 1 ms.

The last ``ring_size`` records serve ``localmesh logs`` and the admin API without reading
files. They are kept as the text each flush wrote (one string per batch), and parsed back
only when asked for: keeping the records themselves (a tuple and its bytes objects per
request, thousands of them alive) scattered the allocator's memory and cost the proxy
about 6% of its throughput in cache misses, measured.

HTTP exchanges, one per request, go through ``http()`` as a plain tuple (``HttpRecord``):
building a dict, decoding bytes and formatting the time per request cost more than the
rest of the access log together. The tuple becomes a record (and a JSON line) only when
it is flushed or read, with the same keys and values a dict record would have had.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Callable
from json.encoder import encode_basestring_ascii as _quote
from typing import Any, BinaryIO, Final, TextIO

Record = dict[str, Any]

#: An HTTP exchange as the engine hands it over: (started, finished) in monotonic loop
#: seconds, source, destination, route (or None), method, raw request target, status,
#: response flags, request bytes, response bytes, upstream address ("" for none),
#: request id, whether the mesh made that id (hex and dashes: written without a quoting
#: pass), traceparent (b"" for none), retries.
HttpRecord = tuple[
    float,
    float,
    str,
    str,
    "str | None",
    bytes,
    bytes,
    int,
    str,
    int,
    int,
    str,
    bytes,
    bool,
    bytes,
    int,
]

# (source, destination, route, method, request target, status, flags, upstream)
_Repeated = tuple[str, str, "str | None", bytes, bytes, int, str, str]

# One encoder for every dict record: json.dumps with arguments builds a new encoder per
# call, which measured about twice the cost per record (11.6 vs 6.4 µs).
_encode = json.JSONEncoder(separators=(",", ":")).encode

_QUOTED_MAX: Final = 4096
_MILLIS: Final = tuple(f".{ms:03d}Z" for ms in range(1000))

# Lines are made as bytes pieces joined once per batch: no str per number or id, no decode
# of the ids, no line objects. Tables for the numbers most lines carry.
_MILLIS_B: Final = tuple(f'.{ms:03d}Z",'.encode() for ms in range(1000))
_MICROS_B: Final = tuple(f".{us:03d}".encode() for us in range(1000))
_SMALL: Final = tuple(str(n).encode() for n in range(1024))
_RESPONSE_BYTES: Final = b',"response_bytes":'
_DURATION: Final = b',"duration_ms":'
_IDS: Final = b',"request_id":"'
_TRACEPARENT: Final = b'","traceparent":"'
_IDS_END: Final = b'"}\n'
_END: Final = b"}\n"


def _int(n: int) -> bytes:
    return _SMALL[n] if 0 <= n < 1024 else str(n).encode()


class AccessLog:
    def __init__(
        self,
        sink: TextIO | None = None,
        *,
        enabled: bool = True,
        ring_size: int = 2000,
        flush_interval: float = 0.1,
        batch_limit: int = 256,
    ) -> None:
        self.sink = sink
        self.enabled = enabled
        self.flush_interval = flush_interval
        self.batch_limit = batch_limit
        self.ring_size = ring_size
        self._pending: list[Record | HttpRecord] = []
        # (how many records, their JSON lines), oldest first; see the module docstring
        self._ring: deque[tuple[int, bytes]] = deque()
        self._ring_records = 0
        self._listeners: list[Callable[[Record], None]] = []
        # loop.time() is time.monotonic() on asyncio and uvloop alike
        self._wall_offset = time.time() - time.monotonic()
        self._second = -1
        self._second_text = ""
        self._line_at = -1  # the second _line_second formats: b'{"time":"<date>T<time>'
        self._line_second = b""
        # the JSON of the fields most lines repeat, see _lines
        self._quoted: dict[_Repeated, tuple[bytes, bytes]] = {}

    def log(self, record: Record) -> None:
        self._add(record)

    def http(self, record: HttpRecord) -> None:
        """One HTTP exchange (see ``HttpRecord``); it becomes a record when flushed."""
        self._add(record)

    def _add(self, item: Record | HttpRecord) -> None:
        if self.enabled:
            pending = self._pending
            pending.append(item)
            if len(pending) >= self.batch_limit:
                self.flush()

    def wall_time(self, loop_time: float) -> str:
        """ISO 8601 UTC with milliseconds for a loop time; the date part is formatted once
        per second."""
        wall = loop_time + self._wall_offset
        second = int(wall)
        if second != self._second:
            self._second = second
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return self._second_text + _MILLIS[int((wall - second) * 1000.0)]

    def flush(self) -> None:
        """Write and publish every pending record (also called once at shutdown)."""
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        text = self._lines(batch)
        self._keep(len(batch), text)
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
            records = [self._record(r) for r in batch]
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
        while self._ring_records - ring[0][0] >= self.ring_size:
            self._ring_records -= ring.popleft()[0]

    def recent(
        self, limit: int = 100, match: Callable[[Record], bool] | None = None
    ) -> list[Record]:
        """Newest-last records among the last ``ring_size`` that satisfy ``match``."""
        self.flush()
        found: list[Record] = []
        left = self.ring_size
        for _, text in reversed(self._ring):
            for line in reversed(text.splitlines()):
                if len(found) >= limit or left <= 0:
                    return found[::-1]
                left -= 1
                record: Record = json.loads(line)
                if match is None or match(record):
                    found.append(record)
        return found[::-1]

    def subscribe(self, listener: Callable[[Record], None]) -> Callable[[], None]:
        """Call ``listener`` for every flushed record; returns the unsubscribe function."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    # -- HTTP records -----------------------------------------------------------------------

    def _record(self, item: Record | HttpRecord) -> Record:
        if type(item) is not tuple:
            return item  # type: ignore[return-value]
        # fmt: off
        (started, finished, source, destination, route, method, target, status, flags,
         request_bytes, response_bytes, upstream, request_id, _, traceparent, retries) = item
        # fmt: on
        record: Record = {
            "time": self.wall_time(started),
            "source": source,
            "destination": destination,
            "route": route,
            "method": method.decode("latin-1"),
            "path": target.decode("latin-1"),
            "status": status,
            "flags": flags,
            "request_bytes": request_bytes,
            "response_bytes": response_bytes,
            "duration_ms": int((finished - started) * 1e6 + 0.5) / 1000,
            "upstream": upstream or None,
            "request_id": request_id.decode("latin-1") or None,
            "traceparent": traceparent.decode("latin-1") or None,
        }
        if retries:
            record["retries"] = retries
        return record

    def _lines(self, batch: list[Record | HttpRecord]) -> bytes:
        """The JSON lines of ``batch``: ``_encode(self._record(item))`` for every item, but
        HTTP tuples are formatted without a dict (C string quoting, pieces of one join)."""
        out: list[bytes] = []
        offset = self._wall_offset
        second, second_text = self._line_at, self._line_second
        known = self._quoted
        if len(known) > _QUOTED_MAX:
            known.clear()
        for item in batch:
            if type(item) is not tuple:
                out.append(_encode(item).encode("ascii"))
                out.append(b"\n")
                continue
            # fmt: off
            (started, finished, source, destination, route, method, target, status, flags,
             request_bytes, response_bytes, upstream, request_id, made, traceparent, retries) = item
            # fmt: on
            wall = started + offset
            if int(wall) != second:
                second = int(wall)
                text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
                second_text = b'{"time":"' + text.encode("ascii")
            micros = int((finished - started) * 1e6 + 0.5)
            # the same few names, methods, paths, statuses, flags and upstreams on every
            # line: formatted once, found with one lookup
            key = (source, destination, route, method, target, status, flags, upstream)
            fixed = known.get(key)
            if fixed is None:
                fixed = known[key] = _fixed(key)
            head, upstream_q = fixed
            out.append(second_text)
            out.append(_MILLIS_B[int((wall - second) * 1000.0)])
            out.append(head)
            out.append(_int(request_bytes))
            out.append(_RESPONSE_BYTES)
            out.append(_int(response_bytes))
            out.append(_DURATION)
            out.append(_int(micros // 1000))
            out.append(_MICROS_B[micros % 1000])
            out.append(upstream_q)
            # the mesh only sends traceparents it made or validated: hex and dashes
            if made and traceparent:  # the usual line: both ids need no quoting pass
                out.append(_IDS)
                out.append(request_id)
                out.append(_TRACEPARENT)
                out.append(traceparent)
                out.append(_IDS_END if not retries else b'"' + _retries(retries))
                continue
            rid_q = _quote(request_id.decode("latin-1")) if request_id else "null"
            tp_q = f'"{traceparent.decode("ascii")}"' if traceparent else "null"
            out.append(f',"request_id":{rid_q},"traceparent":{tp_q}'.encode("ascii"))
            out.append(_retries(retries) if retries else _END)
        self._line_at, self._line_second = second, second_text
        return b"".join(out)


def _fixed(key: _Repeated) -> tuple[bytes, bytes]:
    """The JSON of a line's repeated fields: from "source" to "request_bytes":, and the
    upstream."""
    source, destination, route, method, target, status, flags, upstream = key
    head = (
        f'"source":{_quote(source)},"destination":{_quote(destination)},'
        f'"route":{"null" if route is None else _quote(route)},'
        f'"method":{_quote(method.decode("latin-1"))},'
        f'"path":{_quote(target.decode("latin-1"))},"status":{status},'
        f'"flags":{_quote(flags)},"request_bytes":'
    )
    upstream_q = _quote(upstream) if upstream else "null"
    return head.encode("ascii"), f',"upstream":{upstream_q}'.encode("ascii")


def _retries(retries: int) -> bytes:
    return b',"retries":' + str(retries).encode() + _END
