"""Control-plane events: what changed, for ``/events`` (server-sent events) and the CLI.

Each event has a monotonically increasing ``id`` (the SSE id, so a client reconnecting
with ``Last-Event-ID`` gets what it missed from the history), a ``type`` and a JSON
``data`` object. Types: ``snapshot`` (a new snapshot is active), ``rejected`` (a config
or bind failure; traffic stays on the previous snapshot), ``endpoints`` (discovery saw a
change), ``persisted`` (started from the last good state), ``stopping``.

A slow subscriber never slows the control plane: each has a bounded queue and, when it is
full, the oldest undelivered event is dropped for that subscriber only.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    type: str
    time: float
    data: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.type, "time": self.time, "data": self.data}


class EventBus:
    def __init__(self, history: int = 200, queue_size: int = 100) -> None:
        self._next_id = 1
        self._history: deque[Event] = deque(maxlen=history)
        self._queues: set[asyncio.Queue[Event | None]] = set()
        self._queue_size = queue_size

    def emit(self, type: str, **data: Any) -> Event:
        event = Event(self._next_id, type, time.time(), data)
        self._next_id += 1
        self._history.append(event)
        for queue in self._queues:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(event)
        return event

    def recent(self, after: int = 0) -> list[Event]:
        return [e for e in self._history if e.id > after]

    def close(self) -> None:
        """End every subscription (shutdown)."""
        for queue in self._queues:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(None)

    async def subscribe(self, after: int | None = None) -> AsyncGenerator[Event, None]:
        """Events from now on; with ``after``, first those in history newer than it."""
        queue: asyncio.Queue[Event | None] = asyncio.Queue(self._queue_size)
        self._queues.add(queue)
        try:
            last = 0
            if after is not None:
                for event in self.recent(after):
                    last = event.id
                    yield event
            while True:
                item = await queue.get()
                if item is None:
                    return
                if item.id > last:
                    yield item
        finally:
            self._queues.discard(queue)
