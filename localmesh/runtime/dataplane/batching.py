"""Socket writes held until the event loop's turn ends, then made together.

Why: in one turn the loop hands over every connection that became readable. Written at
once, each request would reach its upstream (and each response its client) alone, waking
the process at the other end, often on another CPU, for that one message; that process
would be asleep again before the next write. Held until the turn ends, the writes arrive
as a burst: one wake-up serves many of them, and this process runs its code and its
syscalls in longer stretches. Measured on the HTTPS ingress (bench/ingress_ab.py, same
run, three runs): 0.61–0.63x to 0.67–0.70x of HAProxy's keep-alive req/s; in a prototype,
upstream writes alone gave about half of that, client writes alone nothing
(docs/performance.md).

Order and endings keep a transport's meaning: one transport's bytes stay in order,
``close`` and ``write_eof`` write what is held first, ``abort`` drops it (as a transport
drops its buffer), and bytes held for a transport that closed meanwhile are dropped.
One ``WriteBatch`` per event loop, found once per connection.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

log = logging.getLogger(__name__)


class WriteBatch:
    """The transports with writes held in the current turn of one event loop."""

    __slots__ = ("_due",)

    def __init__(self) -> None:
        self._due: list[BatchedTransport] = []

    def hold(self, transport: BatchedTransport) -> None:
        """``transport`` has bytes to write when the turn ends."""
        due = self._due
        if not due:
            # the running loop, not a reference kept here: a batch must not keep its
            # loop (the key of its entry in ``_BATCHES``) alive
            asyncio.get_running_loop().call_soon(self.flush)
        due.append(transport)

    def flush(self) -> None:
        """Write everything held (what a write made meanwhile holds goes out too)."""
        while self._due:
            due = self._due
            self._due = []
            for transport in due:
                try:
                    transport.flush()
                except Exception:  # one broken transport must not keep others' bytes
                    log.exception("writing to %r failed", transport.raw)


_BATCHES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, WriteBatch] = (
    weakref.WeakKeyDictionary()
)


def batch_of(loop: asyncio.AbstractEventLoop) -> WriteBatch:
    """``loop``'s batch; code driving protocols by hand (benches) ends a turn with its
    ``flush``."""
    batch = _BATCHES.get(loop)
    if batch is None:
        batch = _BATCHES[loop] = WriteBatch()
    return batch


def batched(transport: asyncio.Transport) -> asyncio.Transport:
    """``transport`` with its writes held until the turn ends; as it is if it already holds
    them (``batches_writes``: the ingress's TLS stream writes through a batched one)."""
    if getattr(transport, "batches_writes", False):
        return transport
    return BatchedTransport(transport, batch_of(asyncio.get_running_loop()))


class BatchedTransport(asyncio.Transport):
    """A transport whose ``write`` holds the bytes for its loop's ``WriteBatch``."""

    batches_writes = True

    def __init__(self, raw: asyncio.Transport, batch: WriteBatch) -> None:
        super().__init__()
        self.raw = raw
        self._batch = batch
        self._held: list[bytes] = []
        # bound once: compiled code looks up a foreign object's method on its type per call
        self._write = raw.write
        self._closing = raw.is_closing

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        held = self._held
        if not held:
            self._batch.hold(self)
        # the caller may reuse a mutable buffer once write returns
        held.append(data if type(data) is bytes else bytes(data))

    def flush(self) -> None:
        """Write what is held now (before an ending, or when the turn ends)."""
        held = self._held
        if not held:
            return
        data = held[0] if len(held) == 1 else b"".join(held)
        held.clear()  # first: the write may call back into a protocol that writes again
        if not self._closing():
            self._write(data)

    def close(self) -> None:
        self.flush()
        self.raw.close()

    def abort(self) -> None:
        self._held.clear()
        self.raw.abort()

    def write_eof(self) -> None:
        self.flush()
        self.raw.write_eof()

    def can_write_eof(self) -> bool:
        return self.raw.can_write_eof()

    def is_closing(self) -> bool:
        return self._closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.raw.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self.raw.pause_reading()

    def resume_reading(self) -> None:
        self.raw.resume_reading()

    def is_reading(self) -> bool:
        return self.raw.is_reading()

    def get_write_buffer_size(self) -> int:
        return self.raw.get_write_buffer_size() + sum(len(b) for b in self._held)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.raw.set_write_buffer_limits(high, low)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.raw.get_protocol()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.raw.set_protocol(protocol)
