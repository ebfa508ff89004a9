"""Request targets, path normalisation, trace context and request ids."""

from __future__ import annotations

import random
import re

import pytest

from localmesh.runtime.dataplane.core.headers import (
    TraceIds,
    _id_lines,
    connection_tokens,
)
from localmesh.runtime.dataplane.core.uri import (
    BadTarget,
    authority_host,
    normalize_path,
    split_target,
    target_authority,
)
from localmesh.runtime.dataplane.core.wire import join_flags, local_response

pytestmark = pytest.mark.unit


def lines(block: bytes) -> dict[bytes, bytes]:
    out = {}
    for line in block.split(b"\r\n"):
        if line:
            name, _, value = line.partition(b": ")
            out[name] = value
    return out


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (b"/a/b?x=1", (b"/a/b", b"x=1")),
        (b"/a", (b"/a", b"")),
        (b"http://host:8/p?q", (b"/p", b"q")),
        (b"http://host", (b"/", b"")),
        (b"http://host?q=1", (b"/", b"q=1")),
        (b"/p#frag", (b"/p", b"")),
    ],
)
def test_split_target(target: bytes, expected: tuple[bytes, bytes]) -> None:
    assert split_target(target) == expected


def test_split_target_refuses_nonsense() -> None:
    with pytest.raises(BadTarget):
        split_target(b"nonsense")


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (b"/a", None),
        (b"*", None),
        (b"/a?u=http://b/", None),
        (b"http://Host:8/p?q", b"Host:8"),
        (b"https://host", b"host"),
        (b"http://host?q=1", b"host"),
        (b"http://host#f", b"host"),
        (b"http://[::1]:80/", b"[::1]:80"),
    ],
)
def test_target_authority(target: bytes, expected: bytes | None) -> None:
    assert target_authority(target) == expected


@pytest.mark.parametrize(
    "target", [b"http:///p", b"http://user@host/", b"http://a:1:2/", b"http://a b/"]
)
def test_target_authority_refuses_userinfo_and_bad_hosts(target: bytes) -> None:
    with pytest.raises(BadTarget):
        target_authority(target)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (b"/plain/path", b"/plain/path"),
        (b"/admin/../secret", b"/secret"),
        (b"//admin", b"/admin"),
        (b"/a/./b/", b"/a/b/"),
        (b"/../../etc", b"/etc"),
        (b"/%61dmin", b"/admin"),
        (b"/a%2Fb", b"/a%2Fb"),  # an encoded slash stays encoded: not unreserved
        (b"/a/..", b"/"),
    ],
)
def test_normalize_path(path: bytes, expected: bytes) -> None:
    assert normalize_path(path) == expected


@pytest.mark.parametrize(
    ("authority", "host"),
    [
        (b"Shop.Localhost:8443", b"shop.localhost"),
        (b"shop.localhost.", b"shop.localhost"),
        (b"shop.localhost.:443", b"shop.localhost"),
        (b"127.0.0.1:1", b"127.0.0.1"),
        (b"[::1]:8443", b"::1"),
        (b"[0:0::0:1]", b"::1"),
        (b"a_b~c!%41", b"a_b~c!%41"),
        (b"x:65535", b"x"),
        (b"", b""),  # no host named (HTTP/1.0, or a target without one)
    ],
)
def test_authority_host(authority: bytes, host: bytes) -> None:
    assert authority_host(authority) == host


@pytest.mark.parametrize(
    "authority",
    [
        b"admin.localhost:1:2",  # the audit's bypass: one reader took "admin.localhost"
        b"admin.localhost:8443:",
        b"admin.localhost:",
        b"admin.localhost:65536",
        b"admin.localhost:123456",
        b"admin.localhost:+80",
        b"admin.localhost:8 0",
        b"a/b?c",
        b"user@admin.localhost",
        b"admin localhost",
        b"%zz",
        b".",
        b":80",
        b"[::1",
        b"[]",
        b"[::1]x",
        b"[::1]:",
        b"[v1.fe]",
        b"[fe80::1%25eth0]",
        b"[1.2.3.4]",
        b"::1",  # an IPv6 literal needs its brackets
    ],
)
def test_authority_host_refuses_what_is_not_host_and_port(authority: bytes) -> None:
    assert authority_host(authority) is None


def test_request_ids_are_uuid4_shaped_and_distinct() -> None:
    ids = TraceIds(random.Random(1))
    values = {ids.request_id() for _ in range(1000)}
    assert len(values) == 1000
    for v in list(values)[:20]:
        assert re.fullmatch(
            rb"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", v
        )


def test_generated_request_id_is_uuid_shaped_when_trace_came_in() -> None:
    incoming = b"00-" + b"a" * 32 + b"-" + b"b" * 16 + b"-01"
    rid, _, extra = TraceIds().ids(None, incoming, b"a" * 32, b"b" * 16, b"1")
    assert lines(extra) == {b"x-request-id": rid}


def test_ids_generated_when_absent() -> None:
    rid, tp, extra = TraceIds(random.Random(2)).ids(None, None, None, None, None)
    assert re.fullmatch(rb"00-[0-9a-f]{32}-[0-9a-f]{16}-01", tp)
    names = lines(extra)
    assert names[b"traceparent"] == tp
    assert names[b"x-b3-traceid"] == tp[3:35]
    assert names[b"x-b3-spanid"] == tp[36:52]
    assert names[b"x-b3-sampled"] == b"1"
    assert names[b"x-request-id"] == rid


