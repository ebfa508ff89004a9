"""The entry point maps outcomes to exit codes and prints user errors as single lines."""

from __future__ import annotations

import pytest
import typer

from localmesh.cli import main as cli_main
from localmesh.errors import ConfigError, Position, Problem


def run(monkeypatch: pytest.MonkeyPatch, *argv: str) -> int:
    monkeypatch.setattr("sys.argv", ["localmesh", *argv])
    try:
        cli_main.main()
    except SystemExit as done:
        return int(done.code or 0)
    return 0


def test_version_exits_zero(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(monkeypatch, "--version") == 0
    assert capsys.readouterr().out.startswith("localmesh ")


def test_unknown_command_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    assert run(monkeypatch, "no-such-command") == 2


def test_exit_raised_inside_a_command_keeps_its_code(monkeypatch: pytest.MonkeyPatch) -> None:
    @cli_main.app.command("exit-three", hidden=True)
    def _exit_three() -> None:
        raise typer.Exit(3)

    try:
        assert run(monkeypatch, "exit-three") == 3
    finally:
        cli_main.app.registered_commands.pop()


def test_config_error_prints_one_escaped_line_per_problem(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    long_key = "services." + "x" * 150 + ".routes[0].[/bold]"

    @cli_main.app.command("bad-config", hidden=True)
    def _bad() -> None:
        raise ConfigError(
            Problem("unknown key", Position("mesh.yaml", 3, 5), key=long_key, hint=long_key)
        )

    try:
        assert run(monkeypatch, "bad-config") == 2
    finally:
        cli_main.app.registered_commands.pop()
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("error: mesh.yaml:3:5: unknown key")
    assert lines[0].endswith("[/bold])")  # markup-looking text printed literally, not wrapped
    assert len(lines) == 1


def test_help_shows_flags_without_a_type_and_paragraphs_unbroken(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`-d <bool>` would read as if the flag took a value; options that take one keep it.
    A docstring's paragraph is rewrapped to the terminal, not cut where the source wraps."""
    monkeypatch.setenv("COLUMNS", "120")
    assert run(monkeypatch, "up", "--help") == 0
    out = capsys.readouterr().out
    assert "<bool>" not in out
    assert "DURATION" in out  # --timeout still shows what it takes
    assert "In the foreground it shows the status until Ctrl-C" in out


def test_up_timeout_takes_durations_and_refuses_nonsense_before_any_work(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from localmesh.cli import compose_cmds

    assert compose_cmds._seconds("--timeout", "3m") == 180.0
    assert compose_cmds._seconds("--timeout", "90") == 90.0
    assert compose_cmds._seconds("--timeout", "2.5") == 2.5
    assert run(monkeypatch, "up", "--timeout", "3x") == 2
    assert "--timeout: invalid duration '3x'" in capsys.readouterr().err
