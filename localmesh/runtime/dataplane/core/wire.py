"""Response flags, reasons, and the bytes of responses the mesh generates itself.

Flags are Envoy's short codes (the ``response_flags`` label and the access log field);
every locally generated response says why in ``x-localmesh-reason`` and a one-line body, so
a developer looking at a 503 knows whether the app or the mesh produced it.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Final

# Envoy response flags.
NO_FLAGS: Final = "-"
UPSTREAM_CONNECT_FAILURE: Final = "UF"
NO_HEALTHY_UPSTREAM: Final = "UH"
UPSTREAM_OVERFLOW: Final = "UO"
UPSTREAM_RETRY_LIMIT: Final = "URX"
UPSTREAM_TIMEOUT: Final = "UT"
UPSTREAM_TERMINATION: Final = "UC"
UPSTREAM_RESET: Final = "UR"
DOWNSTREAM_TERMINATION: Final = "DC"
FAULT_ABORT: Final = "FI"
FAULT_DELAY: Final = "DI"
RATE_LIMITED: Final = "RL"
DENIED: Final = "UAEX"
NO_ROUTE: Final = "NR"
DOWNSTREAM_PROTOCOL_ERROR: Final = "DPE"
UPSTREAM_PROTOCOL_ERROR: Final = "UPE"
STREAM_IDLE_TIMEOUT: Final = "SI"


def join_flags(*flags: str) -> str:
    """Envoy prints several flags comma-separated; ``-`` when none."""
    present = [f for f in flags if f and f != NO_FLAGS]
    return ",".join(present) if present else NO_FLAGS


def status_line(status: int) -> bytes:
    line = STATUS_LINES.get(status)
    if line is None:
        line = b"HTTP/1.1 %d Unknown\r\n" % status
    return line


#: The status lines of every known status (the hot path reads it without a call).
STATUS_LINES: Final = {
    int(s): b"HTTP/1.1 %d %s\r\n" % (int(s), s.phrase.encode()) for s in HTTPStatus
}


def local_response(
    status: int,
    reason: str,
    detail: str = "",
    *,
    close: bool = False,
    head_only: bool = False,
    extra: tuple[tuple[bytes, bytes], ...] = (),
) -> bytes:
    """A complete plain-text response made by the mesh (never by an upstream)."""
    text = f"{reason}: {detail}\n" if detail else f"{reason}\n"
    body = text.encode()
    parts = [
        status_line(status),
        b"content-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n" % len(body),
        b"x-localmesh-reason: " + reason.encode() + b"\r\n",
    ]
    parts.extend(name + b": " + value + b"\r\n" for name, value in extra)
    if close:
        parts.append(b"connection: close\r\n")
    parts.append(b"\r\n")
    if not head_only:
        parts.append(body)
    return b"".join(parts)
