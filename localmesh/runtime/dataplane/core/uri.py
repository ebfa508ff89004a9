"""Request targets and authorities: split path and query, normalise paths before routing
and policy, and read the host a ``Host`` header names.

Policies and routes match on the normalised path, so ``/admin/../x``, ``//admin`` or
``/%61dmin`` cannot slip past a rule written for ``/admin`` (Envoy's
``normalize_path`` + ``merge_slashes``). The upstream receives the normalised path too,
so what was authorised is what is served. The common path (no dot segment, no double
slash, no percent sign) is returned untouched without copying.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Final


class BadTarget(ValueError):
    """The downstream sent a request target we cannot route (answered with 400)."""


_UNRESERVED_ESCAPE: Final = re.compile(
    rb"%(2[dDeE]|3[0-9]|[46][1-9a-fA-F]|[57][0-9aA]|5[fF]|7[eE])"
)

#: RFC 3986 reg-name (lower-cased): unreserved, sub-delims, percent-encoded octets.
_REG_NAME: Final = re.compile(rb"(?:[a-z0-9._~!$&'()*+,;=-]|%[0-9a-f]{2})+")
_IPV6_CHARS: Final = frozenset(b"0123456789abcdef:.")


def authority_host(authority: bytes) -> bytes | None:
    """The host a ``Host`` value names: lower-cased, one trailing dot and a ``:port``
    (1-65535) dropped, an IPv6 literal unbracketed in its canonical form; ``b""`` for an
    empty value, None for one that is not ``uri-host [":" port]`` (RFC 9112 §3.2).

    Whoever decides something by host (the ingress routes, its client-certificate check,
    the HTTP redirect) must read it through this one function: two readings of one odd
    value (``admin.localhost:1:2``) would let a request be routed to a host whose checks
    never saw it.
    """
    if not authority:
        return b""
    text = authority.lower()
    if text.startswith(b"["):
        end = text.find(b"]")
        literal, port = text[1:end], text[end + 1 :]
        if end < 0 or not literal or not _IPV6_CHARS.issuperset(literal):
            return None
        try:
            host = ipaddress.IPv6Address(literal.decode("ascii")).compressed.encode("ascii")
        except ValueError:
            return None
    else:
        colon = text.find(b":")
        host, port = (text, b"") if colon < 0 else (text[:colon], text[colon:])
        if host.endswith(b"."):
            host = host[:-1]
        if _REG_NAME.fullmatch(host) is None:
            return None
    if port:
        digits = port[1:]
        if not (port[:1] == b":" and 0 < len(digits) <= 5 and digits.isdigit()):
            return None
        if not 0 < int(digits) < 65536:
            return None
    return host


def split_target(target: bytes) -> tuple[bytes, bytes]:
    """``(path, query)`` of an origin-form or absolute-form request target."""
    if not target.startswith(b"/"):
        if target == b"*":
            return b"*", b""
        scheme_end = target.find(b"://")
        if scheme_end <= 0:
            raise BadTarget("request target is neither a path nor an absolute URL")
        rest = target[scheme_end + 3 :]
        cut = min((i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0), default=-1)
        target = b"/" if cut < 0 else rest[cut:]
        if not target.startswith(b"/"):
            target = b"/" + target
    hash_at = target.find(b"#")
    if hash_at >= 0:
        target = target[:hash_at]
    q = target.find(b"?")
    path, query = (target, b"") if q < 0 else (target[:q], target[q + 1 :])
    if b"%" in path or b"//" in path or b"/." in path:
        path = normalize_path(path)
    return path, query


def target_authority(target: bytes) -> bytes | None:
    """The authority of an absolute-form target (``http://a:8080/x``: ``a:8080``), None
    for any other form. It replaces ``Host`` (RFC 9112 3.2.2); one with userinfo or
    without a valid host is refused (RFC 9110 4.2.1, 4.2.4)."""
    scheme_end = target.find(b"://")
    if target[:1] == b"/" or scheme_end <= 0:
        return None
    rest = target[scheme_end + 3 :]
    ends = [i for i in (rest.find(b"/"), rest.find(b"?"), rest.find(b"#")) if i >= 0]
    authority = rest[: min(ends)] if ends else rest
    if b"@" in authority:
        raise BadTarget("userinfo in the request target")
    if not authority_host(authority):
        raise BadTarget("the request target names no valid host")
    return authority


def normalize_path(path: bytes) -> bytes:
    """Decode escaped unreserved characters, merge slashes, resolve dot segments."""
    if b"%" not in path and b"//" not in path and b"/." not in path:
        return path
    if b"%" in path:
        path = _UNRESERVED_ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), path)
    out: list[bytes] = []
    segments = path.split(b"/")
    for seg in segments[1:-1]:
        if seg in (b"", b"."):
            continue
        if seg == b"..":
            if out:
                out.pop()
            continue
        out.append(seg)
    last = segments[-1] if len(segments) > 1 else b""
    if last == b"..":
        if out:
            out.pop()
        last = b""
    elif last == b".":
        last = b""
    out.append(last)
    return b"/" + b"/".join(out)
