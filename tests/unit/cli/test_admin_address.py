"""Which admin API `status`, `config` and `logs` talk to: the project in the directory
they run in, so two projects up at once are never mixed up."""

from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path

import pytest

from localmesh.cli.runtime_cmds import DEFAULT_ADMIN, AdminClient, admin_address
from localmesh.errors import LocalmeshError, NotRunningError
from tests.support.services import free_port
from tests.unit.cli.test_main import run


def test_the_port_up_published_for_this_project_wins(tmp_path: Path) -> None:
    (tmp_path / ".localmesh").mkdir()
    plan = {"project": "shop2", "published": {"admin": 15001, "https": 9443}}
    (tmp_path / ".localmesh" / "plan.json").write_text(json.dumps(plan))
    (tmp_path / "mesh.yaml").write_text("mesh:\n  admin_port: 15007\n")
    assert admin_address(None, tmp_path) == "127.0.0.1:15001"


def test_host_mode_reads_mesh_yaml_then_falls_back_to_the_default(tmp_path: Path) -> None:
    (tmp_path / "mesh.yaml").write_text("mesh:\n  admin_port: 15007\n")
    assert admin_address(None, tmp_path) == "127.0.0.1:15007"
    (tmp_path / "mesh.yaml").write_text("services: {}\n")  # no admin_port: the default
    assert admin_address(None, tmp_path) == DEFAULT_ADMIN
    (tmp_path / "mesh.yaml").write_text("mesh: [unclosed\n")  # broken: validate says why
    assert admin_address(None, tmp_path) == DEFAULT_ADMIN
    assert admin_address(None, tmp_path / "elsewhere") == DEFAULT_ADMIN


def test_a_given_address_is_used_as_given_and_nonsense_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "mesh.yaml").write_text("mesh:\n  admin_port: 15007\n")
    assert admin_address("127.0.0.1:16000", tmp_path) == "127.0.0.1:16000"
    assert admin_address("http://[::1]:16000/", tmp_path) == "http://[::1]:16000/"
    for bad in ("nonsense", "localhost:abc", ":15000"):
        with pytest.raises(LocalmeshError, match="expected HOST:PORT") as err:
            admin_address(bad, tmp_path)
        assert err.value.exit_code == 2


def test_no_mesh_answering_is_an_environment_error() -> None:
    with pytest.raises(NotRunningError, match="cannot reach the admin API") as err:
        AdminClient(f"127.0.0.1:{free_port()}", timeout=2).get("/status")
    assert err.value.exit_code == 3


def test_logs_refuses_a_status_filter_it_cannot_match_before_asking(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 2 with a hint, without contacting any mesh (none runs at this address)."""
    address = f"127.0.0.1:{free_port()}"
    assert run(monkeypatch, "logs", "--admin", address, "--status", "6xx") == 2
    assert "invalid status '6xx'" in capsys.readouterr().err
    assert run(monkeypatch, "logs", "--admin", address, "--status", "5xx") == 3  # asked
    assert run(monkeypatch, "logs", "--admin", address, "--limit", "-3") == 2


def test_logs_says_when_nothing_matched(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An empty answer is said on stderr (stdout stays empty for pipes)."""

    class NoRecords(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"records": []}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NoRecords)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        address = f"127.0.0.1:{server.server_address[1]}"
        assert run(monkeypatch, "logs", "--admin", address, "-s", "nope") == 0
    finally:
        server.shutdown()
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "no records (service nope) yet" in captured.err


class _Container:
    """A Docker SDK container as the engine lists it."""

    def __init__(self) -> None:
        self.name = "shop-localmesh-1"
        self.status = "exited"
        self.attrs = {"State": {"ExitCode": 137}}


class _Engine:
    """A Docker SDK client that lists ``found``."""

    def __init__(self, found: list[_Container]) -> None:
        self.found = found
        self.asked: dict[str, object] = {}

    @property
    def containers(self) -> _Engine:
        return self

    def list(self, **kwargs: object) -> list[_Container]:
        self.asked = kwargs
        return self.found


def test_status_says_the_mesh_container_is_dead_when_the_admin_api_does_not_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from localmesh.compose import engine

    (tmp_path / ".localmesh").mkdir()
    plan = {"project": "shop", "published": {"admin": free_port(), "https": 9443}}
    (tmp_path / ".localmesh" / "plan.json").write_text(json.dumps(plan))
    fake = _Engine([_Container()])
    monkeypatch.setattr(engine, "connect", lambda: fake)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LOCALMESH_ADMIN", raising=False)
    assert run(monkeypatch, "status") == 3
    assert "the mesh container shop-localmesh-1 is exited (137)" in capsys.readouterr().err
    assert fake.asked["all"] is True
    fake.found = []
    assert run(monkeypatch, "status") == 3
    assert "mesh container of project shop does not exist" in capsys.readouterr().err
