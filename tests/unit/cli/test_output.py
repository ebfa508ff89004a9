"""``--json`` failures: one JSON document on stdout, whatever failed."""

from __future__ import annotations

import json

import pytest

from localmesh.cli.output import errors_as_json
from localmesh.errors import ConfigError, DockerError, Position, Problem


def test_a_user_error_is_a_json_document_and_its_exit_code(
    capsys: pytest.CaptureFixture[str],
) -> None:
    problem = Problem("bad port", Position("compose.yaml", 4, 7), key="ports", hint="a number")
    with pytest.raises(SystemExit) as done, errors_as_json(True):
        raise ConfigError([problem, Problem("worse")], hint="fix it")
    assert done.value.code == 2
    out, err = capsys.readouterr()
    assert json.loads(out) == {
        "ok": False,
        "exit_code": 2,
        "hint": "fix it",
        "problems": [
            {"file": "compose.yaml", "line": 4, "column": 7, "key": "ports"}
            | {"message": "bad port", "hint": "a number"},
            {"file": None, "line": None, "column": None, "key": None}
            | {"message": "worse", "hint": None},
        ],
    }
    assert err == ""
    with pytest.raises(SystemExit) as done, errors_as_json(True):
        raise DockerError("no engine", hint="start it")
    assert done.value.code == 3
    assert json.loads(capsys.readouterr().out)["problems"][0]["message"] == "no engine"


def test_an_internal_error_is_a_json_document_and_still_raised(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(KeyError), errors_as_json(True):
        raise KeyError("plan")
    doc = json.loads(capsys.readouterr().out)
    assert (doc["ok"], doc["exit_code"]) == (False, 70)
    assert doc["problems"][0]["message"] == "internal error: KeyError: 'plan'"


def test_without_json_errors_pass_through(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError), errors_as_json(False):
        raise ConfigError(Problem("bad"))
    assert capsys.readouterr().out == ""
