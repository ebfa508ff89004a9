"""Writes held until the event loop's turn ends: order, endings, and who gets a batch."""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Any

import pytest

from localmesh.runtime.dataplane import batching
from localmesh.runtime.dataplane.batching import BatchedTransport, batch_of, batched


class RawTransport:
    """Records each write call as it is made."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.events: list[str] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        self.events.append("write")

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True
        self.events.append("close")

    def abort(self) -> None:
        self.closing = True
        self.events.append("abort")

    def write_eof(self) -> None:
        self.events.append("eof")

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("10.0.0.1", 5) if name == "peername" else default

    def get_write_buffer_size(self) -> int:
        return 7


def wrap(raw: RawTransport) -> asyncio.Transport:
    return batched(raw)  # type: ignore[arg-type]


async def next_turn() -> None:
    await asyncio.sleep(0)


async def test_writes_wait_for_the_turn_to_end_and_go_out_as_one_in_order() -> None:
    raw = RawTransport()
    out = wrap(raw)
    out.write(b"GET / HTTP/1.1\r\n")
    out.write(bytearray(b"host: a\r\n"))
    out.write(memoryview(b"\r\n"))
    out.write(b"")  # nothing: no empty write either
    assert raw.writes == []
    await next_turn()
    assert raw.writes == [b"GET / HTTP/1.1\r\nhost: a\r\n\r\n"]
    await next_turn()
    assert raw.writes == [b"GET / HTTP/1.1\r\nhost: a\r\n\r\n"]  # written once


async def test_one_turn_serves_every_connection_in_the_order_they_wrote() -> None:
    order: list[bytes] = []

    class Recording(RawTransport):
        def write(self, data: bytes) -> None:
            order.append(data)

    outs = [wrap(Recording()) for _ in range(3)]
    for i in (2, 0, 1):
        outs[i].write(b"%d" % i)
    await next_turn()
    assert order == [b"2", b"0", b"1"]


async def test_a_mutable_buffer_is_copied_when_written() -> None:
    raw = RawTransport()
    out = wrap(raw)
    buf = bytearray(b"abc")
    out.write(buf)
    buf[:] = b"zzz"  # the caller reuses its buffer once write returned
    await next_turn()
    assert raw.writes == [b"abc"]


async def test_close_and_write_eof_write_what_is_held_first_and_abort_drops_it() -> None:
    closed, eof, aborted = RawTransport(), RawTransport(), RawTransport()
    for raw, end in ((closed, "close"), (eof, "write_eof"), (aborted, "abort")):
        out = wrap(raw)
        out.write(b"last words")
        getattr(out, end)()
    assert closed.events == ["write", "close"]
    assert closed.writes == [b"last words"]
    assert eof.events == ["write", "eof"]
    assert aborted.events == ["abort"]
    await next_turn()
    assert closed.writes == [b"last words"]
    assert aborted.writes == []


async def test_bytes_for_a_transport_that_closed_meanwhile_are_dropped() -> None:
    raw = RawTransport()
    out = wrap(raw)
    out.write(b"late")
    raw.closing = True  # e.g. the peer reset it later in the same turn
    await next_turn()
    assert raw.writes == []


async def test_a_failing_transport_does_not_keep_the_others_bytes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broken, fine = RawTransport(), RawTransport()

    def fail(data: bytes) -> None:
        raise RuntimeError("handle is closed")

    broken.write = fail  # type: ignore[method-assign]
    wrap(broken).write(b"a")
    wrap(fine).write(b"b")
    with caplog.at_level(logging.ERROR, logger=batching.__name__):
        await next_turn()
    assert fine.writes == [b"b"]
    assert "handle is closed" in caplog.text


async def test_a_write_made_while_the_batch_is_written_goes_out_in_the_same_turn() -> None:
    """A layer above a batched transport (the ingress's TLS stream) writing from inside
    the flush: its bytes do not wait for another turn."""
    inner = RawTransport()
    inner_out = wrap(inner)
    outer = RawTransport()
    outer.write = lambda data: inner_out.write(data.upper())  # type: ignore[method-assign]
    wrap(outer).write(b"hello")
    loop = asyncio.get_running_loop()
    batch_of(loop).flush()
    assert inner.writes == [b"HELLO"]


async def test_a_transport_that_batches_already_is_not_wrapped_again() -> None:
    raw = RawTransport()
    out = wrap(raw)
    assert batched(out) is out
    assert out.get_extra_info("peername") == ("10.0.0.1", 5)
    out.write(b"12345")
    assert out.get_write_buffer_size() == 7 + 5  # the held bytes count as buffered


def test_a_batch_belongs_to_one_loop_and_does_not_keep_it_alive() -> None:
    async def wrap_one() -> BatchedTransport:
        out = wrap(RawTransport())
        assert isinstance(out, BatchedTransport)
        out.write(b"held")  # schedules the loop's flush
        return out

    first = asyncio.new_event_loop()
    second = asyncio.new_event_loop()
    try:
        first.run_until_complete(wrap_one())
        two = second.run_until_complete(wrap_one())
        assert batch_of(first) is not batch_of(second)
    finally:
        first.close()
        second.close()
    before = len(batching._BATCHES)
    del first
    gc.collect()
    assert len(batching._BATCHES) == before - 1
    assert isinstance(two.raw, RawTransport)
    assert two.raw.writes == [b"held"]
