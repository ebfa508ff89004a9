"""The JSON access log: one line per request or connection, written off the hot path.

``log()`` only appends the record to a list; ``run()`` (a task the runtime owns) serialises
and writes pending records every ``flush_interval``, so a request never waits for its own
line. Under load a flush also happens every ``batch_limit`` records: formatting 0.1 s of
traffic at once (thousands of lines) stalled every request that arrived meanwhile, which
was most of the proxy's p99; a few hundred lines at a time keep the stall well under 1 ms.
A ring buffer of recent records serves ``localmesh logs`` and the admin API without
reading files.

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
from typing import Any, Final, TextIO

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
_END: Final = "}\n"


def _retries(retries: int) -> str:
    return f',"retries":{retries}}}\n'


_MICROS: Final = tuple(f"{us:03d}" for us in range(1000))
_MILLIS: Final = tuple(f".{ms:03d}Z" for ms in range(1000))


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
        self._pending: list[Record | HttpRecord] = []
        self._ring: deque[Record | HttpRecord] = deque(maxlen=ring_size)
        self._listeners: list[Callable[[Record], None]] = []
        # loop.time() is time.monotonic() on asyncio and uvloop alike
        self._wall_offset = time.time() - time.monotonic()
        self._second = -1
        self._second_text = ""
        # the JSON of the fields most lines repeat, see _lines
        self._quoted: dict[_Repeated, tuple[str, str]] = {}

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
        self._ring.extend(batch)
        if self.sink is not None:
            self.sink.write(self._lines(batch))
            self.sink.flush()
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

    def recent(
        self, limit: int = 100, match: Callable[[Record], bool] | None = None
    ) -> list[Record]:
        """Newest-last records from the ring buffer that satisfy ``match``."""
        self.flush()
        if limit <= 0:
            return []
        records = [self._record(r) for r in self._ring]
        if match is not None:
            records = [r for r in records if match(r)]
        return records[-limit:]

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

    def _lines(self, batch: list[Record | HttpRecord]) -> str:
        """The JSON lines of ``batch``: ``_encode(self._record(item))`` for every item, but
        HTTP tuples are formatted without a dict (C string quoting, one f-string each)."""
        out: list[str] = []
        offset = self._wall_offset
        second, second_text = self._second, self._second_text
        known = self._quoted
        if len(known) > _QUOTED_MAX:
            known.clear()
        for item in batch:
            if type(item) is not tuple:
                out.append(_encode(item) + "\n")
                continue
            # fmt: off
            (started, finished, source, destination, route, method, target, status, flags,
             request_bytes, response_bytes, upstream, request_id, made, traceparent, retries) = item
            # fmt: on
            wall = started + offset
            if int(wall) != second:
                second = int(wall)
                second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            micros = int((finished - started) * 1e6 + 0.5)
            # the same few names, methods, paths, statuses, flags and upstreams on every
            # line: formatted once, found with one lookup
            key = (source, destination, route, method, target, status, flags, upstream)
            fixed = known.get(key)
            if fixed is None:
                fixed = known[key] = (
                    f'"source":{_quote(source)},"destination":{_quote(destination)},'
                    f'"route":{"null" if route is None else _quote(route)},'
                    f'"method":{_quote(method.decode("latin-1"))},'
                    f'"path":{_quote(target.decode("latin-1"))},"status":{status},'
                    f'"flags":{_quote(flags)},"request_bytes":',
                    _quote(upstream) if upstream else "null",
                )
            head, upstream_q = fixed
            # the mesh only sends traceparents it made or validated: hex and dashes
            if made and traceparent:  # the usual line: both ids need no quoting pass
                ids = (
                    f'"request_id":"{request_id.decode("ascii")}",'
                    f'"traceparent":"{traceparent.decode("ascii")}"'
                )
            else:
                rid_q = _quote(request_id.decode("latin-1")) if request_id else "null"
                tp_q = f'"{traceparent.decode("ascii")}"' if traceparent else "null"
                ids = f'"request_id":{rid_q},"traceparent":{tp_q}'
            out.append(
                f'{{"time":"{second_text}{_MILLIS[int((wall - second) * 1000.0)]}",{head}'
                f'{request_bytes},"response_bytes":{response_bytes},'
                f'"duration_ms":{micros // 1000}.{_MICROS[micros % 1000]},'
                f'"upstream":{upstream_q},{ids}{_retries(retries) if retries else _END}'
            )
        self._second, self._second_text = second, second_text
        return "".join(out)
