"""Helpers for runtime tests: a real Runtime in the test's loop, a load loop, polling."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from localmesh.runtime.app import RunOptions, Runtime


def write_atomic(path: Path, text: str) -> None:
    """Replace a file the way editors save (write aside, rename over)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


async def until(cond: Callable[[], bool], limit: float = 5.0, what: str = "condition") -> float:
    """Poll ``cond`` until true; the seconds it took. Fails after ``limit``."""
    start = time.monotonic()
    while not cond():
        if time.monotonic() - start > limit:
            raise AssertionError(f"{what} not met within {limit}s")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


@contextlib.asynccontextmanager
async def running(mesh: Path, state_dir: Path | None = None) -> AsyncIterator[Runtime]:
    """A host-mode runtime with the real data plane, admin API on a free port."""
    runtime = Runtime(
        RunOptions(
            mesh=mesh,
            state_dir=state_dir,
            admin="127.0.0.1:0",
            access_log="off",
            drain_timeout=1.0,
            poll_interval=0.05,
        )
    )
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.stop()


def admin_url(runtime: Runtime) -> str:
    assert runtime.admin is not None
    assert runtime.admin.address is not None
    host, port = runtime.admin.address
    return f"http://{host}:{port}"


def listener_url(runtime: Runtime, name: str) -> str:
    assert runtime.dataplane is not None
    host, port = runtime.dataplane.addresses()[name]
    return f"http://{host}:{port}"


@dataclass
class Load:
    """Concurrent keep-alive clients hammering one URL; every answer is recorded."""

    url: str
    concurrency: int = 4
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    seen: list[Any] = field(default_factory=list)  # (time, x-backend/x-version header)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def _client(self, session: aiohttp.ClientSession) -> None:
        while not self._stop.is_set():
            try:
                async with session.get(self.url) as r:
                    body = await r.read()
                    if r.status != 200:
                        self.failures.append(f"{r.status} {body[:200]!r}")
                    else:
                        self.ok += 1
                        self.seen.append((time.monotonic(), dict(r.headers)))
            except (aiohttp.ClientError, OSError) as exc:
                self.failures.append(repr(exc))

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Load]:
        connector = aiohttp.TCPConnector(limit=self.concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:
            tasks = [asyncio.create_task(self._client(session)) for _ in range(self.concurrency)]
            try:
                yield self
            finally:
                self._stop.set()
                await asyncio.gather(*tasks)
