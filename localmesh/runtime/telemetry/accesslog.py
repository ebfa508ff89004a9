"""The JSON access log: one line per request or connection, written off the hot path.

``log()`` only appends the record to a list and a ring buffer; ``run()`` (a task the
runtime owns) serialises and writes pending records every ``flush_interval``, so request
latency never waits on json.dumps or a slow disk. The ring buffer serves ``localmesh logs``
and the admin API without reading files.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Callable
from typing import Any, TextIO

Record = dict[str, Any]

# One encoder for every record: json.dumps with arguments builds a new encoder per call,
# which measured about twice the cost per record (11.6 vs 6.4 µs) on the request rate.
_encode = json.JSONEncoder(separators=(",", ":")).encode


class AccessLog:
    def __init__(
        self,
        sink: TextIO | None = None,
        *,
        enabled: bool = True,
        ring_size: int = 2000,
        flush_interval: float = 0.1,
    ) -> None:
        self.sink = sink
        self.enabled = enabled
        self.flush_interval = flush_interval
        self._pending: list[Record] = []
        self._ring: deque[Record] = deque(maxlen=ring_size)
        self._listeners: list[Callable[[Record], None]] = []

    def log(self, record: Record) -> None:
        if self.enabled:
            self._pending.append(record)

    def flush(self) -> None:
        """Write and publish every pending record (also called once at shutdown)."""
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        self._ring.extend(batch)
        if self.sink is not None:
            self.sink.write("".join(_encode(r) + "\n" for r in batch))
            self.sink.flush()
        for listener in list(self._listeners):
            for record in batch:
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
        records = [r for r in self._ring if match is None or match(r)]
        return records[-limit:]

    def subscribe(self, listener: Callable[[Record], None]) -> Callable[[], None]:
        """Call ``listener`` for every flushed record; returns the unsubscribe function."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)
