"""Traffic mirroring: send a copy of a request to another cluster and forget the answer.

Fire-and-forget, off the request's path: the mirrored copy goes on its own connection
(``Connection: close``), its response is read and dropped, and any failure is ignored, so
a slow or broken mirror never affects the real request. Only requests whose body was kept
for replay (small enough) are mirrored.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from localmesh.runtime.dataplane.compiled import RouteTarget

MIRROR_TIMEOUT = 10.0


async def send_mirror(target: RouteTarget, request: bytes) -> None:
    host = target.picker.pick(time.monotonic())
    if host is None:
        return
    head_end = request.index(b"\r\n\r\n")
    request = request[:head_end] + b"\r\nconnection: close" + request[head_end:]
    with contextlib.suppress(OSError, TimeoutError, asyncio.IncompleteReadError):
        async with asyncio.timeout(MIRROR_TIMEOUT):
            reader, writer = await asyncio.open_connection(host.host, host.port)
            try:
                writer.write(request)
                await writer.drain()
                while await reader.read(65536):
                    pass
            finally:
                writer.close()
