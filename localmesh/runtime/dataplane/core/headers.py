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
from collections.abc import Sequence

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
    """Random ids for requests and traces; seedable so tests can pin them."""

    __slots__ = ("_bits",)

    def __init__(self, rng: random.Random | None = None) -> None:
        self._bits = (rng or random.Random()).getrandbits

    def request_id(self) -> bytes:
        """A version-4-shaped UUID (random bits from a PRNG, not a syscall per request)."""
        n = (self._bits(128) & ~(0xF << 76) | (0x4 << 76)) & ~(0x3 << 62) | (0x2 << 62)
        h = b"%032x" % n
        return b"-".join((h[:8], h[8:12], h[12:16], h[16:20], h[20:]))

    def trace_context(
        self,
        traceparent: bytes | None,
        b3_trace: bytes | None,
        b3_span: bytes | None,
        b3_sampled: bytes | None,
    ) -> tuple[bytes, list[Header]]:
        """The request's traceparent and the headers to add so both formats are present.

        A malformed incoming ``traceparent`` is replaced: the returned value then differs
        from it and the caller drops the old header.
        """
        if traceparent is not None:
            parts = traceparent.split(b"-")
            if len(parts) == 4 and len(parts[1]) == 32 and len(parts[2]) == 16:
                if b3_trace is not None:
                    return traceparent, []
                sampled = b"1" if parts[3][-1:] in b"13579bdf" else b"0"
                return traceparent, [
                    (b"x-b3-traceid", parts[1]),
                    (b"x-b3-spanid", parts[2]),
                    (b"x-b3-sampled", sampled),
                ]
        if b3_trace is not None and len(b3_trace) in (16, 32):
            trace = b3_trace.rjust(32, b"0")
            span = (
                b3_span
                if b3_span is not None and len(b3_span) == 16
                else b"%016x" % (self._bits(64) or 1)
            )
            flag = b"00" if b3_sampled == b"0" else b"01"
            made = b"00-" + trace + b"-" + span + b"-" + flag
            extra: list[Header] = [(b"traceparent", made)]
            if b3_span is None:
                extra.append((b"x-b3-spanid", span))
            return made, extra
        trace = b"%032x" % (self._bits(128) or 1)
        span = b"%016x" % (self._bits(64) or 1)
        made = b"00-" + trace + b"-" + span + b"-01"
        return made, [
            (b"traceparent", made),
            (b"x-b3-traceid", trace),
            (b"x-b3-spanid", span),
            (b"x-b3-sampled", b"1"),
        ]