def test_traceparent_kept_and_b3_derived() -> None:
    incoming = b"00-" + b"a" * 32 + b"-" + b"b" * 16 + b"-00"
    rid, tp, extra = TraceIds().ids(b"r-1", incoming, None, None, None)
    assert (rid, tp) == (b"r-1", incoming)
    assert lines(extra) == {
        b"x-b3-traceid": b"a" * 32,
        b"x-b3-spanid": b"b" * 16,
        b"x-b3-sampled": b"0",
    }


def test_b3_kept_and_traceparent_derived() -> None:
    _, tp, extra = TraceIds().ids(b"r", None, b"c" * 16, b"d" * 16, b"1")
    assert tp == b"00-" + b"0" * 16 + b"c" * 16 + b"-" + b"d" * 16 + b"-01"
    assert lines(extra) == {b"traceparent": tp}


def test_b3_without_span_gets_one() -> None:
    _, tp, extra = TraceIds().ids(b"r", None, b"c" * 32, None, b"0")
    span = lines(extra)[b"x-b3-spanid"]
    assert tp == b"00-" + b"c" * 32 + b"-" + span + b"-00"


def test_both_present_are_left_alone() -> None:
    incoming = b"00-" + b"a" * 32 + b"-" + b"b" * 16 + b"-01"
    assert TraceIds().ids(b"r", incoming, b"a" * 32, b"b" * 16, b"1") == (b"r", incoming, b"")


def test_malformed_traceparent_is_replaced() -> None:
    _, tp, extra = TraceIds().ids(b"r", b"garbage", None, None, None)
    assert tp != b"garbage"
    assert lines(extra)[b"traceparent"] == tp


@pytest.mark.parametrize(
    "incoming",
    [
        b"00-" + b"A" * 32 + b"-" + b"b" * 16 + b"-01",  # upper case
        b'00-"' + b"a" * 31 + b"-" + b"b" * 16 + b"-01",  # right length, not hex
        b"ff-" + b"a" * 32 + b"-" + b"b" * 16 + b"-01",  # version ff
        b"00-" + b"0" * 32 + b"-" + b"b" * 16 + b"-01",  # all-zero trace id
        b"00-" + b"a" * 32 + b"-" + b"0" * 16 + b"-01",  # all-zero parent id
    ],
)
def test_invalid_traceparent_restarts_the_trace(incoming: bytes) -> None:
    _, tp, extra = TraceIds().ids(b"r", incoming, None, None, None)
    assert tp != incoming
    assert re.fullmatch(rb"00-[0-9a-f]{32}-[0-9a-f]{16}-01", tp)
    assert lines(extra)[b"traceparent"] == tp


def test_invalid_b3_is_ignored() -> None:
    _, tp, extra = TraceIds().ids(b"r", None, b"x" * 32, None, None)
    assert lines(extra)[b"x-b3-traceid"] == tp[3:35] != b"x" * 32
    _, tp, extra = TraceIds().ids(b"r", None, b"c" * 32, b"not-a-span-id!!!", b"1")
    assert tp[3:35] == b"c" * 32
    assert lines(extra)[b"x-b3-spanid"] == tp[36:52]


def test_connection_tokens() -> None:
    assert connection_tokens(b"keep-alive, X-Foo ,") == {b"keep-alive", b"x-foo"}


def test_local_response_says_why() -> None:
    raw = local_response(503, "no-healthy-upstream", "cluster api", close=True)
    head, body = raw.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"x-localmesh-reason: no-healthy-upstream" in head
    assert b"connection: close" in head
    assert body == b"no-healthy-upstream: cluster api\n"
    assert f"content-length: {len(body)}".encode() in head
    assert local_response(404, "no-route", head_only=True).endswith(b"\r\n\r\n")
    assert join_flags("-", "URX", "", "UF") == "URX,UF"
    assert join_flags() == "-"


def test_generated_ids_across_batches_are_distinct_and_consistent() -> None:
    ids = TraceIds(random.Random(3))
    seen = set()
    for i in range(3 * TraceIds.BATCH + 1):
        own = b"mine" if i % 2 else None
        rid, tp, extra = ids.ids(own, None, None, None, None)
        names = lines(extra)
        assert names[b"traceparent"] == tp
        assert names[b"x-b3-traceid"] == tp[3:35]
        assert names[b"x-b3-spanid"] == tp[36:52]
        if own is None:
            assert names[b"x-request-id"] == rid
            assert re.fullmatch(
                rb"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-a[0-9a-f]{3}-[0-9a-f]{12}", rid
            )
        else:
            assert rid == b"mine"
            assert b"x-request-id" not in names
        seen.add(tp)
    assert len(seen) == 3 * TraceIds.BATCH + 1


def test_fresh_ids_take_48_digits_of_the_batch_each() -> None:
    """A batch's draw is split 48 hex digits to a request, in order, none used twice."""
    hexed = random.Random(5).randbytes(24 * TraceIds.BATCH).hex().encode()
    ids = TraceIds(random.Random(5))
    blocks = [ids.fresh(None)[2] for _ in range(TraceIds.BATCH)]
    assert blocks == [_id_lines(hexed[i : i + 48]) for i in range(0, len(hexed), 48)]
    assert ids.fresh(None)[2] not in blocks  # the next batch is a new draw
