"""What every connection of one listener shares: the current view, telemetry, the clock.

``ListenerContext.view`` is the one attribute a snapshot swap replaces; a connection reads
it once per request (HTTP) or once at accept (TCP), so new requests see the new snapshot
while in-flight ones finish on the one they started with.

``ticks`` is a coarse clock advanced by the data plane's sweeper: connections note the tick
when they start waiting (for headers, for the next request) and the sweeper enforces
header and idle timeouts from it, so the hot path never arms a timer for them.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from localmesh.runtime.dataplane.compiled import ListenerView
from localmesh.runtime.dataplane.core.headers import TraceIds
from localmesh.runtime.dataplane.core.policy import Caller
from localmesh.runtime.telemetry import AccessLog, MeshMetrics

if TYPE_CHECKING:
    from localmesh.runtime.dataplane.http import HttpDownstream


@dataclass(frozen=True, slots=True)
class DownstreamIdentity:
    """A verified downstream (ingress mTLS): who it is for policy, and the XFCC to send.

    ``xfcc`` None: strip any ``x-forwarded-client-cert`` the client sent and add none.
    ``misdirected`` (the ingress, for connections without a client certificate): given a
    request's ``Host``, a reason when that host may not be served on this connection
    (it requires a certificate); the request is answered 421 Misdirected Request.
    """

    caller: Caller
    xfcc: bytes | None = None
    misdirected: Callable[[bytes], str | None] | None = None


#: Called once per connection (after the TLS handshake) by listeners that authenticate
#: downstreams; returning None means "no verified identity".
IdentifyHook = Callable[[asyncio.Transport], DownstreamIdentity | None]


class Clock:
    """The sweeper's coarse clock, shared by all listeners of a data plane."""

    __slots__ = ("tick", "ticks")

    def __init__(self, tick: float) -> None:
        self.tick = tick  # seconds per tick
        self.ticks = 0

    def span(self, seconds: float) -> int:
        """How many ticks must pass before ``seconds`` have surely elapsed."""
        return max(1, int(seconds / self.tick + 0.999)) + 1


class ListenerContext:
    """Shared state of one listener (or of one intercepted destination)."""

    __slots__ = (
        "_second",
        "_second_text",
        "_wall_offset",
        "access_log",
        "clock",
        "connections",
        "gateway",
        "identify",
        "ids",
        "loop",
        "metrics",
        "name",
        "now",
        "rng",
        "scheme",
        "view",
    )

    def __init__(
        self,
        name: str,
        view: ListenerView,
        metrics: MeshMetrics,
        access_log: AccessLog,
        clock: Clock,
        *,
        scheme: bytes = b"http",
        identify: IdentifyHook | None = None,
        gateway: bool = False,
    ) -> None:
        self.name = name
        self.view = view
        self.metrics = metrics
        self.access_log = access_log
        self.clock = clock
        self.scheme = scheme
        self.identify = identify
        self.gateway = gateway  # an edge listener: originates as the mesh, not as its callers
        self.loop = asyncio.get_running_loop()
        # The clock exchanges are timed with: the loop's own (CLOCK_MONOTONIC, so deadlines
        # and call_at agree with it) read directly, since uvloop's loop.time() is whole
        # milliseconds cached per iteration: every request on a fast path took 0 or 1 ms.
        self.now: Callable[[], float] = time.monotonic
        self.rng = random.Random()
        self.ids = TraceIds()
        self.connections: set[HttpDownstream | asyncio.Protocol] = set()
        self._wall_offset = time.time() - time.monotonic()
        self._second = -1
        self._second_text = ""

    def wall_time(self, loop_time: float) -> str:
        """ISO 8601 UTC with milliseconds for a ``now()`` reading; the date part is formatted once
        per second, not per request."""
        wall = loop_time + self._wall_offset
        second = int(wall)
        if second != self._second:
            self._second = second
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return self._second_text + _MILLIS[int((wall - second) * 1000.0)]


_MILLIS: Final = tuple(f".{ms:03d}Z" for ms in range(1000))
