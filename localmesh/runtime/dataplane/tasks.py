"""The one place the data plane creates background tasks: each is named and kept referenced.

asyncio holds only weak references to tasks, so a fire-and-forget task can be collected
mid-flight; ``spawn`` keeps it in a set until it finishes and logs a failure once instead
of letting "Task exception was never retrieved" surface at shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger("localmesh.dataplane")

_running: set[asyncio.Task[Any]] = set()


def spawn(coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
    task = asyncio.get_running_loop().create_task(coro, name=name)
    _running.add(task)
    task.add_done_callback(_done)
    return task


def _done(task: asyncio.Task[Any]) -> None:
    _running.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.error("task %s failed", task.get_name(), exc_info=task.exception())
