"""up/down decisions with plain values: readiness from `compose ps`, Compose errors classified."""

from __future__ import annotations

import json

import pytest

from localmesh.compose.lifecycle import ContainerState, classify_failure, parse_ps, readiness
from localmesh.errors import ComposeError, DockerError

pytestmark = pytest.mark.unit


def row(service: str, state: str = "running", health: str = "", code: int = 0) -> dict[str, object]:
    return {"Service": service, "Name": f"shop-{service}-1", "State": state, "Health": health,
            "ExitCode": code}  # fmt: skip


def test_parse_ps_reads_json_lines_and_the_older_array_form() -> None:
    rows = [row("web"), row("db", health="healthy")]
    lines = "\n".join(json.dumps(r) for r in rows) + "\n"
    expected = [
        ContainerState("db", "shop-db-1", "running", "healthy"),
        ContainerState("web", "shop-web-1", "running", ""),
    ]
    assert parse_ps(lines) == expected
    assert parse_ps(json.dumps(rows)) == expected
    assert parse_ps("") == []


def test_ready_means_running_and_healthy_or_a_finished_job() -> None:
    states = parse_ps(
        json.dumps(
            [
                row("api", health="healthy"),
                row("web"),  # no healthcheck: running is enough
                row("migrate", "exited", code=0),
                row("db", health="starting"),
            ]
        )
    )
    state = readiness(states, ["api", "web", "migrate", "db", "cache"])
    assert not state.ready
    assert [c.service for c in state.waiting] == ["db"]
    assert state.missing == ("cache",)
    assert state.describe() == "db (starting), cache (no container)"
    done = [c for c in states if c.service != "db"]
    assert readiness(done, ["api", "web", "migrate"]).ready


def test_a_crashed_container_fails_at_once_a_restarting_one_is_waited_for() -> None:
    states = parse_ps(json.dumps([row("api", "exited", code=3), row("db", "restarting")]))
    state = readiness(states, ["api", "db"])
    assert [c.service for c in state.failed] == ["api"]
    assert [c.service for c in state.waiting] == ["db"]
    assert state.describe() == "db (restarting), api (exited (3))"


@pytest.mark.parametrize(
    "stderr",
    [
        "Error response from daemon: driver failed programming external connectivity on "
        "endpoint pt-a-1 (e50c): Bind for 127.0.0.1:18443 failed: port is already allocated",
        "Error response from daemon: driver failed programming external connectivity on "
        "endpoint pt-a-1 (79f2): Error starting userland proxy: listen tcp4 127.0.0.1:18443: "
        "bind: address already in use",
    ],
)
def test_port_taken_is_named_with_a_hint(stderr: str) -> None:
    err = classify_failure(" Container pt-a-1  Starting\n" + stderr)
    assert isinstance(err, DockerError)
    assert err.message == "port 127.0.0.1:18443 is already taken on this host"
    assert err.hint is not None
    assert "sport = :18443" in err.hint


def test_overlapping_subnet_names_the_network() -> None:
    err = classify_failure(
        " Network shop_backend  Creating\nfailed to create network shop_backend: Error response "
        "from daemon: Pool overlaps with other one on this address space"
    )
    assert isinstance(err, DockerError)
    assert err.message == "the network shop_backend overlaps a network Docker already has"


def test_anything_else_keeps_composes_last_line_and_tail() -> None:
    err = classify_failure("line one\nline two\nno such image: nope:1\n")
    assert isinstance(err, ComposeError)
    assert err.message == "docker compose up failed: no such image: nope:1"
    assert err.hint is not None
    assert "  | line one" in err.hint
