"""HTTP records handed over as tuples read back exactly like dict records."""

from __future__ import annotations

import io
import json
import time
from datetime import datetime
from pathlib import Path

from localmesh.runtime.telemetry import AccessLog
from localmesh.runtime.telemetry.accesslog import HttpRecord


def _exchange(**changes: object) -> HttpRecord:
    started = time.monotonic() - 0.0123456
    values: dict[str, object] = {
        "started": started,
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
        "request_id_made": False,
        "traceparent": b"00-" + b"a" * 32 + b"-" + b"b" * 16 + b"-01",
        "retries": 0,
    }
    values.update(changes)
    return tuple(values.values())  # type: ignore[return-value]


def test_http_records_write_the_same_json_as_dict_records() -> None:
    sink = io.StringIO()
    log = AccessLog(sink)
    cases = [
        _exchange(),
        _exchange(route=None, upstream="", request_id=b"", traceparent=b"", retries=2),
        _exchange(source='we"ird\\name', flags="UF,URX", status=503),
        # client-sent ids JSON must escape (llhttp lets tab through), and Latin-1 ones
        _exchange(request_id=b'id"1\\2\tx'),
        _exchange(request_id=b"caf\xe9"),
        _exchange(request_id=b"0af7651916cd43dd", request_id_made=True),  # written as it is
    ]
    for case in cases:
        log.http(case)
    log.log({"protocol": "tcp", "flags": "-"})
    log.flush()
    lines = sink.getvalue().splitlines()
    assert len(lines) == 7
    records = log.recent()
    assert [json.loads(line) for line in lines] == records
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
    log.http(_exchange(status=404, flags="NR"))
    log.flush()
    assert [(r["status"], r["flags"], r["destination"]) for r in seen] == [(404, "NR", "api")]


def test_disabled_log_keeps_nothing() -> None:
    log = AccessLog(io.StringIO(), enabled=False)
    log.http(_exchange())
    assert log.recent() == []


def test_a_full_batch_is_written_at_once_without_waiting_for_the_timer() -> None:
    sink = io.StringIO()
    log = AccessLog(sink, batch_limit=3)
    log.http(_exchange())
    log.log({"protocol": "tcp", "flags": "-"})
    assert sink.getvalue() == ""  # below the limit: the flush task's job
    log.http(_exchange(status=503))
    assert len(sink.getvalue().splitlines()) == 3
    log.http(_exchange())
    assert len(sink.getvalue().splitlines()) == 3
    log.flush()
    assert [r.get("status") for r in log.recent()] == [200, None, 503, 200]


def test_a_file_sink_gets_the_lines_after_what_was_written_to_it_before(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    with path.open("w", encoding="utf-8") as sink:
        log = AccessLog(sink)
        sink.write("before\n")  # still in the text layer's buffer: must come out first
        log.http(_exchange(retries=1))
        log.http(_exchange(request_id=b"0af7651916cd43dd", request_id_made=True, retries=3))
        log.flush()
        sink.write("after\n")
    first, *lines, last = path.read_text().splitlines()
    assert (first, last) == ("before", "after")
    assert [json.loads(line)["retries"] for line in lines] == [1, 3]
    assert json.loads(lines[1])["request_id"] == "0af7651916cd43dd"


def test_the_ring_keeps_the_last_records_across_batches() -> None:
    log = AccessLog(None, ring_size=3, batch_limit=2)
    for status in range(200, 207):
        log.http(_exchange(status=status))  # flushed two at a time
    assert [r["status"] for r in log.recent()] == [204, 205, 206]
    assert [r["status"] for r in log.recent(limit=2)] == [205, 206]
    odd = log.recent(match=lambda r: r["status"] % 2 == 1)
    assert [r["status"] for r in odd] == [205]  # 203 is older than the last three
    assert len(log._ring) <= 3  # whole batches older than the last three are dropped
