"""Header rules: hop-by-hop stripping, route header operations, request id and trace context.

Header names are handled lower-cased everywhere (HTTP/1.1 names are case-insensitive and
HTTP/2 requires lower case); values are bytes, exactly as they arrived.

Trace context: a request that arrives without one gets a W3C ``traceparent`` and the
matching B3 headers (``x-b3-traceid``/``x-b3-spanid``/``x-b3-sampled``); one that carries
either form gets the other derived from it, so apps instrumented for W3C or for Zipkin see
one trace. A missing ``x-request-id`` is generated (UUID-shaped, like Envoy's).
"""

from __future__ import annotations

import random
from binascii import hexlify
from collections.abc import Sequence
from typing import ClassVar

from localmesh.config.model import HeaderOps

Header = tuple[bytes, bytes]

# RFC 9110 7.6.1 connection-specific fields, plus the non-standard ones proxies strip.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)


def connection_tokens(value: bytes) -> frozenset[bytes]:
    """The lower-cased tokens of a ``Connection`` header (the extra hop-by-hop names)."""
    return frozenset(t.strip().lower() for t in value.split(b",") if t.strip())


class CompiledHeaderOps:
    """A route's set/add/remove, prepared once: removal names as a frozenset, bytes pairs."""

    __slots__ = ("add", "drop", "set")

    def __init__(self, ops: HeaderOps) -> None:
        self.set = tuple((k.lower().encode(), v.encode()) for k, v in ops.set)
        self.add = tuple((k.lower().encode(), v.encode()) for k, v in ops.add)
        self.drop = frozenset(k.lower().encode() for k in ops.remove) | {k for k, _ in self.set}

    @classmethod
    def of(cls, ops: HeaderOps) -> CompiledHeaderOps | None:
        return None if ops.empty else cls(ops)

    def apply(self, headers: Sequence[Header]) -> list[Header]:
        """A new list: removed and overwritten names dropped, then set and add appended."""
        drop = self.drop
        out = [h for h in headers if h[0] not in drop]
        out.extend(self.set)
        out.extend(self.add)
        return out


class TraceIds:
    """Random ids for requests and traces; seedable so tests can pin them.

    One PRNG draw of 192 bits per request feeds every id that has to be made (trace id,
    span id, request id). For requests without trace context (most) the draws and the
    header lines are made ``BATCH`` at a time, so a request takes a ready block and two
    slices of it: no PRNG call, no hexlify, no formatting of its own.
    """

    __slots__ = ("_batch", "_random_bytes")

    BATCH: ClassVar[int] = 64

    def __init__(self, rng: random.Random | None = None) -> None:
        self._random_bytes = (rng or random.Random()).randbytes
        self._batch: list[bytes] = []

    def _draw(self) -> bytes:
        """48 random hex digits: a trace id (32) and a span id (16)."""
        return hexlify(self._random_bytes(24))

    @staticmethod
    def _uuid(h: bytes) -> bytes:
        """A version-4-shaped UUID from 32 hex digits."""
        return b"-".join((h[:8], h[8:12], b"4" + h[13:16], b"a" + h[17:20], h[20:32]))

    def request_id(self) -> bytes:
        return self._uuid(self._draw())

    def fresh(self, request_id: bytes | None) -> tuple[bytes, bytes, bytes]:
        """``ids()`` for a request that carries no trace context (W3C or B3)."""
        batch = self._batch
        if not batch:
            hexed = hexlify(self._random_bytes(24 * self.BATCH))
            draws = [hexed[i : i + 48] for i in range(0, len(hexed), 48)]
            batch = self._batch = [
                b"".join((
                    b"x-request-id: ", h[:8], b"-", h[8:12], b"-4", h[13:16], b"-a", h[17:20],
                    b"-", h[20:32], b"\r\ntraceparent: 00-", h[:32], b"-", h[32:],
                    b"-01\r\nx-b3-traceid: ", h[:32], b"\r\nx-b3-spanid: ", h[32:],
                    b"\r\nx-b3-sampled: 1\r\n",
                ))
                for h in draws
            ]  # fmt: skip
        block = batch.pop()
        if request_id is None:
            return block[_RID_START:_RID_END], block[_TP_START:_TP_END], block
        return request_id, block[_TP_START:_TP_END], block[_RID_LINE_END:]

    def ids(
        self,
        request_id: bytes | None,
        traceparent: bytes | None,
        b3_trace: bytes | None,
        b3_span: bytes | None,
        b3_sampled: bytes | None,
    ) -> tuple[bytes, bytes, bytes]:
        """``(request id, traceparent, header lines to add)`` for a request carrying these.

        Missing ids are generated; a request with W3C or B3 context gets the other form
        derived from it. The lines are serialised (``name: value\\r\\n``) because this runs
        for every request and most get the same five generated headers. A malformed
        incoming ``traceparent`` is replaced: the returned value then differs from it and
        the caller drops the old header.
        """
        if traceparent is None and b3_trace is None:
            return self.fresh(request_id)
        extra: list[Header] = []
        drawn = b""
        if traceparent is not None:
            parts = traceparent.split(b"-")
            if len(parts) == 4 and len(parts[1]) == 32 and len(parts[2]) == 16:
                if b3_trace is None:
                    sampled = b"1" if parts[3][-1:] in b"13579bdf" else b"0"
                    extra = [
                        (b"x-b3-traceid", parts[1]),
                        (b"x-b3-spanid", parts[2]),
                        (b"x-b3-sampled", sampled),
                    ]
            else:
                traceparent = None
        if traceparent is None:
            drawn = self._draw()
            if b3_trace is not None and len(b3_trace) in (16, 32):
                span = b3_span if b3_span is not None and len(b3_span) == 16 else drawn[32:]
                if b3_span is None:
                    extra.append((b"x-b3-spanid", span))
                flag = b"00" if b3_sampled == b"0" else b"01"
                traceparent = b"00-" + b3_trace.rjust(32, b"0") + b"-" + span + b"-" + flag
                extra.insert(0, (b"traceparent", traceparent))
            else:
                trace, span = drawn[:32], drawn[32:]
                traceparent = b"00-" + trace + b"-" + span + b"-01"
                extra = [
                    (b"traceparent", traceparent),
                    (b"x-b3-traceid", trace),
                    (b"x-b3-spanid", span),
                    (b"x-b3-sampled", b"1"),
                ]
        if request_id is None:
            request_id = self._uuid(drawn or self._draw())
            extra.append((b"x-request-id", request_id))
        return request_id, traceparent, b"".join([k + b": " + v + b"\r\n" for k, v in extra])


# The lines ``TraceIds.fresh`` generates start with the request id, so a request that
# brought its own id takes the rest; fixed lengths, so fixed slices.
# (Bounds, not slice objects: compiled code slices bytes by integers only.)
_RID_START, _RID_END = 14, 50  # the UUID after "x-request-id: "
_RID_LINE_END = 52
_TP_START, _TP_END = 65, 120  # "00-<32>-<16>-01" after "traceparent: "
