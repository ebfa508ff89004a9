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

    def subscribe(self, after: int | None = None) -> Subscription:
        """Events from now on; with ``after``, first those in history newer than it."""
        queue: asyncio.Queue[Event | None] = asyncio.Queue(self._queue_size)
        self._queues.add(queue)
        backlog = self.recent(after) if after is not None else []
        return Subscription(self, queue, backlog)


class Subscription:
    """One subscriber's view; ``next()`` is safe to cancel (e.g. by a keep-alive timeout)."""

    def __init__(
        self, bus: EventBus, queue: asyncio.Queue[Event | None], backlog: list[Event]
    ) -> None:
        self._bus = bus
        self._queue = queue
        self._backlog = deque(backlog)
        self._last = backlog[-1].id if backlog else 0

    async def next(self) -> Event | None:
        """The next event, or None once the bus is closed."""
        if self._backlog:
            return self._backlog.popleft()
        while True:
            item = await self._queue.get()
            if item is None:
                return None
            if item.id > self._last:  # already delivered from the backlog otherwise
                self._last = item.id
                return item

    def close(self) -> None:
        self._bus._queues.discard(self._queue)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        event = await self.next()
        if event is None:
            self.close()
            raise StopAsyncIteration
        return event
