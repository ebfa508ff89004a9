"""The access log's lines: every field of an exchange, JSON-escaped where it must be; the
batches, the sink and the ring of recent records."""

from __future__ import annotations

import io
import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from localmesh.runtime.telemetry import AccessLog


def _exchange(log: AccessLog, **changes: Any) -> None:
    """Log one exchange: a GET answered 200 unless ``changes`` say otherwise."""
    started = time.monotonic() - 0.0123456
    values: dict[str, Any] = {
        "finished": started + 0.0123456,
        "source": "web",
        "destination": "api",
        "route": "main",
        "method": b"GET",
        "target": b'/caf\xe9?q="x"\x01',
        "status": 200,
        "flags": "-",
        "request_bytes": 42,
        "response_bytes": 7,
        "upstream": "127.0.0.1:8080",
        "request_id": b"rid-1",
        "made": False,
        "traceparent": b"00-" + b"a" * 32 + b"-" + b"b" * 16 + b"-01",
        "retries": 0,
    }
    values.update(changes)
    log.http(started, **values)


def test_http_lines_carry_every_field_escaped_where_needed() -> None:
    sink = io.StringIO()
    log = AccessLog(sink)
    _exchange(log)
    _exchange(log, route=None, upstream="", request_id=b"", traceparent=b"", retries=2)
    _exchange(log, source='we"ird\\name', flags="UF,URX", status=503)
    # client-sent ids JSON must escape (llhttp lets tab through), and Latin-1 ones
    _exchange(log, request_id=b'id"1\\2\tx')
    _exchange(log, request_id=b"caf\xe9")
    _exchange(log, request_id=b"0af7651916cd43dd", made=True)  # written as it is
    log.log({"protocol": "tcp", "flags": "-"})
    log.flush()
    lines = sink.getvalue().splitlines()
    records = [json.loads(line) for line in lines]
    assert log.recent() == records
    first, second, third, quoted, latin, made, tcp = records
    assert made["request_id"] == "0af7651916cd43dd"
    assert (quoted["request_id"], latin["request_id"]) == ('id"1\\2\tx', "caf\xe9")
    assert first["path"] == '/caf\xe9?q="x"\x01'
    assert first["method"] == "GET"
    assert first["duration_ms"] == 12.346
    assert first["time"].endswith("Z")
    assert "retries" not in first
    assert (second["route"], second["upstream"], second["request_id"]) == (None, None, None)
    assert second["traceparent"] is None
    assert second["retries"] == 2
    assert (third["source"], third["flags"]) == ('we"ird\\name', "UF,URX")
    assert tcp == {"protocol": "tcp", "flags": "-"}
    logged = datetime.fromisoformat(first["time"]).timestamp()
    assert abs(logged - (time.time() - 0.0123456)) < 1.0  # loop time mapped to wall time


def test_subscribers_get_http_records_as_dicts() -> None:
    log = AccessLog(None)
    seen: list[dict[str, object]] = []
    log.subscribe(seen.append)
    _exchange(log, status=404, flags="NR")
    log.flush()
    assert [(r["status"], r["flags"], r["destination"]) for r in seen] == [(404, "NR", "api")]


def test_disabled_log_keeps_nothing() -> None:
    log = AccessLog(io.StringIO(), enabled=False)
    _exchange(log)
    assert log.recent() == []


def test_a_full_batch_is_written_at_once_without_waiting_for_the_timer() -> None:
    sink = io.StringIO()
    log = AccessLog(sink, batch_limit=3)
    _exchange(log)
    log.log({"protocol": "tcp", "flags": "-"})
    assert sink.getvalue() == ""  # below the limit: the flush task's job
    _exchange(log, status=503)
    assert len(sink.getvalue().splitlines()) == 3
    _exchange(log)
    assert len(sink.getvalue().splitlines()) == 3
    log.flush()
    assert [r.get("status") for r in log.recent()] == [200, None, 503, 200]


def test_a_file_sink_gets_the_lines_after_what_was_written_to_it_before(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    with path.open("w", encoding="utf-8") as sink:
        log = AccessLog(sink)
        sink.write("before\n")  # still in the text layer's buffer: must come out first
        _exchange(log, retries=1)
        _exchange(log, request_id=b"0af7651916cd43dd", made=True, retries=3)
        log.flush()
        sink.write("after\n")
    first, *lines, last = path.read_text().splitlines()
    assert (first, last) == ("before", "after")
    assert [json.loads(line)["retries"] for line in lines] == [1, 3]
    assert json.loads(lines[1])["request_id"] == "0af7651916cd43dd"


def test_records_wait_for_the_flush_then_reach_sink_subscribers_and_ring() -> None:
    sink = io.StringIO()
    log = AccessLog(sink, ring_size=2)
    for i in range(3):
        log.log({"status": 200 + i})
    assert sink.getvalue() == ""  # nothing written on the request path
    seen: list[int] = []
    log.subscribe(lambda r: seen.append(r["status"]))
    log.flush()
    lines = [json.loads(line) for line in sink.getvalue().splitlines()]
    assert [r["status"] for r in lines] == [200, 201, 202]
    assert seen == [200, 201, 202]
    assert [r["status"] for r in log.recent()] == [201, 202]
    assert log.recent(match=lambda r: r["status"] == 202) == [{"status": 202}]
    assert log.recent(limit=0) == []


def test_the_ring_keeps_the_last_records_across_batches() -> None:
    log = AccessLog(None, ring_size=3, batch_limit=2)
    for status in range(200, 207):
        _exchange(log, status=status)  # flushed two at a time
    assert [r["status"] for r in log.recent()] == [204, 205, 206]
    assert [r["status"] for r in log.recent(limit=2)] == [205, 206]
    odd = log.recent(match=lambda r: r["status"] % 2 == 1)
    assert [r["status"] for r in odd] == [205]  # 203 is older than the last three
    assert len(log._ring) <= 3  # whole batches older than the last three are dropped


def test_a_ring_of_zero_keeps_only_the_last_batch() -> None:
    log = AccessLog(None, ring_size=0, batch_limit=2)
    for status in range(200, 205):
        _exchange(log, status=status)
    assert log.recent() == []  # nothing is asked for, and nothing breaks
    assert len(log._ring) == 1


def test_errors_older_than_the_ring_are_still_found_by_a_filtered_search() -> None:
    """The ring is a short window under load; error records (400 and up, or a response
    flag, from exchanges and from other records) are kept apart and searched after it."""
    log = AccessLog(None, ring_size=5, error_ring_size=3, batch_limit=4)
    _exchange(log, status=503, flags="UF", request_id=b"gone")  # pushed out of both rings
    _exchange(log, status=503, flags="UF", request_id=b"first")  # and so is this one
    log.log({"destination": "db", "status": 0, "flags": "UC"})  # a TCP connection's record
    _exchange(log, status=200, flags="UT", request_id=b"timed-out")  # a flag, any status
    for _ in range(20):
        _exchange(log, status=200)
    _exchange(log, status=404, request_id=b"recent")  # in the ring and in the error ring
    errors = log.recent(match=lambda r: r.get("status", 0) >= 400 or r.get("flags") != "-")
    assert [r.get("request_id") for r in errors] == [None, "timed-out", "recent"]
    assert errors[0]["destination"] == "db"
    assert [r["request_id"] for r in log.recent(match=lambda r: r["status"] == 503)] == []
    assert len(log.recent()) == 5  # an unfiltered search is the ring alone, as before
    assert [r["request_id"] for r in log.recent(limit=2, match=lambda r: True)][-1] == "recent"
